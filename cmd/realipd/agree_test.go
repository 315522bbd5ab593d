package main

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/plugins"
)

// TestResolveAgreesWithExtProc runs one table of requests through `realipd
// resolve` and through the ext_proc server over a real gRPC connection,
// in both of resolve's input models, and requires the same client IP (or
// both unresolved) from each and the table's answer:
//
//   - as sent: resolve reads the header lines as the peer sent them, and
//     the server gets them as Envoy forwards them (its X-Forwarded-For entry
//     appended, removed again by extproc.xff_appended_by_envoy), and also
//     unchanged with that setting off;
//   - as forwarded: resolve --as-forwarded-by-envoy and the server read the
//     same lines, those Envoy forwards, or those of a case that says what
//     reached realipd (an Envoy that did not append, a setting off).
//
// The cases are those of the work bound (padding left of the decisive
// entry), of the rule for when the peer stands in for the client, and of
// the removal of Envoy's entry.
func TestResolveAgreesWithExtProc(t *testing.T) {
	repeat := func(name, value string, n int) []header {
		return slices.Repeat([]header{{name, value}}, n)
	}
	xff := func(v string) header { return header{"x-forwarded-for", v} }
	range10 := []string{"--strategy", "rightmost_trusted_range", "--trusted-cidrs", "10.0.0.0/8"}
	count1 := []string{"--strategy", "rightmost_trusted_count", "--trusted-hops", "1"}
	cases := []struct {
		name    string
		flags   []string
		peer    string
		dest    string   // destination.address; Envoy appends it for a loopback peer
		headers []header // as the peer sent them
		// forwarded, when set, are the lines that reached realipd instead
		// of those Envoy forwards: only the as-forwarded model runs.
		forwarded []header
		// notAppended sets extproc.xff_appended_by_envoy: false.
		notAppended bool
		want        string // "" = unresolved
	}{
		{name: "64 lines of padding", flags: range10, peer: "10.0.0.5:80", headers: append(repeat("x-forwarded-for", "1.1.1.1", 64), xff("198.51.100.9, 10.1.1.1")), want: "198.51.100.9"},
		{name: "64 Forwarded lines of padding", flags: append(slices.Clone(range10), "--header", "Forwarded"), peer: "10.0.0.5:80",
			headers: append(repeat("forwarded", "for=1.1.1.1", 64), header{"forwarded", "for=198.51.100.9"}), want: "198.51.100.9"},
		{name: "past 64 KiB of padding", flags: range10, peer: "10.0.0.5:80", headers: []header{xff(strings.Repeat("1.1.1.1, ", 8<<10) + "198.51.100.9, 10.1.1.1")}, want: "198.51.100.9"},
		{name: "an unterminated quote to the left", flags: append(slices.Clone(range10), "--header", "Forwarded"), peer: "10.0.0.5:80",
			headers: []header{{"forwarded", `for="1.1.1.1, for=198.51.100.9`}}, want: "198.51.100.9"},
		{name: "untrusted peer", flags: range10, peer: "192.0.2.7:80", headers: []header{xff("6.6.6.6")}, want: "192.0.2.7"},
		{name: "no header: the peer", flags: range10, peer: "10.0.0.5:80", want: "10.0.0.5"},
		{name: "all trusted: the peer", flags: range10, peer: "10.0.0.5:80", headers: []header{xff("10.2.2.2, 10.1.1.1")}, want: "10.0.0.5"},
		{name: "invalid decisive entry", flags: range10, peer: "10.0.0.5:80", headers: []header{xff("8.8.8.8, bogus, 10.1.1.1")}},
		{name: "empty decisive entry", flags: range10, peer: "10.0.0.5:80", headers: []header{xff("8.8.8.8,, 10.1.1.1")}},
		{name: "walk past the bound", flags: range10, peer: "10.0.0.5:80", headers: []header{xff("8.8.8.8, " + strings.Repeat("10.1.1.1, ", 64) + "10.1.1.1")}},
		{name: "unspecified peer", flags: range10, peer: "0.0.0.0:80", headers: []header{xff("8.8.8.8")}},
		{name: "pipe peer walks", flags: range10, peer: "/run/envoy.sock", headers: []header{xff("6.6.6.6, 8.8.4.4")}, want: "8.8.4.4"},
		{name: "pipe peer, all trusted", flags: range10, peer: "/run/envoy.sock", headers: []header{xff("10.1.1.1")}},
		{name: "too few entries", flags: []string{"--strategy", "rightmost_trusted_count", "--trusted-hops", "3"}, peer: "10.0.0.5:80", headers: []header{xff("8.8.8.8, 10.1.1.1")}},
		{name: "count, padded", flags: []string{"--strategy", "rightmost_trusted_count", "--trusted-hops", "2"}, peer: "10.0.0.5:80",
			headers: append(repeat("x-forwarded-for", "1.1.1.1", 70), xff("8.8.8.8, 10.1.1.1")), want: "8.8.8.8"},
		{name: "no public entry", flags: []string{"--strategy", "rightmost_non_private"}, peer: "10.0.0.5:80", headers: []header{xff("10.1.1.1, 192.168.0.1")}},
		{name: "leftmost past the bound", flags: []string{"--strategy", "leftmost_non_private"}, peer: "10.0.0.5:80", headers: []header{xff(strings.Repeat("10.1.1.1, ", 65) + "8.8.8.8")}},
		{name: "leftmost, a long tail", flags: []string{"--strategy", "leftmost_non_private"}, peer: "10.0.0.5:80", headers: []header{xff("8.8.8.8, " + strings.Repeat("10.1.1.1, ", 100) + "9.9.9.9")}, want: "8.8.8.8"},
		{name: "single header absent: the peer", flags: []string{"--strategy", "single_header", "--header", "X-Real-IP"}, peer: "10.0.0.5:80", want: "10.0.0.5"},
		{name: "single header invalid", flags: []string{"--strategy", "single_header", "--header", "X-Real-IP"}, peer: "10.0.0.5:80", headers: []header{{"x-real-ip", "nope"}}},
		{name: "envoy_xff, Envoy's 20-entry bound: Envoy's trusted peer is not judged", flags: []string{"--strategy", "envoy_xff", "--trusted-cidrs", "10.0.0.0/8"}, peer: "10.0.0.5:80",
			headers: []header{xff(strings.Repeat("10.1.1.1, ", 20) + "8.8.8.8")}},
		{name: "envoy_xff, an invalid entry: unresolved", flags: []string{"--strategy", "envoy_xff", "--trusted-cidrs", "10.0.0.0/8"}, peer: "10.0.0.5:80",
			headers: []header{xff("8.8.8.8, garbage, 10.1.1.1")}},
		{name: "envoy_xff, all trusted: the leftmost, as Envoy", flags: []string{"--strategy", "envoy_xff", "--trusted-cidrs", "10.0.0.0/8"}, peer: "10.0.0.5:80",
			headers: []header{xff("10.2.2.2, 10.1.1.1")}, want: "10.2.2.2"},
		{name: "envoy_xff hops, too few: unresolved", flags: []string{"--strategy", "envoy_xff", "--trusted-hops", "2"}, peer: "10.0.0.5:80",
			headers: []header{xff("8.8.8.8")}},
		{name: "malformed peer is not a pipe", flags: range10, peer: "10.0.0.5:99999", headers: []header{xff("6.6.6.6")}},
		{name: "blank header is no header", flags: range10, peer: "10.0.0.5:80", headers: []header{xff("  ")}, want: "10.0.0.5"},

		// The removal of Envoy's entry.
		{name: "count 1: Envoy's entry is not a hop", flags: count1, peer: "10.0.0.5:80", headers: []header{xff("203.0.113.9")}, want: "203.0.113.9"},
		{name: "count 1, two lines, a blank one", flags: count1, peer: "10.0.0.5:80", headers: []header{xff("198.51.100.1"), xff(" "), xff("203.0.113.9")}, want: "203.0.113.9"},
		{name: "v6 peer", flags: count1, peer: "[2001:db8::5]:443", headers: []header{xff("203.0.113.9")}, want: "203.0.113.9"},
		{name: "v4-mapped peer", flags: count1, peer: "[::ffff:10.0.0.5]:80", headers: []header{xff("203.0.113.9")}, want: "203.0.113.9"},
		{name: "loopback peer: Envoy appends its own address", flags: count1, peer: "127.0.0.1:5555", dest: "10.9.9.9:10000",
			headers: []header{xff("203.0.113.9, 10.1.1.1")}, want: "10.1.1.1"},
		{name: "loopback peer appended as itself", flags: count1, peer: "127.0.0.1:5555", dest: "10.9.9.9:10000",
			forwarded: []header{xff("203.0.113.9, 127.0.0.1")}, want: "203.0.113.9"},
		{name: "loopback peer, an entry Envoy does not append", flags: count1, peer: "127.0.0.1:5555", dest: "10.9.9.9:10000",
			forwarded: []header{xff("203.0.113.9, 192.0.2.1")}, want: "192.0.2.1"},
		{name: "Envoy did not append: nothing removed", flags: count1, peer: "10.0.0.5:80", forwarded: []header{xff("203.0.113.9, 10.1.1.1")}, want: "10.1.1.1"},
		{name: "no X-Forwarded-For reached realipd", flags: count1, peer: "10.0.0.5:80", forwarded: []header{{"x-request-id", "1"}}, want: "10.0.0.5"},
		{name: "xff_appended_by_envoy off: nothing removed", flags: count1, peer: "10.0.0.5:80", notAppended: true,
			forwarded: []header{xff("203.0.113.9, 10.0.0.5")}, want: "10.0.0.5"},
		{name: "Forwarded: Envoy's X-Forwarded-For entry is left alone", flags: append(slices.Clone(count1), "--header", "Forwarded"), peer: "10.0.0.5:80",
			forwarded: []header{{"forwarded", "for=203.0.113.9"}, xff("10.0.0.5")}, want: "203.0.113.9"},
	}
	h := newExtProcHarness(t)
	appendedOff := writeFile(t, "appended-off.yaml", "extproc:\n  xff_appended_by_envoy: false\n")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			trust := cliTrust(t, tc.flags)
			// run asks resolve (with more flags) and the server (with
			// xff_appended_by_envoy appended) about lines, and checks both
			// answers.
			run := func(model string, more []string, lines []header, appended bool) {
				t.Helper()
				args := append([]string{"resolve", "--remote-addr", tc.peer}, tc.flags...)
				args = append(args, more...)
				for _, l := range lines {
					args = append(args, "-H", l.name+": "+l.value)
				}
				out, errOut, code := runCmd(t, args...)
				cli := strings.TrimSpace(out)
				if (code == 0) != (cli != "") || (code != 0 && (code != 1 || !strings.Contains(errOut, "unresolved"))) {
					t.Fatalf("%s: resolve: exit %d, stdout %q, stderr %q", model, code, out, errOut)
				}
				server := askExtProc(t, h, trust, appended, tc.peer, tc.dest, lines)
				if cli != tc.want || server != tc.want {
					t.Errorf("%s: resolve %q, ext_proc %q, want %q", model, cli, server, tc.want)
				}
			}
			asForwarded := []string{"--as-forwarded-by-envoy"}
			if tc.dest != "" {
				asForwarded = append(asForwarded, "--destination-addr", tc.dest)
			}
			if tc.notAppended {
				asForwarded = append(asForwarded, "--config", appendedOff)
			}
			if tc.forwarded != nil {
				run("as forwarded", asForwarded, tc.forwarded, !tc.notAppended)
				return
			}
			run("as sent, xff_appended_by_envoy off", nil, tc.headers, false)
			fwd := envoyForwards(t, tc.headers, tc.peer, tc.dest)
			// The server gets what Envoy forwards; resolve what the peer sent.
			cli, _, _ := runCmd(t, append(append([]string{"resolve", "--remote-addr", tc.peer}, tc.flags...), headerArgs(tc.headers)...)...)
			if server := askExtProc(t, h, trust, true, tc.peer, tc.dest, fwd); strings.TrimSpace(cli) != tc.want || server != tc.want {
				t.Errorf("as sent: resolve %q, ext_proc of Envoy's forwarded lines %q, want %q", strings.TrimSpace(cli), server, tc.want)
			}
			run("as forwarded", asForwarded, fwd, true)
		})
	}
}

