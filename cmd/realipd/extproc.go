package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/listenaddr"
)

// extprocRole builds the ext_proc server of cfg on the chains of chains
// (which it registers as a consumer, so that reloads update it), with its
// metrics in reg. Serving starts when the role runs; when it stops, the
// requests still deciding may go on until extproc.drain_timeout after the
// drain began (decisions.done).
func extprocRole(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer, chains *decisions) (role, *extproc.Server, error) {
	log := logger.With("role", "extproc")
	srv, err := extproc.New(&chains.Current, extproc.Options{
		Logger:       log,
		Registerer:   reg,
		DrainTimeout: cfg.ExtProc.DrainTimeout.Duration,
	})
	if err != nil {
		return role{}, nil, err
	}
	chains.use()
	drain := cfg.ExtProc.DrainTimeout.Duration
	if drain <= 0 {
		drain = extproc.DefaultDrainTimeout
	}
	listen := cfg.ExtProc.Listen
	ln, err := bindRole("extproc", "extproc.listen", listen, listenaddr.Options{Group: cfg.ExtProc.SocketGroup})
	if err != nil {
		return role{}, nil, err
	}
	return role{name: "extproc", release: func() { ln.Close() }, run: func(ctx context.Context) error {
		// The requests still deciding when the drain began may go on
		// until drain after it (see decide.Runtime.CloseBy).
		began := drainClock(ctx)
		defer func() { chains.done(began().Add(drain)) }()
		logger.Info("role starting", "role", "extproc", "listen", listen)
		return srv.ServeListener(ctx, ln)
	}}, srv, nil
}

// drainClock starts watching ctx for a role's run and returns when its
// drain began: when ctx ended, or, if it has not, now (the role stopped
// on its own: serving failed).
func drainClock(ctx context.Context) (began func() time.Time) {
	at := make(chan time.Time, 1)
	stop := context.AfterFunc(ctx, func() { at <- time.Now() })
	return func() time.Time {
		if stop() {
			return time.Now()
		}
		return <-at
	}
}
