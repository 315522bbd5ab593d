package clientip

import (
	"net/netip"
	"strings"
)

// listKind says how a header's entries are separated and what one entry is.
type listKind uint8

const (
	kindXFF       listKind = iota // comma-separated nodes (X-Forwarded-For and alike)
	kindForwarded                 // RFC 7239 forwarded-elements
)

// entryIter walks the entries of a list header right to left. Lines are the
// header's lines in the order received; they behave as if joined with ",".
// It never allocates. Quotes never span lines.
type entryIter struct {
	lines []string
	kind  listKind
	line  int    // index of the line being split
	rest  string // unread part of lines[line]
	open  bool   // rest still holds at least one entry
	pos   int    // 1-based position (from the right) of the entry last returned
}

func newEntryIter(lines []string, kind listKind) entryIter {
	it := entryIter{lines: lines, kind: kind, line: len(lines)}
	return it
}

// next returns the next entry to the left, raw (untrimmed), or ok=false at
// the left end.
func (it *entryIter) next() (raw string, ok bool) {
	for !it.open {
		if it.line == 0 {
			return "", false
		}
		it.line--
		it.rest = it.lines[it.line]
		it.open = true
	}
	var i int
	if it.kind == kindForwarded {
		i = lastTopLevelComma(it.rest)
	} else {
		i = strings.LastIndexByte(it.rest, ',')
	}
	if i < 0 {
		raw, it.rest, it.open = it.rest, "", false
	} else {
		raw, it.rest = it.rest[i+1:], it.rest[:i]
	}
	it.pos++
	return raw, true
}

// leftIter walks the entries of a list header left to right, as entryIter
// does right to left (leftmost_non_private reads from the left). pos is
// the 1-based position, from the left, of the entry last returned.
type leftIter struct {
	lines []string
	kind  listKind
	line  int    // index of the next line to split
	rest  string // unread part of lines[line-1]
	open  bool   // rest still holds at least one entry
	pos   int
}

func newLeftIter(lines []string, kind listKind) leftIter {
	return leftIter{lines: lines, kind: kind}
}

// next returns the next entry to the right, raw, or ok=false at the end.
func (it *leftIter) next() (raw string, ok bool) {
	for !it.open {
		if it.line == len(it.lines) {
			return "", false
		}
		it.rest = it.lines[it.line]
		it.line++
		it.open = true
	}
	var i int
	if it.kind == kindForwarded {
		i = firstTopLevelComma(it.rest)
	} else {
		i = strings.IndexByte(it.rest, ',')
	}
	if i < 0 {
		raw, it.rest, it.open = it.rest, "", false
	} else {
		raw, it.rest = it.rest[:i], it.rest[i+1:]
	}
	it.pos++
	return raw, true
}

// count reads the remaining entries without parsing them and returns the
// total number of entries.
func (it *leftIter) count() int {
	for _, ok := it.next(); ok; _, ok = it.next() {
	}
	return it.pos
}

// firstTopLevelComma returns the index of the first comma of s that is not
// inside a quoted-string, or -1. A backslash inside a quoted-string escapes
// the next byte.
func firstTopLevelComma(s string) int {
	inQuote := false
	for j := 0; j < len(s); j++ {
		switch s[j] {
		case '\\':
			if inQuote {
				j++
			}
		case '"':
			inQuote = !inQuote
		case ',':
			if !inQuote {
				return j
			}
		}
	}
	return -1
}

// lastTopLevelComma returns the index of the last comma of s that is not
// inside a quoted-string, or -1. An unterminated quote swallows everything to
// its left (the element is then malformed and invalid).
func lastTopLevelComma(s string) int {
	inQuote := false
	for j := len(s) - 1; j >= 0; j-- {
		switch s[j] {
		case '"':
			if !escapedAt(s, j) {
				inQuote = !inQuote
			}
		case ',':
			if !inQuote {
				return j
			}
		}
	}
	return -1
}

// escapedAt reports whether s[j] is preceded by an odd number of backslashes.
func escapedAt(s string, j int) bool {
	n := 0
	for k := j - 1; k >= 0 && s[k] == '\\'; k-- {
		n++
	}
	return n%2 == 1
}

// countEntries returns how many entries the lines hold when joined.
func countEntries(lines []string, kind listKind) int {
	n := 0
	for _, l := range lines {
		if kind == kindXFF {
			n += strings.Count(l, ",") + 1
			continue
		}
		for {
			n++
			i := lastTopLevelComma(l)
			if i < 0 {
				break
			}
			l = l[:i]
		}
	}
	return n
}

