package main

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/internal/config"
)

// TestResolveAgreesWithExtProc runs one table of requests through `realipd
// resolve` and through the ext_proc server over a real gRPC connection: for
// the same trust settings, peer and header lines (as the peer sent them),
// both give the same client IP, or both leave it unresolved. The cases are
// those of the work bound (padding left of the decisive entry) and of the
// rule for when the peer stands in for the client.
func TestResolveAgreesWithExtProc(t *testing.T) {
	type header struct{ name, value string }
	repeat := func(name, value string, n int) []header {
		return slices.Repeat([]header{{name, value}}, n)
	}
	xff := func(v string) header { return header{"x-forwarded-for", v} }
	range10 := []string{"--strategy", "rightmost_trusted_range", "--trusted-cidrs", "10.0.0.0/8"}
	cases := []struct {
		name    string
		flags   []string
		peer    string
		headers []header
		want    string // "" = unresolved
	}{
		{"64 lines of padding", range10, "10.0.0.5:80", append(repeat("x-forwarded-for", "1.1.1.1", 64), xff("198.51.100.9, 10.1.1.1")), "198.51.100.9"},
		{"64 Forwarded lines of padding", append(slices.Clone(range10), "--header", "Forwarded"), "10.0.0.5:80",
			append(repeat("forwarded", "for=1.1.1.1", 64), header{"forwarded", "for=198.51.100.9"}), "198.51.100.9"},
		{"past 64 KiB of padding", range10, "10.0.0.5:80", []header{xff(strings.Repeat("1.1.1.1, ", 8<<10) + "198.51.100.9, 10.1.1.1")}, "198.51.100.9"},
		{"an unterminated quote to the left", append(slices.Clone(range10), "--header", "Forwarded"), "10.0.0.5:80",
			[]header{{"forwarded", `for="1.1.1.1, for=198.51.100.9`}}, "198.51.100.9"},
		{"untrusted peer", range10, "192.0.2.7:80", []header{xff("6.6.6.6")}, "192.0.2.7"},
		{"no header: the peer", range10, "10.0.0.5:80", nil, "10.0.0.5"},
		{"all trusted: the peer", range10, "10.0.0.5:80", []header{xff("10.2.2.2, 10.1.1.1")}, "10.0.0.5"},
		{"invalid decisive entry", range10, "10.0.0.5:80", []header{xff("8.8.8.8, bogus, 10.1.1.1")}, ""},
		{"empty decisive entry", range10, "10.0.0.5:80", []header{xff("8.8.8.8,, 10.1.1.1")}, ""},
		{"walk past the bound", range10, "10.0.0.5:80", []header{xff("8.8.8.8, " + strings.Repeat("10.1.1.1, ", 64) + "10.1.1.1")}, ""},
		{"unspecified peer", range10, "0.0.0.0:80", []header{xff("8.8.8.8")}, ""},
		{"pipe peer walks", range10, "/run/envoy.sock", []header{xff("6.6.6.6, 8.8.4.4")}, "8.8.4.4"},
		{"pipe peer, all trusted", range10, "/run/envoy.sock", []header{xff("10.1.1.1")}, ""},
		{"too few entries", []string{"--strategy", "rightmost_trusted_count", "--trusted-hops", "3"}, "10.0.0.5:80", []header{xff("8.8.8.8, 10.1.1.1")}, ""},
		{"count, padded", []string{"--strategy", "rightmost_trusted_count", "--trusted-hops", "2"}, "10.0.0.5:80",
			append(repeat("x-forwarded-for", "1.1.1.1", 70), xff("8.8.8.8, 10.1.1.1")), "8.8.8.8"},
		{"no public entry", []string{"--strategy", "rightmost_non_private"}, "10.0.0.5:80", []header{xff("10.1.1.1, 192.168.0.1")}, ""},
		{"leftmost past the bound", []string{"--strategy", "leftmost_non_private"}, "10.0.0.5:80", []header{xff(strings.Repeat("10.1.1.1, ", 65) + "8.8.8.8")}, ""},
		{"leftmost, a long tail", []string{"--strategy", "leftmost_non_private"}, "10.0.0.5:80", []header{xff("8.8.8.8, " + strings.Repeat("10.1.1.1, ", 100) + "9.9.9.9")}, "8.8.8.8"},
		{"single header absent: the peer", []string{"--strategy", "single_header", "--header", "X-Real-IP"}, "10.0.0.5:80", nil, "10.0.0.5"},
		{"single header invalid", []string{"--strategy", "single_header", "--header", "X-Real-IP"}, "10.0.0.5:80", []header{{"x-real-ip", "nope"}}, ""},
		{"envoy_xff, Envoy's 20-entry bound: Envoy's trusted peer is not judged", []string{"--strategy", "envoy_xff", "--trusted-cidrs", "10.0.0.0/8"}, "10.0.0.5:80",
			[]header{xff(strings.Repeat("10.1.1.1, ", 20) + "8.8.8.8")}, ""},
		{"envoy_xff, an invalid entry: unresolved", []string{"--strategy", "envoy_xff", "--trusted-cidrs", "10.0.0.0/8"}, "10.0.0.5:80",
			[]header{xff("8.8.8.8, garbage, 10.1.1.1")}, ""},
		{"envoy_xff, all trusted: the leftmost, as Envoy", []string{"--strategy", "envoy_xff", "--trusted-cidrs", "10.0.0.0/8"}, "10.0.0.5:80",
			[]header{xff("10.2.2.2, 10.1.1.1")}, "10.2.2.2"},
		{"envoy_xff hops, too few: unresolved", []string{"--strategy", "envoy_xff", "--trusted-hops", "2"}, "10.0.0.5:80",
			[]header{xff("8.8.8.8")}, ""},
		{"malformed peer is not a pipe", range10, "10.0.0.5:99999", []header{xff("6.6.6.6")}, ""},
		{"blank header is no header", range10, "10.0.0.5:80", []header{xff("  ")}, "10.0.0.5"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"resolve", "--remote-addr", tc.peer}, tc.flags...)
			var sent []extproctest.Header
			for _, h := range tc.headers {
				args = append(args, "-H", h.name+": "+h.value)
				sent = append(sent, extproctest.Header{Name: h.name, Value: h.value})
			}
			out, errOut, code := runCmd(t, args...)
			cli := strings.TrimSpace(out)
			if (code == 0) != (cli != "") || (code != 0 && (code != 1 || !strings.Contains(errOut, "unresolved"))) {
				t.Fatalf("resolve: exit %d, stdout %q, stderr %q", code, out, errOut)
			}

			server := extprocFor(t, cliTrust(t, tc.flags))
			res, err := server.Process(context.Background(), extproctest.Request{Headers: sent, SourceAddress: tc.peer})
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
			if cli != tc.want || got != tc.want {
				t.Errorf("resolve %q, ext_proc %q, want %q", cli, got, tc.want)
			}
		})
	}
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
			trust.TrustedCIDRs = strings.Split(v, ",")
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

// extprocFor serves ext_proc with trust over a real gRPC connection, with
// the headers taken as the peer sent them (xff_appended_by_envoy off).
func extprocFor(t *testing.T, trust config.Trust) *extproctest.Client {
	t.Helper()
	r, err := clientip.New(trust.ClientIP())
	if err != nil {
		t.Fatal(err)
	}
	h := newExtProcHarness(t)
	if err := h.srv.Update(extproc.Settings{Resolver: r, PassUnresolved: trust.PassUnresolved()}); err != nil {
		t.Fatal(err)
	}
	return h.client
}

// extProcHarness is an ext_proc server on loopback with a client, whose
// settings a test replaces with Update.
type extProcHarness struct {
	srv    *extproc.Server
	client *extproctest.Client
}

func newExtProcHarness(t *testing.T) *extProcHarness {
	t.Helper()
	cfg, err := loadOrDefault("")
	if err != nil {
		t.Fatal(err)
	}
	es, err := extprocSettings(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := extproc.New(es, extproc.Options{Registerer: prometheus.NewRegistry()})
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
	t.Cleanup(func() {
		c.Close()
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return &extProcHarness{srv: srv, client: c}
}
