package clientip

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

type resolveCase struct {
	name   string
	peer   string
	lines  []string
	want   string // "" = no result
	from   Source
	reason Reason
}

func runCases(t *testing.T, cfg Config, cases []resolveCase) {
	t.Helper()
	r, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lines := append([]string(nil), tc.lines...)
			got := r.Resolve(tc.peer, lines)
			gotIP := ""
			if got.OK() {
				gotIP = got.IP.String()
			}
			if gotIP != tc.want {
				t.Errorf("Resolve(%q, %q) = %q (%v), want %q", tc.peer, tc.lines, gotIP, got.Reason, tc.want)
			}
			if tc.from != SourceNone && got.Source != tc.from {
				t.Errorf("source = %v, want %v", got.Source, tc.from)
			}
			if tc.reason != ReasonNone && got.Reason != tc.reason {
				t.Errorf("reason = %v, want %v", got.Reason, tc.reason)
			}
			// Explain must agree with Client, which is Resolve plus the
			// peer standing in for no header or all trusted.
			client := r.Client(tc.peer, append([]string(nil), tc.lines...))
			res, e := r.Explain(tc.peer, append([]string(nil), tc.lines...))
			if res != client {
				t.Errorf("Explain result %+v != Client result %+v", res, client)
			}
			if !followsResolve(got, client) {
				t.Errorf("Client %+v does not follow Resolve %+v", client, got)
			}
			clientIP := ""
			if client.OK() {
				clientIP = client.IP.String()
			}
			if e.ClientIP != clientIP || e.Reason != got.Reason.String() || e.Detail == "" {
				t.Errorf("explanation %+v disagrees with result %+v", e, client)
			}
		})
	}
}

func TestRemoteAddr(t *testing.T) {
	runCases(t, Config{Strategy: RemoteAddr}, []resolveCase{
		{name: "ipv4 with port", peer: "192.0.2.1:1234", lines: []string{"203.0.113.9"}, want: "192.0.2.1", from: SourcePeer},
		{name: "bare ipv4", peer: "192.0.2.1", want: "192.0.2.1"},
		{name: "ipv6 with port", peer: "[2001:DB8::0:1]:443", want: "2001:db8::1"},
		{name: "bare ipv6", peer: "2001:db8::1", want: "2001:db8::1"},
		{name: "zone kept", peer: "[fe80::1%eth0]:80", want: "fe80::1%eth0"},
		{name: "mapped unmapped", peer: "[::ffff:198.51.100.7]:80", want: "198.51.100.7"},
		{name: "unspecified v4", peer: "0.0.0.0:80", reason: ReasonNoPeer},
		{name: "unspecified v6", peer: "[::]:80", reason: ReasonNoPeer},
		{name: "unix socket", peer: "/run/envoy.sock", reason: ReasonNoPeer},
		{name: "empty", peer: "", reason: ReasonNoPeer},
		{name: "garbage", peer: "not-an-ip:80", reason: ReasonNoPeer},
		{name: "bad port", peer: "192.0.2.1:99999", reason: ReasonNoPeer},
	})
}

func TestSingleHeader(t *testing.T) {
	runCases(t, Config{Strategy: SingleHeader, Header: "X-Real-IP"}, []resolveCase{
		{name: "ipv4", lines: []string{"203.0.113.9"}, want: "203.0.113.9", from: SourceHeader},
		{name: "last line wins", lines: []string{"198.51.100.1", "203.0.113.9"}, want: "203.0.113.9"},
		{name: "spoofed first line ignored", lines: []string{"1.1.1.1", " 8.8.8.8 "}, want: "8.8.8.8"},
		{name: "port stripped", lines: []string{"203.0.113.9:4711"}, want: "203.0.113.9"},
		{name: "ipv6 bracket port", lines: []string{"[2001:db8::1]:443"}, want: "2001:db8::1"},
		{name: "ipv6 bare", lines: []string{"2001:db8:0:0:0:0:0:1"}, want: "2001:db8::1"},
		{name: "private is fine", lines: []string{"10.0.0.1"}, want: "10.0.0.1"},
		{name: "list is invalid", lines: []string{"203.0.113.9, 10.0.0.1"}, reason: ReasonInvalidEntry},
		{name: "invalid last line", lines: []string{"203.0.113.9", "garbage"}, reason: ReasonInvalidEntry},
		{name: "empty last line", lines: []string{"203.0.113.9", ""}, reason: ReasonInvalidEntry},
		{name: "unspecified", lines: []string{"0.0.0.0"}, reason: ReasonInvalidEntry},
		{name: "absent", reason: ReasonNoHeader},
		{name: "peer ignored", peer: "192.0.2.1:80", reason: ReasonNoHeader},
	})
	if _, err := New(Config{Strategy: SingleHeader, Header: "X-Forwarded-For"}); err == nil {
		t.Error("single_header accepted X-Forwarded-For")
	}
	if _, err := New(Config{Strategy: SingleHeader, Header: "forwarded"}); err == nil {
		t.Error("single_header accepted Forwarded")
	}
}

