package clientip

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"slices"
)

// PrefixSet is an immutable set of CIDR prefixes with allocation-free,
// O(log n) membership tests: prefixes are merged into sorted, disjoint
// address ranges searched by bisection. IPv4-mapped IPv6 addresses and
// prefixes are treated as IPv4; zones are ignored. The zero PrefixSet is
// empty. A PrefixSet is safe for concurrent use.
type PrefixSet struct {
	v4 []range4
	v6 []range6
	n  int
}

type range4 struct{ lo, hi uint32 }

type u128 struct{ hi, lo uint64 }

func (a u128) less(b u128) bool { return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo }

type range6 struct{ lo, hi u128 }

// NewPrefixSet builds a set from prefixes. Invalid prefixes are ignored.
func NewPrefixSet(prefixes []netip.Prefix) PrefixSet {
	var s PrefixSet
	for _, p := range prefixes {
		if !p.IsValid() {
			continue
		}
		a, bits := p.Addr().WithZone(""), p.Bits()
		if a.Is4In6() {
			if bits < 96 {
				// A prefix wider than ::ffff:0:0/96 covers all of IPv4 space.
				a, bits = netip.IPv4Unspecified(), 0
				s.addV6(netip.PrefixFrom(p.Addr().WithZone(""), p.Bits()))
			} else {
				a, bits = a.Unmap(), bits-96
			}
		}
		p = netip.PrefixFrom(a, bits).Masked()
		s.n++
		if a.Is4() {
			lo := binary.BigEndian.Uint32(p.Addr().AsSlice())
			hi := lo | uint32(uint64(1<<(32-bits))-1)
			s.v4 = append(s.v4, range4{lo, hi})
		} else {
			s.addV6(p)
		}
	}
	slices.SortFunc(s.v4, func(a, b range4) int {
		if a.lo < b.lo {
			return -1
		}
		if a.lo > b.lo {
			return 1
		}
		return 0
	})
	merged4 := s.v4[:0]
	for _, r := range s.v4 {
		if n := len(merged4); n > 0 && (r.lo <= merged4[n-1].hi || merged4[n-1].hi != ^uint32(0) && r.lo == merged4[n-1].hi+1) {
			merged4[n-1].hi = max(merged4[n-1].hi, r.hi)
			continue
		}
		merged4 = append(merged4, r)
	}
	s.v4 = merged4
	slices.SortFunc(s.v6, func(a, b range6) int {
		if a.lo.less(b.lo) {
			return -1
		}
		if b.lo.less(a.lo) {
			return 1
		}
		return 0
	})
	merged6 := s.v6[:0]
	for _, r := range s.v6 {
		if n := len(merged6); n > 0 && (!merged6[n-1].hi.less(r.lo) || merged6[n-1].hi.inc() == r.lo) {
			if merged6[n-1].hi.less(r.hi) {
				merged6[n-1].hi = r.hi
			}
			continue
		}
		merged6 = append(merged6, r)
	}
	s.v6 = merged6
	return s
}

func (s *PrefixSet) addV6(p netip.Prefix) {
	p = p.Masked()
	b := p.Addr().As16()
	lo := u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
	hi := lo
	host := 128 - p.Bits()
	switch {
	case host >= 64:
		hi.lo = ^uint64(0)
		hi.hi |= uint64(1<<(host-64)) - 1
		if host == 128 {
			hi.hi = ^uint64(0)
		}
	case host > 0:
		hi.lo |= uint64(1<<host) - 1
	}
	s.v6 = append(s.v6, range6{lo, hi})
}

// Len returns the number of prefixes the set was built from.
func (s PrefixSet) Len() int { return s.n }

// Contains reports whether ip lies in one of the prefixes.
func (s *PrefixSet) Contains(ip netip.Addr) bool {
	if ip.Is4() {
		b := ip.As4()
		return s.containsV4(binary.BigEndian.Uint32(b[:]))
	}
	if !ip.IsValid() {
		return false
	}
	if ip.Is4In6() {
		b := ip.Unmap().As4()
		return s.containsV4(binary.BigEndian.Uint32(b[:]))
	}
	b := ip.As16()
	x := u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
	lo, hi := 0, len(s.v6)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if !x.less(s.v6[m].lo) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo > 0 && !s.v6[lo-1].hi.less(x)
}

// containsV4 reports whether the IPv4 address x lies in one of the ranges.
func (s *PrefixSet) containsV4(x uint32) bool {
	r := s.v4
	if len(r) <= 8 {
		// A few ranges (trusted proxies): a scan beats bisection.
		for i := range r {
			if x < r[i].lo {
				return false
			}
			if x <= r[i].hi {
				return true
			}
		}
		return false
	}
	// Find the last range whose lo <= x.
	lo, hi := 0, len(r)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if r[m].lo <= x {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo > 0 && x <= r[lo-1].hi
}

// Prefixes returns the fewest prefixes that cover exactly the addresses of
// the set: duplicates and prefixes inside others are gone, and adjacent
// ones are joined where they make a larger prefix (10.0.0.0/25 and
// 10.0.0.128/25 are 10.0.0.0/24). IPv4 prefixes come first, each family in
// address order. Its length is the size of a list once merged.
func (s *PrefixSet) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, r := range s.v4 {
		lo, hi := uint64(r.lo), uint64(r.hi)
		for {
			k := min(bits.TrailingZeros32(uint32(lo)), 32)
			for lo+(1<<k)-1 > hi {
				k--
			}
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], uint32(lo))
			out = append(out, netip.PrefixFrom(netip.AddrFrom4(b), 32-k))
			lo += 1 << k
			if lo > hi {
				break
			}
		}
	}
	for _, r := range s.v6 {
		lo := r.lo
		for {
			k := 128
			if lo.hi != 0 || lo.lo != 0 {
				k = bits.TrailingZeros64(lo.lo)
				if lo.lo == 0 {
					k = 64 + bits.TrailingZeros64(lo.hi)
				}
			}
			for r.hi.less(lo.addMask(k)) || lo.addMask(k).less(lo) {
				k--
			}
			var b [16]byte
			binary.BigEndian.PutUint64(b[:8], lo.hi)
			binary.BigEndian.PutUint64(b[8:], lo.lo)
			out = append(out, netip.PrefixFrom(netip.AddrFrom16(b), 128-k))
			last := lo.addMask(k)
			if last == r.hi {
				break
			}
			lo = last.inc()
		}
	}
	return out
}

// addMask returns a + 2^k - 1 (wrapping).
func (a u128) addMask(k int) u128 {
	var m u128
	switch {
	case k >= 128:
		m = u128{^uint64(0), ^uint64(0)}
	case k >= 64:
		m = u128{uint64(1)<<(k-64) - 1, ^uint64(0)}
	default:
		m = u128{0, uint64(1)<<k - 1}
	}
	lo, carry := bits.Add64(a.lo, m.lo, 0)
	hi, _ := bits.Add64(a.hi, m.hi, carry)
	return u128{hi, lo}
}

// inc returns a + 1 (wrapping).
func (a u128) inc() u128 {
	lo, carry := bits.Add64(a.lo, 1, 0)
	return u128{a.hi + carry, lo}
}
