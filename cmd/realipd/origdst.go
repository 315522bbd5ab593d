package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/origdst"
	"github.com/realipd/realipd/plugins"
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
		HTTPPorts:      httpPorts(o.HTTPPorts),
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

// origdstSettings makes the native listener's settings of cfg with chain:
// the HTTP mode resolves and answers as the ext_proc server does, with the
// same trust settings, client-IP header and deny status.
func origdstSettings(cfg *config.Config, chain *plugins.Chain) (origdst.Settings, error) {
	resolver, err := clientip.New(cfg.Trust.ClientIP())
	if err != nil {
		return origdst.Settings{}, fmt.Errorf("origdst: %w", err)
	}
	return origdst.Settings{
		Chain:          chain,
		PassUnresolved: cfg.Trust.PassUnresolved(),
		TrustedCIDRs:   cfg.Trust.ClientIP().TrustedCIDRs,
		Resolver:       resolver,
		ClientIPHeader: cfg.ExtProc.ClientIPHeader,
		DenyStatus:     cfg.ExtProc.DenyStatus,
	}, nil
}

// origdstRole builds the native listener of cfg on the chains of chains
// (a consumer: reloads give it the new chain and trust settings), with its
// metrics in reg. With fallback always (and auto, whose handoff is not
// built yet) it binds every capture address now, so that an address in
// use or a missing privilege stops serve before anything starts; with
// never it binds nothing and the role waits idle. The returned close
// releases the listeners when serve gives up before the role runs; ready
// is the role's readiness check.
func origdstRole(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer, chains *chainRuntime) (r role, closeListeners func(), ready func(context.Context) error, err error) {
	log := logger.With("role", "origdst")
	opts, err := origdstOptions(cfg, log, reg)
	if err != nil {
		return role{}, nil, nil, fmt.Errorf("the origdst role cannot start: origdst.mode: %w", err)
	}
	settings, err := origdstSettings(cfg, chains.current())
	if err != nil {
		return role{}, nil, nil, fmt.Errorf("the origdst role cannot start: %w", err)
	}
	srv, err := origdst.New(opts, settings)
	if err != nil {
		return role{}, nil, nil, fmt.Errorf("the origdst role cannot start: %w", err)
	}
	chains.use(chainConsumer{name: "origdst", stage: func(cfg *config.Config, chain *plugins.Chain) (func() error, error) {
		s, err := origdstSettings(cfg, chain)
		if err != nil {
			return nil, err
		}
		return func() error { return srv.Update(s) }, nil
	}})
	// chains counts the role as a user from here on: its run tells when it
	// is done; if serve gives up before, its cleanup closes the chains.
	drain := opts.DrainTimeout
	fallback := cfg.OrigDst.Fallback
	if fallback == "never" {
		log.Info("origdst: fallback is never: the capture addresses are not bound", "listen", cfg.OrigDst.Listen)
		return role{name: "origdst", run: func(ctx context.Context) error {
			<-ctx.Done()
			chains.done(time.Now())
			return nil
		}}, func() {}, func(context.Context) error { return nil }, nil
	}
	if fallback == "auto" {
		log.Warn("origdst: fallback auto is not built yet (binding only while no Envoy has ACKed the capture ports): binding the capture addresses now, as with always",
			"fallback_grace", cfg.OrigDst.FallbackGrace.Duration)
	}
	lns, err := srv.Bind(context.Background())
	if err != nil {
		return role{}, nil, nil, fmt.Errorf("the origdst role cannot start: %s", bindProblem(cfg, err))
	}
	closeListeners = func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	if err := srv.CheckMark(); err != nil {
		closeListeners()
		return role{}, nil, nil, fmt.Errorf("the origdst role cannot start: origdst.mark: %w", err)
	}
	return role{name: "origdst", run: func(ctx context.Context) error {
		began := drainClock(ctx)
		defer func() { chains.done(began().Add(drain)) }()
		log.Info("role starting", "role", "origdst", "listen", cfg.OrigDst.Listen, "mode", cfg.OrigDst.Mode, "fallback", fallback)
		return srv.ServeListeners(ctx, lns)
	}}, closeListeners, srv.Ready, nil
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
