package extproc_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/plugins"
)

// decidePolicy answers every request with a fixed decision or error.
type decidePolicy struct {
	d   plugins.Decision
	err error
}

func (p decidePolicy) Decide(context.Context, *plugins.Request) (plugins.Decision, error) {
	return p.d, p.err
}

// headerPolicy declares the request headers it reads (plugins.HeaderInputs)
// and hands every Request.Headers it receives to got.
type headerPolicy struct {
	names []string
	all   bool
	got   chan []plugins.Header
}

func newHeaderPolicy(all bool, names ...string) *headerPolicy {
	return &headerPolicy{names: names, all: all, got: make(chan []plugins.Header, 16)}
}

func (p *headerPolicy) RequestHeaders() ([]string, bool) { return p.names, p.all }

func (p *headerPolicy) Decide(_ context.Context, req *plugins.Request) (plugins.Decision, error) {
	p.got <- req.Headers
	return plugins.Decision{}, nil
}

// received returns the headers of the one request p saw since the last call.
func (p *headerPolicy) received(t *testing.T) []plugins.Header {
	t.Helper()
	select {
	case h := <-p.got:
		return h
	default:
		t.Fatal("the policy was not asked")
		return nil
	}
}

func chainOf(t *testing.T, entries ...plugins.ChainEntry) *plugins.Chain {
	t.Helper()
	c, err := plugins.NewChain(entries...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDenyMetadata: a policy's deny shows its metadata (and that of the
// policies that allowed before it) in the ImmediateResponse's dynamic
// metadata, with realipd's own fields winning, and its headers on the deny
// response.
func TestDenyMetadata(t *testing.T) {
	tagger := decidePolicy{d: plugins.Decision{
		Headers:  []plugins.Header{{Name: "x-geo", Value: "nl"}},
		Metadata: map[string]string{"geo": "nl", "reason": "tagger"},
	}}
	denier := decidePolicy{d: plugins.Decision{
		Deny: true, Status: 429, Body: "listed\n",
		Headers: []plugins.Header{{Name: "x-deny-reason", Value: "listed"}},
		// The last three are realipd's own fields: they must not be overridden.
		Metadata: map[string]string{"reason": "listed", "list": "abuse", "client_ip": "6.6.6.6", "policy": "spoof", "decision": "allow"},
	}}
	failing := decidePolicy{err: errors.New("plugin down")}
	own := map[string]string{"client_ip": "203.0.113.7", "peer": "10.0.0.1:4711", "strategy": "rightmost_trusted_range", "resolved_from": "header", "decision": "deny"}
	with := func(extra map[string]string) map[string]string {
		m := maps.Clone(own)
		maps.Copy(m, extra)
		return m
	}
	tests := []struct {
		name        string
		entries     []plugins.ChainEntry
		wantStatus  int
		wantBody    string
		wantMeta    map[string]string
		wantHeaders map[string]string // on the deny response
		notHeaders  []string
	}{
		{
			name:        "deny metadata and headers",
			entries:     []plugins.ChainEntry{{Name: "denier", Policy: denier}},
			wantStatus:  429,
			wantBody:    "listed\n",
			wantMeta:    with(map[string]string{"policy": "denier", "reason": "listed", "list": "abuse"}),
			wantHeaders: map[string]string{"x-deny-reason": "listed", "content-type": "text/plain; charset=utf-8"},
		},
		{
			name:        "earlier allow metadata kept, deny overrides it",
			entries:     []plugins.ChainEntry{{Name: "tagger", Policy: tagger}, {Name: "denier", Policy: denier}},
			wantStatus:  429,
			wantBody:    "listed\n",
			wantMeta:    with(map[string]string{"policy": "denier", "reason": "listed", "list": "abuse", "geo": "nl"}),
			wantHeaders: map[string]string{"x-deny-reason": "listed"},
			notHeaders:  []string{"x-geo", "x-real-ip"},
		},
		{
			name:       "on_error deny keeps earlier metadata",
			entries:    []plugins.ChainEntry{{Name: "tagger", Policy: tagger}, {Name: "failing", Policy: failing}},
			wantStatus: 403,
			wantBody:   "access denied\n",
			wantMeta:   with(map[string]string{"policy": "failing", "reason": "tagger", "geo": "nl"}),
			notHeaders: []string{"x-geo"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := settings(t)
			s.Chain = chainOf(t, tt.entries...)
			ts := start(t, "tcp", s, extproc.Options{})
			res, err := ts.client.Process(context.Background(), extproctest.Request{
				Headers:       hdrs(":method", "GET", ":path", "/", "x-forwarded-for", "203.0.113.7, 10.0.0.1"),
				SourceAddress: "10.0.0.1:4711",
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.Immediate == nil {
				t.Fatalf("not denied: %v", res.Responses)
			}
			if got := int(res.Immediate.GetStatus().GetCode()); got != tt.wantStatus || string(res.Immediate.GetBody()) != tt.wantBody {
				t.Errorf("status %d body %q, want %d %q", got, res.Immediate.GetBody(), tt.wantStatus, tt.wantBody)
			}
			meta, err := res.Metadata("realipd")
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(meta, tt.wantMeta) {
				t.Errorf("metadata\n got %v\nwant %v", meta, tt.wantMeta)
			}
			for k, v := range tt.wantHeaders {
				if got, _ := res.SetHeader(k); got != v {
					t.Errorf("deny response header %s = %q, want %q", k, got, v)
				}
			}
			for _, k := range tt.notHeaders {
				if v, ok := res.SetHeader(k); ok {
					t.Errorf("deny response header %s = %q, want none", k, v)
				}
			}
		})
	}
}

// TestPolicyRequestHeaders: a policy declaring the request headers it reads
// receives exactly those, with their values, in request order (repeated
// lines kept, as Envoy sent them: Envoy's X-Forwarded-For entry included),
// read from raw_value or value.
func TestPolicyRequestHeaders(t *testing.T) {
	sent := hdrs(":method", "GET", ":path", "/items", ":authority", "example.com",
		"x-tenant", "acme", "cookie", "secret", "user-agent", "curl/8.0",
		"x-forwarded-for", "203.0.113.7, 10.0.0.1", "x-tenant", "beta", "x-empty", "")
	declared := []plugins.Header{{Name: "x-tenant", Value: "acme"}, {Name: "user-agent", Value: "curl/8.0"},
		{Name: "x-forwarded-for", Value: "203.0.113.7, 10.0.0.1"}, {Name: "x-tenant", Value: "beta"}, {Name: "x-empty", Value: ""}}
	var everything []plugins.Header
	for _, h := range sent {
		everything = append(everything, plugins.Header{Name: h.Name, Value: h.Value})
	}
	tests := []struct {
		name     string
		policies []*headerPolicy
		want     []plugins.Header // what every policy receives
	}{
		{
			name:     "declared names",
			policies: []*headerPolicy{newHeaderPolicy(false, "x-tenant", "user-agent", "x-forwarded-for", "x-empty", "x-absent")},
			want:     declared,
		},
		{
			name:     "union over the chain",
			policies: []*headerPolicy{newHeaderPolicy(false, "x-tenant", "x-forwarded-for"), newHeaderPolicy(false, "user-agent", "x-empty")},
			want:     declared,
		},
		{
			name:     "all headers",
			policies: []*headerPolicy{newHeaderPolicy(false, "x-tenant"), newHeaderPolicy(true)},
			want:     everything,
		},
		{
			name:     "none declared",
			policies: []*headerPolicy{newHeaderPolicy(false)},
		},
	}
	for _, tt := range tests {
		for _, useValue := range []bool{false, true} {
			name := tt.name + "/raw_value"
			if useValue {
				name = tt.name + "/value"
			}
			t.Run(name, func(t *testing.T) {
				s := settings(t)
				entries := []plugins.ChainEntry{{Name: "blocklist", Policy: plugins.NewCIDR(nil, nil)}}
				for i, p := range tt.policies {
					entries = append(entries, plugins.ChainEntry{Name: string(rune('a' + i)), Policy: p})
				}
				s.Chain = chainOf(t, entries...)
				ts := start(t, "tcp", s, extproc.Options{})
				res, err := ts.client.Process(context.Background(), extproctest.Request{Headers: sent, SourceAddress: "10.0.0.1:4711", UseValue: useValue})
				if err != nil {
					t.Fatal(err)
				}
				if ip, _ := res.SetHeader("x-real-ip"); ip != "203.0.113.7" {
					t.Errorf("x-real-ip = %q: resolution changed", ip)
				}
				for i, p := range tt.policies {
					if got := p.received(t); !slices.Equal(got, tt.want) {
						t.Errorf("policy %d received\n %q\nwant\n %q", i, got, tt.want)
					}
				}
			})
		}
	}
}

// TestPolicyRequestHeadersFollowUpdate: the headers collected follow the
// chain of the current settings.
func TestPolicyRequestHeadersFollowUpdate(t *testing.T) {
	first, second := newHeaderPolicy(false, "x-one"), newHeaderPolicy(false, "x-two")
	s := settings(t)
	s.Chain = chainOf(t, plugins.ChainEntry{Name: "p", Policy: first})
	ts := start(t, "tcp", s, extproc.Options{})
	req := extproctest.Request{Headers: hdrs(":path", "/", "x-one", "1", "x-two", "2"), SourceAddress: "10.0.0.1:1"}
	if _, err := ts.client.Process(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if got := first.received(t); !slices.Equal(got, []plugins.Header{{Name: "x-one", Value: "1"}}) {
		t.Errorf("before update: %q", got)
	}
	s.Chain = chainOf(t, plugins.ChainEntry{Name: "p", Policy: second})
	if err := ts.update(s); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.client.Process(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if got := second.received(t); !slices.Equal(got, []plugins.Header{{Name: "x-two", Value: "2"}}) {
		t.Errorf("after update: %q", got)
	}
}
