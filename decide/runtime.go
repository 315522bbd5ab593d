package decide

import (
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/realipd/realipd/plugins"
)

// ErrClosed is the error of a Swap after Runtime.CloseBy: serve is
// shutting down.
var ErrClosed = errors.New("decide: the runtime is closed")

// Runtime owns the Deciders of a process and their policy chains: the
// Decider in force (its embedded Current, which every door decides with)
// and the chains replaced by reloads, still open while requests decide on
// them. A reload stores one new Decider, for every door at once (Swap).
// It is safe for concurrent use.
type Runtime struct {
	Current
	log *slog.Logger

	mu       sync.Mutex
	retiring map[*plugins.Chain]struct{} // replaced (plugins.Chain.Retire), not closed yet
	closed   bool                        // every chain is closed; Swap fails
	users    int                         // doors running on the Deciders, not finished
	deadline time.Time                   // the latest end of their drains
}

// NewRuntime returns a Runtime with d in force; log receives its warnings
// (nil: none).
func NewRuntime(d *Decider, log *slog.Logger) *Runtime {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rt := &Runtime{log: log, retiring: map[*plugins.Chain]struct{}{}}
	rt.Store(d)
	return rt
}

// Swap makes d the Decider in force and retires the chain of the one it
// replaces (when d has another): the old chain closes once the last
// request that entered it is done (plugins.Chain.Retire). After CloseBy it
// closes d's chain and returns ErrClosed.
func (rt *Runtime) Swap(d *Decider) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.closed {
		d.chain.Close()
		return ErrClosed
	}
	old := rt.Load()
	rt.Store(d) // before the retire: see Current.Acquire
	if old != nil && old.chain != nil && old.chain != d.chain {
		rt.retire(old.chain)
	}
	return nil
}

// retire retires a replaced chain and closes it once it is done, however
// long that takes; CloseBy takes over at shutdown if it is still open.
// rt.mu is held.
func (rt *Runtime) retire(old *plugins.Chain) {
	rt.retiring[old] = struct{}{}
	old.Retire()
	go func() {
		<-old.Done()
		rt.mu.Lock()
		_, ok := rt.retiring[old]
		delete(rt.retiring, old)
		rt.mu.Unlock()
		if !ok {
			return // CloseBy took it over and reports it
		}
		if err := old.Close(); err != nil { // already closed: its close's errors
			rt.log.Warn("closing the replaced policy chain", "error", err)
		}
		rt.log.Debug("replaced policy chain closed", "policies", old.Names())
	}()
}

// Use registers a door that decides with the Runtime: the chains stay open
// until it calls Done.
func (rt *Runtime) Use() {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.users++
}

// Done tells that a door has stopped serving and that requests it still
// has deciding may go on until deadline (the end of its drain). The last
// door's Done closes the chains (CloseBy the latest deadline).
func (rt *Runtime) Done(deadline time.Time) {
	rt.mu.Lock()
	rt.users--
	if deadline.After(rt.deadline) {
		rt.deadline = deadline
	}
	last, by := rt.users <= 0, rt.deadline
	rt.mu.Unlock()
	if last {
		rt.CloseBy(by)
	}
}

// CloseBy stops every chain, the one in force and the retiring ones; Swap
// fails afterwards. It is idempotent. It retires every chain, waits until
// deadline for the requests still deciding on them, then closes whatever
// is still open (a request still deciding then sees its policies fail;
// on_error applies). The deadline is the end of the doors' drains, so
// shutdown takes no longer than the drains.
func (rt *Runtime) CloseBy(deadline time.Time) {
	rt.mu.Lock()
	rt.closed = true
	chains := make([]*plugins.Chain, 0, 1+len(rt.retiring))
	if d := rt.Load(); d != nil && d.chain != nil {
		chains = append(chains, d.chain)
	}
	for c := range rt.retiring {
		if len(chains) == 0 || c != chains[0] {
			chains = append(chains, c)
		}
	}
	clear(rt.retiring)
	rt.mu.Unlock()
	for _, c := range chains {
		c.Retire()
	}
	wait := time.NewTimer(time.Until(deadline))
	defer wait.Stop()
waiting:
	for _, c := range chains {
		select {
		case <-c.Done():
			continue
		default:
		}
		select {
		case <-c.Done():
		case <-wait.C:
			rt.log.Warn("requests still deciding at the end of the drain: closing their policy chain")
			break waiting
		}
	}
	for _, c := range chains {
		if err := c.Close(); err != nil {
			rt.log.Warn("closing a policy chain", "error", err)
		}
	}
}