func TestLeftmostNonPrivate(t *testing.T) {
	runCases(t, Config{Strategy: LeftmostNonPrivate}, []resolveCase{
		{name: "first public", lines: []string{"10.0.0.1, 203.0.113.9, 8.8.8.8"}, want: "8.8.8.8"},
		{name: "skips invalid", lines: []string{"garbage, , 1.1.1.1, 8.8.8.8"}, want: "1.1.1.1"},
		{name: "across lines", lines: []string{"10.0.0.1", "9.9.9.9, 8.8.8.8"}, want: "9.9.9.9"},
		{name: "ipv6", lines: []string{"fd00::1, [2606:4700::1]:443"}, want: "2606:4700::1"},
		{name: "nat64 is public", lines: []string{"64:ff9b::808:808"}, want: "64:ff9b::808:808"},
		{name: "all private", lines: []string{"10.0.0.1, 192.168.1.1, ::1"}, reason: ReasonNoPublicEntry},
		{name: "absent", reason: ReasonNoHeader},
	})
	runCases(t, Config{Strategy: LeftmostNonPrivate, Header: "Forwarded"}, []resolveCase{
		{name: "forwarded", lines: []string{`for=unknown, for="[2606:4700::1]:80", for=8.8.8.8`}, want: "2606:4700::1"},
	})
}

func TestRightmostNonPrivate(t *testing.T) {
	runCases(t, Config{Strategy: RightmostNonPrivate}, []resolveCase{
		{name: "last public", lines: []string{"8.8.8.8, 1.1.1.1, 10.0.0.1, 192.168.0.1"}, want: "1.1.1.1", from: SourceHeader},
		{name: "skips invalid", lines: []string{"8.8.8.8, 1.1.1.1, nope, 10.0.0.1"}, want: "1.1.1.1"},
		{name: "skips documentation", lines: []string{"8.8.8.8, 203.0.113.9"}, want: "8.8.8.8"},
		{name: "mapped private skipped", lines: []string{"8.8.8.8, ::ffff:10.0.0.1"}, want: "8.8.8.8"},
		{name: "zone private skipped", lines: []string{"8.8.8.8, fe80::1%eth0"}, want: "8.8.8.8"},
		{name: "teredo private", lines: []string{"8.8.8.8, 2001:0:4136:e378::1"}, want: "8.8.8.8"},
		{name: "6to4 private", lines: []string{"8.8.8.8, 2002:c000:204::1"}, want: "8.8.8.8"},
		{name: "unspecified skipped", lines: []string{"8.8.8.8, 0.0.0.0, ::"}, want: "8.8.8.8"},
		{name: "broadcast skipped", lines: []string{"8.8.8.8, 255.255.255.255"}, want: "8.8.8.8"},
		{name: "none public", lines: []string{"10.0.0.1"}, reason: ReasonNoPublicEntry},
		{name: "empty header is no header", lines: []string{""}, reason: ReasonNoHeader},
		{name: "blank lines are no header", lines: []string{" ", "\t"}, reason: ReasonNoHeader},
		{name: "absent", reason: ReasonNoHeader},
	})
}

func TestRightmostTrustedCount(t *testing.T) {
	runCases(t, Config{Strategy: RightmostTrustedCount, TrustedHops: 2}, []resolveCase{
		{name: "second from right", lines: []string{"1.1.1.1, 2.2.2.2, 3.3.3.3"}, want: "2.2.2.2"},
		{name: "across lines", lines: []string{"1.1.1.1, 2.2.2.2", "3.3.3.3"}, want: "2.2.2.2"},
		{name: "line split mid list", lines: []string{"1.1.1.1", "2.2.2.2, 3.3.3.3"}, want: "2.2.2.2"},
		{name: "private is fine", lines: []string{"10.0.0.1, 3.3.3.3"}, want: "10.0.0.1"},
		{name: "port stripped", lines: []string{"[2001:db8::1]:8080, 3.3.3.3"}, want: "2001:db8::1"},
		{name: "invalid keeps slot", lines: []string{"1.1.1.1, garbage, 3.3.3.3"}, reason: ReasonInvalidEntry},
		{name: "empty keeps slot", lines: []string{"1.1.1.1,, 3.3.3.3"}, reason: ReasonInvalidEntry},
		{name: "unspecified keeps slot", lines: []string{"1.1.1.1, 0.0.0.0, 3.3.3.3"}, reason: ReasonInvalidEntry},
		{name: "too few", lines: []string{"3.3.3.3"}, reason: ReasonTooFewEntries},
		{name: "absent", reason: ReasonNoHeader},
	})
	runCases(t, Config{Strategy: RightmostTrustedCount, TrustedHops: 1}, []resolveCase{
		{name: "rightmost", lines: []string{"1.1.1.1, 2.2.2.2"}, want: "2.2.2.2"},
		{name: "trailing comma is an empty entry", lines: []string{"1.1.1.1, 2.2.2.2,"}, reason: ReasonInvalidEntry},
	})
	for _, hops := range []int{0, -1, MaxEntries + 1} {
		if _, err := New(Config{Strategy: RightmostTrustedCount, TrustedHops: hops}); err == nil {
			t.Errorf("trusted_hops %d accepted", hops)
		}
	}
}

