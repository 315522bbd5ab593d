package main

import (
	"errors"
	"fmt"
	"log/slog"
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
// configuration, and the policy chains' lives across reloads. One Decider
// serves every door, so that its plugins run once and a reload swaps it
// for all of them in one store.
type decisions struct {
	*decide.Runtime
	log *slog.Logger
	reg prometheus.Registerer
	// drain bounds close's wait when no door ran.
	drain time.Duration
	// decisionLog is the decision log of every door, so that its rate
	// limit bounds their lines together, across reloads.
	decisionLog *decide.DecisionLog
}

// newDecisions builds the Decider of cfg (starting its plugins).
func newDecisions(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer, drain time.Duration) (*decisions, error) {
	rt := &decisions{log: logger.With("role", "policies"), reg: reg, drain: drain}
	rt.decisionLog = decide.NewDecisionLog(logger, decide.DecisionLogOptions{})
	d, err := rt.build(cfg)
	if err != nil {
		return nil, err
	}
	rt.Runtime = decide.NewRuntime(d, rt.log)
	return rt, nil
}

// build builds the policy chain of cfg (starting its plugins) and the
// Decider of cfg with it.
func (rt *decisions) build(cfg *config.Config) (*decide.Decider, error) {
	chain, err := policies.BuildWith(cfg.Policies, policies.Options{Logger: rt.log, Registerer: rt.reg})
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	s, err := decisionSettings(cfg, chain)
	if err == nil {
		var d *decide.Decider
		if d, err = decide.New(s, rt.decisionLog); err == nil {
			return d, nil
		}
	}
	chain.Close()
	return nil, err
}

// decisionSettings makes the decision settings of cfg with chain: one set
// for every door, so that the native HTTP mode resolves and answers as the
// ext_proc server does, with the same trust settings, client-IP header
// and deny status.
func decisionSettings(cfg *config.Config, chain *plugins.Chain) (decide.Settings, error) {
	resolver, err := clientip.New(cfg.Trust.ClientIP())
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
		TrustedCIDRs:       cfg.Trust.ClientIP().TrustedCIDRs,
	}, nil
}

// reload is the decisions' reloadTarget: it builds the Decider of cfg
// (starting its plugins); on commit it puts it in force for every door and
// retires the chain it replaces.
func (rt *decisions) reload(cfg *config.Config) (staged, error) {
	d, err := rt.build(cfg)
	if err != nil {
		return staged{}, err
	}
	return staged{
		commit: func() error {
			if err := rt.Swap(d); err != nil {
				if errors.Is(err, decide.ErrClosed) {
					return errShuttingDown
				}
				return err
			}
			return nil
		},
		abort: func() { d.Chain().Close() },
	}, nil
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
