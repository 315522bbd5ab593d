package clientip

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/realclientip/realclientip-go"
)

// xffChain returns an XFF value of n entries whose leftmost entry is a public
// client and the rest are hops inside the trusted range, so a trusted-range
// walk reads every entry.
func xffChain(n int, v6 bool) string {
	parts := make([]string, n)
	for i := range parts {
		switch {
		case i == 0 && v6:
			parts[i] = "2606:4700:4700::1111"
		case i == 0:
			parts[i] = "8.8.8.8"
		case v6:
			parts[i] = fmt.Sprintf("fd00::%x", i)
		default:
			parts[i] = fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)
		}
	}
	return strings.Join(parts, ", ")
}

func benchResolver(b *testing.B, cfg Config, peer string, lines []string, want string) {
	r, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if got := r.Resolve(peer, lines); got.IP.String() != want {
		b.Fatalf("got %v, want %s", got, want)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r.Resolve(peer, lines)
	}
}

func BenchmarkResolveXFF(b *testing.B) {
	for _, n := range []int{1, 5, 20} {
		for _, v6 := range []bool{false, true} {
			fam, peer, want := "IPv4", "10.0.0.1:443", "8.8.8.8"
			if v6 {
				fam, peer, want = "IPv6", "[fd00::ffff]:443", "2606:4700:4700::1111"
			}
			b.Run(fmt.Sprintf("%d/%s", n, fam), func(b *testing.B) {
				cfg := Config{Strategy: RightmostTrustedRange, TrustedCIDRs: prefixes("10.0.0.0/8", "fd00::/8")}
				benchResolver(b, cfg, peer, []string{xffChain(n, v6)}, want)
			})
		}
	}
}

func BenchmarkResolveStrategies(b *testing.B) {
	xff := []string{xffChain(5, false)}
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"rightmost_non_private", Config{Strategy: RightmostNonPrivate}, "8.8.8.8"},
		{"leftmost_non_private", Config{Strategy: LeftmostNonPrivate}, "8.8.8.8"},
		{"rightmost_trusted_count", Config{Strategy: RightmostTrustedCount, TrustedHops: 5}, "8.8.8.8"},
		{"envoy_xff_hops", Config{Strategy: EnvoyXFF, TrustedHops: 4}, "8.8.8.8"},
		{"envoy_xff_cidrs", Config{Strategy: EnvoyXFF, TrustedCIDRs: prefixes("10.0.0.0/8")}, "8.8.8.8"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) { benchResolver(b, c.cfg, "10.0.0.1:443", xff, c.want) })
	}
	b.Run("single_header", func(b *testing.B) {
		benchResolver(b, Config{Strategy: SingleHeader, Header: "X-Real-IP"}, "10.0.0.1:443", []string{"203.0.113.9"}, "203.0.113.9")
	})
	b.Run("remote_addr", func(b *testing.B) {
		benchResolver(b, Config{Strategy: RemoteAddr}, "[2001:db8::1]:443", nil, "2001:db8::1")
	})
}

func BenchmarkResolveForwarded(b *testing.B) {
	fwd := []string{`for=8.8.8.8;proto=https, for="[fd00::2]:4711";proto=https, for=10.0.0.3;by=10.0.0.9, For="10.0.0.4:80", for=10.0.0.5;proto=http;host=example.com`}
	cfg := Config{Strategy: RightmostTrustedRange, Header: "Forwarded", TrustedCIDRs: prefixes("10.0.0.0/8", "fd00::/8")}
	benchResolver(b, cfg, "10.0.0.1:443", fwd, "8.8.8.8")
}

