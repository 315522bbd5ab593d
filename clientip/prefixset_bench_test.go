package clientip

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"
	"unsafe"
)

// benchPrefixes returns n prefixes, half IPv4 (/22 to /32) and half IPv6
// (/32 to /128), drawn from a fixed seed so that every run measures the
// same set: a published blocklist is of this shape (many disjoint,
// some overlapping prefixes of both families).
func benchPrefixes(n int) []netip.Prefix {
	rng := rand.New(rand.NewPCG(uint64(n), 20))
	out := make([]netip.Prefix, 0, n)
	for i := range n {
		if i%2 == 0 {
			var b [4]byte
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
			out = append(out, netip.PrefixFrom(netip.AddrFrom4(b), 22+rng.IntN(11)).Masked())
			continue
		}
		var b [16]byte
		b[0], b[1] = 0x20, byte(rng.Uint32()) // 2000::/8, as real IPv6 lists are
		for j := 2; j < len(b); j++ {
			b[j] = byte(rng.Uint32())
		}
		out = append(out, netip.PrefixFrom(netip.AddrFrom16(b), 32+rng.IntN(97)).Masked())
	}
	return out
}

// benchAddrs returns 1024 addresses of the family, half inside prefixes of
// set (their first address) and half drawn at random.
func benchAddrs(prefixes []netip.Prefix, v6 bool) []netip.Addr {
	rng := rand.New(rand.NewPCG(7, uint64(len(prefixes))))
	var out []netip.Addr
	for _, p := range prefixes {
		if len(out) == 512 {
			break
		}
		if p.Addr().Is6() == v6 {
			out = append(out, p.Addr())
		}
	}
	for len(out) < 1024 {
		if v6 {
			var b [16]byte
			b[0] = 0x20
			for j := 1; j < len(b); j++ {
				b[j] = byte(rng.Uint32())
			}
			out = append(out, netip.AddrFrom16(b))
		} else {
			var b [4]byte
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
			out = append(out, netip.AddrFrom4(b))
		}
	}
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

var benchSizes = []int{1_000, 20_000, 200_000}

// BenchmarkPrefixSetContains measures one membership test in a set of n
// mixed IPv4/IPv6 prefixes (the trusted CIDRs, a cidr policy's lists): the
// goal is at most 100 ns and no allocation at 200,000 prefixes.
func BenchmarkPrefixSetContains(b *testing.B) {
	for _, n := range benchSizes {
		ps := benchPrefixes(n)
		set := NewPrefixSet(ps)
		for _, v6 := range []bool{false, true} {
			fam := "IPv4"
			if v6 {
				fam = "IPv6"
			}
			addrs := benchAddrs(ps, v6)
			b.Run(fmt.Sprintf("%d/%s", n, fam), func(b *testing.B) {
				b.ReportAllocs()
				i, hits := 0, 0
				for b.Loop() {
					if set.Contains(addrs[i&1023]) {
						hits++
					}
					i++
				}
				if hits == 0 {
					b.Fatal("no address matched")
				}
			})
		}
	}
}

// BenchmarkPrefixSetBuild measures building a set of n mixed prefixes (a
// list refresh builds one) and reports the memory the set holds
// (bytes/set): the goal is at most 200 ms and 16 MiB at 200,000 prefixes.
func BenchmarkPrefixSetBuild(b *testing.B) {
	for _, n := range benchSizes {
		ps := benchPrefixes(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			var set PrefixSet
			for b.Loop() {
				set = NewPrefixSet(ps)
			}
			b.ReportMetric(float64(set.memory()), "bytes/set")
			runtime.KeepAlive(set)
		})
	}
}

// memory is the size of what the set holds, in bytes.
func (s *PrefixSet) memory() uintptr {
	return unsafe.Sizeof(*s) + uintptr(cap(s.v4))*unsafe.Sizeof(range4{}) + uintptr(cap(s.v6))*unsafe.Sizeof(range6{})
}
