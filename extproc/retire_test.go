package extproc_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/plugins"
)

// heldPolicy blocks in Decide until release is closed, telling entered when
// a call has started, and counts its Close. Like a plugin host, it fails a
// call still pending when it is closed.
type heldPolicy struct {
	entered chan struct{}
	release chan struct{}
	closed  chan struct{}
	closes  atomic.Int32
}

func newHeldPolicy() *heldPolicy {
	return &heldPolicy{entered: make(chan struct{}, 1), release: make(chan struct{}), closed: make(chan struct{})}
}

func (p *heldPolicy) Decide(context.Context, *plugins.Request) (plugins.Decision, error) {
	p.entered <- struct{}{}
	select {
	case <-p.release:
		return plugins.Decision{Metadata: map[string]string{"chain": "old"}}, nil
	case <-p.closed:
		return plugins.Decision{}, errors.New("policy closed while deciding")
	}
}

func (p *heldPolicy) Close() error {
	if p.closes.Add(1) == 1 {
		close(p.closed)
	}
	return nil
}

func chainDone(c *plugins.Chain) bool {
	select {
	case <-c.Done():
		return true
	default:
		return false
	}
}

// TestRetireWaitsForHeldRequest: a request inside the old chain's Decide
// when Update swaps a new chain in and the old one is retired keeps the old
// chain open, and gets the old policy's own decision rather than an
// on_error deny; the old chain closes once, after it, while the requests
// that follow the swap run on the new chain.
func TestRetireWaitsForHeldRequest(t *testing.T) {
	p := newHeldPolicy()
	s := settings(t)
	s.Chain = chainOf(t, plugins.ChainEntry{Name: "held", Policy: p, OnError: plugins.ErrorDeny})
	old := s.Chain
	ts := start(t, "tcp", s, extproc.Options{})
	ts.client.MessageTimeout = time.Minute // the request is held on purpose
	req := extproctest.Request{Headers: hdrs("x-forwarded-for", "203.0.113.5, 10.0.0.1"), SourceAddress: "10.0.0.1:1"}

	type answer struct {
		res *extproctest.Result
		err error
	}
	held := make(chan answer, 1)
	go func() {
		res, err := ts.client.Process(context.Background(), req)
		held <- answer{res, err}
	}()
	<-p.entered

	next := s
	next.Chain = chainOf(t, plugins.ChainEntry{Name: "new", Policy: decidePolicy{d: plugins.Decision{Metadata: map[string]string{"chain": "new"}}}})
	if err := ts.update(next); err != nil {
		t.Fatal(err)
	}
	old.Retire()
	if chainDone(old) || p.closes.Load() != 0 {
		t.Fatal("the retired chain was closed while a request was inside its Decide")
	}

	res, err := ts.client.Process(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if md, err := res.Metadata("realipd"); err != nil || md["chain"] != "new" || res.Immediate != nil {
		t.Errorf("request after the swap: metadata %v, %v, immediate %v; want an allow by the new chain", md, err, res.Immediate)
	}
	if chainDone(old) || p.closes.Load() != 0 {
		t.Fatal("the retired chain was closed while a request was inside its Decide")
	}

	close(p.release)
	a := <-held
	if a.err != nil {
		t.Fatal(a.err)
	}
	if md, err := a.res.Metadata("realipd"); err != nil || md["chain"] != "old" || md["decision"] != "allow" || a.res.Immediate != nil {
		t.Errorf("held request: metadata %v, %v, immediate %v; want the old policy's allow, not on_error", md, err, a.res.Immediate)
	}
	<-old.Done()
	if n := p.closes.Load(); n != 1 {
		t.Errorf("the retired chain's policy closed %d times, want 1", n)
	}
}

// TestRetiredChainInForce: a chain retired while still in force (its owner
// shutting down) does not stall the messages that still arrive.
func TestRetiredChainInForce(t *testing.T) {
	s := settings(t)
	ts := start(t, "tcp", s, extproc.Options{})
	s.Chain.Retire()
	<-s.Chain.Done()
	res, err := ts.client.Process(context.Background(), extproctest.Request{Headers: hdrs("x-forwarded-for", "198.51.100.7, 10.0.0.1"), SourceAddress: "10.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Immediate == nil {
		t.Error("the blocklist of the retired chain in force did not deny")
	}
}
