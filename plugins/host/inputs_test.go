package host

import (
	"net/netip"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

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

// FuzzDecideRequest: whatever bytes a Request holds, the message for the
// plugin marshals (a failure would fail the call and hand the client the
// policy's on_error), header values arrive byte for byte, and valid strings
// are sent unchanged.
func FuzzDecideRequest(f *testing.F) {
	f.Add("10.0.0.1:5555", "user-agent", "curl/8", "listener", "route")
	f.Add("10.0.0.1:5555", "user-agent", "evil\xff", "", "")
	f.Add("\xff", "X-\xc3", "\xed\xa0\x80", "l\x80", "r\xc3\x28")
	f.Fuzz(func(t *testing.T, peer, name, value, listener, route string) {
		req := &plugins.Request{ClientIP: netip.MustParseAddr("192.0.2.1"), Peer: peer, Listener: listener, Route: route,
			Headers: []plugins.Header{{Name: name, Value: value}, {Name: "x-tenant", Value: value}}}
		declared := inputsFromProto(&policypb.Inputs{Peer: true, Headers: []string{"x-tenant"}})
		for _, pr := range []*policypb.DecideRequest{DecideRequest(req), declared.request(req)} {
			b, err := proto.Marshal(pr)
			if err != nil {
				t.Fatalf("marshal %v: %v", pr, err)
			}
			var back policypb.DecideRequest
			if err := proto.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			hs := back.GetHeaders()
			if len(hs) == 0 || string(hs[len(hs)-1].GetValue()) != value {
				t.Fatalf("headers %v, want the last one's value %q byte for byte", hs, value)
			}
			if utf8.ValidString(peer) && back.GetPeer() != peer {
				t.Fatalf("valid peer %q sent as %q", peer, back.GetPeer())
			}
		}
	})
}

func TestDecideRequestNotUTF8(t *testing.T) {
	pr := DecideRequest(&plugins.Request{Peer: "1.2.3.4:5\xff", Listener: "l", Route: "r\xc3",
		Headers: []plugins.Header{{Name: "X-A\xff", Value: "v\xff"}, {Name: "x-b", Value: "ok"}}})
	if pr.GetPeer() != "1.2.3.4:5\uFFFD" || pr.GetListener() != "l" || pr.GetRoute() != "r\uFFFD" {
		t.Errorf("strings = %q %q %q", pr.GetPeer(), pr.GetListener(), pr.GetRoute())
	}
	hs := pr.GetHeaders()
	if len(hs) != 2 || hs[0].GetName() != "x-a\uFFFD" || string(hs[0].GetValue()) != "v\xff" ||
		hs[1].GetName() != "x-b" || string(hs[1].GetValue()) != "ok" {
		t.Errorf("headers = %q", hs)
	}
	if _, err := proto.Marshal(pr); err != nil {
		t.Error(err)
	}
}