// BenchmarkCompareRealClientIP runs realipd's resolver and
// github.com/realclientip/realclientip-go on identical inputs.
func BenchmarkCompareRealClientIP(b *testing.B) {
	_, v4net, _ := net.ParseCIDR("10.0.0.0/8")
	_, v6net, _ := net.ParseCIDR("fd00::/8")
	for _, n := range []int{1, 5, 20} {
		value := xffChain(n, false)
		h := http.Header{"X-Forwarded-For": []string{value}}
		b.Run(fmt.Sprintf("rightmost_trusted_range/%d/realipd", n), func(b *testing.B) {
			cfg := Config{Strategy: RightmostTrustedRange, TrustedCIDRs: prefixes("10.0.0.0/8", "fd00::/8")}
			benchResolver(b, cfg, "10.0.0.1:443", h.Values("X-Forwarded-For"), "8.8.8.8")
		})
		b.Run(fmt.Sprintf("rightmost_trusted_range/%d/realclientip", n), func(b *testing.B) {
			s, err := realclientip.NewRightmostTrustedRangeStrategy("X-Forwarded-For", []net.IPNet{*v4net, *v6net})
			if err != nil {
				b.Fatal(err)
			}
			if got := s.ClientIP(h, "10.0.0.1:443"); got != "8.8.8.8" {
				b.Fatalf("realclientip got %q", got)
			}
			b.ReportAllocs()
			for b.Loop() {
				s.ClientIP(h, "10.0.0.1:443")
			}
		})
	}
	value := "8.8.8.8, 10.0.0.2, 192.168.1.1, 172.16.0.1, 10.0.0.5"
	h := http.Header{"X-Forwarded-For": []string{value}}
	b.Run("rightmost_non_private/5/realipd", func(b *testing.B) {
		benchResolver(b, Config{Strategy: RightmostNonPrivate}, "10.0.0.1:443", h.Values("X-Forwarded-For"), "8.8.8.8")
	})
	b.Run("rightmost_non_private/5/realclientip", func(b *testing.B) {
		s, _ := realclientip.NewRightmostNonPrivateStrategy("X-Forwarded-For")
		if got := s.ClientIP(h, ""); got != "8.8.8.8" {
			b.Fatalf("realclientip got %q", got)
		}
		b.ReportAllocs()
		for b.Loop() {
			s.ClientIP(h, "")
		}
	})
}

// TestResolveDoesNotAllocate holds the zero-allocation promise for common
// headers on every strategy.
func TestResolveDoesNotAllocate(t *testing.T) {
	cases := []struct {
		cfg   Config
		peer  string
		lines []string
	}{
		{Config{Strategy: RightmostTrustedRange, TrustedCIDRs: prefixes("10.0.0.0/8", "fd00::/8")}, "10.0.0.1:443", []string{xffChain(20, false)}},
		{Config{Strategy: RightmostTrustedRange, TrustedCIDRs: prefixes("10.0.0.0/8", "fd00::/8")}, "[fd00::1]:443", []string{xffChain(20, true)}},
		{Config{Strategy: RightmostTrustedRange, Header: "Forwarded", TrustedCIDRs: prefixes("10.0.0.0/8")}, "10.0.0.1:443", []string{`for=8.8.8.8, for="10.0.0.2:80";proto=https`, "for=10.0.0.3"}},
		{Config{Strategy: LeftmostNonPrivate}, "", []string{xffChain(20, false)}},
		{Config{Strategy: RightmostNonPrivate}, "", []string{xffChain(20, false)}},
		{Config{Strategy: RightmostTrustedCount, TrustedHops: 3}, "", []string{xffChain(5, false)}},
		{Config{Strategy: EnvoyXFF, UseRemoteAddress: true, TrustedHops: 2}, "10.0.0.1:80", []string{xffChain(5, false)}},
		{Config{Strategy: EnvoyXFF, TrustedCIDRs: prefixes("10.0.0.0/8")}, "10.0.0.1:80", []string{xffChain(5, false)}},
		{Config{Strategy: SingleHeader, Header: "X-Real-IP"}, "", []string{"[2001:db8::1]:80"}},
		{Config{Strategy: RemoteAddr}, "192.0.2.1:80", nil},
	}
	for _, c := range cases {
		r, err := New(c.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if n := testing.AllocsPerRun(100, func() { r.Resolve(c.peer, c.lines) }); n != 0 {
			t.Errorf("%v: %v allocs per Resolve, want 0", c.cfg.Strategy, n)
		}
	}
}
