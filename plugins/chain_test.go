package plugins

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// policyFunc adapts a function to Policy.
type policyFunc func(ctx context.Context, req *Request) (Decision, error)

func (f policyFunc) Decide(ctx context.Context, req *Request) (Decision, error) { return f(ctx, req) }

func fixed(d Decision, err error) Policy {
	return policyFunc(func(context.Context, *Request) (Decision, error) { return d, err })
}

var errBoom = errors.New("boom")

func TestChainDecide(t *testing.T) {
	allow := fixed(Decision{}, nil)
	deny := fixed(Decision{Deny: true, Status: 429, Body: "slow down"}, nil)
	fail := fixed(Decision{}, errBoom)
	hdrA := fixed(Decision{Headers: []Header{{"x-a", "1"}}, Metadata: map[string]string{"k": "a", "a": "1"}}, nil)
	hdrB := fixed(Decision{Headers: []Header{{"x-b", "2"}}, Metadata: map[string]string{"k": "b"}}, nil)
	denyMeta := fixed(Decision{Deny: true, Status: 451, Headers: []Header{{"x-d", "4"}}, Metadata: map[string]string{"k": "d", "reason": "listed"}}, nil)

	tests := []struct {
		name        string
		entries     []ChainEntry
		wantDeny    bool
		wantPolicy  string
		wantStatus  int
		wantErr     bool
		wantErrPol  string
		wantHeaders []Header
		wantMeta    map[string]string
	}{
		{name: "empty allows"},
		{name: "all allow", entries: []ChainEntry{{Name: "a", Policy: allow}, {Name: "b", Policy: allow}}},
		{name: "first deny wins", entries: []ChainEntry{{Name: "a", Policy: allow}, {Name: "d1", Policy: deny}, {Name: "d2", Policy: fixed(Decision{Deny: true, Status: 451}, nil)}},
			wantDeny: true, wantPolicy: "d1", wantStatus: 429},
		{name: "error deny by default", entries: []ChainEntry{{Name: "f", Policy: fail}, {Name: "a", Policy: allow}},
			wantDeny: true, wantPolicy: "f", wantErr: true, wantErrPol: "f"},
		{name: "error allow continues", entries: []ChainEntry{{Name: "f", Policy: fail, OnError: ErrorAllow}, {Name: "a", Policy: allow}},
			wantErr: true, wantErrPol: "f"},
		{name: "error allow then deny", entries: []ChainEntry{{Name: "f", Policy: fail, OnError: ErrorAllow}, {Name: "d", Policy: deny}},
			wantDeny: true, wantPolicy: "d", wantStatus: 429, wantErr: true, wantErrPol: "f"},
		{name: "one effect kept", entries: []ChainEntry{{Name: "a", Policy: allow}, {Name: "h", Policy: hdrA}},
			wantHeaders: []Header{{"x-a", "1"}}, wantMeta: map[string]string{"k": "a", "a": "1"}},
		{name: "effects merged in order", entries: []ChainEntry{{Name: "ha", Policy: hdrA}, {Name: "hb", Policy: hdrB}, {Name: "ha2", Policy: hdrA}},
			wantHeaders: []Header{{"x-a", "1"}, {"x-b", "2"}, {"x-a", "1"}}, wantMeta: map[string]string{"k": "a", "a": "1"}},
		{name: "later metadata overrides", entries: []ChainEntry{{Name: "ha", Policy: hdrA}, {Name: "hb", Policy: hdrB}},
			wantHeaders: []Header{{"x-a", "1"}, {"x-b", "2"}}, wantMeta: map[string]string{"k": "b", "a": "1"}},
		{name: "deny keeps earlier metadata, not headers", entries: []ChainEntry{{Name: "ha", Policy: hdrA}, {Name: "d", Policy: deny}},
			wantDeny: true, wantPolicy: "d", wantStatus: 429, wantMeta: map[string]string{"k": "a", "a": "1"}},
		{name: "deny carries its own headers and metadata", entries: []ChainEntry{{Name: "dm", Policy: denyMeta}, {Name: "ha", Policy: hdrA}},
			wantDeny: true, wantPolicy: "dm", wantStatus: 451, wantHeaders: []Header{{"x-d", "4"}}, wantMeta: map[string]string{"k": "d", "reason": "listed"}},
		{name: "deny metadata overrides earlier", entries: []ChainEntry{{Name: "ha", Policy: hdrA}, {Name: "hb", Policy: hdrB}, {Name: "dm", Policy: denyMeta}},
			wantDeny: true, wantPolicy: "dm", wantStatus: 451, wantHeaders: []Header{{"x-d", "4"}}, wantMeta: map[string]string{"k": "d", "a": "1", "reason": "listed"}},
		{name: "error deny keeps earlier metadata", entries: []ChainEntry{{Name: "ha", Policy: hdrA}, {Name: "f", Policy: fail}},
			wantDeny: true, wantPolicy: "f", wantErr: true, wantErrPol: "f", wantMeta: map[string]string{"k": "a", "a": "1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewChain(tt.entries...)
			if err != nil {
				t.Fatal(err)
			}
			v := c.Decide(context.Background(), &Request{})
			if v.Deny != tt.wantDeny || v.Policy != tt.wantPolicy || v.Status != tt.wantStatus {
				t.Errorf("verdict deny=%v policy=%q status=%d, want %v %q %d", v.Deny, v.Policy, v.Status, tt.wantDeny, tt.wantPolicy, tt.wantStatus)
			}
			if (v.Err != nil) != tt.wantErr || v.ErrPolicy != tt.wantErrPol {
				t.Errorf("err=%v errPolicy=%q, want err %v policy %q", v.Err, v.ErrPolicy, tt.wantErr, tt.wantErrPol)
			}
			if tt.wantErr && !errors.Is(v.Err, errBoom) {
				t.Errorf("err %v does not wrap the policy's error", v.Err)
			}
			if !slices.Equal(v.Headers, tt.wantHeaders) {
				t.Errorf("headers %v, want %v", v.Headers, tt.wantHeaders)
			}
			if !maps.Equal(v.Metadata, tt.wantMeta) {
				t.Errorf("metadata %v, want %v", v.Metadata, tt.wantMeta)
			}
		})
	}
}

