package extproc_test

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/plugins"
)

// spoofCase is one request an attacker (or a misconfigured Envoy) sends, and
// what realipd must answer: the client IP it sets ("" = x-real-ip removed)
// or the deny and the deciding policy.
type spoofCase struct {
	name     string
	req      extproctest.Request
	wantIP   string
	wantFrom string // resolved_from
	wantDeny string // deciding policy of a deny; "" = allowed
	// counters that must have gone up by one for this request
	counts []string
}

func cidrChain(t *testing.T, name string, allow, deny []string) *plugins.Chain {
	t.Helper()
	pp := func(ss []string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	chain, err := plugins.NewChain(plugins.ChainEntry{Name: name, Policy: plugins.NewCIDR(pp(allow), pp(deny))})
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

func trustedRangeResolver(t *testing.T, header string, cidrs ...string) *clientip.Resolver {
	t.Helper()
	var ps []netip.Prefix
	for _, c := range cidrs {
		ps = append(ps, netip.MustParsePrefix(c))
	}
	r, err := clientip.New(clientip.Config{Strategy: clientip.RightmostTrustedRange, Header: header, TrustedCIDRs: ps})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// runSpoofCases sends every case over a real gRPC connection to a server
// with settings s and checks the answer and the counters.
func runSpoofCases(t *testing.T, s decide.Settings, opts extproc.Options, cases []spoofCase) {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	ts := start(t, "tcp", s, opts)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := counters(t, reg)
			res, err := ts.client.Process(context.Background(), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			meta, err := res.Metadata("realipd")
			if err != nil {
				t.Fatal(err)
			}
			if meta["resolved_from"] != tc.wantFrom || meta["client_ip"] != tc.wantIP {
				t.Errorf("client_ip %q resolved_from %q, want %q %q (metadata %v)", meta["client_ip"], meta["resolved_from"], tc.wantIP, tc.wantFrom, meta)
			}
			if tc.wantDeny != "" {
				if res.Immediate == nil || res.Immediate.GetStatus().GetCode() != 403 || meta["decision"] != "deny" || meta["policy"] != tc.wantDeny {
					t.Fatalf("want a 403 by %s; got immediate %v, metadata %v", tc.wantDeny, res.Immediate, meta)
				}
			} else {
				if res.Immediate != nil {
					t.Fatalf("denied: %v (metadata %v)", res.Immediate, meta)
				}
				got, set := res.SetHeader("x-real-ip")
				switch {
				case tc.wantIP == "" && (set || !res.Removed("x-real-ip")):
					t.Errorf("x-real-ip = %q, want it removed", got)
				case tc.wantIP != "" && got != tc.wantIP:
					t.Errorf("x-real-ip = %q, want %q", got, tc.wantIP)
				}
			}
			after := counters(t, reg)
			for _, name := range tc.counts {
				if after[name] != before[name]+1 {
					t.Errorf("%s went from %v to %v, want +1", name, before[name], after[name])
				}
			}
		})
	}
}

// counters returns every counter of reg by name{labels}.
func counters(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetCounter() == nil {
				continue
			}
			name := mf.GetName()
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			out[name] = m.GetCounter().GetValue()
		}
	}
	return out
}

const (
	mismatchTotal   = "realipd_extproc_xff_mismatch_total"
	noSourceTotal   = "realipd_extproc_missing_source_address_total"
	unresolvedTotal = "realipd_extproc_unresolved_total"
)