// trimOWS trims HTTP optional white space (space and horizontal tab).
func trimOWS(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// parseNode parses one list entry: an IP address with an optional port
// ("1.2.3.4", "1.2.3.4:80", "2001:db8::1", "[2001:db8::1]", "[2001:db8::1]:443",
// "fe80::1%eth0"). With obfPort, RFC 7239 obfuscated ports ("_abc") are
// accepted too. The result is canonical (IPv4-mapped unmapped, zone kept);
// unspecified addresses are invalid. It does not allocate, also for entries
// that are not addresses (netip's errors would): IPv4 is parsed here, and
// IPv6 text is checked (plausibleIPv6) before netip parses it.
func parseNode(s string, obfPort bool) (netip.Addr, bool) {
	s = trimOWS(s)
	if s == "" {
		return netip.Addr{}, false
	}
	if ip, rest, ok := parseIPv4Prefix(s); ok {
		// The common case, without netip's general parser.
		if rest != "" && (rest[0] != ':' || !validPort(rest[1:], obfPort)) {
			return netip.Addr{}, false
		}
		if ip == (netip.Addr{}) {
			return netip.Addr{}, false // 0.0.0.0
		}
		return ip, true
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return netip.Addr{}, false
		}
		if rest := s[end+1:]; rest != "" {
			if rest[0] != ':' || !validPort(rest[1:], obfPort) {
				return netip.Addr{}, false
			}
		}
		return parseIPv6(s[1:end])
	}
	// Without brackets, only IPv6 is left: a dotted quad (with or without a
	// port) took the fast path, and netip accepts no other IPv4 form.
	return parseIPv6(s)
}

// parseBareIP parses an entry the way Envoy's XFF code does: the whole
// trimmed entry must be an IP address, no port, no brackets.
func parseBareIP(s string) (netip.Addr, bool) {
	s = trimOWS(s)
	if s == "" || s[0] == '[' {
		return netip.Addr{}, false
	}
	if ip, rest, ok := parseIPv4Prefix(s); ok {
		if rest != "" || ip == (netip.Addr{}) {
			return netip.Addr{}, false
		}
		return ip, true
	}
	return parseIPv6(s)
}

// parseIPv6 parses an IPv6 address (zone allowed), canonical.
func parseIPv6(s string) (netip.Addr, bool) {
	if !plausibleIPv6(s) {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(s)
	if err != nil || !ip.Is6() {
		return netip.Addr{}, false
	}
	return canonical(ip)
}

// plausibleIPv6 checks the syntax of IPv6 text as netip.ParseAddr takes it:
// groups of one to four hex digits separated by single colons, at most one
// "::" standing for one or more zero groups, eight groups in all (a dotted
// IPv4 tail counts as two), and an optional zone of RFC 6874 unreserved
// characters. It never rejects text netip accepts with a zone realipd keeps,
// so that netip, and the error it allocates, only see text that parses.
func plausibleIPv6(s string) bool {
	if z := strings.IndexByte(s, '%'); z >= 0 {
		if z == len(s)-1 || !validZone(s[z+1:]) {
			return false
		}
		s = s[:z]
	}
	groups, ellipsis := 0, false
	for i := 0; i < len(s); {
		if s[i] == ':' {
			if i+1 < len(s) && s[i+1] == ':' {
				if ellipsis {
					return false
				}
				ellipsis = true
				i += 2
				if i < len(s) && s[i] == ':' {
					return false // ":::"
				}
				continue
			}
			// A single colon separates two groups.
			if i == 0 || i+1 == len(s) {
				return false
			}
			i++
			continue
		}
		j := i
		for j < len(s) && s[j] != ':' {
			j++
		}
		g := s[i:j]
		if strings.IndexByte(g, '.') >= 0 {
			// A dotted IPv4 tail: last, and a plain dotted quad.
			if _, rest, ok := parseIPv4Prefix(g); j != len(s) || !ok || rest != "" {
				return false
			}
			groups += 2
		} else {
			if len(g) > 4 {
				return false
			}
			for k := 0; k < len(g); k++ {
				if !isHex(g[k]) {
					return false
				}
			}
			groups++
		}
		i = j
	}
	if ellipsis {
		return groups <= 7
	}
	return groups == 8
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// canonical unmaps IPv4-mapped IPv6, rejects unspecified addresses and zones
// with characters outside RFC 6874's unreserved set.
func canonical(ip netip.Addr) (netip.Addr, bool) {
	if ip.Is4In6() {
		ip = ip.Unmap()
	}
	if ip.IsUnspecified() {
		return netip.Addr{}, false
	}
	if z := ip.Zone(); z != "" && !validZone(z) {
		return netip.Addr{}, false
	}
	return ip, true
}

func validZone(z string) bool {
	if len(z) > 32 {
		return false
	}
	for i := 0; i < len(z); i++ {
		c := z[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
			return false
		}
	}
	return true
}

// validPort accepts 1 to 5 digits up to 65535 and, with obf, an RFC 7239
// obfport ("_" followed by ALPHA / DIGIT / "." / "_" / "-").
func validPort(p string, obf bool) bool {
	if p == "" {
		return false
	}
	if p[0] == '_' {
		if !obf || len(p) == 1 {
			return false
		}
		return validObfChars(p[1:])
	}
	if len(p) > 5 {
		return false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n <= 65535
}

func validObfChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// forwardedFor extracts the for= node of one RFC 7239 forwarded-element
// ("for=192.0.2.60;proto=http;by=203.0.113.43"). Parameter names are
// case-insensitive; values are tokens or quoted-strings. ok is false when the
// element is malformed, has no for= or more than one. The returned node is
// unquoted; when the quoted value had escapes, it is unescaped into buf.
func forwardedFor(elem string, buf *[64]byte) (node string, ok bool) {
	s := elem
	found := false
	for {
		s = trimOWS(s)
		if s == "" {
			break
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			return "", false
		}
		name := trimOWS(s[:eq])
		if !isToken(name) {
			return "", false
		}
		s = trimOWS(s[eq+1:])
		var value string
		if s != "" && s[0] == '"' {
			end, escapes := quotedEnd(s)
			if end < 0 {
				return "", false
			}
			value = s[1:end]
			s = s[end+1:]
			if escapes && strings.EqualFold(name, "for") {
				n, ok := unescape(value, buf)
				if !ok {
					return "", false
				}
				value = string(buf[:n])
			}
		} else {
			end := strings.IndexByte(s, ';')
			if end < 0 {
				end = len(s)
			}
			value = trimOWS(s[:end])
			s = s[end:]
			if value == "" || strings.ContainsAny(value, "\" \t") {
				return "", false
			}
		}
		if strings.EqualFold(name, "for") {
			if found {
				return "", false // a parameter must not occur twice in one element
			}
			node, found = value, true
		}
		s = trimOWS(s)
		if s == "" {
			break
		}
		if s[0] != ';' {
			return "", false
		}
		s = s[1:]
	}
	return node, found
}

// quotedEnd returns the index of the quote closing the quoted-string that
// starts at s[0], and whether it contains backslash escapes; -1 if unclosed.
func quotedEnd(s string) (int, bool) {
	escapes := false
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			escapes = true
			i++
		case '"':
			return i, escapes
		}
	}
	return -1, escapes
}

func unescape(s string, buf *[64]byte) (int, bool) {
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' {
			i++
			if i == len(s) {
				return 0, false
			}
			c = s[i]
		}
		if n == len(buf) {
			return 0, false
		}
		buf[n] = c
		n++
	}
	return n, true
}