func TestRightmostTrustedRange(t *testing.T) {
	cidrs := prefixes("10.0.0.0/8", "fd00::/8", "::ffff:192.168.0.0/112")
	runCases(t, Config{Strategy: RightmostTrustedRange, TrustedCIDRs: cidrs}, []resolveCase{
		{name: "issue vector", peer: "10.0.0.5:80", lines: []string{"203.0.113.9, 10.1.1.1"}, want: "203.0.113.9", from: SourceHeader},
		{name: "untrusted peer wins", peer: "198.51.100.7:80", lines: []string{"203.0.113.9, 10.1.1.1"}, want: "198.51.100.7", from: SourcePeer, reason: ReasonPeer},
		{name: "untrusted peer no header", peer: "198.51.100.7:80", want: "198.51.100.7"},
		{name: "mapped peer trusted", peer: "[::ffff:10.0.0.5]:80", lines: []string{"203.0.113.9"}, want: "203.0.113.9"},
		{name: "v4 in mapped cidr", peer: "192.168.1.1:80", lines: []string{"203.0.113.9"}, want: "203.0.113.9"},
		{name: "zoned peer trusted", peer: "[fd00::1%eth0]:80", lines: []string{"203.0.113.9"}, want: "203.0.113.9"},
		{name: "spoofed left ignored", peer: "10.0.0.5:80", lines: []string{"6.6.6.6, 203.0.113.9, 10.1.1.1, 10.2.2.2"}, want: "203.0.113.9"},
		{name: "all trusted", peer: "10.0.0.5:80", lines: []string{"10.1.1.1, 10.2.2.2"}, reason: ReasonAllTrusted},
		{name: "invalid stops walk", peer: "10.0.0.5:80", lines: []string{"203.0.113.9, bogus, 10.1.1.1"}, reason: ReasonInvalidEntry},
		{name: "unspecified stops walk", peer: "10.0.0.5:80", lines: []string{"203.0.113.9, ::, 10.1.1.1"}, reason: ReasonInvalidEntry},
		{name: "trusted peer no header", peer: "10.0.0.5:80", reason: ReasonNoHeader},
		{name: "unix peer walks headers", peer: "/run/envoy.sock", lines: []string{"203.0.113.9, 10.1.1.1"}, want: "203.0.113.9"},
		{name: "no peer walks headers", peer: "", lines: []string{"203.0.113.9"}, want: "203.0.113.9"},
		{name: "unspecified peer", peer: "0.0.0.0:80", lines: []string{"203.0.113.9"}, reason: ReasonNoPeer},
		{name: "ipv6 entries", peer: "[fd00::5]:80", lines: []string{"[2001:db8::9]:1234, fd00::7"}, want: "2001:db8::9"},
		{name: "zone kept in result", peer: "10.0.0.5:80", lines: []string{"fe80::9%eth1, 10.1.1.1"}, want: "fe80::9%eth1"},
	})
	// The default: no trusted CIDRs, the peer is the client.
	runCases(t, Config{Strategy: RightmostTrustedRange}, []resolveCase{
		{name: "default peer", peer: "10.0.0.5:80", lines: []string{"203.0.113.9"}, want: "10.0.0.5", from: SourcePeer},
	})
	runCases(t, Config{Strategy: RightmostTrustedRange, Header: "Forwarded", TrustedCIDRs: prefixes("10.0.0.0/8", "203.0.113.43/32")}, []resolveCase{
		{name: "rfc7239 example", peer: "10.0.0.1:80", lines: []string{"for=192.0.2.60;proto=http;by=203.0.113.43"}, want: "192.0.2.60"},
		{name: "hop chain", peer: "10.0.0.1:80", lines: []string{`for=192.0.2.43, for="[2001:db8:cafe::17]:4711", for=10.0.0.9`}, want: "2001:db8:cafe::17"},
		{name: "unknown stops", peer: "10.0.0.1:80", lines: []string{"for=192.0.2.43, for=unknown, for=10.0.0.9"}, reason: ReasonInvalidEntry},
		{name: "obfuscated stops", peer: "10.0.0.1:80", lines: []string{"for=192.0.2.43, for=_hidden"}, reason: ReasonInvalidEntry},
		{name: "no for stops", peer: "10.0.0.1:80", lines: []string{"for=192.0.2.43, by=10.0.0.1;proto=https"}, reason: ReasonInvalidEntry},
	})
}

func TestForwardedParsing(t *testing.T) {
	// rightmost_trusted_count 1 reads exactly the rightmost element.
	runCases(t, Config{Strategy: RightmostTrustedCount, TrustedHops: 1, Header: "Forwarded"}, []resolveCase{
		{name: "token", lines: []string{"for=192.0.2.60"}, want: "192.0.2.60"},
		{name: "case-insensitive name", lines: []string{"For=192.0.2.60"}, want: "192.0.2.60"},
		{name: "upper name", lines: []string{"FOR=192.0.2.60;PROTO=https"}, want: "192.0.2.60"},
		{name: "quoted v4 port", lines: []string{`for="192.0.2.43:47011"`}, want: "192.0.2.43"},
		{name: "quoted v6", lines: []string{`for="[2001:db8:cafe::17]"`}, want: "2001:db8:cafe::17"},
		{name: "quoted v6 port", lines: []string{`for="[2001:db8:cafe::17]:4711"`}, want: "2001:db8:cafe::17"},
		{name: "obfuscated port", lines: []string{`for="[2001:db8::1]:_abc"`}, want: "2001:db8::1"},
		{name: "params after", lines: []string{"for=192.0.2.60;proto=http;by=203.0.113.43"}, want: "192.0.2.60"},
		{name: "params before", lines: []string{"proto=http; for=192.0.2.60 ;by=203.0.113.43"}, want: "192.0.2.60"},
		{name: "comma inside quotes", lines: []string{`for=198.51.100.1, for=192.0.2.60;ext="a,b"`}, want: "192.0.2.60"},
		{name: "escaped quote inside quotes", lines: []string{`for=198.51.100.1, for=192.0.2.60;ext="a\",b"`}, want: "192.0.2.60"},
		{name: "escaped for value", lines: []string{`for="192.0.2.6\0"`}, want: "192.0.2.60"},
		{name: "mapped", lines: []string{`for="[::ffff:192.0.2.60]"`}, want: "192.0.2.60"},
		{name: "second line", lines: []string{"for=198.51.100.1", "for=192.0.2.60"}, want: "192.0.2.60"},
		{name: "unknown", lines: []string{"for=unknown"}, reason: ReasonInvalidEntry},
		{name: "obfuscated", lines: []string{"for=_gazonk"}, reason: ReasonInvalidEntry},
		{name: "duplicate for", lines: []string{"for=192.0.2.60;for=198.51.100.1"}, reason: ReasonInvalidEntry},
		{name: "no for", lines: []string{"by=203.0.113.43"}, reason: ReasonInvalidEntry},
		{name: "unterminated quote", lines: []string{`for="192.0.2.60`}, reason: ReasonInvalidEntry},
		{name: "missing value", lines: []string{"for="}, reason: ReasonInvalidEntry},
		{name: "junk after value", lines: []string{"for=192.0.2.60 x"}, reason: ReasonInvalidEntry},
		{name: "bad name", lines: []string{"f r=192.0.2.60"}, reason: ReasonInvalidEntry},
		{name: "unquoted port still ok", lines: []string{"for=192.0.2.60:80"}, want: "192.0.2.60"},
		{name: "unspecified", lines: []string{"for=0.0.0.0"}, reason: ReasonInvalidEntry},
		// A client's unterminated quote cannot swallow the proxy's element:
		// elements are split from the right.
		{name: "client quote cannot swallow", lines: []string{`for="6.6.6.6, for=192.0.2.60`}, want: "192.0.2.60"},
	})
}

