package host

import (
	"net/netip"
	"testing"

	"github.com/realipd/realipd/plugins"
	policypb "github.com/realipd/realipd/plugins/proto"
)

func TestCacheKey(t *testing.T) {
	all := inputsFromProto(nil)
	tenant := inputsFromProto(&policypb.Inputs{Headers: []string{"X-Tenant"}})
	ipOnly := inputsFromProto(&policypb.Inputs{})
	ip := netip.MustParseAddr("192.0.2.1")
	r := func(peer, listener string, hs ...string) *plugins.Request {
		req := &plugins.Request{ClientIP: ip, Peer: peer, Listener: listener}
		for i := 0; i+1 < len(hs); i += 2 {
			req.Headers = append(req.Headers, plugins.Header{Name: hs[i], Value: hs[i+1]})
		}
		return req
	}
	tests := []struct {
		name string
		in   *inputs
		a, b *plugins.Request
		same bool
	}{
		{"field boundaries", all, r("ab", "c"), r("a", "bc"), false},
		{"header boundaries", all, r("", "", "x-a", "bc"), r("", "", "x-ab", "c"), false},
		{"header order", all, r("", "", "x-a", "1", "x-b", "2"), r("", "", "x-b", "2", "x-a", "1"), false},
		{"undeclared peer", tenant, r("10.0.0.1:1", ""), r("10.0.0.2:1", ""), true},
		{"declared header value", tenant, r("", "", "x-tenant", "a"), r("", "", "x-tenant", "b"), false},
		{"declared header name case", tenant, r("", "", "X-TENANT", "a"), r("", "", "x-tenant", "a"), true},
		{"undeclared header", tenant, r("", "", "x-other", "a"), r("", ""), true},
		{"ip only ignores everything else", ipOnly, r("p", "l", "x-tenant", "a"), r("", ""), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if same := tt.in.key(tt.a) == tt.in.key(tt.b); same != tt.same {
				t.Errorf("keys equal = %v, want %v", same, tt.same)
			}
		})
	}
	if k := ipOnly.key(r("p", "l")); k.rest != "" || k.ip != ip {
		t.Errorf("ip-only key = %+v", k)
	}
	// What the plugin is sent matches what the key covers.
	if pr := tenant.request(r("10.0.0.1:1", "l", "X-Tenant", "a", "x-other", "b")); pr.GetPeer() != "" || pr.GetListener() != "" ||
		len(pr.GetHeaders()) != 1 || pr.GetHeaders()[0].GetName() != "x-tenant" {
		t.Errorf("request for declared inputs = %v", pr)
	}
}