// TestEnvoyEntryRemovedOnlyWhenEnvoyAppendedIt: the last X-Forwarded-For
// entry is removed only when it is what Envoy appends (the peer's IP, or
// for a loopback peer Envoy's own address); otherwise the header is
// resolved as sent and the mismatch counted and warned about.
func TestEnvoyEntryRemovedOnlyWhenEnvoyAppendedIt(t *testing.T) {
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	s := decide.Settings{Resolver: trustedRangeResolver(t, "", "10.0.0.0/8", "127.0.0.0/8"), XFFAppendedByEnvoy: true}
	opts := extproc.Options{Logger: log, LocalAddrs: func() ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParsePrefix("192.0.2.10/32").Addr()}, nil
	}}
	xff := func(v string) []extproctest.Header { return hdrs("x-forwarded-for", v) }
	runSpoofCases(t, s, opts, []spoofCase{{
		// 8.8.4.4 was written by the trusted front proxy; a pipe peer gets
		// nothing appended by Envoy, so nothing may be removed.
		name:   "pipe peer",
		req:    extproctest.Request{Headers: xff("6.6.6.6, 8.8.4.4"), SourceAddress: "/run/envoy.sock"},
		wantIP: "8.8.4.4", wantFrom: "header",
	}, {
		name:   "Envoy without use_remote_address appended nothing",
		req:    extproctest.Request{Headers: xff("6.6.6.6, 8.8.4.4"), SourceAddress: "10.0.0.5:4711", DestinationAddress: "10.0.0.9:8080"},
		wantIP: "8.8.4.4", wantFrom: "header",
		counts: []string{mismatchTotal},
	}, {
		name:   "Envoy appended the peer",
		req:    extproctest.Request{Headers: xff("6.6.6.6, 8.8.4.4, 10.0.0.5"), SourceAddress: "10.0.0.5:4711", DestinationAddress: "10.0.0.9:8080"},
		wantIP: "8.8.4.4", wantFrom: "header",
	}, {
		name:   "IPv4-mapped peer",
		req:    extproctest.Request{Headers: xff("6.6.6.6, 8.8.4.4, ::ffff:10.0.0.5"), SourceAddress: "[::ffff:10.0.0.5]:4711"},
		wantIP: "8.8.4.4", wantFrom: "header",
	}, {
		name:   "the destination is not appended for a peer that is not loopback",
		req:    extproctest.Request{Headers: xff("6.6.6.6, 8.8.4.4, 10.0.0.9"), SourceAddress: "10.0.0.5:4711", DestinationAddress: "10.0.0.9:8080"},
		wantIP: "8.8.4.4", wantFrom: "header",
		counts: []string{mismatchTotal},
	}, {
		name:   "loopback peer: Envoy appended its node address",
		req:    extproctest.Request{Headers: xff("6.6.6.6, 8.8.4.4, 192.0.2.10"), SourceAddress: "127.0.0.1:4711", DestinationAddress: "127.0.0.1:10000"},
		wantIP: "8.8.4.4", wantFrom: "header",
	}, {
		name:   "loopback peer: Envoy appended the listener address",
		req:    extproctest.Request{Headers: xff("6.6.6.6, 8.8.4.4, 10.0.0.9"), SourceAddress: "127.0.0.1:4711", DestinationAddress: "10.0.0.9:10000"},
		wantIP: "8.8.4.4", wantFrom: "header",
	}, {
		name:   "loopback peer: an entry Envoy did not append stays",
		req:    extproctest.Request{Headers: xff("6.6.6.6, 8.8.4.4"), SourceAddress: "127.0.0.1:4711", DestinationAddress: "127.0.0.1:10000"},
		wantIP: "8.8.4.4", wantFrom: "header",
		counts: []string{mismatchTotal},
	}})
	if n := strings.Count(logs.String(), "Envoy is probably not running with use_remote_address: true"); n != 1 {
		t.Errorf("%d mismatch warnings, want exactly 1 (rate-limited):\n%s", n, logs.String())
	}
}