func TestEnvoyXFFTrustedHops(t *testing.T) {
	// The examples of Envoy's HTTP connection manager headers page
	// (x-forwarded-for section).
	xff3 := []string{"203.0.113.128, 203.0.113.10, 203.0.113.1"}
	xff4 := []string{"203.0.113.128, 203.0.113.10, 203.0.113.1, 192.0.2.5"}
	runCases(t, Config{Strategy: EnvoyXFF, UseRemoteAddress: true}, []resolveCase{
		{name: "example 1 edge", peer: "192.0.2.5:4000", lines: xff3, want: "192.0.2.5", from: SourcePeer},
	})
	runCases(t, Config{Strategy: EnvoyXFF}, []resolveCase{
		{name: "example 2 internal", peer: "10.11.12.13:4000", lines: xff4, want: "192.0.2.5", from: SourceHeader},
		{name: "example 5 no xff", peer: "10.20.30.40:4000", want: "10.20.30.40", from: SourcePeer},
		{name: "example 6 internal hop", peer: "10.20.30.50:4000", lines: []string{"10.20.30.40"}, want: "10.20.30.40"},
		{name: "port not accepted", peer: "10.11.12.13:4000", lines: []string{"192.0.2.5:80"}, want: "10.11.12.13", from: SourcePeer, reason: ReasonInvalidEntry},
		{name: "brackets not accepted", peer: "10.11.12.13:4000", lines: []string{"[2001:db8::1]"}, want: "10.11.12.13", from: SourcePeer},
		{name: "bare ipv6", peer: "10.11.12.13:4000", lines: []string{"2001:db8::1"}, want: "2001:db8::1"},
		{name: "trailing comma", peer: "10.11.12.13:4000", lines: []string{"192.0.2.5,"}, want: "10.11.12.13"},
		{name: "no tcp peer and no xff", peer: "", reason: ReasonNoPeer},
	})
	runCases(t, Config{Strategy: EnvoyXFF, UseRemoteAddress: true, TrustedHops: 2}, []resolveCase{
		{name: "example 3 edge two hops", peer: "192.0.2.5:4000", lines: xff3, want: "203.0.113.10"},
		{name: "too few falls back", peer: "192.0.2.5:4000", lines: []string{"203.0.113.1"}, want: "192.0.2.5", reason: ReasonTooFewEntries},
		{name: "absent falls back", peer: "192.0.2.5:4000", want: "192.0.2.5", reason: ReasonNoHeader},
		{name: "invalid falls back", peer: "192.0.2.5:4000", lines: []string{"junk, 203.0.113.1"}, want: "192.0.2.5", reason: ReasonInvalidEntry},
	})
	runCases(t, Config{Strategy: EnvoyXFF, TrustedHops: 2}, []resolveCase{
		{name: "example 4 internal two hops", peer: "10.11.12.13:4000", lines: xff4, want: "203.0.113.10"},
		{name: "too few falls back", peer: "10.11.12.13:4000", lines: []string{"203.0.113.1, 192.0.2.5"}, want: "10.11.12.13"},
	})
}

