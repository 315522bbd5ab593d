package plugins

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// closeRecorder is a policy that counts its Close calls and records a
// Decide that runs after (or during) its Close.
type closeRecorder struct {
	closes   atomic.Int32
	lateCall atomic.Bool
	err      error
}

func (p *closeRecorder) Decide(context.Context, *Request) (Decision, error) {
	if p.closes.Load() != 0 {
		p.lateCall.Store(true)
	}
	return Decision{Metadata: map[string]string{"from": "recorder"}}, nil
}

func (p *closeRecorder) Close() error { p.closes.Add(1); return p.err }

// blockingPolicy blocks in Decide until release is closed, telling entered
// when a call has started. Like a plugin host, it fails a call still
// pending when it is closed.
type blockingPolicy struct {
	entered chan struct{}
	release chan struct{}
	closed  chan struct{}
	closes  atomic.Int32
}

func newBlockingPolicy() *blockingPolicy {
	return &blockingPolicy{entered: make(chan struct{}, 16), release: make(chan struct{}), closed: make(chan struct{})}
}

var errClosedWhileDeciding = errors.New("closed while deciding")

func (p *blockingPolicy) Decide(context.Context, *Request) (Decision, error) {
	p.entered <- struct{}{}
	select {
	case <-p.release:
		return Decision{Metadata: map[string]string{"from": "blocking"}}, nil
	case <-p.closed:
		return Decision{}, errClosedWhileDeciding
	}
}

func (p *blockingPolicy) Close() error {
	if p.closes.Add(1) == 1 {
		close(p.closed)
	}
	return nil
}

func isDone(c *Chain) bool {
	select {
	case <-c.Done():
		return true
	default:
		return false
	}
}

func TestChainRetireWithoutHolders(t *testing.T) {
	p := &closeRecorder{err: errBoom}
	c, err := NewChain(ChainEntry{Name: "p", Policy: p})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Acquire() {
		t.Fatal("Acquire of a fresh chain failed")
	}
	c.Release()
	c.Retire()
	<-c.Done() // no holder: it closes without anyone releasing it
	if n := p.closes.Load(); n != 1 {
		t.Errorf("policy closed %d times, want 1", n)
	}
	if c.Acquire() {
		t.Error("Acquire of a retired chain succeeded")
	}
	c.Retire()
	if err := c.Close(); !errors.Is(err, errBoom) {
		t.Errorf("Close after the retirement = %v, want the first close's error", err)
	}
	if n := p.closes.Load(); n != 1 {
		t.Errorf("policy closed %d times after Retire and Close again, want 1", n)
	}
}

// TestChainRetireWaitsForHolder: a request inside the retired chain's
// Decide keeps it open; its Decide finishes with the policy's own decision,
// and the chain closes once, after it.
func TestChainRetireWaitsForHolder(t *testing.T) {
	p := newBlockingPolicy()
	c, err := NewChain(ChainEntry{Name: "slow", Policy: p})
	if err != nil {
		t.Fatal(err)
	}
	verdict := make(chan Verdict, 1)
	go func() {
		if !c.Acquire() {
			panic("Acquire failed")
		}
		defer c.Release()
		verdict <- c.Decide(context.Background(), &Request{})
	}()
	<-p.entered
	c.Retire()
	c.Retire() // idempotent
	// Only the holder's Release can start closing c (closing is set before
	// the closing goroutine starts), and the holder is blocked in Decide.
	if c.closing.Load() || isDone(c) || p.closes.Load() != 0 {
		t.Fatal("the retired chain was closed while a request was inside its Decide")
	}
	if c.Acquire() {
		t.Fatal("Acquire of a retired chain succeeded")
	}
	close(p.release)
	v := <-verdict
	if v.Err != nil || v.Deny || v.Metadata["from"] != "blocking" {
		t.Errorf("held request: %+v, want the policy's own allow", v)
	}
	<-c.Done()
	if n := p.closes.Load(); n != 1 {
		t.Errorf("policy closed %d times, want 1", n)
	}
}

