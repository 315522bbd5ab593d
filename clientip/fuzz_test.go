package clientip

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// candidates returns every IP address that can be read out of s by splitting
// it on list, parameter and bracket punctuation and stripping ports: the
// result of a resolution must always be one of them (or the peer's).
func candidates(s string) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	s = strings.ReplaceAll(s, `\`, "")
	fields := strings.FieldsFunc(s, func(r rune) bool {
		return strings.ContainsRune(",;= \t\"[]\n", r)
	})
	for _, f := range fields {
		for _, c := range []string{f, strings.SplitN(f, ":", 2)[0]} {
			if ip, err := netip.ParseAddr(c); err == nil {
				out[ip.Unmap().WithZone("")] = true
			}
		}
	}
	return out
}

func fuzzConfigs() []*Resolver {
	cfgs := []Config{
		{Strategy: RemoteAddr},
		{Strategy: SingleHeader, Header: "X-Real-IP"},
		{Strategy: LeftmostNonPrivate},
		{Strategy: RightmostNonPrivate},
		{Strategy: RightmostTrustedCount, TrustedHops: 2},
		{Strategy: RightmostTrustedRange, TrustedCIDRs: prefixes("10.0.0.0/8", "fd00::/8")},
		{Strategy: EnvoyXFF},
		{Strategy: EnvoyXFF, UseRemoteAddress: true, TrustedHops: 1},
		{Strategy: EnvoyXFF, TrustedCIDRs: prefixes("10.0.0.0/8", "fd00::/8")},
		{Strategy: LeftmostNonPrivate, Header: "Forwarded"},
		{Strategy: RightmostNonPrivate, Header: "Forwarded"},
		{Strategy: RightmostTrustedCount, TrustedHops: 1, Header: "Forwarded"},
		{Strategy: RightmostTrustedRange, Header: "Forwarded", TrustedCIDRs: prefixes("10.0.0.0/8", "fd00::/8")},
	}
	rs := make([]*Resolver, len(cfgs))
	for i, c := range cfgs {
		rs[i] = must(New(c))
	}
	return rs
}

func must(r *Resolver, err error) *Resolver {
	if err != nil {
		panic(err)
	}
	return r
}

// checkResolution asserts the invariants of every resolution: a result is
// "no result" or an IP that appears in the peer or the headers, the peer is
// only returned as SourcePeer, header results respect the trust set,
// Client follows Resolve (the peer standing in only for no header or all
// trusted) and Explain agrees with Client.
func checkResolution(t *testing.T, r *Resolver, peer string, lines []string) {
	raw := r.Resolve(peer, append([]string(nil), lines...))
	res := r.Client(peer, append([]string(nil), lines...))
	exp, e := r.Explain(peer, append([]string(nil), lines...))
	if res != exp {
		t.Fatalf("%v: Client %+v != Explain %+v", r.Strategy(), res, exp)
	}
	if !followsResolve(raw, res) {
		t.Fatalf("%v: Client %+v does not follow Resolve %+v", r.Strategy(), res, raw)
	}
	if !res.OK() {
		if res.Source != SourceNone || e.ClientIP != "" {
			t.Fatalf("%v: no result with source %v / %q", r.Strategy(), res.Source, e.ClientIP)
		}
		if r.Strategy() == EnvoyXFF {
			if _, st := parsePeer(peer); st == peerIsIP && !raw.OK() {
				t.Fatalf("envoy_xff gave no result with IP peer %q", peer)
			}
		}
		return
	}
	if res.IP.IsUnspecified() || res.IP.Is4In6() {
		t.Fatalf("%v: non-canonical or unspecified result %v", r.Strategy(), res.IP)
	}
	var pool map[netip.Addr]bool
	switch res.Source {
	case SourcePeer:
		pool = candidates(peer)
	case SourceHeader:
		pool = candidates(strings.Join(lines, ","))
		if r.Strategy() == RightmostTrustedRange && r.trusted.Contains(res.IP) {
			t.Fatalf("trusted entry %v returned as the client", res.IP)
		}
		if (r.Strategy() == LeftmostNonPrivate || r.Strategy() == RightmostNonPrivate) && IsPrivate(res.IP) {
			t.Fatalf("private %v returned by %v", res.IP, r.Strategy())
		}
	default:
		t.Fatalf("result with source %v", res.Source)
	}
	if !pool[res.IP.WithZone("")] {
		t.Fatalf("%v: result %v does not appear in its source (peer %q, lines %q)", r.Strategy(), res.IP, peer, lines)
	}
	if got := e.ClientIP; got != res.IP.String() {
		t.Fatalf("explanation client_ip %q != %v", got, res.IP)
	}
}

func FuzzResolve(f *testing.F) {
	seeds := []struct{ peer, header string }{
		{"10.0.0.5:80", "203.0.113.9, 10.1.1.1"},
		{"[fd00::1]:443", "2001:db8::1, [2606:4700::1]:80\nfd00::2"},
		{"192.0.2.1:1", `for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"`},
		{"/run/sock", `for="_hidden", for=unknown, For="10.0.0.1:_x"`},
		{"0.0.0.0:0", ",,, ::ffff:1.2.3.4 ,fe80::1%eth0"},
		{"", `for="6.6.6.6, for=192.0.2.60;ext="a\",b"`},
	}
	for _, s := range seeds {
		f.Add(s.peer, s.header)
	}
	rs := fuzzConfigs()
	f.Fuzz(func(t *testing.T, peer, header string) {
		var lines []string
		if header != "" {
			lines = strings.Split(header, "\n")
		}
		for _, r := range rs {
			checkResolution(t, r, peer, lines)
		}
	})
}

