// Package grpcserve serves a gRPC server on a listener until a context
// ends, then drains it: health turns NOT_SERVING, GracefulStop refuses new
// streams while the open ones finish, and after a timeout Stop cuts what
// is left. It is the one shutdown sequence of realipd's gRPC roles
// (extproc, xds), which must not import each other.
package grpcserve

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/realipd/realipd/listenaddr"
)

// Drain says how Serve ends. Its zero value drains without a bound on
// time, logs nothing and counts nothing.
type Drain struct {
	// Name prefixes the logs and the error ("extproc", "xds").
	Name string
	// Logger receives "NAME: serving", "NAME: draining", "NAME: drain
	// timeout: ..." and "NAME: stopped"; nil discards them.
	Logger *slog.Logger
	// Health, when set, is shut down (every service NOT_SERVING) when the
	// drain begins or serving fails.
	Health *health.Server
	// Timeout bounds GracefulStop; after it the remaining streams are cut
	// (Stop). 0 waits for them without a bound.
	Timeout time.Duration
	// Serving, when set, counts this listener while it serves and is not
	// draining (the roles' readiness).
	Serving *atomic.Int32
	// OnDrain, when set, runs as the drain starts, right after
	// GracefulStop has been started (in a goroutine of its own), and when
	// serving fails: xds ends there its ADS streams, which never end on
	// their own and would otherwise hold the drain to its timeout.
	OnDrain func()
}

// Serve serves gs on ln until ctx ends or serving fails; ln is closed
// when it returns. When ctx ends it drains: d.Health turns NOT_SERVING,
// GracefulStop closes the listener and sends every connection a GOAWAY, so
// that new streams are refused (UNAVAILABLE) while open streams finish;
// after d.Timeout the remaining streams are cut. It returns nil after a
// drain, and the error of gs.Serve, prefixed with d.Name and the address,
// when serving failed.
func Serve(ctx context.Context, gs *grpc.Server, ln net.Listener, d Drain) error {
	log := d.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	addr := listenaddr.String(ln)
	log.Info(d.Name+": serving", "address", addr)
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(ln) }()
	if d.Serving != nil {
		d.Serving.Add(1)
	}
	notServing := func() {
		if d.Serving != nil {
			d.Serving.Add(-1)
		}
		if d.Health != nil {
			d.Health.Shutdown() // every service NOT_SERVING
		}
	}

	select {
	case err := <-errc:
		notServing()
		if d.OnDrain != nil {
			d.OnDrain()
		}
		gs.Stop()
		return fmt.Errorf("%s: serve %s: %w", d.Name, addr, err)
	case <-ctx.Done():
	}

	notServing()
	log.Info(d.Name+": draining", "address", addr, "timeout", d.Timeout)
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	if d.OnDrain != nil {
		d.OnDrain()
	}
	var timeout <-chan time.Time
	if d.Timeout > 0 {
		t := time.NewTimer(d.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-stopped:
	case <-timeout:
		log.Warn(d.Name+": drain timeout: cutting remaining streams", "address", addr)
		gs.Stop()
		<-stopped
	}
	<-errc // Serve returned (nil after a stop)
	log.Info(d.Name+": stopped", "address", addr)
	return nil
}
