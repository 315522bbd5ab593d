package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/internal/admin"
	"github.com/realipd/realipd/internal/config"
)

// adminRole builds the admin listener of cfg: /metrics serves reg (every
// role's metrics), /config_dump the configuration in force, /readyz the
// readiness checks the other roles register with the returned server.
// current returns the configuration in force, which a reload replaces;
// /config_dump shows it with the plugins' settings redacted.
func adminRole(cfg *config.Config, logger *slog.Logger, reg *prometheus.Registry, current func() *config.Config) (role, *admin.Server, error) {
	log := logger.With("role", "admin")
	srv, err := admin.New(admin.Options{
		Logger:       log,
		Registry:     reg,
		ConfigDump:   func() any { return current().Redacted() },
		AllowedHosts: cfg.Admin.AllowedHosts,
	})
	if err != nil {
		return role{}, nil, err
	}
	return role{name: "admin", run: func(ctx context.Context) error {
		log.Info("role starting", "listen", cfg.Admin.Listen)
		return srv.Run(ctx, cfg.Admin.Listen)
	}}, srv, nil
}