func TestEnvoyXFFTrustedCIDRs(t *testing.T) {
	// Vectors of Envoy's xff original-IP-detection extension with
	// xff_trusted_cidrs 192.0.2.0/24, 198.51.100.0/24, 2001:db8:7e57:1::/64.
	cfg := Config{Strategy: EnvoyXFF, TrustedCIDRs: prefixes("192.0.2.0/24", "198.51.100.0/24", "2001:db8:7e57:1::/64")}
	many := make([]string, 21)
	for i := range many {
		many[i] = "10.0.0." + string(rune('a'+i))
	}
	runCases(t, cfg, []resolveCase{
		{name: "remote not trusted", peer: "1.2.3.4:80", lines: []string{"1.2.3.4,2.2.2.2"}, want: "1.2.3.4", from: SourcePeer, reason: ReasonPeer},
		{name: "remote trusted", peer: "192.0.2.11:80", lines: []string{"1.2.3.4,2.2.2.2"}, want: "2.2.2.2", from: SourceHeader},
		{name: "remote ipv6 trusted", peer: "[2001:db8:7e57:1::1]:80", lines: []string{"1.2.3.4,2.2.2.2"}, want: "2.2.2.2"},
		{name: "recurse", peer: "192.0.2.11:80", lines: []string{"1.2.3.4,2.2.2.2,192.0.2.5, 198.51.100.1"}, want: "2.2.2.2"},
		{name: "all trusted leftmost", peer: "192.0.2.11:80", lines: []string{"192.0.2.4,192.0.2.5, 198.51.100.1"}, want: "192.0.2.4", from: SourceHeader, reason: ReasonAllTrusted},
		{name: "empty entry falls back", peer: "192.0.2.11:80", lines: []string{"192.0.2.4,, 198.51.100.1"}, want: "192.0.2.11", from: SourcePeer, reason: ReasonInvalidEntry},
		{name: "too many entries", peer: "192.0.2.11:80", lines: []string{"10.1.1.1, 10.2.2.2, 10.3.3.3, 10.4.4.4, 10.5.5.5, 10.6.6.6, 10.7.7.7,10.8.8.8,10.9.9.9, 10.10.10.10, 10.11.11.11, 10.12.12.12, 10.13.13.13, 10.14.14.14, 10.15.15.15, 10.16.16.16, 10.17.17.17, 10.18.18.18, 10.19.19.19, 10.20.20.20, 10.21.21.21"}, want: "192.0.2.11", reason: ReasonBound},
		{name: "twenty entries ok", peer: "192.0.2.11:80", lines: []string{"10.1.1.1, 10.2.2.2, 10.3.3.3, 10.4.4.4, 10.5.5.5, 10.6.6.6, 10.7.7.7,10.8.8.8,10.9.9.9, 10.10.10.10, 10.11.11.11, 10.12.12.12, 10.13.13.13, 10.14.14.14, 10.15.15.15, 10.16.16.16, 10.17.17.17, 10.18.18.18, 10.19.19.19, 10.20.20.20"}, want: "10.20.20.20"},
		{name: "too many across lines", peer: "192.0.2.11:80", lines: many, want: "192.0.2.11"},
		{name: "invalid left of answer not read", peer: "192.0.2.11:80", lines: []string{"junk, 2.2.2.2, 192.0.2.5"}, want: "2.2.2.2"},
		{name: "no header", peer: "192.0.2.11:80", want: "192.0.2.11", reason: ReasonNoHeader},
		{name: "peer not ip", peer: "/tmp/sock", lines: []string{"2.2.2.2"}, reason: ReasonNoPeer},
		{name: "untrusted zero entry falls back", peer: "192.0.2.11:80", lines: []string{"0.0.0.0"}, want: "192.0.2.11"},
	})
	bad := []Config{
		{Strategy: EnvoyXFF, TrustedCIDRs: prefixes("10.0.0.0/8"), TrustedHops: 1},
		{Strategy: EnvoyXFF, TrustedCIDRs: prefixes("10.0.0.0/8"), UseRemoteAddress: true},
		{Strategy: EnvoyXFF, Header: "X-Real-IP"},
		{Strategy: EnvoyXFF, TrustedHops: -1},
	}
	for _, c := range bad {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
}

func TestNewRejectsUnusedSettings(t *testing.T) {
	cases := []struct {
		cfg   Config
		field string
	}{
		{Config{Strategy: RightmostNonPrivate, TrustedCIDRs: prefixes("10.0.0.0/8")}, "trusted_cidrs"},
		{Config{Strategy: RemoteAddr, TrustedHops: 1}, "trusted_hops"},
		{Config{Strategy: RightmostTrustedRange, UseRemoteAddress: true}, "use_remote_address"},
		{Config{Strategy: LeftmostNonPrivate, Header: "bad header"}, "header"},
		{Config{Strategy: 0}, "strategy"},
		{Config{Strategy: 99}, "strategy"},
	}
	for _, tc := range cases {
		_, err := New(tc.cfg)
		ce, ok := err.(*ConfigError)
		if !ok {
			t.Errorf("New(%+v) = %v, want *ConfigError", tc.cfg, err)
			continue
		}
		if ce.Fields[0].Field != tc.field || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("New(%+v) = %v, want field %s", tc.cfg, err, tc.field)
		}
	}
}