// FuzzLeftPadding checks the bound rule: for the strategies that read from
// the right, whatever a client writes in front of the header (as earlier
// lines, or, for X-Forwarded-For, at the start of the first line) never
// changes an answer that was decided inside the header (an entry picked, an
// invalid decisive entry, a bound reached).
func FuzzLeftPadding(f *testing.F) {
	f.Add("10.0.0.5:80", "203.0.113.9, 10.1.1.1", "1.1.1.1", 100)
	f.Add("10.0.0.5:80", `for=198.51.100.9`, `for="1.1.1.1`, 70)
	f.Add("/run/envoy.sock", "6.6.6.6, 8.8.4.4", "10.0.0.1", 1)
	rs := fuzzConfigs()
	f.Fuzz(func(t *testing.T, peer, header, pad string, copies int) {
		copies = min(max(copies, 1), 200)
		var lines []string
		if header != "" {
			lines = strings.Split(header, "\n")
		}
		padLines := strings.Split(strings.Repeat(pad+"\n", copies-1)+pad, "\n")
		for _, r := range rs {
			switch {
			case r.cfg.Strategy == LeftmostNonPrivate, r.cfg.Strategy == RemoteAddr:
				continue
			case r.cfg.Strategy == EnvoyXFF && r.trusted.Len() > 0:
				continue // Envoy's own whole-header bound of 20 entries
			}
			base := r.Client(peer, slices.Clone(lines))
			switch base.Reason {
			case ReasonPicked, ReasonInvalidEntry, ReasonBound, ReasonPeer:
			default:
				continue // the walk read the whole header: more of it may change the answer
			}
			if base.Source == SourcePeer && base.Reason != ReasonPeer {
				continue // envoy_xff's fallback
			}
			padded := append(slices.Clone(padLines), lines...)
			if got := r.Client(peer, padded); got != base {
				t.Fatalf("%v: padding lines %q in front of %q: %+v, want %+v", r.Strategy(), pad, lines, got, base)
			}
			if r.kind == kindXFF && len(lines) > 0 && r.cfg.Strategy != SingleHeader {
				inline := slices.Clone(lines)
				inline[0] = strings.Repeat(pad+",", copies) + inline[0]
				if got := r.Client(peer, inline); got != base {
					t.Fatalf("%v: padding %q in front of %q: %+v, want %+v", r.Strategy(), pad, lines, got, base)
				}
			}
		}
	})
}

func FuzzParseXFF(f *testing.F) {
	for _, s := range []string{"1.2.3.4", " [2001:db8::1]:443 ", "1.2.3.4:65536", "::ffff:10.0.0.1", "fe80::1%eth0", "01.2.3.4", "1.2.3.4.5", "[1.2.3.4]:80", "1.2.3.4:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, entry string) {
		ip, ok := parseNode(entry, false)
		if !ok {
			if ip.IsValid() {
				t.Fatalf("invalid entry %q returned %v", entry, ip)
			}
			return
		}
		if ip.IsUnspecified() || ip.Is4In6() {
			t.Fatalf("%q: non-canonical %v", entry, ip)
		}
		if !candidates(entry)[ip.WithZone("")] {
			t.Fatalf("%q parsed to %v, which it does not contain", entry, ip)
		}
		// The IPv4 fast path must agree with netip's parser.
		if v4, rest, ok := parseIPv4Prefix(entry); ok && rest == "" {
			want, err := netip.ParseAddr(entry)
			if err != nil || (want.IsUnspecified() && v4.IsValid()) || (!want.IsUnspecified() && v4 != want) {
				t.Fatalf("fast path %q = %v, netip = %v, %v", entry, v4, want, err)
			}
		}
		bare, bareOK := parseBareIP(entry)
		if bareOK && bare != ip {
			t.Fatalf("%q: bare %v != node %v", entry, bare, ip)
		}
	})
}

