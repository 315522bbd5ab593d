package main

import (
	"context"
	"log/slog"

	"github.com/realipd/realipd/internal/admin"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/listenaddr"
	"github.com/realipd/realipd/listsource"
	"github.com/realipd/realipd/xds"
)

// adminRole builds the admin listener of cfg: /metrics serves reg (every
// role's metrics), /config_dump what dump returns, /readyz the readiness
// checks the other roles register with the returned server.
func adminRole(cfg *config.Config, logger *slog.Logger, reg admin.Registry, dump func() any) (role, *admin.Server, error) {
	log := logger.With("role", "admin")
	srv, err := admin.New(admin.Options{
		Logger:       log,
		Registry:     reg,
		ConfigDump:   dump,
		AllowedHosts: cfg.Admin.AllowedHosts,
	})
	if err != nil {
		return role{}, nil, err
	}
	ln, err := bindRole("admin", "admin.listen", cfg.Admin.Listen, listenaddr.Options{})
	if err != nil {
		return role{}, nil, err
	}
	return role{name: "admin", run: func(ctx context.Context) error {
		log.Info("role starting", "listen", cfg.Admin.Listen)
		return srv.ServeListen(ctx, ln, cfg.Admin.Listen)
	}, release: func() { ln.Close() }}, srv, nil
}

// configDump is what /config_dump shows: the configuration in force (which
// a reload replaces), the plugins' settings redacted, the xDS version
// served and each node's versions, the native listener's fallback (with auto, who holds each
// capture port), and the list sources' state.
type configDump struct {
	Config  *config.Config `json:"config"`
	XDS     *xdsDump       `json:"xds,omitempty"`
	OrigDst *origdstDump   `json:"origdst,omitempty"`
	// ListSources are the list sources in force: each one's URLs
	// (redacted) or file, entries, age, ETag, and last refusal.
	ListSources []listsource.Status `json:"list_sources,omitempty"`
}

type xdsDump struct {
	Version string `json:"version"` // the snapshot version every node is sent
	// Nodes are, per connected node and type URL, the versions last sent
	// and last ACKed.
	Nodes map[string]map[string]xds.TypeVersions `json:"nodes"`
}

func (s *serving) configDump() any {
	d := configDump{Config: s.current.Load().Redacted()}
	if s.xdsVersion != nil {
		d.XDS = &xdsDump{Version: s.xdsVersion(), Nodes: s.xdsNodes()}
	}
	if s.origdstDump != nil {
		d.OrigDst = s.origdstDump()
	}
	if s.listSources != nil {
		for _, src := range s.listSources() {
			d.ListSources = append(d.ListSources, src.Status())
		}
	}
	return d
}
