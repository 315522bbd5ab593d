package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/policies"
	"github.com/realipd/realipd/plugins"
)

// decisions is the decide.Runtime of serve: the Decider every door (the
// ext_proc server, the native listener) decides with, built from the
// configuration and the current lists of its list sources, and the policy
// chains' lives across reloads. One Decider serves every door, so that its
// plugins run once and a reload, or a list that changed, swaps it for all
// of them in one store.
type decisions struct {
	*decide.Runtime
	log *slog.Logger
	reg prometheus.Registerer
	// drain bounds close's wait when no door ran.
	drain time.Duration
	// decisionLog is the decision log of every door, so that its rate
	// limit bounds their lines together, across reloads.
	decisionLog *decide.DecisionLog
	// sources run the list sources of the configuration in force.
	sources *listSources

	// mu serialises what builds a Decider: a reload (from its stage to
	// its commit or abort) and a list refresh.
	mu     sync.Mutex
	cfg    *config.Config   // the configuration in force
	chains *policies.Chains // its policies, plugins started
}

// newDecisions builds the Decider of cfg: it loads the list sources of
// cfg (from their caches, or fetched; a required source without a list
// fails it, naming the source) and starts its plugins.
func newDecisions(ctx context.Context, cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer, drain time.Duration) (*decisions, error) {
	rt := &decisions{log: logger.With("role", "policies"), reg: reg, drain: drain}
	rt.decisionLog = decide.NewDecisionLog(logger, decide.DecisionLogOptions{})
	sources, err := newListSources(cfg, logger, reg)
	if err != nil {
		return nil, err
	}
	specs := cfg.ListSources()
	staged, err := sources.Stage(ctx, specs)
	if err != nil {
		sources.close()
		return nil, fmt.Errorf("list sources: %w", err)
	}
	chains, d, err := rt.build(cfg, staged.List)
	if err != nil {
		sources.close()
		return nil, err
	}
	rt.Runtime = decide.NewRuntime(d, rt.log)
	rt.cfg, rt.chains, rt.sources = cfg, chains, sources
	staged.Commit()
	sources.m.keepOnly(specNames(specs))
	sources.run(rt.refreshLists)
	return rt, nil
}

// build starts the plugins of cfg and builds its Decider with the lists
// of its sources. The Chains' own references are released: the chain
// built holds the plugins, and further chains are built from it while it
// is in force (refreshLists).
func (rt *decisions) build(cfg *config.Config, lists config.Lists) (*policies.Chains, *decide.Decider, error) {
	chains, err := policies.Start(cfg.Policies, policies.Options{Logger: rt.log, Registerer: rt.reg})
	if err != nil {
		return nil, nil, fmt.Errorf("policies: %w", err)
	}
	defer chains.Release()
	d, err := rt.decider(cfg, chains, lists)
	if err != nil {
		return nil, nil, err
	}
	return chains, d, nil
}

// decider builds a chain of chains and the Decider of cfg with it.
func (rt *decisions) decider(cfg *config.Config, chains *policies.Chains, lists config.Lists) (*decide.Decider, error) {
	chain, err := chains.Build(lists)
	if err != nil {
		return nil, err
	}
	s, err := decisionSettings(cfg, chain, lists)
	if err == nil {
		var d *decide.Decider
		if d, err = decide.New(s, rt.decisionLog); err == nil {
			return d, nil
		}
	}
	chain.Close()
	return nil, err
}

