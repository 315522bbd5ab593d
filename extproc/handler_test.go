package extproc

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/plugins"
)

type H = extproctest.Header

func resolver(t testing.TB, cfg clientip.Config) *clientip.Resolver {
	t.Helper()
	r, err := clientip.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func trustedRange(t testing.TB, cidrs ...string) *clientip.Resolver {
	var ps []netip.Prefix
	for _, c := range cidrs {
		ps = append(ps, netip.MustParsePrefix(c))
	}
	return resolver(t, clientip.Config{Strategy: clientip.RightmostTrustedRange, TrustedCIDRs: ps})
}

// Settings are the settings of the decision the server makes.
type Settings = decide.Settings

// current returns a Current holding the Decider of s.
func current(t testing.TB, s Settings) *decide.Current {
	t.Helper()
	d, err := decide.New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	return decide.NewCurrent(d)
}

func newServer(t testing.TB, s Settings, reg prometheus.Registerer) *Server {
	t.Helper()
	srv, err := New(current(t, s), Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// update makes s the settings of srv's decisions, as a reload does.
func update(srv *Server, s Settings) error {
	d, err := decide.New(s, nil)
	if err != nil {
		return err
	}
	srv.cur.Store(d)
	return nil
}

// answer marshals req's message of phase ph, hands it to the handler and
// decodes and checks the answer (nil when there is none).
func answer(t *testing.T, srv *Server, req extproctest.Request, ph extproctest.Phase) *extprocv3.ProcessingResponse {
	t.Helper()
	msg, err := proto.Marshal(extproctest.Message(req, ph, true))
	if err != nil {
		t.Fatal(err)
	}
	var out outFrame
	answered, err := srv.handle(context.Background(), &inFrame{b: msg}, &out)
	if err != nil {
		t.Fatalf("handle: %v", err)
	}
	if !answered {
		return nil
	}
	resp := &extprocv3.ProcessingResponse{}
	if err := proto.Unmarshal(out.bytes(), resp); err != nil {
		t.Fatalf("answer does not decode: %v", err)
	}
	if err := extproctest.CheckResponse(ph, resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

func denyCIDR(t testing.TB, name string, allow, deny []string) *plugins.Chain {
	pp := func(ss []string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	c, err := plugins.NewChain(plugins.ChainEntry{Name: name, Policy: plugins.NewCIDR(pp(allow), pp(deny))})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHandleRequestHeaders(t *testing.T) {
	xff := func(v ...string) []H {
		hs := hdrs(":method", "GET", ":path", "/", ":authority", "example.com")
		for _, x := range v {
			hs = append(hs, H{Name: "x-forwarded-for", Value: x})
		}
		return hs
	}
	tests := []struct {
		name       string
		settings   Settings
		req        extproctest.Request
		wantIP     string // "" = header removed
		wantMeta   map[string]string
		wantStatus int // deny status; 0 = allowed
		wantBody   string
	}{
		{
			name:     "trusted range picks header entry, Envoy hop removed",
			settings: Settings{Resolver: trustedRange(t, "10.0.0.0/8"), XFFAppendedByEnvoy: true},
			req:      extproctest.Request{Headers: xff("203.0.113.7, 10.0.0.2, 10.0.0.1"), SourceAddress: "10.0.0.1:4711"},
			wantIP:   "203.0.113.7",
			wantMeta: map[string]string{"client_ip": "203.0.113.7", "peer": "10.0.0.1:4711", "strategy": "rightmost_trusted_range", "resolved_from": "header", "decision": "allow"},
		},
		{
			name:     "untrusted peer is the client; spoofed header ignored",
			settings: Settings{Resolver: trustedRange(t, "10.0.0.0/8"), XFFAppendedByEnvoy: true},
			req:      extproctest.Request{Headers: append(xff("1.1.1.1, 198.51.100.9"), H{Name: "x-real-ip", Value: "1.1.1.1"}), SourceAddress: "198.51.100.9:1234"},
			wantIP:   "198.51.100.9",
			wantMeta: map[string]string{"client_ip": "198.51.100.9", "peer": "198.51.100.9:1234", "strategy": "rightmost_trusted_range", "resolved_from": "peer", "decision": "allow"},
		},
		{
			name:     "multiple header lines joined, value field fallback",
			settings: Settings{Resolver: trustedRange(t, "10.0.0.0/8"), XFFAppendedByEnvoy: true},
			req:      extproctest.Request{Headers: xff("192.0.2.200", "203.0.113.9", "10.1.1.1, 10.0.0.1"), SourceAddress: "10.0.0.1:1", UseValue: true},
			wantIP:   "203.0.113.9",
			wantMeta: map[string]string{"client_ip": "203.0.113.9", "peer": "10.0.0.1:1", "strategy": "rightmost_trusted_range", "resolved_from": "header", "decision": "allow"},
		},
		{
			name:     "IPv6 peer in brackets",
			settings: Settings{Resolver: trustedRange(t, "fd00::/8"), XFFAppendedByEnvoy: true},
			req:      extproctest.Request{Headers: xff("2001:db8:1::5, fd00::1"), SourceAddress: "[fd00::1]:443"},
			wantIP:   "2001:db8:1::5",
			wantMeta: map[string]string{"client_ip": "2001:db8:1::5", "peer": "[fd00::1]:443", "strategy": "rightmost_trusted_range", "resolved_from": "header", "decision": "allow"},
		},
		{
			name:     "all trusted: the peer stands in",
			settings: Settings{Resolver: trustedRange(t, "10.0.0.0/8"), XFFAppendedByEnvoy: true},
			req:      extproctest.Request{Headers: xff("10.9.9.9, 10.0.0.1"), SourceAddress: "10.0.0.1:80"},
			wantIP:   "10.0.0.1",
			wantMeta: map[string]string{"client_ip": "10.0.0.1", "peer": "10.0.0.1:80", "strategy": "rightmost_trusted_range", "resolved_from": "peer", "decision": "allow"},
		},
		{
			name:       "missing source.address is unresolved: denied",
			settings:   Settings{Resolver: resolver(t, clientip.Config{Strategy: clientip.RightmostNonPrivate}), XFFAppendedByEnvoy: true},
			req:        extproctest.Request{Headers: xff("9.9.9.9, 10.0.0.3")},
			wantStatus: 403, wantBody: decide.UnresolvedBody,
			wantMeta: map[string]string{"client_ip": "", "peer": "", "strategy": "rightmost_non_private", "resolved_from": "none", "decision": "deny", "policy": "trust.on_unresolved"},
		},
		{
			name:     "unresolved with pass removes the header",
			settings: Settings{Resolver: resolver(t, clientip.Config{Strategy: clientip.RemoteAddr}), PassUnresolved: true},
			req:      extproctest.Request{Headers: xff("203.0.113.50")},
			wantIP:   "",
			wantMeta: map[string]string{"client_ip": "", "peer": "", "strategy": "remote_addr", "resolved_from": "none", "decision": "allow"},
		},
		{
			name:     "unspecified peer is not usable",
			settings: Settings{Resolver: resolver(t, clientip.Config{Strategy: clientip.RemoteAddr}), PassUnresolved: true},
			req:      extproctest.Request{SourceAddress: "0.0.0.0:0"},
			wantIP:   "",
			wantMeta: map[string]string{"client_ip": "", "peer": "0.0.0.0:0", "strategy": "remote_addr", "resolved_from": "none", "decision": "allow"},
		},
		{
			name:     "remote_addr unmaps IPv4-mapped peers",
			settings: Settings{Resolver: resolver(t, clientip.Config{Strategy: clientip.RemoteAddr}), ClientIPHeader: "X-Client-IP", MetadataNamespace: "acme"},
			req:      extproctest.Request{SourceAddress: "[::ffff:192.0.2.1]:80"},
			wantIP:   "192.0.2.1",
			wantMeta: map[string]string{"client_ip": "192.0.2.1", "peer": "[::ffff:192.0.2.1]:80", "strategy": "remote_addr", "resolved_from": "peer", "decision": "allow"},
		},
		{
			name:     "xff_appended_by_envoy off keeps the last entry",
			settings: Settings{Resolver: trustedRange(t, "10.0.0.0/8")},
			req:      extproctest.Request{Headers: xff("203.0.113.7, 198.51.100.1"), SourceAddress: "10.0.0.1:1"},
			wantIP:   "198.51.100.1",
			wantMeta: map[string]string{"client_ip": "198.51.100.1", "peer": "10.0.0.1:1", "strategy": "rightmost_trusted_range", "resolved_from": "header", "decision": "allow"},
		},
		{
			name:       "deny with default status and body",
			settings:   Settings{Resolver: trustedRange(t, "10.0.0.0/8"), XFFAppendedByEnvoy: true, Chain: denyCIDR(t, "blocklist", nil, []string{"198.51.100.0/24"})},
			req:        extproctest.Request{Headers: xff("198.51.100.77, 10.0.0.1"), SourceAddress: "10.0.0.1:1"},
			wantStatus: 403, wantBody: decide.DenyBody,
			wantMeta: map[string]string{"client_ip": "198.51.100.77", "peer": "10.0.0.1:1", "strategy": "rightmost_trusted_range", "resolved_from": "header", "decision": "deny", "policy": "blocklist"},
		},
		{
			name:       "deny with configured status; allow list denies unknown",
			settings:   Settings{Resolver: trustedRange(t, "10.0.0.0/8"), XFFAppendedByEnvoy: true, DenyStatus: 429, Chain: denyCIDR(t, "office", []string{"192.0.2.0/24"}, nil)},
			req:        extproctest.Request{Headers: xff("203.0.113.1, 10.0.0.1"), SourceAddress: "10.0.0.1:1"},
			wantStatus: 429, wantBody: decide.DenyBody,
			wantMeta: map[string]string{"client_ip": "203.0.113.1", "peer": "10.0.0.1:1", "strategy": "rightmost_trusted_range", "resolved_from": "header", "decision": "deny", "policy": "office"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, tt.settings, nil)
			resp := answer(t, srv, tt.req, extproctest.RequestHeaders)
			if resp == nil {
				t.Fatal("no answer")
			}
			res := &extproctest.Result{Responses: []*extprocv3.ProcessingResponse{resp}, Immediate: resp.GetImmediateResponse()}
			ns := tt.settings.MetadataNamespace
			if ns == "" {
				ns = "realipd"
			}
			meta, err := res.Metadata(ns)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(meta, tt.wantMeta) {
				t.Errorf("metadata\n got %v\nwant %v", meta, tt.wantMeta)
			}
			if tt.wantStatus != 0 {
				imm := res.Immediate
				if imm == nil {
					t.Fatalf("not denied: %v", resp)
				}
				if int(imm.GetStatus().GetCode()) != tt.wantStatus || string(imm.GetBody()) != tt.wantBody {
					t.Errorf("deny status %d body %q, want %d %q", imm.GetStatus().GetCode(), imm.GetBody(), tt.wantStatus, tt.wantBody)
				}
				wantDetails := decide.DenyDetails
				if tt.wantMeta["policy"] == decide.PolicyUnresolved {
					wantDetails = decide.UnresolvedDetails
				}
				if imm.GetDetails() != wantDetails {
					t.Errorf("details %q, want %q", imm.GetDetails(), wantDetails)
				}
				if ct, _ := res.SetHeader("content-type"); ct != "text/plain; charset=utf-8" {
					t.Errorf("content-type %q", ct)
				}
				return
			}
			if res.Immediate != nil {
				t.Fatalf("denied: %v", res.Immediate)
			}
			hdr := "x-real-ip"
			if tt.settings.ClientIPHeader != "" {
				hdr = "x-client-ip"
			}
			got, ok := res.SetHeader(hdr)
			if tt.wantIP == "" {
				if ok || !res.Removed(hdr) {
					t.Errorf("header %s: set=%v (%q) removed=%v, want removed", hdr, ok, got, res.Removed(hdr))
				}
				return
			}
			if !ok || got != tt.wantIP {
				t.Errorf("header %s = %q (set %v), want %q", hdr, got, ok, tt.wantIP)
			}
			opt := res.SetHeaderOption(hdr)
			if !extproctest.Overwrites(opt) || opt.GetHeader().GetValue() != "" {
				t.Errorf("header option %v: want raw_value only, OVERWRITE_IF_EXISTS_OR_ADD", opt)
			}
		})
	}
}

func TestHandlePhases(t *testing.T) {
	srv := newServer(t, Settings{Resolver: trustedRange(t)}, nil)
	for _, ph := range []extproctest.Phase{extproctest.RequestHeaders, extproctest.RequestBody, extproctest.RequestTrailers, extproctest.ResponseHeaders, extproctest.ResponseBody, extproctest.ResponseTrailers} {
		req := extproctest.Request{SourceAddress: "192.0.2.1:1"}
		if resp := answer(t, srv, req, ph); resp == nil {
			t.Errorf("%s: no answer", ph)
		}
		req.ObservabilityMode = true
		if resp := answer(t, srv, req, ph); resp != nil {
			t.Errorf("%s in observability mode: answered %v", ph, resp)
		}
	}
	// A message with no phase (only flow-control fields) gets no answer.
	var out outFrame
	answered, err := srv.handle(context.Background(), &inFrame{}, &out)
	if err != nil || answered {
		t.Errorf("empty message: %v %v", answered, err)
	}
	if _, err := srv.handle(context.Background(), &inFrame{b: []byte{0x12, 0x05, 0x01}}, &out); err == nil {
		t.Error("truncated message accepted")
	}
}

// metaPolicy allows with headers and metadata.
type metaPolicy struct{}

func (metaPolicy) Decide(context.Context, *plugins.Request) (plugins.Decision, error) {
	return plugins.Decision{
		Headers:  []plugins.Header{{Name: "x-geo", Value: "nl"}, {Name: "Bad Name", Value: "x"}, {Name: "x-crlf", Value: "a\r\nb"}, {Name: "x-real-ip", Value: "6.6.6.6"}},
		Metadata: map[string]string{"geo": "nl", "client_ip": "1.2.3.4"},
	}, nil
}

func TestHandlePolicyEffects(t *testing.T) {
	chain, err := plugins.NewChain(plugins.ChainEntry{Name: "geo", Policy: metaPolicy{}})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, Settings{Resolver: trustedRange(t), Chain: chain}, nil)
	resp := answer(t, srv, extproctest.Request{SourceAddress: "192.0.2.1:1"}, extproctest.RequestHeaders)
	res := &extproctest.Result{Responses: []*extprocv3.ProcessingResponse{resp}}
	if v, _ := res.SetHeader("x-geo"); v != "nl" {
		t.Errorf("x-geo = %q", v)
	}
	if _, ok := res.SetHeader("x-crlf"); ok {
		t.Error("header with CRLF passed through")
	}
	if v, _ := res.SetHeader("x-real-ip"); v != "192.0.2.1" {
		t.Errorf("x-real-ip = %q: a policy overrode the client IP header", v)
	}
	n := 0
	for _, o := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if o.GetHeader().GetKey() == "x-real-ip" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("x-real-ip set %d times", n)
	}
	meta, _ := res.Metadata("realipd")
	if meta["geo"] != "nl" || meta["client_ip"] != "192.0.2.1" {
		t.Errorf("metadata %v: want geo merged and client_ip kept", meta)
	}
}

// keepingPolicy reads the headers it declares and keeps the last Request it
// was given, as a policy may.
type keepingPolicy struct {
	names []string
	all   bool
	last  *plugins.Request
}

func (p *keepingPolicy) RequestHeaders() ([]string, bool) { return p.names, p.all }

func (p *keepingPolicy) Decide(_ context.Context, req *plugins.Request) (plugins.Decision, error) {
	p.last = req
	return plugins.Decision{}, nil
}

// TestPolicyRequestIsACopy: what a policy is given stays valid after the
// stream's receive buffer is reused, and header names reach it lower-case.
func TestPolicyRequestIsACopy(t *testing.T) {
	for _, all := range []bool{false, true} {
		p := &keepingPolicy{names: []string{"x-tenant", "x-upper"}, all: all}
		chain, err := plugins.NewChain(plugins.ChainEntry{Name: "keep", Policy: p})
		if err != nil {
			t.Fatal(err)
		}
		srv := newServer(t, Settings{Resolver: trustedRange(t), Chain: chain}, nil)
		msg, err := proto.Marshal(extproctest.Message(extproctest.Request{
			Headers:       hdrs("x-tenant", "acme", "X-Upper", "Value"),
			SourceAddress: "192.0.2.1:1234",
		}, extproctest.RequestHeaders, true))
		if err != nil {
			t.Fatal(err)
		}
		in := &inFrame{b: msg}
		var out outFrame
		if _, err := srv.handle(context.Background(), in, &out); err != nil {
			t.Fatal(err)
		}
		for i := range in.b { // the next message overwrites the buffer
			in.b[i] = 'X'
		}
		want := []plugins.Header{{Name: "x-tenant", Value: "acme"}, {Name: "x-upper", Value: "Value"}}
		if p.last == nil || p.last.Peer != "192.0.2.1:1234" || !slices.Equal(p.last.Headers, want) {
			t.Errorf("all=%v: kept request %+v, want peer 192.0.2.1:1234 and headers %q", all, p.last, want)
		}
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	srv := newServer(t, Settings{Resolver: trustedRange(t, "10.0.0.0/8"), XFFAppendedByEnvoy: true, Chain: denyCIDR(t, "bl", nil, []string{"198.51.100.0/24"})}, reg)
	reqs := []extproctest.Request{
		{Headers: hdrs("x-forwarded-for", "203.0.113.1, 10.0.0.1"), SourceAddress: "10.0.0.1:1"},                // allow, header
		{Headers: hdrs("x-forwarded-for", "198.51.100.1, 10.0.0.1"), SourceAddress: "10.0.0.1:1"},               // deny
		{Headers: hdrs("x-forwarded-for", "203.0.113.1, 10.0.0.99"), SourceAddress: "10.0.0.1:1"},               // mismatch
		{Headers: hdrs("x-forwarded-for", "10.0.0.5, 10.0.0.1"), SourceAddress: "10.0.0.1:1"},                   // all trusted: the peer stands in
		{Headers: hdrs("x-forwarded-for", "bogus, 10.0.0.1"), SourceAddress: "10.0.0.1:1"},                      // unresolved: invalid, denied
		{Headers: hdrs("x-forwarded-for", "203.0.113.1, 10.0.0.1")},                                             // no source.address: unresolved, denied
		{Headers: hdrs("x-forwarded-for", "203.0.113.1"), SourceAddress: "10.0.0.1:1", ObservabilityMode: true}, // not answered
	}
	for _, r := range reqs {
		answer(t, srv, r, extproctest.RequestHeaders)
	}
	checks := []struct {
		name string
		c    prometheus.Metric
		want float64
	}{
		{"allow", srv.m.requests.WithLabelValues("allow", "rightmost_trusted_range", ""), 3},
		// A deny counts under the policy that decided.
		{"deny by bl", srv.m.requests.WithLabelValues("deny", "rightmost_trusted_range", "bl"), 1},
		{"deny by trust.on_unresolved", srv.m.requests.WithLabelValues("deny", "rightmost_trusted_range", "trust.on_unresolved"), 2},
		{"mismatch", srv.m.mismatch, 1},
		{"unresolved all_trusted", srv.m.failures.WithLabelValues("all_trusted"), 0},
		{"unresolved invalid", srv.m.failures.WithLabelValues("invalid"), 1},
		{"unresolved no_peer", srv.m.failures.WithLabelValues("no_peer"), 1},
		{"no source.address", srv.m.noPeer, 1},
		{"observability", srv.m.messages.WithLabelValues("observability"), 1},
		{"request_headers", srv.m.messages.WithLabelValues("request_headers"), 6},
	}
	for _, c := range checks {
		if got := metricValue(t, c.c); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
	var h dto.Metric
	if err := srv.m.latency.Write(&h); err != nil || h.GetHistogram().GetSampleCount() != 6 {
		t.Errorf("latency histogram samples %d (%v), want 6", h.GetHistogram().GetSampleCount(), err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Errorf("gather: %v", err)
	}
	if _, err := New(current(t, Settings{Resolver: trustedRange(t)}), Options{Registerer: reg}); err == nil {
		t.Error("second server on the same registry accepted")
	}
}

func TestUpdateSwapsSettings(t *testing.T) {
	srv := newServer(t, Settings{Resolver: trustedRange(t)}, nil)
	req := extproctest.Request{Headers: hdrs("x-forwarded-for", "203.0.113.1, 10.0.0.1"), SourceAddress: "10.0.0.1:1"}
	res := &extproctest.Result{Responses: []*extprocv3.ProcessingResponse{answer(t, srv, req, extproctest.RequestHeaders)}}
	if v, _ := res.SetHeader("x-real-ip"); v != "10.0.0.1" {
		t.Fatalf("before update: %q", v)
	}
	if err := update(srv, Settings{Resolver: trustedRange(t, "10.0.0.0/8"), XFFAppendedByEnvoy: true, ClientIPHeader: "x-client"}); err != nil {
		t.Fatal(err)
	}
	res = &extproctest.Result{Responses: []*extprocv3.ProcessingResponse{answer(t, srv, req, extproctest.RequestHeaders)}}
	if v, _ := res.SetHeader("x-client"); v != "203.0.113.1" {
		t.Fatalf("after update: %q", v)
	}
	bad := []Settings{
		{Resolver: trustedRange(t), ClientIPHeader: "content-length"},
		{Resolver: trustedRange(t), ClientIPHeader: "Transfer-Encoding"},
		{Resolver: trustedRange(t), ClientIPHeader: "host"},
		{Resolver: trustedRange(t), ClientIPHeader: "connection"},
		{Resolver: trustedRange(t), DenyStatus: 299},
		{Resolver: trustedRange(t), DenyStatus: 100},
		{Resolver: trustedRange(t), ClientIPHeader: ":authority"},
		{Resolver: trustedRange(t), ClientIPHeader: "bad name"},
	}
	for _, s := range bad {
		if err := update(srv, s); err == nil {
			t.Errorf("Update(%+v) accepted", s)
		}
	}
}

// benchRequest is a typical Envoy request headers message: a dozen headers,
// two X-Forwarded-For hops plus Envoy's, and source.address.
func benchRequest(b *testing.B) []byte {
	req := extproctest.Request{
		Headers:       hdrs(":authority", "api.example.com", ":path", "/v1/items?limit=20", ":method", "GET", ":scheme", "https", "user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36", "accept", "application/json", "accept-encoding", "gzip, br", "accept-language", "en-US,en;q=0.9", "x-forwarded-for", "203.0.113.7, 10.0.0.2, 10.0.0.1", "x-forwarded-proto", "https", "x-request-id", "6f1c5b0e-8a5e-4b8e-9a51-0d6f1d2b3c4d", "x-envoy-expected-rq-timeout-ms", "15000", "cookie", "session=abcdef0123456789abcdef0123456789; theme=dark"),
		SourceAddress: "10.0.0.1:52814",
	}
	msg, err := proto.Marshal(extproctest.Message(req, extproctest.RequestHeaders, true))
	if err != nil {
		b.Fatal(err)
	}
	return msg
}

// BenchmarkHandle measures realipd's own per-request work on a request
// headers message: copy out of gRPC's buffer (codec), decode, resolve, run
// a cidr policy, encode, and hand the answer back to gRPC (codec).
func BenchmarkHandle(b *testing.B) {
	msg := benchRequest(b)
	for _, bc := range []struct {
		name  string
		chain *plugins.Chain
	}{
		{"no_policy", nil},
		{"cidr_allow", denyCIDR(b, "blocklist", nil, []string{"198.51.100.0/24", "2001:db8::/32"})},
		{"cidr_deny", denyCIDR(b, "blocklist", nil, []string{"203.0.113.0/24"})},
		{"cidr_headers", headerChain(b, &keepingPolicy{names: []string{"user-agent", "x-request-id"}})},
		{"cidr_all_headers", headerChain(b, &keepingPolicy{all: true})},
	} {
		srv := newServer(b, Settings{Resolver: trustedRange(b, "10.0.0.0/8"), XFFAppendedByEnvoy: true, Chain: bc.chain}, prometheus.NewRegistry())
		cd := newCodec()
		ctx := context.Background()
		data := bufferSlice(msg)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			var in inFrame
			var out outFrame
			for b.Loop() {
				if err := cd.Unmarshal(data, &in); err != nil {
					b.Fatal(err)
				}
				answered, err := srv.handle(ctx, &in, &out)
				if err != nil || !answered {
					b.Fatal(err)
				}
				bs, err := cd.Marshal(&out)
				if err != nil {
					b.Fatal(err)
				}
				bs.Free()
			}
		})
	}
}

// headerChain is a cidr policy followed by p, which reads request headers.
func headerChain(b *testing.B, p plugins.Policy) *plugins.Chain {
	c, err := plugins.NewChain(
		plugins.ChainEntry{Name: "blocklist", Policy: plugins.NewCIDR(nil, []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")})},
		plugins.ChainEntry{Name: "headers", Policy: p},
	)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkHandleProtoBaseline is the same work done with the generated
// protobuf types (proto.Unmarshal / proto.Marshal), for comparison.
func BenchmarkHandleProtoBaseline(b *testing.B) {
	msg := benchRequest(b)
	b.ReportAllocs()
	for b.Loop() {
		req := &extprocv3.ProcessingRequest{}
		if err := proto.Unmarshal(msg, req); err != nil {
			b.Fatal(err)
		}
		resp := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
		if _, err := proto.Marshal(resp); err != nil {
			b.Fatal(err)
		}
	}
}

func bufferSlice(b []byte) mem.BufferSlice { return mem.BufferSlice{mem.SliceBuffer(b)} }

func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.GetGauge().GetValue()
}

// bytes returns the frame's content.
func (f *outFrame) bytes() []byte {
	if f.pooled != nil {
		return *f.pooled
	}
	return f.b
}

// hdrs builds header lines from name, value pairs.
func hdrs(kv ...string) []H {
	out := make([]H, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, H{Name: kv[i], Value: kv[i+1]})
	}
	return out
}
