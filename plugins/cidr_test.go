package plugins

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func TestCIDRDecide(t *testing.T) {
	tests := []struct {
		name     string
		allow    []netip.Prefix
		deny     []netip.Prefix
		ip       string // "" = no client IP
		wantDeny bool
	}{
		{name: "no lists allow", ip: "203.0.113.1"},
		{name: "no lists no ip", ip: ""},
		{name: "deny match", deny: prefixes("198.51.100.0/24"), ip: "198.51.100.7", wantDeny: true},
		{name: "deny miss", deny: prefixes("198.51.100.0/24"), ip: "198.51.101.7"},
		{name: "deny v6", deny: prefixes("2001:db8::/32"), ip: "2001:db8::5", wantDeny: true},
		{name: "deny v4 matches mapped", deny: prefixes("198.51.100.0/24"), ip: "::ffff:198.51.100.7", wantDeny: true},
		{name: "deny zone ignored", deny: prefixes("fe80::/10"), ip: "fe80::1%eth0", wantDeny: true},
		{name: "deny no ip allowed", deny: prefixes("0.0.0.0/0"), ip: ""},
		{name: "allow match", allow: prefixes("10.0.0.0/8"), ip: "10.1.2.3"},
		{name: "allow miss", allow: prefixes("10.0.0.0/8"), ip: "11.1.2.3", wantDeny: true},
		{name: "allow family miss", allow: prefixes("10.0.0.0/8"), ip: "2001:db8::1", wantDeny: true},
		{name: "allow no ip denied", allow: prefixes("0.0.0.0/0", "::/0"), ip: "", wantDeny: true},
		{name: "deny beats allow", allow: prefixes("10.0.0.0/8"), deny: prefixes("10.9.0.0/16"), ip: "10.9.1.1", wantDeny: true},
		{name: "allow outside deny", allow: prefixes("10.0.0.0/8"), deny: prefixes("10.9.0.0/16"), ip: "10.8.1.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewCIDR(tt.allow, tt.deny)
			var ip netip.Addr
			if tt.ip != "" {
				ip = netip.MustParseAddr(tt.ip)
			}
			d, err := p.Decide(context.Background(), &Request{ClientIP: ip})
			if err != nil {
				t.Fatal(err)
			}
			if d.Deny != tt.wantDeny {
				t.Errorf("Deny = %v, want %v", d.Deny, tt.wantDeny)
			}
			if d.Status != 0 || d.Body != "" || d.Headers != nil || d.Metadata != nil {
				t.Errorf("unexpected effects %+v", d)
			}
		})
	}
}

func BenchmarkCIDR(b *testing.B) {
	for _, n := range []int{1, 100, 10000} {
		deny := make([]netip.Prefix, 0, n)
		for i := range n {
			deny = append(deny, netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(i >> 8), byte(i), 0, 0}), 24))
		}
		p := NewCIDR(nil, deny)
		req := &Request{ClientIP: netip.MustParseAddr("203.0.113.9")}
		ctx := context.Background()
		b.Run(fmt.Sprintf("deny=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if d, _ := p.Decide(ctx, req); d.Deny {
					b.Fatal("denied")
				}
			}
		})
	}
}
