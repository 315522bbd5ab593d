package main

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
)

// maxLineBytes bounds one line of a list file.
const maxLineBytes = 4096

// prefixSet matches an IP against a set of prefixes, longest first. It is
// immutable once built.
type prefixSet struct {
	set  map[netip.Prefix]struct{}
	bits [2][]int // distinct prefix lengths, longest first: [0] IPv4, [1] IPv6
	n    int
}

func newPrefixSet(ps []netip.Prefix) *prefixSet {
	s := &prefixSet{set: make(map[netip.Prefix]struct{}, len(ps))}
	for _, p := range ps {
		p = p.Masked()
		if _, dup := s.set[p]; dup {
			continue
		}
		s.set[p] = struct{}{}
		fam := family(p.Addr())
		if !slices.Contains(s.bits[fam], p.Bits()) {
			s.bits[fam] = append(s.bits[fam], p.Bits())
		}
	}
	for i := range s.bits {
		slices.Sort(s.bits[i])
		slices.Reverse(s.bits[i])
	}
	s.n = len(s.set)
	return s
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// match returns the longest prefix containing ip.
func (s *prefixSet) match(ip netip.Addr) (netip.Prefix, bool) {
	if !ip.IsValid() {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap().WithZone("")
	for _, b := range s.bits[family(ip)] {
		p, err := ip.Prefix(b)
		if err != nil {
			continue
		}
		if _, ok := s.set[p]; ok {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// parseList reads one IP address or CIDR per line. Blank lines and text
// after '#' are ignored; a bare address is a single-host prefix; IPv4-mapped
// IPv6 entries are taken as IPv4. Errors carry the line number.
func parseList(r io.Reader) ([]netip.Prefix, error) {
	var out []netip.Prefix
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 256), maxLineBytes)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		p, err := parseEntry(text)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		out = append(out, p)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read list: %w", err)
	}
	return out, nil
}

func parseEntry(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		if a := p.Addr(); a.Is4In6() {
			bits := p.Bits() - 96
			if bits < 0 {
				return netip.Prefix{}, fmt.Errorf("%q: IPv4-mapped prefix shorter than /96", s)
			}
			p = netip.PrefixFrom(a.Unmap(), bits)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q: zones are not allowed", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
