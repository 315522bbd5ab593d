package decide

import (
	"sync/atomic"
	"time"
)

// epoch is the origin of Monotonic.
var epoch = time.Now()

// Monotonic returns the time on the process's monotonic clock, as a
// duration since an arbitrary origin: a step of the wall clock (NTP, a
// resumed VM) does not move it. Every measure of elapsed time on a door's
// path (rate limits, idle timeouts) is taken on it.
func Monotonic() time.Duration { return time.Since(epoch) }

// Every lets one event through per Interval, measured on the monotonic
// clock: the warnings a door logs about a misconfiguration, once a minute
// rather than once a request. Its zero Interval lets everything through.
// It is safe for concurrent use; it must not be copied after first use.
type Every struct {
	// Interval is the least time between two events let through.
	Interval time.Duration
	// Now is the clock (tests inject one); nil is Monotonic.
	Now func() time.Duration

	next atomic.Int64 // when the next event may pass, on Now's clock; 0 before the first
}

// Allow reports whether an event may pass now, and if so, holds back the
// others for Interval.
func (e *Every) Allow() bool {
	now := Monotonic
	if e.Now != nil {
		now = e.Now
	}
	t := int64(now()) + 1 // never 0, which means "before the first"
	next := e.next.Load()
	if next != 0 && t < next {
		return false
	}
	return e.next.CompareAndSwap(next, t+int64(e.Interval))
}
