package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/policies"
)

// extprocRole builds the ext_proc server of cfg: the resolver, the policy
// chain (starting plugin processes) and the server, registering its metrics
// in reg. Serving starts when the role runs; the drain on shutdown is bounded
// by extproc.drain_timeout, after which the chain's plugins are stopped.
// closeChain stops them when serve gives up before the role runs.
func extprocRole(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer) (r role, srv *extproc.Server, closeChain func(), err error) {
	resolver, err := clientip.New(cfg.Trust.ClientIP())
	if err != nil {
		return role{}, nil, nil, fmt.Errorf("extproc: %w", err)
	}
	chain, err := policies.BuildWith(cfg.Policies, policies.Options{Logger: logger.With("role", "extproc"), Registerer: reg})
	if err != nil {
		return role{}, nil, nil, fmt.Errorf("extproc: %w", err)
	}
	srv, err = extproc.New(extproc.Settings{
		Resolver:           resolver,
		Chain:              chain,
		ClientIPHeader:     cfg.ExtProc.ClientIPHeader,
		MetadataNamespace:  cfg.ExtProc.MetadataNamespace,
		XFFAppendedByEnvoy: cfg.ExtProc.XFFAppendedByEnvoy,
		DenyStatus:         cfg.ExtProc.DenyStatus,
	}, extproc.Options{
		Logger:       logger.With("role", "extproc"),
		Registerer:   reg,
		DrainTimeout: cfg.ExtProc.DrainTimeout.Duration,
	})
	if err != nil {
		chain.Close()
		return role{}, nil, nil, err
	}
	closeChain = func() { chain.Close() }
	return role{name: "extproc", run: func(ctx context.Context) error {
		defer chain.Close()
		logger.Info("role starting", "role", "extproc", "listen", cfg.ExtProc.Listen)
		return srv.Serve(ctx, cfg.ExtProc.Listen)
	}}, srv, closeChain, nil
}