// decisionSettings makes the decision settings of cfg with chain and the
// lists of cfg's trust sources: one set for every door, so that the native
// HTTP mode resolves and answers as the ext_proc server does, with the
// same trust settings, client-IP header and deny status.
func decisionSettings(cfg *config.Config, chain *plugins.Chain, lists config.Lists) (decide.Settings, error) {
	trusted := config.Expand(cfg.Trust.TrustedPrefixes(), cfg.Trust.TrustedSources(), lists)
	ci := cfg.Trust.ClientIP()
	if cfg.Trust.UsesTrustedCIDRs() {
		ci.TrustedCIDRs = trusted
	}
	resolver, err := clientip.New(ci)
	if err != nil {
		return decide.Settings{}, fmt.Errorf("trust: %w", err)
	}
	return decide.Settings{
		Resolver:           resolver,
		Chain:              chain,
		PassUnresolved:     cfg.Trust.PassUnresolved(),
		ClientIPHeader:     cfg.ExtProc.ClientIPHeader,
		MetadataNamespace:  cfg.ExtProc.MetadataNamespace,
		DenyStatus:         cfg.ExtProc.DenyStatus,
		XFFAppendedByEnvoy: cfg.ExtProc.XFFAppendedByEnvoy,
		TrustedCIDRs:       trusted,
	}, nil
}

// reload is the decisions' reloadTarget: it stages the list sources of
// cfg (loading the new ones), starts its plugins and builds its Decider;
// on commit it puts it in force for every door, retires the chain it
// replaces and makes cfg's sources the running ones. From stage to commit
// or abort, no list refresh builds a Decider (it waits, then builds on
// what is in force).
func (rt *decisions) reload(ctx context.Context, cfg *config.Config) (staged, error) {
	rt.mu.Lock()
	specs := cfg.ListSources()
	st, err := rt.sources.Stage(ctx, specs)
	if err != nil {
		rt.sources.m.keepOnly(specNames(rt.cfg.ListSources()))
		rt.mu.Unlock()
		return staged{}, fmt.Errorf("list sources: %w", err)
	}
	chains, d, err := rt.build(cfg, st.List)
	if err != nil {
		rt.sources.m.keepOnly(specNames(rt.cfg.ListSources()))
		rt.mu.Unlock()
		return staged{}, err
	}
	return staged{
		commit: func() error {
			defer rt.mu.Unlock()
			if err := rt.Swap(d); err != nil {
				rt.sources.m.keepOnly(specNames(rt.cfg.ListSources()))
				if errors.Is(err, decide.ErrClosed) {
					return errShuttingDown
				}
				return err
			}
			rt.cfg, rt.chains = cfg, chains
			st.Commit()
			rt.sources.m.keepOnly(specNames(specs))
			return nil
		},
		abort: func() {
			defer rt.mu.Unlock()
			d.Chain().Close()
			rt.sources.m.keepOnly(specNames(rt.cfg.ListSources()))
		},
	}, nil
}

// refreshLists builds the Decider of the configuration in force with the
// current lists of its sources, and puts it in force for every door: the
// plugins keep running (the new chain shares them), and a cidr policy
// whose lists did not change keeps its prefix sets.
func (rt *decisions) refreshLists() {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	d, err := rt.decider(rt.cfg, rt.chains, rt.sources.List)
	if err != nil {
		if !errors.Is(err, policies.ErrStopped) {
			rt.log.Error("a list changed, but the decision settings could not be rebuilt; the last ones keep serving", "error", err)
		}
		return
	}
	if err := rt.Swap(d); err != nil {
		return // shutting down: Swap closed the chain
	}
	ci := d.Resolver().Config()
	rt.log.Info("list sources changed: new lists in force", "trusted_cidrs", len(ci.TrustedCIDRs), "policies", d.Chain().Len())
}

// use registers a door that decides with the runtime: the chains stay
// open until it calls done.
func (rt *decisions) use() { rt.Use() }

// done tells that a door has stopped serving and that requests it still
// has deciding may go on until deadline (the end of its drain); the last
// door's done closes the chains.
func (rt *decisions) done(deadline time.Time) { rt.Done(deadline) }

// close closes the chains by the drain timeout from now, for doors that
// did not run.
func (rt *decisions) close() { rt.CloseBy(time.Now().Add(rt.drain)) }

// closeSources stops the list sources.
func (rt *decisions) closeSources() { rt.sources.close() }
