package clientip

import (
	"net/netip"
	"strings"
)

// privateRanges is the "private" set of docs/strategies.md: special-purpose, documentation,
// benchmarking, shared and multicast space that is never a public client.
var privateRanges = NewPrefixSet([]netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),          // RFC 791 / RFC 1122 §3.2.1.3: "this network"
	netip.MustParsePrefix("10.0.0.0/8"),         // RFC 1918 private-use
	netip.MustParsePrefix("100.64.0.0/10"),      // RFC 6598 shared address space (CGN)
	netip.MustParsePrefix("127.0.0.0/8"),        // RFC 1122 §3.2.1.3 loopback
	netip.MustParsePrefix("169.254.0.0/16"),     // RFC 3927 link-local
	netip.MustParsePrefix("172.16.0.0/12"),      // RFC 1918 private-use
	netip.MustParsePrefix("192.0.0.0/24"),       // RFC 6890 IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),       // RFC 5737 documentation (TEST-NET-1)
	netip.MustParsePrefix("192.88.99.0/24"),     // RFC 7526 deprecated 6to4 relay anycast
	netip.MustParsePrefix("192.168.0.0/16"),     // RFC 1918 private-use
	netip.MustParsePrefix("198.18.0.0/15"),      // RFC 2544 benchmarking
	netip.MustParsePrefix("198.51.100.0/24"),    // RFC 5737 documentation (TEST-NET-2)
	netip.MustParsePrefix("203.0.113.0/24"),     // RFC 5737 documentation (TEST-NET-3)
	netip.MustParsePrefix("224.0.0.0/4"),        // RFC 5771 multicast
	netip.MustParsePrefix("240.0.0.0/4"),        // RFC 1112 §4 reserved
	netip.MustParsePrefix("255.255.255.255/32"), // RFC 919 / RFC 8190 limited broadcast
	netip.MustParsePrefix("::/128"),             // RFC 4291 §2.5.2 unspecified
	netip.MustParsePrefix("::1/128"),            // RFC 4291 §2.5.3 loopback
	netip.MustParsePrefix("100::/64"),           // RFC 6666 discard-only
	netip.MustParsePrefix("2001::/23"),          // RFC 2928 IETF protocol assignments
	netip.MustParsePrefix("2001:2::/48"),        // RFC 5180 benchmarking
	netip.MustParsePrefix("2001:db8::/32"),      // RFC 3849 documentation
	netip.MustParsePrefix("2001::/32"),          // RFC 4380 Teredo
	netip.MustParsePrefix("2002::/16"),          // RFC 3056 6to4
	netip.MustParsePrefix("fc00::/7"),           // RFC 4193 unique local
	netip.MustParsePrefix("fe80::/10"),          // RFC 4291 §2.5.6 link-local unicast
	netip.MustParsePrefix("ff00::/8"),           // RFC 4291 §2.7 multicast
	// 64:ff9b::/96 (RFC 6052 NAT64) is deliberately absent: it maps public IPv4.
})

// IsPrivate reports whether ip is in the private set (see
// privateRanges). IPv4-mapped IPv6 is judged as IPv4; zones are ignored.
func IsPrivate(ip netip.Addr) bool { return privateRanges.Contains(ip) }

// LastEntry returns the last comma-separated entry of a list header whose
// lines are given in order, trimmed of optional white space: the entry a
// proxy appended last. It does not allocate.
func LastEntry(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	l := lines[len(lines)-1]
	return trimOWS(l[strings.LastIndexByte(l, ',')+1:])
}

// TrimLastEntry removes the last comma-separated entry of a list header whose
// lines are given in order (see LastEntry), as the X-Forwarded-For entry
// Envoy appended is removed before resolving. It returns the remaining lines,
// sharing lines' backing array: the last element may be replaced by a shorter
// string, and a last line that held only the removed entry is dropped, so
// that a header holding only that entry becomes no header at all. Empty
// entries left of it keep their slots. It does not allocate.
func TrimLastEntry(lines []string) []string {
	if len(lines) == 0 {
		return lines
	}
	l := lines[len(lines)-1]
	i := strings.LastIndexByte(l, ',')
	if i < 0 {
		return lines[:len(lines)-1]
	}
	lines[len(lines)-1] = l[:i]
	return lines
}