// header is one request header line.
type header struct{ name, value string }

// headerArgs are the -H flags of lines.
func headerArgs(lines []header) []string {
	var args []string
	for _, l := range lines {
		args = append(args, "-H", l.name+": "+l.value)
	}
	return args
}

// envoyForwards is what Envoy's HTTP connection manager (use_remote_address:
// true) forwards of lines sent by peer: the X-Forwarded-For lines joined
// into one, blank ones skipped, with the peer's IP appended, or for a
// loopback peer its own address (that of destination, which the test
// gives); nothing is appended for a peer that is not an IP.
func envoyForwards(t *testing.T, lines []header, peer, destination string) []header {
	t.Helper()
	var out []header
	var xff []string
	for _, l := range lines {
		if !strings.EqualFold(l.name, "x-forwarded-for") {
			out = append(out, l)
		} else if strings.TrimSpace(l.value) != "" {
			xff = append(xff, l.value)
		}
	}
	if ap, err := netip.ParseAddrPort(peer); err == nil && !ap.Addr().IsUnspecified() {
		a := ap.Addr().Unmap()
		if a.IsLoopback() {
			d, err := netip.ParseAddrPort(destination)
			if err != nil {
				t.Fatalf("a loopback peer needs the destination Envoy appends: %v", err)
			}
			a = d.Addr()
		}
		xff = append(xff, a.String())
	}
	if len(xff) > 0 {
		out = append(out, header{"x-forwarded-for", strings.Join(xff, ", ")})
	}
	return out
}