func TestChainDoesNotMutatePolicyResults(t *testing.T) {
	shared := []Header{{"x-a", "1"}}
	sharedMeta := map[string]string{"a": "1"}
	a := fixed(Decision{Headers: shared[:1:1], Metadata: sharedMeta}, nil)
	b := fixed(Decision{Headers: []Header{{"x-b", "2"}}, Metadata: map[string]string{"b": "2"}}, nil)
	denyMeta := map[string]string{"d": "4"}
	d := fixed(Decision{Deny: true, Metadata: denyMeta}, nil)
	c, err := NewChain(ChainEntry{Name: "a", Policy: a}, ChainEntry{Name: "b", Policy: b}, ChainEntry{Name: "a2", Policy: a})
	if err != nil {
		t.Fatal(err)
	}
	cd, err := NewChain(ChainEntry{Name: "a", Policy: a}, ChainEntry{Name: "d", Policy: d})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		c.Decide(context.Background(), &Request{})
		if v := cd.Decide(context.Background(), &Request{}); !maps.Equal(v.Metadata, map[string]string{"a": "1", "d": "4"}) {
			t.Fatalf("deny metadata %v", v.Metadata)
		}
	}
	if len(shared) != 1 || len(sharedMeta) != 1 || len(denyMeta) != 1 {
		t.Fatalf("policy-owned values modified: %v %v %v", shared, sharedMeta, denyMeta)
	}
}

// headerPolicy is a Policy implementing HeaderInputs whose answer can change
// (as a restarted plugin's can).
type headerPolicy struct {
	Policy
	decl atomic.Pointer[headerDecl]
}

func newHeaderPolicy(all bool, names ...string) *headerPolicy {
	p := &headerPolicy{Policy: fixed(Decision{}, nil)}
	p.set(all, names...)
	return p
}

func (p *headerPolicy) set(all bool, names ...string) {
	p.decl.Store(&headerDecl{names: names, all: all})
}

func (p *headerPolicy) RequestHeaders() ([]string, bool) {
	d := p.decl.Load()
	return d.names, d.all
}

