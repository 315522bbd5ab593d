package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/internal/admin"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/listenaddr"
	"github.com/realipd/realipd/listsource"
	"github.com/realipd/realipd/xds"
)

// A role is one long-running part of realipd (ext_proc server, xDS control
// plane, admin listener, native listener). run serves until ctx is
// cancelled, then shuts down gracefully and returns nil. An error returned
// at any time stops every other role and makes the process exit 1.
type role struct {
	name string
	run  func(ctx context.Context) error
	// release closes what the role's constructor opened (its listener)
	// when serve gives up before the role runs; nil: nothing to close.
	release func()
}

// bindRole opens the listen address addr of role name (its key names the
// configuration key) when the role is built, so that an address in use
// stops serve before anything starts, with one line naming the role, the
// key and the reason. o says who may connect to a unix socket.
func bindRole(name, key, addr string, o listenaddr.Options) (net.Listener, error) {
	ln, err := listenaddr.Listen(addr, o)
	if err != nil {
		return nil, fmt.Errorf("the %s role cannot start: %s %s: %s", name, key, addr, listenaddr.Reason(err))
	}
	return ln, nil
}

// serving is what serve runs: the roles, and what a configuration reload
// updates.
type serving struct {
	roles   []role
	targets []reloadTarget                // the roles' parts that take a reload, in role order
	current atomic.Pointer[config.Config] // the configuration in force (/config_dump)
	reloads *reloadMetrics
	// xdsVersion returns the xDS version served (/config_dump); nil
	// without the xDS role.
	xdsVersion func() string
	// xdsNodes returns each connected node's versions (/config_dump); set
	// with xdsVersion.
	xdsNodes func() map[string]map[string]xds.TypeVersions
	// xdsEvents are the control plane's events, handed to the roles that
	// listen; nil without the xDS role.
	xdsEvents *xdsEvents
	// origdstDump returns the native listener's part of /config_dump;
	// nil without the origdst role.
	origdstDump func() *origdstDump
	// listSources returns the running list sources (/config_dump); nil
	// without a role that decides.
	listSources func() []*listsource.Source
	// stops are called once the roles have stopped and no reload runs.
	stops []func()
}

// stop stops what runs beside the roles (the list sources).
func (s *serving) stop() {
	for _, f := range s.stops {
		f()
	}
}

// buildRoles returns the roles cfg enables, in start order. Each role's
// constructor is where its package is wired in: it gets the validated
// configuration and a logger, and returns a role or an error that stops
// serve before anything starts; a role that can take a new configuration
// while serving also adds a reloadTarget. Roles share one metrics registry,
// served by the admin role. When a constructor fails, what the earlier ones
// started (plugin processes) is stopped before the error is returned.
func buildRoles(cfg *config.Config, logger *slog.Logger) (*serving, error) {
	return buildRolesOn(cfg, logger, prometheus.NewRegistry())
}

