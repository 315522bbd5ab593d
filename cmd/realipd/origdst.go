package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/origdst"
)

// origdstOptions turns the origdst section into the server's options.
func origdstOptions(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer) (origdst.Options, error) {
	o := cfg.OrigDst
	mode, err := origdst.ParseMode(o.Mode)
	if err != nil {
		return origdst.Options{}, err
	}
	return origdst.Options{
		Mode:           mode,
		Listen:         o.ListenAddrs(),
		Mark:           uint32(o.Mark),
		DialTimeout:    o.DialTimeout.Duration,
		IdleTimeout:    o.IdleTimeout.Duration,
		DrainTimeout:   o.DrainTimeout.Duration,
		MaxConnections: o.MaxConnections,
		ProxyProtocol:  o.ProxyProtocol,
		OriginalSource: o.OriginalSource,
		TProxyMark:     uint32(o.TProxyMark),
		HTTPPorts:      httpPorts(o.HTTPPorts),
		HTTPEventLoops: o.HTTPEventLoops,
		Logger:         logger,
		Registerer:     reg,
	}, nil
}

// httpPorts converts validated ports.
func httpPorts(ports []int) []uint16 {
	out := make([]uint16, len(ports))
	for i, p := range ports {
		out[i] = uint16(p)
	}
	return out
}

// origdstRuntime is the native listener as serve runs it.
type origdstRuntime struct {
	role role
	// closeListeners releases the listeners when serve gives up before
	// the role runs.
	closeListeners func()
	// ready is the role's readiness check.
	ready func(context.Context) error
	// dump is what /config_dump shows of the role.
	dump func() *origdstDump
}

// origdstDump is the origdst part of /config_dump: the fallback in force
// and, with auto, who holds each capture port.
type origdstDump struct {
	Fallback string                     `json:"fallback"`
	Ports    map[string]origdstPortDump `json:"ports,omitempty"`
}

type origdstPortDump struct {
	Holder  string   `json:"holder"`            // native, envoy or none (neither serves it: taking it back failed)
	Nodes   []string `json:"nodes,omitempty"`   // the Envoy nodes holding it
	Error   string   `json:"error,omitempty"`   // why taking it back failed
	Claimed []string `json:"claimed,omitempty"` // nodes of Envoy's user claiming a port the native listener still serves
	Waiting string   `json:"waiting,omitempty"` // why their claim is not honoured yet (no socket of Envoy's user listens there)
}

// origdstRole builds the native listener of cfg on the chains of chains
// (a consumer: reloads give it the new chain and trust settings), with its
// metrics in reg. With fallback always it binds every capture address now,
// so that an address in use or a missing privilege stops serve before
// anything starts; with never it binds nothing and the role waits idle.
// With auto it binds every capture address now too (no Envoy has ACKed
// anything yet), with SO_REUSEPORT, and adds an origdst.Handoff to events,
// the xDS control plane's: a port is handed to Envoy when a node ACKs a
// listener on it and bound again origdst.fallback_grace after the last
// such node is gone. Without the xDS role (events nil) nothing would ever
// ACK, and auto binds as always.
func origdstRole(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer, chains *decisions, events *xdsEvents) (*origdstRuntime, error) {
	log := logger.With("role", "origdst")
	opts, err := origdstOptions(cfg, log, reg)
	if err != nil {
		return nil, fmt.Errorf("the origdst role cannot start: origdst.mode: %w", err)
	}
	srv, err := origdst.New(opts, &chains.Current)
	if err != nil {
		return nil, fmt.Errorf("the origdst role cannot start: %w", err)
	}
	chains.use()
	// chains counts the role as a user from here on: its run tells when it
	// is done; if serve gives up before, its cleanup closes the chains.
	drain := opts.DrainTimeout
	fallback := cfg.OrigDst.Fallback
	if fallback == "never" {
		log.Info("origdst: fallback is never: the capture addresses are not bound", "listen", cfg.OrigDst.Listen)
		return &origdstRuntime{
			role: role{name: "origdst", run: func(ctx context.Context) error {
				<-ctx.Done()
				chains.done(time.Now())
				return nil
			}},
			closeListeners: func() {},
			ready:          func(context.Context) error { return nil },
			dump:           func() *origdstDump { return &origdstDump{Fallback: fallback} },
		}, nil
	}
	if fallback == "auto" && events == nil {
		log.Info("origdst: fallback is auto but the xDS role is off: no Envoy will ever ACK a listener, so the capture addresses are bound as with always", "listen", cfg.OrigDst.Listen)
		fallback = "always"
	}
	var (
		handoff *origdst.Handoff
		lns     []*origdst.Listener
	)
	if fallback == "auto" {
		if handoff, err = origdst.NewHandoff(srv, origdst.HandoffOptions{Grace: cfg.OrigDst.FallbackGrace.Duration}); err != nil {
			return nil, fmt.Errorf("the origdst role cannot start: %w", err)
		}
		lns, err = handoff.Bind(context.Background())
	} else {
		lns, err = srv.Bind(context.Background())
	}
	if err != nil {
		return nil, fmt.Errorf("the origdst role cannot start: %s", bindProblem(cfg, err))
	}
	rt := &origdstRuntime{
		closeListeners: func() {
			for _, ln := range lns {
				ln.Close()
			}
		},
		ready: srv.Ready,
		dump:  func() *origdstDump { return &origdstDump{Fallback: fallback} },
	}
	if err := srv.CheckMark(); err != nil {
		rt.closeListeners()
		return nil, fmt.Errorf("the origdst role cannot start: origdst.mark: %w", err)
	}
	serve := func(ctx context.Context) error { return srv.ServeListeners(ctx, lns) }
	if handoff != nil {
		events.add(handoff)
		serve = func(ctx context.Context) error { return handoff.Serve(ctx, lns) }
		rt.ready = handoff.Ready
		rt.dump = func() *origdstDump { return handoffDump(handoff) }
	}
	rt.role = role{name: "origdst", run: func(ctx context.Context) error {
		began := drainClock(ctx)
		defer func() { chains.done(began().Add(drain)) }()
		log.Info("role starting", "role", "origdst", "listen", cfg.OrigDst.Listen, "mode", cfg.OrigDst.Mode, "fallback", fallback)
		return serve(ctx)
	}}
	return rt, nil
}

// handoffDump is the /config_dump of fallback auto: who holds each port.
func handoffDump(h *origdst.Handoff) *origdstDump {
	d := &origdstDump{Fallback: "auto", Ports: map[string]origdstPortDump{}}
	for _, p := range h.Ports() {
		d.Ports[strconv.Itoa(int(p.Port))] = origdstPortDump{Holder: p.Holder, Nodes: p.Nodes, Error: p.Error, Claimed: p.Claimed, Waiting: p.Waiting}
	}
	return d
}

// bindProblem says which key a bind failure is about: origdst.mode when
// the socket could not be made transparent (tproxy needs CAP_NET_ADMIN),
// origdst.listen[i] otherwise.
func bindProblem(cfg *config.Config, err error) string {
	be, ok := errors.AsType[*origdst.BindError](err)
	if !ok {
		return err.Error()
	}
	if be.Transparent {
		return fmt.Sprintf("origdst.mode: %s (binding origdst.listen[%d] %s)", be.Reason(), be.Index, be.Addr)
	}
	return fmt.Sprintf("origdst.listen[%d] %s: %s", be.Index, be.Addr, be.Reason())
}