// TestChainCloseWithHolder: Close does not wait for holders; their later
// Release does not close again.
func TestChainCloseWithHolder(t *testing.T) {
	p := newBlockingPolicy()
	c, err := NewChain(ChainEntry{Name: "slow", Policy: p})
	if err != nil {
		t.Fatal(err)
	}
	verdict := make(chan Verdict, 1)
	go func() {
		c.Acquire()
		defer c.Release()
		verdict <- c.Decide(context.Background(), &Request{})
	}()
	<-p.entered
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if !isDone(c) {
		t.Error("Done is open after Close returned")
	}
	if v := <-verdict; !errors.Is(v.Err, errClosedWhileDeciding) || !v.Deny {
		t.Errorf("request cut by Close: %+v, want the policy's error, on_error deny", v)
	}
	if c.Acquire() {
		t.Error("Acquire of a closed chain succeeded")
	}
	c.Retire()
	if n := p.closes.Load(); n != 1 {
		t.Errorf("policy closed %d times, want 1", n)
	}
}

func TestNilChainLifecycle(t *testing.T) {
	var c *Chain
	if !c.Acquire() {
		t.Error("Acquire of a nil chain failed")
	}
	c.Release()
	c.Retire()
	if !isDone(c) {
		t.Error("a nil chain's Done is open")
	}
	if c.Close() != nil || c.Decide(context.Background(), &Request{}).Deny {
		t.Error("nil chain misbehaves")
	}
}

func TestChainAcquireAllocs(t *testing.T) {
	c, err := NewChain(ChainEntry{Name: "a", Policy: fixed(Decision{}, nil)})
	if err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() {
		if c.Acquire() {
			c.Release()
		}
	}); n != 0 {
		t.Errorf("Acquire+Release: %v allocations, want 0", n)
	}
}

// TestChainRetireHammer swaps chains under requests that acquire whichever
// is in force, the way a server does: no Decide runs on a closed chain,
// every retired chain closes exactly once, and none closes early. Run it
// with -race.
func TestChainRetireHammer(t *testing.T) {
	const (
		workers = 8
		swaps   = 200
	)
	type gen struct {
		chain  *Chain
		p      *closeRecorder
		forced bool // also closed outright, so Decide may meet its Close
	}
	newGen := func() *gen {
		p := &closeRecorder{}
		c, err := NewChain(ChainEntry{Name: "p", Policy: p})
		if err != nil {
			t.Fatal(err)
		}
		return &gen{chain: c, p: p}
	}
	var current atomic.Pointer[gen]
	current.Store(newGen())
	all := []*gen{current.Load()}

	var stop atomic.Bool
	var wg sync.WaitGroup
	var decided atomic.Int64
	for range workers {
		wg.Go(func() {
			for !stop.Load() {
				g := current.Load()
				for !g.chain.Acquire() {
					next := current.Load()
					if next == g {
						t.Error("a retired chain is still in force")
						return
					}
					g = next
				}
				if v := g.chain.Decide(context.Background(), &Request{}); v.Err != nil || v.Metadata["from"] != "recorder" {
					t.Errorf("verdict %+v", v)
				}
				g.chain.Release()
				decided.Add(1)
			}
		})
	}
	for i := range swaps {
		// Let requests run on each chain before replacing it.
		for decided.Load() < int64(i*workers) {
			runtime.Gosched()
		}
		next := newGen()
		all = append(all, next)
		old := current.Swap(next) // publish, then retire
		old.chain.Retire()
		if i%3 == 0 {
			old.chain.Retire()
		}
		if i%50 == 0 {
			old.forced = true
			go old.chain.Close() // a forced close racing the retirement
		}
	}
	stop.Store(true)
	wg.Wait()
	current.Load().chain.Retire()
	for i, g := range all {
		<-g.chain.Done()
		if n := g.p.closes.Load(); n != 1 {
			t.Errorf("chain %d closed %d times, want 1", i, n)
		}
		if !g.forced && g.p.lateCall.Load() {
			t.Errorf("chain %d: a Decide ran after its Close", i)
		}
	}
	t.Logf("%d requests over %d chains", decided.Load(), len(all))
}