// buildRolesOn is buildRoles with the metrics registry given: every role
// registers its metrics in reg, and the admin role serves it. docs/metrics.md's
// test passes a registry that records what is registered.
func buildRolesOn(cfg *config.Config, logger *slog.Logger, reg admin.Registry) (s *serving, err error) {
	var cleanups []func()
	defer func() {
		if err != nil {
			for _, c := range slices.Backward(cleanups) {
				c()
			}
		}
	}()
	s = &serving{}
	s.current.Store(cfg)
	if s.reloads, err = newReloadMetrics(reg); err != nil {
		return nil, err
	}
	var adminSrv *admin.Server
	if cfg.Admin.Enabled {
		r, srv, err := adminRole(cfg, logger, reg, s.configDump)
		if err != nil {
			return nil, err
		}
		adminSrv = srv
		cleanups = append(cleanups, r.release)
		s.roles = append(s.roles, r)
	}
	// One Decider serves the ext_proc server and the native listener.
	var chains *decisions
	if cfg.ExtProc.Enabled || cfg.OrigDst.Enabled {
		// The list sources load here (their caches, or a fetch bounded by
		// its timeout): a required one without a list stops serve.
		if chains, err = newDecisions(context.Background(), cfg, logger, reg, shutdownDrain(cfg)); err != nil {
			return nil, err
		}
		cleanups = append(cleanups, chains.close, chains.closeSources)
		s.stops = append(s.stops, chains.closeSources)
		s.listSources = chains.sources.Sources
		s.targets = append(s.targets, reloadTarget{name: "policies", stage: chains.reload})
	}
	if cfg.ExtProc.Enabled {
		r, srv, err := extprocRole(cfg, logger, reg, chains)
		if err != nil {
			return nil, err
		}
		cleanups = append(cleanups, r.release)
		if adminSrv != nil {
			adminSrv.AddReadinessCheck("extproc", srv.Ready)
		}
		s.roles = append(s.roles, r)
	}
	var events *xdsEvents // the control plane's events; nil without it
	if cfg.XDS.Enabled {
		events = &xdsEvents{}
		events.add(xdsEventLog{logger.With("role", "xds")})
		s.xdsEvents = events
		r, rt, err := xdsRole(cfg, logger, reg, events)
		if err != nil {
			return nil, err
		}
		if adminSrv != nil {
			adminSrv.AddReadinessCheck("xds", rt.srv.Ready)
			adminSrv.Handle("GET /debug/xds", rt.debugHandler())
		}
		cleanups = append(cleanups, r.release)
		s.xdsVersion, s.xdsNodes = rt.srv.Version, rt.srv.NodeVersions
		s.roles = append(s.roles, r)
		s.targets = append(s.targets, reloadTarget{name: "xds", stage: func(_ context.Context, cfg *config.Config) (staged, error) { return rt.reload(cfg) }, rejected: rt.rejected})
	}
	if cfg.Intercept.EBPF.Enabled {
		r, closeCapture, err := ebpfRole(cfg, logger, reg)
		if err != nil {
			return nil, err
		}
		cleanups = append(cleanups, closeCapture)
		s.roles = append(s.roles, r)
	}
	if cfg.OrigDst.Enabled {
		rt, err := origdstRole(cfg, logger, reg, chains, events)
		if err != nil {
			return nil, err
		}
		cleanups = append(cleanups, rt.closeListeners)
		if adminSrv != nil {
			adminSrv.AddReadinessCheck("origdst", rt.ready)
		}
		s.origdstDump = rt.dump
		s.roles = append(s.roles, rt.role)
	}
	return s, nil
}

// shutdownDrain is the longest drain of the roles cfg enables
// (extproc.drain_timeout, origdst.drain_timeout): how long the requests
// and connections in flight may take to finish on SIGTERM.
func shutdownDrain(cfg *config.Config) time.Duration {
	var d time.Duration
	if cfg.ExtProc.Enabled {
		d = cfg.ExtProc.DrainTimeout.Duration
		if d <= 0 {
			d = extproc.DefaultDrainTimeout
		}
	}
	if cfg.OrigDst.Enabled {
		d = max(d, cfg.OrigDst.DrainTimeout.Duration)
	}
	return d
}

// reloader returns the reloader of the configuration file at path into s.
func (s *serving) reloader(path string, logger *slog.Logger) *reloader {
	return &reloader{path: path, log: logger, current: &s.current, targets: s.targets, m: s.reloads}
}

// runRoles runs every role concurrently until ctx is cancelled (a signal)
// or one role fails. Then it cancels the others and waits for all of them,
// but at most grace: a role still running after that is reported as stuck.
// It returns nil after a clean shutdown, or the errors of the roles that
// failed.
func runRoles(ctx context.Context, logger *slog.Logger, roles []role, grace time.Duration) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var (
		mu      sync.Mutex
		errs    []error
		running = make(map[string]bool, len(roles))
		wg      sync.WaitGroup
	)
	for _, r := range roles {
		running[r.name] = true
	}
	for _, r := range roles {
		wg.Go(func() {
			err := r.run(ctx)
			mu.Lock()
			defer mu.Unlock()
			delete(running, r.name)
			switch {
			case err != nil:
				logger.Error("role failed", "role", r.name, "err", err)
				errs = append(errs, fmt.Errorf("%s: %w", r.name, err))
				cancel(fmt.Errorf("role %s failed", r.name))
			case ctx.Err() == nil:
				logger.Info("role finished", "role", r.name)
			}
		})
	}
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = r.name
	}
	logger.Info("realipd running", "roles", names)

	<-ctx.Done()
	if cause := context.Cause(ctx); errors.Is(cause, context.Canceled) {
		logger.Info("shutting down", "reason", "signal")
	} else {
		logger.Info("shutting down", "reason", cause)
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		mu.Lock()
		stuck := make([]string, 0, len(running))
		for name := range running {
			stuck = append(stuck, name)
		}
		mu.Unlock()
		slices.Sort(stuck)
		logger.Error("roles did not stop in time", "roles", stuck, "grace", grace)
		mu.Lock()
		defer mu.Unlock()
		return errors.Join(append(errs, fmt.Errorf("roles %v did not stop within %v", stuck, grace))...)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	logger.Info("realipd stopped")
	return nil
}
