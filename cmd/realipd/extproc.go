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

// retireMargin is added to a replaced chain's longest possible Decide
// before the chain is closed (see chainGrace).
const retireMargin = 2 * time.Second

// extprocRole builds the ext_proc server of cfg: the resolver, the policy
// chain (starting plugin processes) and the server, registering its metrics
// in reg. Serving starts when the role runs; the drain on shutdown is bounded
// by extproc.drain_timeout, after which the chains' plugins are stopped.
// The returned extprocRuntime takes configuration reloads (see reload) and
// closes the chains when serve gives up before the role runs.
func extprocRole(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer) (role, *extprocRuntime, error) {
	rt := &extprocRuntime{
		log:      logger.With("role", "extproc"),
		reg:      reg,
		retiring: map[*plugins.Chain]*time.Timer{},
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
	rt.chain, rt.grace = chain, chainGrace(cfg.Policies)
	listen := cfg.ExtProc.Listen
	return role{name: "extproc", run: func(ctx context.Context) error {
		defer rt.close()
		logger.Info("role starting", "role", "extproc", "listen", listen)
		return rt.srv.Serve(ctx, listen)
	}}, rt, nil
}

// extprocRuntime is the ext_proc role's server and the policy chains it
// owns: the one in force and the replaced ones still retiring. It is safe
// for concurrent use.
type extprocRuntime struct {
	srv *extproc.Server
	log *slog.Logger
	reg prometheus.Registerer

	mu       sync.Mutex
	chain    *plugins.Chain                 // in force
	grace    time.Duration                  // chainGrace of chain
	retiring map[*plugins.Chain]*time.Timer // replaced, closed when their timer fires
	closed   bool                           // the role stopped; every chain is closed
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
	grace := chainGrace(cfg.Policies)
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
			rt.retire(rt.chain, rt.grace)
			rt.chain, rt.grace = chain, grace
			return nil
		},
		abort: func() { chain.Close() },
	}, nil
}

// retire closes a replaced chain after grace, once no request can still be
// deciding on it: a message reads the settings once, before its policies
// run. rt.mu is held.
func (rt *extprocRuntime) retire(old *plugins.Chain, grace time.Duration) {
	if old == nil {
		return
	}
	rt.retiring[old] = time.AfterFunc(grace, func() {
		rt.mu.Lock()
		_, ok := rt.retiring[old]
		delete(rt.retiring, old)
		rt.mu.Unlock()
		if ok {
			if err := old.Close(); err != nil {
				rt.log.Warn("closing the replaced policy chain", "error", err)
			}
			rt.log.Debug("replaced policy chain closed", "policies", old.Names())
		}
	})
}

// close stops every chain, the one in force and the retiring ones, once the
// server has stopped; reloads fail afterwards. It is idempotent.
func (rt *extprocRuntime) close() {
	rt.mu.Lock()
	rt.closed = true
	chains := make([]*plugins.Chain, 0, 1+len(rt.retiring))
	if rt.chain != nil {
		chains = append(chains, rt.chain)
		rt.chain = nil
	}
	for c, t := range rt.retiring {
		t.Stop()
		chains = append(chains, c)
	}
	clear(rt.retiring)
	rt.mu.Unlock()
	for _, c := range chains {
		if err := c.Close(); err != nil {
			rt.log.Warn("closing a policy chain", "error", err)
		}
	}
}

// chainGrace is how long a replaced chain of list stays open: its policies
// run one after the other, each plugin bounded by its timeout, so a request
// that started on it is done after the sum of the timeouts; retireMargin
// covers the scheduling around them.
func chainGrace(list []config.Policy) time.Duration {
	grace := retireMargin
	for _, p := range list {
		if p.Type == "plugin" {
			grace += p.Timeout.Duration
		}
	}
	return grace
}
