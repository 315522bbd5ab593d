package clientip

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

func TestPrefixSetPrefixes(t *testing.T) {
	cases := []struct {
		name string
		in   []string
		want []string
	}{
		{"empty", nil, nil},
		{"duplicates", []string{"10.0.0.0/8", "10.0.0.0/8", "2001:db8::/32", "2001:db8::/32"}, []string{"10.0.0.0/8", "2001:db8::/32"}},
		{"inside another", []string{"10.1.0.0/16", "10.0.0.0/8", "10.2.3.4/32", "2001:db8:1::/48", "2001:db8::/32"}, []string{"10.0.0.0/8", "2001:db8::/32"}},
		{"adjacent halves join", []string{"10.0.0.128/25", "10.0.0.0/25", "2001:db8:8000::/33", "2001:db8::/33"}, []string{"10.0.0.0/24", "2001:db8::/32"}},
		{"adjacent, not a prefix", []string{"10.0.0.1/32", "10.0.0.2/32"}, []string{"10.0.0.1/32", "10.0.0.2/32"}},
		{"everything", []string{"0.0.0.0/0", "::/0", "1.2.3.4/32"}, []string{"0.0.0.0/0", "::/0"}},
		{"the top", []string{"255.255.255.255/32", "255.255.255.254/32", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"}, []string{"255.255.255.254/31", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"}},
		{"mapped", []string{"::ffff:10.0.0.0/104"}, []string{"10.0.0.0/8"}},
	}
	for _, tc := range cases {
		s := NewPrefixSet(prefixes(tc.in...))
		var got []string
		for _, p := range s.Prefixes() {
			got = append(got, p.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: Prefixes() = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestPrefixSetMatchesScan compares Contains, and Prefixes, with a scan
// of the prefixes the set was built from, on random sets of both families.
func TestPrefixSetMatchesScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 7, 9, 100, 3000} {
		ps := benchPrefixes(n)
		s := NewPrefixSet(ps)
		merged := s.Prefixes()
		if len(merged) > len(ps) {
			t.Errorf("n=%d: %d prefixes merged into %d", n, len(ps), len(merged))
		}
		again := NewPrefixSet(merged)
		if m2 := again.Prefixes(); !slices.Equal(m2, merged) {
			t.Errorf("n=%d: Prefixes is not stable: %d then %d prefixes", n, len(merged), len(m2))
		}
		addrs := append(benchAddrs(ps, false), benchAddrs(ps, true)...)
		for _, p := range ps[:min(len(ps), 200)] {
			// The last address of each prefix, and the one after it.
			b := p.Addr().AsSlice()
			for i := p.Bits(); i < len(b)*8; i++ {
				b[i/8] |= 0x80 >> (i % 8)
			}
			last, _ := netip.AddrFromSlice(b)
			addrs = append(addrs, last, last.Next())
		}
		for range 2000 {
			addrs = append(addrs, ps[rng.IntN(len(ps))].Addr().Prev())
		}
		for _, a := range addrs {
			if !a.IsValid() {
				continue
			}
			want := slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
			if got := s.Contains(a); got != want {
				t.Fatalf("n=%d: Contains(%s) = %v, a scan says %v", n, a, got, want)
			}
			if got := again.Contains(a); got != want {
				t.Fatalf("n=%d: the set of Prefixes() contains %s: %v, a scan says %v", n, a, got, want)
			}
		}
	}
}

// TestPrefixSetContainsDoesNotAllocate at 200,000 prefixes.
func TestPrefixSetContainsDoesNotAllocate(t *testing.T) {
	ps := benchPrefixes(200_000)
	s := NewPrefixSet(ps)
	addrs := append(benchAddrs(ps, false), benchAddrs(ps, true)...)
	i := 0
	if n := testing.AllocsPerRun(1000, func() { s.Contains(addrs[i%len(addrs)]); i++ }); n != 0 {
		t.Errorf("Contains allocates %v times", n)
	}
}
