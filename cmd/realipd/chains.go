package main

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/policies"
	"github.com/realipd/realipd/plugins"
)

// chainRuntime owns the policy chains the roles decide on (the ext_proc
// server's requests, the native listener's connections): the chain in
// force and the replaced ones still retiring. One chain serves every
// role, so that its plugins run once and a reload swaps it for all of
// them at the same instant: a reload commits every consumer first and only
// then retires the replaced chain, so a request of any role that finds the
// old chain retired finds the new one in its role's settings
// (plugins.Chain.Retire). It is safe for concurrent use.
type chainRuntime struct {
	log *slog.Logger
	reg prometheus.Registerer
	// drain bounds close's wait when no role ran.
	drain time.Duration
	// decisions is the decision log of every role deciding on the chains,
	// so that its rate limit bounds their lines together.
	decisions *plugins.DecisionLog

	mu        sync.Mutex
	consumers []chainConsumer
	chain     *plugins.Chain              // in force
	retiring  map[*plugins.Chain]struct{} // replaced (plugins.Chain.Retire), not closed yet
	closed    bool                        // every chain is closed; reloads fail
	users     int                         // roles running on the chains, not finished
	deadline  time.Time                   // the latest end of their drains
}

// chainConsumer is a role that decides on the chains. stage builds what
// cfg gives the role, with chain, without putting it in force; commit
// puts it in force and fails only on what stage could not check.
type chainConsumer struct {
	name  string
	stage func(cfg *config.Config, chain *plugins.Chain) (commit func() error, err error)
}

// newChainRuntime builds the policy chain of cfg (starting its plugins).
func newChainRuntime(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer, drain time.Duration) (*chainRuntime, error) {
	rt := &chainRuntime{log: logger.With("role", "policies"), reg: reg, drain: drain, retiring: map[*plugins.Chain]struct{}{}}
	rt.decisions = plugins.NewDecisionLog(logger, plugins.DecisionLogOptions{})
	chain, err := rt.build(cfg)
	if err != nil {
		return nil, err
	}
	rt.chain = chain
	return rt, nil
}

func (rt *chainRuntime) build(cfg *config.Config) (*plugins.Chain, error) {
	chain, err := policies.BuildWith(cfg.Policies, policies.Options{Logger: rt.log, Registerer: rt.reg})
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	return chain, nil
}

// current returns the chain in force, for a role being built.
func (rt *chainRuntime) current() *plugins.Chain {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.chain
}

// use registers a role that decides on the chains: it is updated on every
// reload, and the chains stay open until it calls done (see done).
func (rt *chainRuntime) use(c chainConsumer) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.consumers = append(rt.consumers, c)
	rt.users++
}

// done tells that a role has stopped serving and that requests it still
// has deciding may go on until deadline (the end of its drain). The last
// role's done closes the chains (closeBy the latest deadline).
func (rt *chainRuntime) done(deadline time.Time) {
	rt.mu.Lock()
	rt.users--
	if deadline.After(rt.deadline) {
		rt.deadline = deadline
	}
	last, by := rt.users <= 0, rt.deadline
	rt.mu.Unlock()
	if last {
		rt.closeBy(by)
	}
}

// reload is the chains' reloadTarget: it builds the chain of cfg (starting
// its plugins) and stages every consumer with it; on commit it puts the
// consumers' parts in force and retires the chain they replace.
func (rt *chainRuntime) reload(cfg *config.Config) (staged, error) {
	rt.mu.Lock()
	closed := rt.closed
	rt.mu.Unlock()
	if closed {
		return staged{}, errShuttingDown
	}
	chain, err := rt.build(cfg)
	if err != nil {
		return staged{}, err
	}
	s, err := rt.stage(cfg, chain)
	if err != nil {
		chain.Close()
		return staged{}, err
	}
	return s, nil
}

// stage stages every consumer with chain, which it owns from now on.
func (rt *chainRuntime) stage(cfg *config.Config, chain *plugins.Chain) (staged, error) {
	rt.mu.Lock()
	consumers := rt.consumers
	rt.mu.Unlock()
	commits := make([]func() error, len(consumers))
	for i, c := range consumers {
		commit, err := c.stage(cfg, chain)
		if err != nil {
			return staged{}, err
		}
		commits[i] = commit
	}
	return staged{
		commit: func() error {
			rt.mu.Lock()
			defer rt.mu.Unlock()
			if rt.closed {
				chain.Close()
				return errShuttingDown
			}
			for i, commit := range commits {
				if err := commit(); err != nil {
					if i == 0 {
						chain.Close()
						return fmt.Errorf("%s: %w", consumers[i].name, err)
					}
					// Not expected (commit fails only on what staging
					// checks): the roles before it decide on chain now, so
					// it goes in force anyway.
					rt.log.Error("a role did not take the new policy chain", "role", consumers[i].name, "error", err)
				}
			}
			rt.retire(rt.chain) // after every consumer's commit: see plugins.Chain.Retire
			rt.chain = chain
			return nil
		},
		abort: func() { chain.Close() },
	}, nil
}

// retire retires a replaced chain: it closes once the last request that
// entered it is done (plugins.Chain.Retire), however long that takes, and
// is then forgotten; closeBy stops it at shutdown if it is still open.
// rt.mu is held.
func (rt *chainRuntime) retire(old *plugins.Chain) {
	if old == nil {
		return
	}
	rt.retiring[old] = struct{}{}
	old.Retire()
	go func() {
		<-old.Done()
		rt.mu.Lock()
		_, ok := rt.retiring[old]
		delete(rt.retiring, old)
		rt.mu.Unlock()
		if !ok {
			return // closeBy took it over and reports it
		}
		if err := old.Close(); err != nil { // already closed: its close's errors
			rt.log.Warn("closing the replaced policy chain", "error", err)
		}
		rt.log.Debug("replaced policy chain closed", "policies", old.Names())
	}()
}

// close is closeBy with the drain timeout from now, for roles that did
// not run.
func (rt *chainRuntime) close() { rt.closeBy(time.Now().Add(rt.drain)) }

// closeBy stops every chain, the one in force and the retiring ones;
// reloads fail afterwards. It is idempotent. It retires every chain, waits
// until deadline for the requests still deciding on them, then closes
// whatever is still open (a request still deciding then sees its policies
// fail; on_error applies). The deadline is the end of the roles' drains,
// so shutdown takes no longer than the drains: after a drain that
// completed no request is left, and after one that timed out the deadline
// has passed. The wait matters when serving failed and a role cut its
// requests at once.
func (rt *chainRuntime) closeBy(deadline time.Time) {
	rt.mu.Lock()
	rt.closed = true
	chains := make([]*plugins.Chain, 0, 1+len(rt.retiring))
	if rt.chain != nil {
		chains = append(chains, rt.chain)
		rt.chain = nil
	}
	for c := range rt.retiring {
		chains = append(chains, c)
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