// TestBoundsCountExaminedEntries checks that the work bound applies to the
// entries a strategy examines, never to the header as a whole: nothing a
// client writes beyond them (left of the decisive entry for the rightmost
// strategies) changes the answer, however much of it there is.
func TestBoundsCountExaminedEntries(t *testing.T) {
	type padCase struct {
		cfg   Config
		peer  string
		lines []string // the header as the proxies deliver it; padding goes in front
		want  string
	}
	cidrs := prefixes("10.0.0.0/8")
	cases := []padCase{
		{Config{Strategy: RightmostTrustedRange, TrustedCIDRs: cidrs}, "10.0.0.5:80", []string{"198.51.100.9, 10.1.1.1"}, "198.51.100.9"},
		{Config{Strategy: RightmostTrustedRange, TrustedCIDRs: cidrs, Header: "Forwarded"}, "10.0.0.5:80", []string{"for=198.51.100.9"}, "198.51.100.9"},
		{Config{Strategy: RightmostTrustedCount, TrustedHops: 2}, "10.0.0.5:80", []string{"198.51.100.9, 10.1.1.1"}, "198.51.100.9"},
		{Config{Strategy: RightmostNonPrivate}, "10.0.0.5:80", []string{"8.8.8.8, 10.1.1.1"}, "8.8.8.8"},
		{Config{Strategy: RightmostNonPrivate, Header: "Forwarded"}, "10.0.0.5:80", []string{`for="8.8.8.8:80", for=10.1.1.1`}, "8.8.8.8"},
		{Config{Strategy: SingleHeader, Header: "X-Real-IP"}, "10.0.0.5:80", []string{"198.51.100.9"}, "198.51.100.9"},
		{Config{Strategy: EnvoyXFF, UseRemoteAddress: true, TrustedHops: 2}, "10.0.0.5:80", []string{"198.51.100.9, 10.1.1.1"}, "198.51.100.9"},
	}
	xffPads := map[string][]string{
		"64 lines":     slices.Repeat([]string{"1.1.1.1"}, MaxEntries),
		"65 lines":     slices.Repeat([]string{"1.1.1.1"}, MaxEntries+1),
		"1000 entries": {strings.Repeat("1.1.1.1, ", 999) + "1.1.1.1"},
		"64 KiB":       {strings.Repeat(" ", 64<<10) + "1.1.1.1"},
		"1 MiB":        {strings.Repeat("1.1.1.1,", 128<<10) + "1.1.1.1"},
		"garbage":      {`", for="unterminated`},
	}
	for _, tc := range cases {
		r := must(New(tc.cfg))
		base := r.Client(tc.peer, slices.Clone(tc.lines))
		if base.IP.String() != tc.want {
			t.Fatalf("%v %q: %+v, want %s", tc.cfg.Strategy, tc.lines, base, tc.want)
		}
		for name, pad := range xffPads {
			if r.kind == kindForwarded {
				pad = slices.Clone(pad)
				for i := range pad {
					pad[i] = strings.ReplaceAll(pad[i], "1.1.1.1", "for=1.1.1.1")
				}
			}
			// Padding as earlier lines, and (list headers) in front of the
			// first line.
			variants := [][]string{append(slices.Clone(pad), tc.lines...)}
			if r.cfg.Strategy != SingleHeader {
				variants = append(variants, append(slices.Clone(pad[:len(pad)-1]), pad[len(pad)-1]+", "+tc.lines[0]))
			}
			for _, lines := range variants {
				if got := r.Client(tc.peer, lines); got != base {
					t.Errorf("%v %s: %+v, want %+v", tc.cfg.Strategy, name, got, base)
				}
			}
		}
	}

	// A walk past MaxEntries entries it must examine fails closed.
	r := must(New(Config{Strategy: RightmostTrustedRange, TrustedCIDRs: prefixes("1.0.0.0/8")}))
	longTrusted := "8.8.8.8, " + strings.Repeat("1.1.1.1, ", MaxEntries) + "1.1.1.1"
	if got := r.Client("1.0.0.1:80", []string{longTrusted}); got.OK() || got.Reason != ReasonBound {
		t.Errorf("long trusted walk: %+v", got)
	}
	exactly := strings.Repeat("1.1.1.1, ", MaxEntries-1) + "8.8.8.8, " + strings.Repeat("1.1.1.1, ", MaxEntries-2) + "1.1.1.1"
	if got := r.Client("1.0.0.1:80", []string{exactly}); got.IP.String() != "8.8.8.8" {
		t.Errorf("walk of exactly %d entries: %+v", MaxEntries, got)
	}
	r = must(New(Config{Strategy: RightmostNonPrivate}))
	if got := r.Client("", []string{"8.8.8.8," + strings.Repeat("10.0.0.1,", MaxEntries) + "10.0.0.1"}); got.OK() || got.Reason != ReasonBound {
		t.Errorf("long private walk: %+v", got)
	}
	// leftmost_non_private counts from the left: what follows the first
	// public entry does not matter; 65 private entries before it fail closed.
	r = must(New(Config{Strategy: LeftmostNonPrivate}))
	if got := r.Client("", []string{"10.0.0.1, 8.8.8.8, " + strings.Repeat("10.0.0.1,", 1000) + "9.9.9.9"}); got.IP.String() != "8.8.8.8" || got.Position != 1002 {
		t.Errorf("leftmost with a long tail: %+v", got)
	}
	if got := r.Client("", []string{strings.Repeat("10.0.0.1,", MaxEntries+1) + "8.8.8.8"}); got.OK() || got.Reason != ReasonBound {
		t.Errorf("leftmost past the bound: %+v", got)
	}
	// envoy_xff with xff_trusted_cidrs keeps Envoy's own whole-header bound
	// of 20 entries: Envoy falls back to the (trusted) peer, realipd leaves
	// the client IP unresolved rather than judge the proxy.
	r = must(New(Config{Strategy: EnvoyXFF, TrustedCIDRs: prefixes("192.0.2.0/24")}))
	padded := []string{strings.Repeat("1.1.1.1, ", 20) + "8.8.8.8"}
	if got := r.Resolve("192.0.2.1:80", padded); got.IP.String() != "192.0.2.1" || got.Source != SourcePeer || got.Reason != ReasonBound {
		t.Errorf("envoy_xff over 20 entries, as Envoy: %+v", got)
	}
	if got := r.Client("192.0.2.1:80", padded); got.OK() || got.Reason != ReasonBound {
		t.Errorf("envoy_xff over 20 entries: %+v, want unresolved", got)
	}
}