// askExtProc asks the ext_proc server of h, with trust and
// extproc.xff_appended_by_envoy set to appended, about a request from
// peer to destination carrying lines, and returns the client IP it
// answers ("" unresolved). Only trust.on_unresolved may deny.
func askExtProc(t *testing.T, h *extProcHarness, trust config.Trust, appended bool, peer, destination string, lines []header) string {
	t.Helper()
	cfg := config.Default()
	cfg.Trust = trust
	cfg.ExtProc.XFFAppendedByEnvoy = appended
	h.set(t, &cfg, nil)
	var sent []extproctest.Header
	for _, l := range lines {
		sent = append(sent, extproctest.Header{Name: l.name, Value: l.value})
	}
	res, err := h.client.Process(context.Background(), extproctest.Request{Headers: sent, SourceAddress: peer, DestinationAddress: destination})
	if err != nil {
		t.Fatal(err)
	}
	meta, err := res.Metadata("realipd")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := res.SetHeader("x-real-ip")
	if res.Immediate != nil && meta["policy"] != "trust.on_unresolved" {
		t.Fatalf("ext_proc denied by %q", meta["policy"])
	}
	if got != meta["client_ip"] {
		t.Fatalf("ext_proc x-real-ip %q but client_ip %q", got, meta["client_ip"])
	}
	return got
}