func TestChainRequestHeaders(t *testing.T) {
	cidr := NewCIDR(nil, []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")})
	tests := []struct {
		name      string
		policies  []Policy
		wantReads bool
		wantNames []string
		wantAll   bool
	}{
		{name: "no header policies", policies: []Policy{cidr, fixed(Decision{}, nil)}},
		{name: "header policy declaring none", policies: []Policy{cidr, newHeaderPolicy(false)}, wantReads: true},
		{name: "union lower-cased, sorted, unique",
			policies:  []Policy{newHeaderPolicy(false, "x-tenant", "User-Agent"), cidr, newHeaderPolicy(false, "user-agent", "cookie")},
			wantReads: true, wantNames: []string{"cookie", "user-agent", "x-tenant"}},
		{name: "one reads all",
			policies:  []Policy{newHeaderPolicy(false, "x-tenant"), newHeaderPolicy(true)},
			wantReads: true, wantNames: []string{"x-tenant"}, wantAll: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var entries []ChainEntry
			for i, p := range tt.policies {
				entries = append(entries, ChainEntry{Name: string(rune('a' + i)), Policy: p})
			}
			c, err := NewChain(entries...)
			if err != nil {
				t.Fatal(err)
			}
			names, all := c.RequestHeaders()
			if c.ReadsHeaders() != tt.wantReads || !slices.Equal(names, tt.wantNames) || all != tt.wantAll {
				t.Errorf("ReadsHeaders %v RequestHeaders %q, %v; want %v %q, %v", c.ReadsHeaders(), names, all, tt.wantReads, tt.wantNames, tt.wantAll)
			}
		})
	}
	var nilChain *Chain
	if names, all := nilChain.RequestHeaders(); names != nil || all || nilChain.ReadsHeaders() {
		t.Error("nil chain reads headers")
	}
}

func TestChainRequestHeadersFollowsPolicies(t *testing.T) {
	p := newHeaderPolicy(false, "x-a")
	q := newHeaderPolicy(false, "x-b")
	c, err := NewChain(ChainEntry{Name: "p", Policy: p}, ChainEntry{Name: "q", Policy: q})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		change    func()
		wantNames []string
		wantAll   bool
	}{
		{func() {}, []string{"x-a", "x-b"}, false},
		{func() { p.set(false, "x-c", "x-a") }, []string{"x-a", "x-b", "x-c"}, false},
		{func() { q.set(true) }, []string{"x-a", "x-c"}, true},
		{func() { q.set(false) }, []string{"x-a", "x-c"}, false},
	}
	for i, s := range steps {
		s.change()
		names, all := c.RequestHeaders()
		if !slices.Equal(names, s.wantNames) || all != s.wantAll {
			t.Errorf("step %d: %q, %v; want %q, %v", i, names, all, s.wantNames, s.wantAll)
		}
		if n := testing.AllocsPerRun(100, func() { c.RequestHeaders() }); n != 0 {
			t.Errorf("step %d: RequestHeaders allocates %v times while no answer changes", i, n)
		}
	}
}

func TestNewChainRejects(t *testing.T) {
	p := fixed(Decision{}, nil)
	tests := []struct {
		name    string
		entries []ChainEntry
	}{
		{"empty name", []ChainEntry{{Name: "", Policy: p}}},
		{"duplicate", []ChainEntry{{Name: "a", Policy: p}, {Name: "a", Policy: p}}},
		{"nil policy", []ChainEntry{{Name: "a"}}},
		{"bad on_error", []ChainEntry{{Name: "a", Policy: p, OnError: 7}}},
	}
	for _, tt := range tests {
		if _, err := NewChain(tt.entries...); err == nil {
			t.Errorf("%s: NewChain succeeded", tt.name)
		}
	}
}

func TestChainHonoursContext(t *testing.T) {
	// A policy that blocks until its context ends, as a well-behaved slow plugin does.
	block := policyFunc(func(ctx context.Context, _ *Request) (Decision, error) {
		<-ctx.Done()
		return Decision{}, ctx.Err()
	})
	called := false
	after := policyFunc(func(context.Context, *Request) (Decision, error) {
		called = true
		return Decision{}, nil
	})
	c, err := NewChain(ChainEntry{Name: "slow", Policy: block, OnError: ErrorAllow}, ChainEntry{Name: "after", Policy: after, OnError: ErrorDeny})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	v := c.Decide(ctx, &Request{})
	if !errors.Is(v.Err, context.DeadlineExceeded) || v.ErrPolicy != "slow" {
		t.Errorf("err %v policy %q, want deadline from slow", v.Err, v.ErrPolicy)
	}
	if called {
		t.Error("policy after a done context was called")
	}
	if !v.Deny || v.Policy != "after" {
		t.Errorf("verdict deny=%v policy=%q, want deny by after (its on_error is deny)", v.Deny, v.Policy)
	}
}