// isToken reports whether s is a non-empty RFC 9110 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if strings.IndexByte("!#$%&'*+-.^_`|~", c) < 0 {
			return false
		}
	}
	return true
}

// forwardedNode parses a for= node value: an IP (with optional port or
// obfuscated port, IPv6 in brackets), or the non-IP identifiers "unknown"
// and "_obfuscated", which are reported as ok=false.
func forwardedNode(node string) (netip.Addr, bool) {
	if node == "" || node[0] == '_' || strings.EqualFold(node, "unknown") {
		return netip.Addr{}, false
	}
	return parseNode(node, true)
}

// parseIPv4Prefix parses a dotted-quad IPv4 address (decimal, no leading
// zeros) at the start of s and returns the rest. ok is false when s does not
// start with one; callers then use the general parser, so this is only a
// fast path. 0.0.0.0 is returned as the zero Addr.
func parseIPv4Prefix(s string) (ip netip.Addr, rest string, ok bool) {
	var x uint32 // accumulated in a register: a byte array written field by field and read whole stalls the CPU
	i := 0
	for f := range 4 {
		if f > 0 {
			if i >= len(s) || s[i] != '.' {
				return netip.Addr{}, "", false
			}
			i++
		}
		if i >= len(s) {
			return netip.Addr{}, "", false
		}
		d := s[i] - '0'
		if d > 9 {
			return netip.Addr{}, "", false
		}
		i++
		v := uint32(d)
		if d != 0 { // a field never has a leading zero: "0" ends it
			for n := 1; n < 3 && i < len(s); n++ {
				d = s[i] - '0'
				if d > 9 {
					break
				}
				v = v*10 + uint32(d)
				i++
			}
		}
		if v > 255 {
			return netip.Addr{}, "", false
		}
		x = x<<8 | v
	}
	if i < len(s) && (s[i]-'0' <= 9 || s[i] == '.') {
		return netip.Addr{}, "", false
	}
	if x == 0 {
		return netip.Addr{}, s[i:], true
	}
	return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)}), s[i:], true
}