// cliTrust is the trust section the resolve flags of the table describe.
func cliTrust(t *testing.T, flags []string) config.Trust {
	t.Helper()
	trust := config.Default().Trust
	for i := 0; i+1 < len(flags); i += 2 {
		switch v := flags[i+1]; flags[i] {
		case "--strategy":
			trust.Strategy = v
		case "--header":
			trust.Header = v
		case "--trusted-cidrs":
			trust.TrustedCIDRs = config.CIDRs(strings.Split(v, ",")...)
		case "--trusted-hops":
			n := 0
			for _, c := range v {
				n = n*10 + int(c-'0')
			}
			trust.TrustedHops = &n
		default:
			t.Fatalf("flag %s not handled", flags[i])
		}
	}
	if err := trust.Validate(); err != nil {
		t.Fatal(err)
	}
	return trust
}

// extProcHarness is an ext_proc server on loopback with a client, whose
// settings a test replaces with set.
type extProcHarness struct {
	srv    *extproc.Server
	cur    *decide.Current
	client *extproctest.Client
}

// set makes the decisions those of cfg with chain, as a reload does.
func (h *extProcHarness) set(t *testing.T, cfg *config.Config, chain *plugins.Chain) {
	t.Helper()
	h.cur.Store(testDecider(t, cfg, chain))
}

// testDecider is the Decider of cfg with chain, as serve builds it.
func testDecider(t *testing.T, cfg *config.Config, chain *plugins.Chain) *decide.Decider {
	t.Helper()
	s, err := decisionSettings(cfg, chain, nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := decide.New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func newExtProcHarness(t *testing.T) *extProcHarness {
	t.Helper()
	cfg, err := loadOrDefault(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	return newExtProcHarnessOn(t, decide.NewCurrent(testDecider(t, cfg, nil)))
}

// newExtProcHarnessOn is newExtProcHarness deciding with cur.
func newExtProcHarnessOn(t *testing.T, cur *decide.Current) *extProcHarness {
	t.Helper()
	srv, err := extproc.New(cur, extproc.Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeListener(ctx, ln) }()
	c, err := extproctest.Dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// What these tests check is the answer, not how fast it comes: on a
	// loaded machine an answer can take longer than Envoy's default 200 ms.
	c.MessageTimeout = 10 * time.Second
	t.Cleanup(func() {
		c.Close()
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return &extProcHarness{srv: srv, cur: cur, client: c}
}