// TestUnresolvedFailsClosed: without source.address, with an invalid
// decisive entry or past the work bound, the trusted proxy is never judged
// as the client: the request is unresolved and denied by default.
func TestUnresolvedFailsClosed(t *testing.T) {
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	s := decide.Settings{
		Resolver:           trustedRangeResolver(t, "", "10.0.0.0/8"),
		XFFAppendedByEnvoy: true,
		Chain:              cidrChain(t, "blocklist", nil, []string{"198.51.100.0/24", "10.0.0.0/8"}),
	}
	runSpoofCases(t, s, extproc.Options{Logger: log}, []spoofCase{{
		name:     "no source.address",
		req:      extproctest.Request{Headers: hdrs("x-forwarded-for", "6.6.6.6, 203.0.113.7")},
		wantDeny: "trust.on_unresolved", wantFrom: "none",
		counts: []string{noSourceTotal, unresolvedTotal + "{reason=no_peer}"},
	}, {
		name:     "invalid decisive entry behind a trusted peer",
		req:      extproctest.Request{Headers: hdrs("x-forwarded-for", "8.8.8.8, bogus, 10.0.0.5"), SourceAddress: "10.0.0.5:1"},
		wantDeny: "trust.on_unresolved", wantFrom: "none",
		counts: []string{unresolvedTotal + "{reason=invalid}"},
	}, {
		name:     "every entry trusted: the peer stands in",
		req:      extproctest.Request{Headers: hdrs("x-forwarded-for", "10.1.1.1, 10.0.0.5"), SourceAddress: "10.0.0.5:1"},
		wantDeny: "blocklist", wantIP: "10.0.0.5", wantFrom: "peer",
	}, {
		name:   "no forwarding header but Envoy's: the peer sent it itself",
		req:    extproctest.Request{Headers: hdrs("x-forwarded-for", "10.0.0.5"), SourceAddress: "10.0.0.5:1"},
		wantIP: "10.0.0.5", wantFrom: "peer", wantDeny: "blocklist",
	}})
	if !strings.Contains(logs.String(), "without the source.address attribute") {
		t.Errorf("no warning about the missing source.address:\n%s", logs.String())
	}
}

// TestUnresolvedPass: with trust.on_unresolved: pass the policies see no
// client IP: a deny list cannot match it, an allow list denies it.
func TestUnresolvedPass(t *testing.T) {
	req := extproctest.Request{Headers: hdrs("x-real-ip", "6.6.6.6", "x-forwarded-for", "8.8.8.8, bogus, 10.0.0.5"), SourceAddress: "10.0.0.5:1"}
	s := decide.Settings{Resolver: trustedRangeResolver(t, "", "10.0.0.0/8"), XFFAppendedByEnvoy: true, PassUnresolved: true}
	s.Chain = cidrChain(t, "blocklist", nil, []string{"0.0.0.0/0", "::/0"})
	runSpoofCases(t, s, extproc.Options{}, []spoofCase{{name: "deny list", req: req, wantIP: "", wantFrom: "none"}})
	s.Chain = cidrChain(t, "allowlist", []string{"10.0.0.0/8"}, nil)
	runSpoofCases(t, s, extproc.Options{}, []spoofCase{{name: "allow list", req: req, wantDeny: "allowlist", wantFrom: "none"}})
}

// TestPaddingLeftOfTheDecisiveEntry: nothing a client writes left of the
// decisive entry changes the answer, however much of it (the bound counts
// the entries examined, not the header).
func TestPaddingLeftOfTheDecisiveEntry(t *testing.T) {
	chain := cidrChain(t, "blocklist", nil, []string{"198.51.100.0/24"})
	var fwd []extproctest.Header
	for range 64 {
		fwd = append(fwd, extproctest.Header{Name: "forwarded", Value: "for=1.1.1.1"})
	}
	fwd = append(fwd, extproctest.Header{Name: "forwarded", Value: "for=198.51.100.9"})
	s := decide.Settings{Resolver: trustedRangeResolver(t, "Forwarded", "10.0.0.0/8"), Chain: chain}
	runSpoofCases(t, s, extproc.Options{}, []spoofCase{{
		name:     "64 Forwarded lines in front",
		req:      extproctest.Request{Headers: fwd, SourceAddress: "10.0.0.5:1"},
		wantDeny: "blocklist", wantIP: "198.51.100.9", wantFrom: "header",
	}})
	s = decide.Settings{Resolver: trustedRangeResolver(t, "", "10.0.0.0/8"), Chain: chain, XFFAppendedByEnvoy: true}
	runSpoofCases(t, s, extproc.Options{}, []spoofCase{{
		name:     "X-Forwarded-For padded past 64 KiB",
		req:      extproctest.Request{Headers: hdrs("x-forwarded-for", strings.Repeat("1.1.1.1, ", 8<<10)+"198.51.100.9, 10.0.0.5"), SourceAddress: "10.0.0.5:1"},
		wantDeny: "blocklist", wantIP: "198.51.100.9", wantFrom: "header",
	}})
}
