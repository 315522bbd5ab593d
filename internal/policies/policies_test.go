package policies

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/plugins"
)

func TestBuild(t *testing.T) {
	list := []config.Policy{
		{Name: "blocklist", Type: "cidr", Deny: config.CIDRs("198.51.100.0/24", "2001:db8::1")},
		{Name: "office", Type: "cidr", Allow: config.CIDRs("203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32")},
	}
	chain, err := Build(list)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(chain.Names(), ","); got != "blocklist,office" {
		t.Fatalf("names %q", got)
	}
	tests := []struct {
		ip         string
		wantDeny   bool
		wantPolicy string
	}{
		{"203.0.113.5", false, ""},
		{"198.51.100.5", true, "blocklist"},
		{"2001:db8::1", true, "blocklist"},
		{"2001:db8::2", false, ""},
		{"192.0.2.1", true, "office"},
		{"", true, "office"},
	}
	for _, tt := range tests {
		var ip netip.Addr
		if tt.ip != "" {
			ip = netip.MustParseAddr(tt.ip)
		}
		v := chain.Decide(context.Background(), &plugins.Request{ClientIP: ip})
		if v.Deny != tt.wantDeny || v.Policy != tt.wantPolicy {
			t.Errorf("%q: deny=%v policy=%q, want %v %q", tt.ip, v.Deny, v.Policy, tt.wantDeny, tt.wantPolicy)
		}
	}
}

func TestBuildEmpty(t *testing.T) {
	chain, err := Build(nil)
	if err != nil {
		t.Fatal(err)
	}
	if chain.Len() != 0 || chain.Decide(context.Background(), &plugins.Request{}).Deny {
		t.Error("empty chain should allow")
	}
}

func TestBuildErrors(t *testing.T) {
	tests := []struct {
		name string
		list []config.Policy
		want []string // every substring must appear in the error
	}{
		{"bad cidr", []config.Policy{{Name: "a", Type: "cidr", Deny: config.CIDRs("10.0.0.0/33", "nope", "fe80::1%eth0", "10.1.2.3/8")}},
			[]string{"policies[0].deny[0]", "policies[0].deny[1]", "policies[0].deny[2]", "policies[0].deny[3]", "did you mean 10.0.0.0/8"}},
		{"empty lists", []config.Policy{{Name: "a", Type: "cidr"}}, []string{"policies[0]: a cidr policy needs deny, allow or both"}},
		{"missing name and type", []config.Policy{{}}, []string{"policies[0].name", "policies[0].type"}},
		{"duplicate", []config.Policy{{Name: "a", Type: "cidr", Deny: config.CIDRs("10.0.0.0/8")}, {Name: "a", Type: "cidr", Deny: config.CIDRs("10.0.0.0/8")}},
			[]string{"policies[1].name", "policies[0]"}},
		{"unknown type", []config.Policy{{Name: "a", Type: "geo"}}, []string{`policies[0].type: "geo" is not one of cidr, plugin`}},
		{"bad on_error", []config.Policy{{Name: "a", Type: "cidr", Deny: config.CIDRs("10.0.0.0/8"), OnError: "maybe"}}, []string{"policies[0].on_error"}},
		{"plugin without sha256", []config.Policy{{Name: "a", Type: "plugin", Path: "/bin/x"}}, []string{"policies[0].sha256: required", "policies[0].timeout", "policies[0].on_error"}},
		{"plugin binary missing", []config.Policy{{Name: "a", Type: "plugin", Path: "/nonexistent/x", SHA256: strings.Repeat("ab", 32), Timeout: config.Duration{Duration: time.Second}, OnError: "deny"}},
			[]string{"policies[0]", `policy "a"`, "/nonexistent/x"}},
		{"all reported", []config.Policy{{Name: "a", Type: "cidr", Allow: config.CIDRs("x")}, {Name: "b", Type: "cidr", Deny: config.CIDRs("y")}},
			[]string{"policies[0].allow[0]", "policies[1].deny[0]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(tt.list)
			if err == nil {
				t.Fatal("Build succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
