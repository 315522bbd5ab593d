package decide

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/plugins"
)

// heldPolicy allows, but only once released: a request that stays inside
// Decide. Closing it ends a call still pending with an error.
type heldPolicy struct {
	entered chan struct{}
	release chan struct{}
	closed  chan struct{}
	closes  atomic.Int32
}

func (p *heldPolicy) Decide(context.Context, *plugins.Request) (plugins.Decision, error) {
	p.entered <- struct{}{}
	select {
	case <-p.release:
		return plugins.Decision{Metadata: map[string]string{"from": "policy"}}, nil
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

// heldDecider is a Decider whose chain is one heldPolicy.
func heldDecider(t *testing.T) (*Decider, *heldPolicy) {
	t.Helper()
	p := &heldPolicy{entered: make(chan struct{}, 1), release: make(chan struct{}), closed: make(chan struct{})}
	c, err := plugins.NewChain(plugins.ChainEntry{Name: "held", Policy: p})
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Settings{Chain: c}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d, p
}

// decideHeld runs one request on rt as a door does (holding the chain
// while it decides) and returns its outcome on the channel once done; it
// returns when the request is inside p's Decide.
func decideHeld(t *testing.T, rt *Runtime, p *heldPolicy) <-chan Outcome {
	t.Helper()
	out := make(chan Outcome, 1)
	d, held := rt.Acquire()
	if !held {
		t.Fatal("Acquire did not hold the chain")
	}
	go func() {
		defer d.Release()
		in := &Input{Resolution: clientip.Result{IP: netip.MustParseAddr("192.0.2.1"), Source: clientip.SourcePeer, Reason: clientip.ReasonPeer}}
		out <- d.Decide(context.Background(), &Door{Name: "test"}, in, func() *plugins.Request { return &plugins.Request{} })
	}()
	<-p.entered
	return out
}

func isClosed(c *plugins.Chain) bool {
	select {
	case <-c.Done():
		return true
	default:
		return false
	}
}

// TestSwapRetiresAfterHeldRequest: a request inside the replaced chain's
// Decide when a reload swaps keeps that chain open however long it takes,
// gets its policy's own decision (not an on_error deny), and the chain
// closes once, after it; a request that comes after the swap decides with
// the new Decider.
func TestSwapRetiresAfterHeldRequest(t *testing.T) {
	old, p := heldDecider(t)
	rt := NewRuntime(old, nil)
	outcome := decideHeld(t, rt, p)

	next, nextPolicy := heldDecider(t)
	if err := rt.Swap(next); err != nil {
		t.Fatal(err)
	}
	if d, _ := rt.Acquire(); d != next {
		t.Error("after the swap a request does not decide with the new Decider")
	} else {
		d.Release()
	}
	if old.Chain().Acquire() {
		t.Error("the replaced chain can still be acquired")
	}
	if isClosed(old.Chain()) || p.closes.Load() != 0 {
		t.Fatal("the replaced chain was closed while a request was inside its Decide")
	}
	close(p.release)
	if o := <-outcome; o.Err != nil || o.Deny || o.Metadata["from"] != "policy" {
		t.Errorf("held request: %+v, want the policy's allow", o)
	}
	<-old.Chain().Done()
	deadline := time.Now().Add(10 * time.Second)
	for p.closes.Load() == 0 && time.Now().Before(deadline) {
		runtime.Gosched() // the retired chain closes on a goroutine of its own
	}
	if n := p.closes.Load(); n != 1 {
		t.Errorf("the replaced chain's policy closed %d times, want 1", n)
	}
	rt.CloseBy(time.Now().Add(time.Hour))
	if n := nextPolicy.closes.Load(); n != 1 {
		t.Errorf("the chain in force closed %d times at shutdown, want 1", n)
	}
}

// TestAcquireAcrossSwap: a request that loaded the old Decider just
// before a swap, and finds its chain retired, decides with the new one:
// Swap stores before it retires.
func TestAcquireAcrossSwap(t *testing.T) {
	old, _ := heldDecider(t)
	rt := NewRuntime(old, nil)
	next, _ := heldDecider(t)
	if err := rt.Swap(next); err != nil {
		t.Fatal(err)
	}
	// What a request does when it loaded old before the swap and then
	// failed to acquire its retired chain: load again.
	if old.Chain().Acquire() {
		t.Fatal("the old chain is not retired")
	}
	d, held := rt.Acquire()
	if d != next || !held {
		t.Errorf("Acquire after the swap = %p held %v, want the new Decider %p held", d, held, next)
	}
	d.Release()
	rt.CloseBy(time.Now())
}

// TestRuntimeClose: shutdown waits for the requests still deciding, at
// most until the deadline, then closes every chain; no swap is taken
// after it.
func TestRuntimeClose(t *testing.T) {
	t.Run("waits for holders", func(t *testing.T) {
		retired, rp := heldDecider(t)
		rt := NewRuntime(retired, nil)
		retiredOutcome := decideHeld(t, rt, rp)
		current, cp := heldDecider(t)
		if err := rt.Swap(current); err != nil {
			t.Fatal(err)
		}
		currentOutcome := decideHeld(t, rt, cp)

		closed := make(chan struct{})
		go func() { rt.CloseBy(time.Now().Add(time.Hour)); close(closed) }()
		// CloseBy retires the chain in force before it waits.
		for current.Chain().Acquire() {
			current.Chain().Release()
			runtime.Gosched()
		}
		if isClosed(current.Chain()) || isClosed(retired.Chain()) {
			t.Fatal("a chain was closed at shutdown while a request was inside its Decide")
		}
		close(rp.release)
		close(cp.release)
		for _, o := range []Outcome{<-retiredOutcome, <-currentOutcome} {
			if o.Err != nil || o.Deny {
				t.Errorf("request held across the shutdown: %+v, want the policy's allow", o)
			}
		}
		<-closed
		if rp.closes.Load() != 1 || cp.closes.Load() != 1 {
			t.Errorf("closes: retired %d, in force %d; want 1 each", rp.closes.Load(), cp.closes.Load())
		}
		late, lp := heldDecider(t)
		if err := rt.Swap(late); !errors.Is(err, ErrClosed) {
			t.Errorf("Swap after CloseBy = %v, want ErrClosed", err)
		}
		if lp.closes.Load() != 1 {
			t.Error("the Decider refused after CloseBy kept its chain open")
		}
		rt.CloseBy(time.Now()) // idempotent
	})
	t.Run("deadline", func(t *testing.T) {
		d, p := heldDecider(t)
		rt := NewRuntime(d, nil)
		outcome := decideHeld(t, rt, p)
		rt.CloseBy(time.Now()) // does not wait for the held request
		if !isClosed(d.Chain()) || p.closes.Load() != 1 {
			t.Fatal("the chain is open after CloseBy, past the deadline")
		}
		if o := <-outcome; o.Err == nil || !o.Deny {
			t.Errorf("request cut at shutdown: %+v, want the on_error deny", o)
		}
	})
	t.Run("last door done", func(t *testing.T) {
		d, p := heldDecider(t)
		rt := NewRuntime(d, nil)
		rt.Use()
		rt.Use()
		rt.Done(time.Now())
		if isClosed(d.Chain()) {
			t.Fatal("the chain closed while a door still runs")
		}
		rt.Done(time.Now())
		if !isClosed(d.Chain()) || p.closes.Load() != 1 {
			t.Error("the chain in force is open after the last door is done")
		}
	})
}