// followsResolve reports whether a Client result follows from the Resolve
// result raw: the same answer, the peer standing in for no header or all
// trusted, or unresolved where envoy_xff would fall back to a trusted peer.
func followsResolve(raw, client Result) bool {
	switch {
	case client.Reason != raw.Reason:
		return false
	case raw.OK() && raw.Source == SourcePeer && raw.Reason != ReasonPeer && !PeerStandsIn(raw.Reason):
		return !client.OK()
	case raw.OK():
		return client == raw
	case client.OK():
		return PeerStandsIn(raw.Reason) && client.Source == SourcePeer
	}
	return true
}

// TestClientStandIn checks when the peer stands in for the client: only
// with no forwarding header at all or with every entry trusted. Every other
// failure is unresolved, so a trusted proxy is never judged as the client.
func TestClientStandIn(t *testing.T) {
	cidrs := prefixes("10.0.0.0/8")
	cases := []struct {
		name   string
		cfg    Config
		peer   string
		lines  []string
		want   string // "" = unresolved
		reason Reason
	}{
		{"no header: the proxy sent it", Config{Strategy: RightmostTrustedRange, TrustedCIDRs: cidrs}, "10.0.0.5:80", nil, "10.0.0.5", ReasonNoHeader},
		{"all trusted", Config{Strategy: RightmostTrustedRange, TrustedCIDRs: cidrs}, "10.0.0.5:80", []string{"10.1.1.1, 10.2.2.2"}, "10.0.0.5", ReasonAllTrusted},
		{"invalid decisive entry", Config{Strategy: RightmostTrustedRange, TrustedCIDRs: cidrs}, "10.0.0.5:80", []string{"8.8.8.8, bogus, 10.1.1.1"}, "", ReasonInvalidEntry},
		{"bound", Config{Strategy: RightmostTrustedRange, TrustedCIDRs: cidrs}, "10.0.0.5:80", []string{"8.8.8.8, " + strings.Repeat("10.1.1.1, ", MaxEntries) + "10.1.1.1"}, "", ReasonBound},
		{"unspecified peer", Config{Strategy: RightmostTrustedRange, TrustedCIDRs: cidrs}, "0.0.0.0:80", []string{"8.8.8.8"}, "", ReasonNoPeer},
		{"pipe peer, all trusted", Config{Strategy: RightmostTrustedRange, TrustedCIDRs: cidrs}, "/run/envoy.sock", []string{"10.1.1.1"}, "", ReasonAllTrusted},
		{"pipe peer walks", Config{Strategy: RightmostTrustedRange, TrustedCIDRs: cidrs}, "/run/envoy.sock", []string{"6.6.6.6, 8.8.4.4"}, "8.8.4.4", ReasonPicked},
		{"too few entries", Config{Strategy: RightmostTrustedCount, TrustedHops: 2}, "10.0.0.5:80", []string{"8.8.8.8"}, "", ReasonTooFewEntries},
		{"count, no header", Config{Strategy: RightmostTrustedCount, TrustedHops: 2}, "10.0.0.5:80", nil, "10.0.0.5", ReasonNoHeader},
		{"no public entry", Config{Strategy: RightmostNonPrivate}, "10.0.0.5:80", []string{"10.1.1.1"}, "", ReasonNoPublicEntry},
		{"single header absent", Config{Strategy: SingleHeader, Header: "X-Real-IP"}, "10.0.0.5:80", nil, "10.0.0.5", ReasonNoHeader},
		{"single header invalid", Config{Strategy: SingleHeader, Header: "X-Real-IP"}, "10.0.0.5:80", []string{"nope"}, "", ReasonInvalidEntry},
		{"remote_addr pipe", Config{Strategy: RemoteAddr}, "/run/envoy.sock", nil, "", ReasonNoPeer},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := must(New(tc.cfg))
			got := r.Client(tc.peer, slices.Clone(tc.lines))
			gotIP := ""
			if got.OK() {
				gotIP = got.IP.String()
			}
			if gotIP != tc.want || got.Reason != tc.reason {
				t.Errorf("Client = %q (%v), want %q (%v)", gotIP, got.Reason, tc.want, tc.reason)
			}
			res, e := r.Explain(tc.peer, slices.Clone(tc.lines))
			if res != got || e.ClientIP != gotIP || e.Reason != tc.reason.String() {
				t.Errorf("Explain %+v / %+v disagrees with Client %+v", res, e, got)
			}
			if !got.OK() && (e.ResolvedFrom != "none" || !strings.Contains(e.Detail, "unresolved")) {
				t.Errorf("unresolved explanation %+v", e)
			}
		})
	}
}

func TestTrimLastEntry(t *testing.T) {
	cases := []struct {
		lines []string
		rest  []string
		last  string
	}{
		{nil, nil, ""},
		{[]string{"1.1.1.1"}, []string{}, "1.1.1.1"},
		{[]string{"1.1.1.1, 2.2.2.2"}, []string{"1.1.1.1"}, "2.2.2.2"},
		{[]string{"1.1.1.1", "2.2.2.2,3.3.3.3"}, []string{"1.1.1.1", "2.2.2.2"}, "3.3.3.3"},
		{[]string{"1.1.1.1", " 2.2.2.2 "}, []string{"1.1.1.1"}, "2.2.2.2"},
		// Only a line that held nothing but the entry is dropped; empty
		// entries left of it keep their slots.
		{[]string{"1.1.1.1", ",2.2.2.2"}, []string{"1.1.1.1", ""}, "2.2.2.2"},
		{[]string{" \t, 2.2.2.2"}, []string{" \t"}, "2.2.2.2"},
		{[]string{", , 2.2.2.2"}, []string{", "}, "2.2.2.2"},
	}
	for _, tc := range cases {
		last := LastEntry(tc.lines)
		rest := TrimLastEntry(append([]string(nil), tc.lines...))
		if last != tc.last || strings.Join(rest, "|") != strings.Join(tc.rest, "|") || len(rest) != len(tc.rest) {
			t.Errorf("LastEntry, TrimLastEntry(%q) = %q, %q; want %q, %q", tc.lines, last, rest, tc.last, tc.rest)
		}
	}
}