// refNode is parseNode written plainly on netip, without the fast paths
// and syntax checks that keep parseNode allocation-free: the two must agree.
func refNode(s string, obfPort bool) (netip.Addr, bool) {
	s = trimOWS(s)
	if s == "" {
		return netip.Addr{}, false
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return netip.Addr{}, false
		}
		if rest := s[end+1:]; rest != "" && (rest[0] != ':' || !validPort(rest[1:], obfPort)) {
			return netip.Addr{}, false
		}
		ip, err := netip.ParseAddr(s[1:end])
		if err != nil || !ip.Is6() {
			return netip.Addr{}, false
		}
		return canonical(ip)
	}
	if i := strings.IndexByte(s, ':'); i >= 0 && strings.LastIndexByte(s, ':') == i {
		if !validPort(s[i+1:], obfPort) {
			return netip.Addr{}, false
		}
		ip, err := netip.ParseAddr(s[:i])
		if err != nil || !ip.Is4() {
			return netip.Addr{}, false
		}
		return canonical(ip)
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return canonical(ip)
}

func FuzzParseNodeMatchesNetip(f *testing.F) {
	for _, s := range []string{"1.2.3.4", "[::1]:80", "::ffff:1.2.3.4", "1:2:3:4:5:6:7:8", "1::", "::", "1:::2", "fe80::1%eth0",
		"fe80::1%", "1:2:3:4:5:6:1.2.3.4", "::1.2.3.4", "1.2.3.4::", "[1.2.3.4]", "01.2.3.4", "1.2.3.4:", "bogus", "1:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, obf := range []bool{false, true} {
			got, ok := parseNode(s, obf)
			want, wantOK := refNode(s, obf)
			if ok != wantOK || got != want {
				t.Fatalf("parseNode(%q, %v) = %v, %v; netip says %v, %v", s, obf, got, ok, want, wantOK)
			}
		}
		bare, ok := parseBareIP(s)
		trimmed := trimOWS(s)
		want, err := netip.ParseAddr(trimmed)
		wantOK := err == nil && trimmed != "" && trimmed[0] != '['
		if wantOK {
			want, wantOK = canonical(want)
		}
		if ok != wantOK || (ok && bare != want) {
			t.Fatalf("parseBareIP(%q) = %v, %v; netip says %v, %v", s, bare, ok, want, wantOK)
		}
	})
}

func FuzzParseForwarded(f *testing.F) {
	for _, s := range []string{
		"for=192.0.2.60;proto=http;by=203.0.113.43",
		`for="[2001:db8:cafe::17]:4711"`,
		`For="_gazonk"`, "for=unknown", `for="192.0.2.6\0";x="a,b"`,
		`for=1.2.3.4;for=5.6.7.8`, `for="`, `;;=`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, elem string) {
		var buf [64]byte
		node, ok := forwardedFor(elem, &buf)
		if !ok {
			return
		}
		if !strings.Contains(elem, `\`) && !strings.Contains(elem, node) {
			t.Fatalf("for=%q is not part of %q", node, elem)
		}
		ip, ok := forwardedNode(node)
		if ok && !candidates(elem)[ip.WithZone("")] {
			t.Fatalf("%q yielded %v", elem, ip)
		}
		// The element iterator must never lose or invent bytes.
		it := newEntryIter([]string{elem}, kindForwarded)
		total := 0
		for raw, more := it.next(); more; raw, more = it.next() {
			total += len(raw) + 1
		}
		if total-1 != len(elem) {
			t.Fatalf("iterator split %q into %d bytes", elem, total-1)
		}
		left := newLeftIter([]string{elem}, kindForwarded)
		total = 0
		for raw, more := left.next(); more; raw, more = left.next() {
			total += len(raw) + 1
		}
		if total-1 != len(elem) {
			t.Fatalf("left iterator split %q into %d bytes", elem, total-1)
		}
	})
}
