package plugins

import (
	"errors"
	"fmt"
	"io"
)

// retiredBit is set in Chain.refs once the chain is retired (Retire or
// Close); the bits below it count the holders (Acquire calls not yet
// released, plus attempts being undone).
const retiredBit = 1 << 62

// A Chain's life ends in one of two ways. The owner that swaps a new chain
// in retires the old one (Retire): it closes once the last request that
// entered it is done. Or the owner closes it outright (Close), for instance
// at shutdown after a bounded wait. Callers that run requests on a chain
// which may be replaced bracket each request with Acquire and Release.
//
// The holder count and the retired mark share one atomic word (refs), so
// that each operation on them is a single atomic step: Acquire and Release
// are one add each, with no lock and no allocation. Why a request never runs
// on a chain closed by its retirement: Go's atomics are sequentially
// consistent, so the adds and the compare-and-swap that sets retiredBit are
// in one total order.
//   - An Acquire whose add comes before the retiring CAS returns true and is
//     counted: the CAS sees its holder and does not close. Retirement closes
//     the policies only once an add brings refs to exactly retiredBit (no
//     holder left), and for this holder that is at the earliest its own
//     Release, which the request calls after Decide returned.
//   - An Acquire whose add comes after the CAS sees retiredBit and fails. It
//     takes its add back, and that may be what brings refs to retiredBit, so
//     the undo closes the chain too when it is the last. The owner published
//     the replacement before retiring (its contract, see Retire), and the
//     failed add observed the CAS: so the caller's next load of the pointer
//     it found the chain through is ordered after the publication, and
//     yields the replacement (or a later one). The caller retries with it.
//
// So a caller that finds chains behind an atomic pointer loads it, calls
// Acquire, and on false loads it again and retries. If the pointer still
// yields the same chain, that chain was retired while in force (its owner is
// shutting down) and will not be acquired again.
//
// Closing runs the policies' Close, which for a plugin waits for its process
// to exit; it never runs on the goroutine of the request that happens to
// release last: Retire and the last Release start it in a new goroutine.
// Done tells when it has finished.

// Acquire registers a holder of c: c stays open until the matching Release,
// even if it is retired meanwhile. It reports false, holding nothing, when c
// is already retired or closed; the caller then looks up the chain in force
// again (see Retire). A nil Chain is always acquired. Acquire and Release are
// an atomic add each and do not allocate.
func (c *Chain) Acquire() bool {
	return c == nil || c.refs.Add(1)&retiredBit == 0 || c.undoAcquire()
}

// undoAcquire takes back a failed Acquire's add, which may be what brings a
// retired chain to no holders, and returns false. It is kept out of line so
// that Acquire inlines.
//
//go:noinline
func (c *Chain) undoAcquire() bool {
	if c.refs.Add(-1) == retiredBit {
		c.closeInBackground()
	}
	return false
}

// Release ends a successful Acquire. The last Release of a retired chain
// starts its Close in a new goroutine; Release itself never blocks.
func (c *Chain) Release() {
	if c != nil && c.refs.Add(-1) == retiredBit {
		c.closeInBackground()
	}
}

// Retire marks c as replaced: Acquire fails from now on, and c closes (see
// Close) once the last holder has released it, at once when there is none.
// Retire does not wait for that; Done does. The owner calls Retire only after
// the chain replacing c is where callers look it up, so that a caller whose
// Acquire fails finds the replacement. Retire is idempotent; it does nothing
// on a nil Chain.
func (c *Chain) Retire() {
	if c == nil {
		return
	}
	if n, set := c.markRetired(); set && n == 0 {
		c.closeInBackground()
	}
}

// markRetired sets retiredBit; it reports the holder count before and
// whether this call set it.
func (c *Chain) markRetired() (holders int64, set bool) {
	for {
		n := c.refs.Load()
		if n&retiredBit != 0 {
			return n &^ retiredBit, false
		}
		if c.refs.CompareAndSwap(n, n|retiredBit) {
			return n, true
		}
	}
}

// closeInBackground starts closing c in a new goroutine, unless a close
// has started already.
func (c *Chain) closeInBackground() {
	if c.closing.CompareAndSwap(false, true) {
		go c.closePolicies()
	}
}

// closedChan is the Done of a nil Chain.
var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// Done returns a channel closed once c's policies are closed: after the
// last holder of a retired chain released it, or after Close. A nil Chain's
// is closed.
func (c *Chain) Done() <-chan struct{} {
	if c == nil {
		return closedChan
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.closed {
			close(c.done)
		}
	}
	return c.done
}

// Close closes c now, whether or not requests still hold it (a holder's
// policies then fail, and their on_error applies): it retires c (Acquire
// fails from now on) and closes every policy that implements io.Closer (such
// as plugin processes), joining their errors. Only the first call closes the
// policies; every call returns once they are closed, with the errors of that
// first close. To close c once its requests are done, use Retire.
func (c *Chain) Close() error {
	if c == nil {
		return nil
	}
	c.markRetired()
	c.closing.Store(true)
	return c.closePolicies()
}

// closePolicies closes the policies on its first call and returns the
// errors of that close on every call, once it is over.
func (c *Chain) closePolicies() error {
	c.closeOnce.Do(func() {
		var errs []error
		for _, e := range c.entries {
			if cl, ok := e.Policy.(io.Closer); ok {
				if err := cl.Close(); err != nil {
					errs = append(errs, fmt.Errorf("plugins: close policy %q: %w", e.Name, err))
				}
			}
		}
		c.mu.Lock()
		c.closeErr = errors.Join(errs...)
		c.closed = true
		if c.done != nil {
			close(c.done)
		}
		c.mu.Unlock()
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeErr
}