func TestPrefixSet(t *testing.T) {
	s := NewPrefixSet(prefixes("10.0.0.0/8", "10.1.0.0/16", "192.168.1.0/24", "192.168.2.0/24", "2001:db8::/32", "::ffff:172.16.0.0/108", "fe80::/10"))
	in := []string{"10.0.0.0", "10.255.255.255", "192.168.1.7", "192.168.2.255", "2001:db8::1", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "172.16.0.1", "::ffff:172.31.255.255", "::ffff:10.1.1.1", "fe80::1%eth0"}
	out := []string{"9.255.255.255", "11.0.0.0", "192.168.0.255", "192.168.3.0", "2001:db9::", "2001:db7:ffff::", "172.32.0.0", "::", "0.0.0.0", "255.255.255.255", "::a00:1"}
	for _, a := range in {
		if !s.Contains(netip.MustParseAddr(a)) {
			t.Errorf("%s not contained", a)
		}
	}
	for _, a := range out {
		if s.Contains(netip.MustParseAddr(a)) {
			t.Errorf("%s contained", a)
		}
	}
	all := NewPrefixSet(prefixes("0.0.0.0/0", "::/0"))
	for _, a := range []string{"0.0.0.0", "255.255.255.255", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"} {
		if !all.Contains(netip.MustParseAddr(a)) {
			t.Errorf("/0 does not contain %s", a)
		}
	}
	var empty PrefixSet
	if empty.Contains(netip.MustParseAddr("1.2.3.4")) || empty.Contains(netip.Addr{}) {
		t.Error("empty set contains")
	}
}

func TestPrivateRanges(t *testing.T) {
	private := []string{"0.1.2.3", "10.1.1.1", "100.64.0.1", "100.127.255.255", "127.0.0.1", "169.254.1.1", "172.16.0.1", "172.31.255.255", "192.0.0.8", "192.0.2.1", "192.88.99.1", "192.168.0.1", "198.18.0.1", "198.19.255.255", "198.51.100.1", "203.0.113.1", "224.0.0.1", "239.255.255.255", "240.0.0.1", "255.255.255.255", "::", "::1", "100::1", "2001:1::1", "2001:2::1", "2001:db8::1", "2001:0::1", "2002::1", "fc00::1", "fd12::1", "fe80::1", "ff02::1"}
	public := []string{"1.1.1.1", "8.8.8.8", "100.63.255.255", "100.128.0.0", "172.15.255.255", "172.32.0.0", "192.0.1.1", "192.88.98.1", "198.17.255.255", "198.20.0.0", "223.255.255.255", "64:ff9b::808:808", "2001:200::1", "2606:4700::1", "2a00::1", "2001:4860::8888"}
	for _, a := range private {
		if !IsPrivate(netip.MustParseAddr(a)) {
			t.Errorf("%s should be private", a)
		}
	}
	for _, a := range public {
		if IsPrivate(netip.MustParseAddr(a)) {
			t.Errorf("%s should be public", a)
		}
	}
}

func TestStrategyNames(t *testing.T) {
	for _, n := range StrategyNames() {
		s, err := ParseStrategy(n)
		if err != nil || s.String() != n {
			t.Errorf("ParseStrategy(%q) = %v, %v", n, s, err)
		}
	}
	if len(StrategyNames()) != 7 {
		t.Errorf("StrategyNames() = %v", StrategyNames())
	}
	if _, err := ParseStrategy("rightmost"); err == nil {
		t.Error("unknown strategy accepted")
	}
}

// TestHostileEntriesDoNotAllocate: entries that are not addresses are
// refused without netip's error allocations, so a client cannot make
// resolution allocate per entry.
func TestHostileEntriesDoNotAllocate(t *testing.T) {
	garbage := []string{"bogus", "1.2.3", "01.2.3.4", "1.2.3.4.5", "1:2", "1:::2", "::ffff:1.2.3", "fe80::1%", "fe80::1%e/0",
		"[1:2]", "[1.2.3.4]", "1.2.3.4:99999", "g::1", "12345::", "1:2:3:4:5:6:7:8:9", ":1::", "unknown", "_hidden"}
	line := strings.Join(garbage, ", ")
	for _, cfg := range []Config{
		{Strategy: RightmostNonPrivate},
		{Strategy: LeftmostNonPrivate},
		{Strategy: EnvoyXFF, UseRemoteAddress: true, TrustedHops: 3},
	} {
		r := must(New(cfg))
		lines := []string{line}
		if n := testing.AllocsPerRun(50, func() { r.Client("10.0.0.5:80", lines) }); n != 0 {
			t.Errorf("%v on %d garbage entries: %v allocations per resolution", cfg.Strategy, len(garbage), n)
		}
	}
	for _, g := range garbage {
		if n := testing.AllocsPerRun(20, func() { parseNode(g, true) }); n != 0 {
			t.Errorf("parseNode(%q): %v allocations", g, n)
		}
	}
}