type closer struct {
	Policy
	closed *int
	err    error
}

func (c closer) Close() error { *c.closed++; return c.err }

func TestChainClose(t *testing.T) {
	n := 0
	c, err := NewChain(
		ChainEntry{Name: "a", Policy: closer{fixed(Decision{}, nil), &n, nil}},
		ChainEntry{Name: "b", Policy: fixed(Decision{}, nil)},
		ChainEntry{Name: "c", Policy: closer{fixed(Decision{}, nil), &n, errBoom}},
	)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); !errors.Is(err, errBoom) {
		t.Errorf("Close = %v, want boom", err)
	}
	if n != 2 {
		t.Errorf("closed %d policies, want 2", n)
	}
	var nilChain *Chain
	if nilChain.Close() != nil || nilChain.Len() != 0 || nilChain.Decide(context.Background(), &Request{}).Deny {
		t.Error("nil chain misbehaves")
	}
}

func TestParseErrorAction(t *testing.T) {
	for in, want := range map[string]ErrorAction{"": ErrorDeny, "deny": ErrorDeny, "allow": ErrorAllow} {
		got, err := ParseErrorAction(in)
		if err != nil || got != want {
			t.Errorf("ParseErrorAction(%q) = %v, %v", in, got, err)
		}
		if in != "" && got.String() != in {
			t.Errorf("String = %q, want %q", got.String(), in)
		}
	}
	if _, err := ParseErrorAction("maybe"); err == nil {
		t.Error("ParseErrorAction(maybe) succeeded")
	}
}

func BenchmarkChainAllAllow(b *testing.B) {
	deny := []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8::/32")}
	c, err := NewChain(
		ChainEntry{Name: "blocklist", Policy: NewCIDR(nil, deny)},
		ChainEntry{Name: "allow", Policy: fixed(Decision{}, nil)},
		ChainEntry{Name: "blocklist2", Policy: NewCIDR(nil, deny)},
	)
	if err != nil {
		b.Fatal(err)
	}
	req := &Request{ClientIP: netip.MustParseAddr("203.0.113.9")}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if c.Decide(ctx, req).Deny {
			b.Fatal("denied")
		}
	}
}

func BenchmarkChainDeny(b *testing.B) {
	deny := []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	c, err := NewChain(ChainEntry{Name: "blocklist", Policy: NewCIDR(nil, deny)})
	if err != nil {
		b.Fatal(err)
	}
	req := &Request{ClientIP: netip.MustParseAddr("198.51.100.7")}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if !c.Decide(ctx, req).Deny {
			b.Fatal("allowed")
		}
	}
}

func BenchmarkChainRequestHeaders(b *testing.B) {
	c, err := NewChain(
		ChainEntry{Name: "a", Policy: newHeaderPolicy(false, "x-tenant", "user-agent")},
		ChainEntry{Name: "b", Policy: NewCIDR(nil, nil)},
		ChainEntry{Name: "c", Policy: newHeaderPolicy(false, "cookie")},
	)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if names, _ := c.RequestHeaders(); len(names) != 3 {
			b.Fatal(names)
		}
	}
}

// TestChainImmediate: a chain answers from memory (Immediate) when every
// policy does — an empty chain too — and not when one policy may wait.
func TestChainImmediate(t *testing.T) {
	cidr := NewCIDR(nil, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")})
	waits := policyFunc(func(context.Context, *Request) (Decision, error) { return Decision{}, nil })
	for _, tc := range []struct {
		name    string
		entries []ChainEntry
		want    bool
	}{
		{name: "empty", want: true},
		{name: "cidr", entries: []ChainEntry{{Name: "a", Policy: cidr}}, want: true},
		{name: "cidr twice", entries: []ChainEntry{{Name: "a", Policy: cidr}, {Name: "b", Policy: cidr}}, want: true},
		{name: "a policy that may wait", entries: []ChainEntry{{Name: "a", Policy: cidr}, {Name: "b", Policy: waits}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewChain(tc.entries...)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Immediate(); got != tc.want {
				t.Errorf("Immediate() = %v, want %v", got, tc.want)
			}
		})
	}
	var nilChain *Chain
	if !nilChain.Immediate() {
		t.Error("a nil chain is not Immediate")
	}
}
