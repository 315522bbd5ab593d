package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/policies"
	"github.com/realipd/realipd/plugins"
)

// extprocRole builds the ext_proc server of cfg: the resolver, the policy
// chain (starting plugin processes) and the server, registering its metrics
// in reg. Serving starts when the role runs; the drain on shutdown is bounded
// by extproc.drain_timeout, after which the chains' plugins are stopped (see
// closeBy). The returned extprocRuntime takes configuration reloads (see
// reload) and closes the chains when serve gives up before the role runs.
func extprocRole(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer) (role, *extprocRuntime, error) {
	rt := &extprocRuntime{
		log:      logger.With("role", "extproc"),
		reg:      reg,
		drain:    cfg.ExtProc.DrainTimeout.Duration,
		retiring: map[*plugins.Chain]struct{}{},
	}
	if rt.drain <= 0 {
		rt.drain = extproc.DefaultDrainTimeout
	}
	settings, chain, err := rt.build(cfg)
	if err != nil {
		return role{}, nil, err
	}
	rt.srv, err = extproc.New(settings, extproc.Options{
		Logger:       rt.log,
		Registerer:   reg,
		DrainTimeout: cfg.ExtProc.DrainTimeout.Duration,
	})
	if err != nil {
		chain.Close()
		return role{}, nil, err
	}
	rt.chain = chain
	listen := cfg.ExtProc.Listen
	return role{name: "extproc", run: func(ctx context.Context) error {
		// The drain starts when ctx ends, or now when serving fails: the
		// requests still deciding then are waited for until drain_timeout
		// after that (see closeBy).
		drainStart := make(chan time.Time, 1)
		stop := context.AfterFunc(ctx, func() { drainStart <- time.Now() })
		defer func() {
			start := time.Now()
			if !stop() {
				start = <-drainStart
			}
			rt.closeBy(start.Add(rt.drain))
		}()
		logger.Info("role starting", "role", "extproc", "listen", listen)
		return rt.srv.Serve(ctx, listen)
	}}, rt, nil
}

// extprocRuntime is the ext_proc role's server and the policy chains it
// owns: the one in force and the replaced ones still retiring. It is safe
// for concurrent use.
type extprocRuntime struct {
	srv   *extproc.Server
	log   *slog.Logger
	reg   prometheus.Registerer
	drain time.Duration // extproc.drain_timeout, which bounds closeBy's wait

	mu       sync.Mutex
	chain    *plugins.Chain              // in force
	retiring map[*plugins.Chain]struct{} // replaced (plugins.Chain.Retire), not closed yet
	closed   bool                        // the role stopped; every chain is closed
}

// build makes the settings of cfg: a resolver and a started policy chain,
// which the caller owns.
func (rt *extprocRuntime) build(cfg *config.Config) (extproc.Settings, *plugins.Chain, error) {
	resolver, err := clientip.New(cfg.Trust.ClientIP())
	if err != nil {
		return extproc.Settings{}, nil, fmt.Errorf("extproc: %w", err)
	}
	chain, err := policies.BuildWith(cfg.Policies, policies.Options{Logger: rt.log, Registerer: rt.reg})
	if err != nil {
		return extproc.Settings{}, nil, fmt.Errorf("extproc: %w", err)
	}
	return extproc.Settings{
		Resolver:           resolver,
		Chain:              chain,
		ClientIPHeader:     cfg.ExtProc.ClientIPHeader,
		MetadataNamespace:  cfg.ExtProc.MetadataNamespace,
		XFFAppendedByEnvoy: cfg.ExtProc.XFFAppendedByEnvoy,
		PassUnresolved:     cfg.Trust.PassUnresolved(),
		DenyStatus:         cfg.ExtProc.DenyStatus,
	}, chain, nil
}

// reload is the ext_proc role's reloadTarget: it builds the settings of cfg
// (starting its plugins) and, on commit, puts them in force and retires the
// chain they replace.
func (rt *extprocRuntime) reload(cfg *config.Config) (staged, error) {
	rt.mu.Lock()
	closed := rt.closed
	rt.mu.Unlock()
	if closed {
		return staged{}, errShuttingDown
	}
	settings, chain, err := rt.build(cfg)
	if err != nil {
		return staged{}, err
	}
	return rt.stage(settings, chain), nil
}

// stage returns the commit and abort of settings, whose chain it owns.
func (rt *extprocRuntime) stage(settings extproc.Settings, chain *plugins.Chain) staged {
	return staged{
		commit: func() error {
			rt.mu.Lock()
			defer rt.mu.Unlock()
			if rt.closed {
				chain.Close()
				return errShuttingDown
			}
			if err := rt.srv.Update(settings); err != nil {
				chain.Close()
				return err
			}
			rt.retire(rt.chain) // after Update: see plugins.Chain.Retire
			rt.chain = chain
			return nil
		},
		abort: func() { chain.Close() },
	}
}

// retire retires a replaced chain: it closes once the last request that
// entered it is done (plugins.Chain.Retire), however long that takes, and
// is then forgotten; close stops it at shutdown if it is still open. rt.mu
// is held.
func (rt *extprocRuntime) retire(old *plugins.Chain) {
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
			return // close took it over and reports it
		}
		if err := old.Close(); err != nil { // already closed: its close's errors
			rt.log.Warn("closing the replaced policy chain", "error", err)
		}
		rt.log.Debug("replaced policy chain closed", "policies", old.Names())
	}()
}

// close is closeBy with the drain timeout from now, for a role that did not
// run.
func (rt *extprocRuntime) close() { rt.closeBy(time.Now().Add(rt.drain)) }

// closeBy stops every chain, the one in force and the retiring ones, once
// the server has stopped; reloads fail afterwards. It is idempotent. It
// retires every chain, waits until deadline for the requests still deciding
// on them, then closes whatever is still open (a request still deciding
// then sees its policies fail; on_error applies). The role's deadline is
// drain_timeout after the drain began, so shutdown takes no longer than the
// drain: after a drain that completed no request is left, and after one
// that timed out the deadline has passed (the requests of the streams it
// cut have cancelled contexts and nobody to answer to). The wait matters
// when serving failed and the server cut its streams at once.
func (rt *extprocRuntime) closeBy(deadline time.Time) {
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
