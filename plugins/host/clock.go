package host

import (
	"sync"
	"sync/atomic"
	"time"
)

// clockResolution is how often the coarse clock advances. Cached decisions
// expire up to this much later than their TTL.
const clockResolution = 10 * time.Millisecond

// coarseClock is a monotonic clock read with one atomic load: reading the
// system clock costs about half of a cache hit's budget. It ticks only while
// at least one Host with a cache holds it.
type coarseClock struct {
	start time.Time
	now   atomic.Int64 // nanoseconds since start, as of the last tick

	mu    sync.Mutex
	users int
	stop  chan struct{}
	done  chan struct{}
}

var clock = &coarseClock{start: time.Now()}

// read returns the time since the clock's start, at most clockResolution
// old.
func (c *coarseClock) read() time.Duration { return time.Duration(c.now.Load()) }

// acquire starts the clock for one more user.
func (c *coarseClock) acquire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.users++
	if c.users > 1 {
		return
	}
	c.now.Store(int64(time.Since(c.start)))
	c.stop, c.done = make(chan struct{}), make(chan struct{})
	go c.run(c.stop, c.done)
}

// release stops the clock when its last user is gone.
func (c *coarseClock) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.users--
	if c.users > 0 {
		return
	}
	close(c.stop)
	<-c.done
}

func (c *coarseClock) run(stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(clockResolution)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			c.now.Store(int64(time.Since(c.start)))
		}
	}
}
