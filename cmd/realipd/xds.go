package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/listenaddr"
	"github.com/realipd/realipd/origdst"
	"github.com/realipd/realipd/sockowner"
	"github.com/realipd/realipd/xds"
)

// xdsRuntime is the running xDS control plane: its server and what a
// reload needs to publish a new version.
type xdsRuntime struct {
	srv *xds.Server
	log *slog.Logger
}

// xdsRole builds the xDS control plane of cfg and publishes the resources
// of cfg as its first version, so that an Envoy connecting at once gets
// them. events (nil: none) hears of ACKed listeners and departed nodes.
func xdsRole(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer, events xds.Events) (role, *xdsRuntime, error) {
	log := logger.With("role", "xds")
	srv, err := xds.New(xds.Options{Logger: log, Registerer: reg, Events: events, DrainTimeout: cfg.ExtProc.DrainTimeout.Duration})
	if err != nil {
		return role{}, nil, err
	}
	rt := &xdsRuntime{srv: srv, log: log}
	res, err := buildXDS(cfg)
	if err != nil {
		return role{}, nil, err
	}
	if err := srv.SetResources(res.Version(), res.ByType()); err != nil {
		return role{}, nil, err
	}
	ln, err := bindRole("xds", "xds.listen", cfg.XDS.Listen, listenaddr.Options{Group: cfg.XDS.SocketGroup})
	if err != nil {
		return role{}, nil, err
	}
	return role{name: "xds", release: func() { ln.Close() }, run: func(ctx context.Context) error {
		log.Info("role starting", "listen", cfg.XDS.Listen, "version", srv.Version())
		return srv.ServeListener(ctx, ln)
	}}, rt, nil
}

// reload stages the resources of cfg: built and checked now, published on
// commit. A configuration that does not translate is rejected, and counted
// and shown on /debug/xds with its key path.
func (rt *xdsRuntime) reload(cfg *config.Config) (staged, error) {
	res, err := buildXDS(cfg)
	if err != nil {
		return staged{}, err // the reloader reports it (rejected)
	}
	return staged{
		commit: func() error {
			if err := rt.srv.SetResources(res.Version(), res.ByType()); err != nil {
				return err
			}
			return nil
		},
		abort: func() {},
	}, nil
}

// rejected records every problem of a rejected reload with the server (the
// version served stays the last good one): /debug/xds shows the last, and
// realipd_xds_config_rejected_total counts them.
func (rt *xdsRuntime) rejected(err error) {
	if ve, ok := errors.AsType[*config.ValidationError](err); ok {
		for _, fe := range ve.Errors {
			rt.srv.Rejected(fe.Path, fe.Msg)
		}
		return
	}
	rt.srv.Rejected("xds", err.Error())
}

// debugHandler serves /debug/xds.
func (rt *xdsRuntime) debugHandler() http.Handler { return rt.srv.DebugHandler() }

// xdsEventLog hears the control plane's events and logs them at debug
// level.
type xdsEventLog struct{ log *slog.Logger }

func (e xdsEventLog) ListenerACKed(node string, peer sockowner.Peer, port uint32) {
	e.log.Debug("xds: node ACKed a listener", "node", node, "peer", peer.String(), "port", port)
}

func (e xdsEventLog) NodeGone(node string) {
	e.log.Debug("xds: node's last stream is gone", "node", node)
}

// xdsEvents is the xds.Events of the control plane: it hands every event
// to each of its listeners in turn (the debug log, and the native
// listener's origdst.Handoff under fallback: auto). Listeners are added
// while the roles are built; each must be quick and must not block, as
// xds.Events says.
type xdsEvents struct {
	mu sync.Mutex
	to []xds.Events
}

func (e *xdsEvents) add(ev xds.Events) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.to = append(e.to, ev)
}

func (e *xdsEvents) listeners() []xds.Events {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.to
}

func (e *xdsEvents) ListenerACKed(node string, peer sockowner.Peer, port uint32) {
	for _, ev := range e.listeners() {
		ev.ListenerACKed(node, peer, port)
	}
}

func (e *xdsEvents) NodeGone(node string) {
	for _, ev := range e.listeners() {
		ev.NodeGone(node)
	}
}

var (
	_ xds.Events = xdsEventLog{}
	_ xds.Events = (*xdsEvents)(nil)
	_ xds.Events = (*origdst.Handoff)(nil)
)
