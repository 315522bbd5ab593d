package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/grpcserve"
	"github.com/realipd/realipd/listenaddr"
)

// ServiceName is the gRPC service realipd implements; grpc.health.v1 reports
// its status under this name and under "".
const ServiceName = "envoy.service.ext_proc.v3.ExternalProcessor"

// DefaultDrainTimeout bounds a graceful drain when Options.DrainTimeout is 0.
const DefaultDrainTimeout = 10 * time.Second

// Options are the fixed parts of a Server.
type Options struct {
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the server's metrics; nil keeps them unregistered.
	Registerer prometheus.Registerer
	// DrainTimeout bounds the graceful drain when Serve's ctx ends (default
	// DefaultDrainTimeout); streams still open after it are cut.
	DrainTimeout time.Duration
	// ServerOptions are appended to the gRPC server's options (tests, tuning).
	ServerOptions []grpc.ServerOption
	// LocalAddrs lists this host's addresses, which Envoy may append to
	// X-Forwarded-For for a loopback peer; nil lists the interfaces'.
	LocalAddrs func() ([]netip.Addr, error)
}

// Server is realipd's envoy.service.ext_proc.v3.ExternalProcessor. It is safe
// for concurrent use; one Server may Serve several listeners.
type Server struct {
	log          *slog.Logger
	m            *metrics
	cur          *decide.Current // the decision in force, shared with the other doors
	door         decide.Door
	drainTimeout time.Duration
	serverOpts   []grpc.ServerOption
	warnNoPeer   decide.Every
	warnMismatch decide.Every
	local        *localAddrs
	serving      atomic.Int32 // listeners serving and not draining
}

// countersKey names the server's counters of one Decider (countersOf).
var countersKey = decide.NewLocalKey("extproc counters")

// counters are the request counters of one Decider's settings: the allow
// series of its strategy and the deny series of every policy that can
// deny, which exist from then on, so that the hot path looks none up (the
// policy names come from the configuration, which bounds them).
type counters struct {
	allow prometheus.Counter
	deny  map[string]prometheus.Counter
}

// countersOf returns the counters of d.
func (srv *Server) countersOf(d *decide.Decider) *counters {
	return d.Local(countersKey, func(d *decide.Decider) any {
		c := &counters{allow: srv.m.requests.WithLabelValues("allow", d.StrategyName(), ""), deny: map[string]prometheus.Counter{}}
		for _, name := range d.PolicyNames() {
			c.deny[name] = srv.m.requests.WithLabelValues("deny", d.StrategyName(), name)
		}
		return c
	}).(*counters)
}

// denied returns the deny counter of policy.
func (srv *Server) denied(d *decide.Decider, policy string) prometheus.Counter {
	if c, ok := srv.countersOf(d).deny[policy]; ok {
		return c
	}
	// A Decider names only its chain's policies: this is not reached.
	return srv.m.requests.WithLabelValues("deny", d.StrategyName(), policy)
}

// New builds a Server deciding with cur, which the other doors may share:
// a reload stores a new Decider there, for all of them at once.
func New(cur *decide.Current, opts Options) (*Server, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	if cur == nil || cur.Load() == nil {
		return nil, errors.New("extproc: no decider")
	}
	srv := &Server{
		log:          log,
		m:            m,
		cur:          cur,
		drainTimeout: opts.DrainTimeout,
		serverOpts:   opts.ServerOptions,
		warnNoPeer:   decide.Every{Interval: warnInterval},
		warnMismatch: decide.Every{Interval: warnInterval},
		local:        newLocalAddrs(opts.LocalAddrs),
	}
	srv.door = decide.Door{
		Name:        decide.DoorExtProc,
		PolicyError: func(policy string) { srv.m.policyErrors.WithLabelValues(policy).Inc() },
		Logger:      log,
	}
	if srv.drainTimeout <= 0 {
		srv.drainTimeout = DefaultDrainTimeout
	}
	srv.countersOf(cur.Load()) // the series exist from the start
	return srv, nil
}

// Listen opens the listener for an extproc.listen address: TCP "host:port"
// or "unix:///path". A stale unix socket file (one nobody accepts on) is
// removed first; a live one is an error. A unix socket is for this
// process's user alone (mode 0600); listenaddr.Listen shares one with a
// group (extproc.socket_group).
func Listen(addr string) (net.Listener, error) {
	ln, err := listenaddr.Listen(addr, listenaddr.Options{})
	if err != nil {
		return nil, fmt.Errorf("extproc: %w", err)
	}
	return ln, nil
}

// Serve listens on addr (see Listen) and serves until ctx ends, then drains
// (see ServeListener).
func (srv *Server) Serve(ctx context.Context, addr string) error {
	ln, err := Listen(addr)
	if err != nil {
		return err
	}
	return srv.ServeListener(ctx, ln)
}

// ServeListener serves ext_proc, grpc.health.v1 and server reflection on ln
// until ctx ends or serving fails; it closes ln. When ctx ends it drains:
// health turns NOT_SERVING, the listener closes and every connection gets a
// GOAWAY, so new streams are refused (UNAVAILABLE) while open streams
// finish; after the drain timeout the remaining streams are cut. It returns
// nil after a drain.
func (srv *Server) ServeListener(ctx context.Context, ln net.Listener) error {
	opts := []grpc.ServerOption{
		grpc.ForceServerCodecV2(newCodec()),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             5 * time.Second, // Envoy's HTTP/2 keepalive pings are allowed down to this interval
			PermitWithoutStream: true,            // Envoy keeps idle connections to its ext_proc cluster
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    30 * time.Second, // ping idle clients so dead connections are noticed
			Timeout: 10 * time.Second,
		}),
	}
	opts = append(opts, srv.serverOpts...)
	gs := grpc.NewServer(opts...)
	gs.RegisterService(&serviceDesc, srv)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)

	return grpcserve.Serve(ctx, gs, ln, grpcserve.Drain{
		Name:    "extproc",
		Logger:  srv.log,
		Health:  hs,
		Timeout: srv.drainTimeout,
		Serving: &srv.serving,
	})
}

// Ready reports nil while the server serves on at least one listener and is
// not draining; it fits internal/admin's readiness checks.
func (srv *Server) Ready(context.Context) error {
	if srv.serving.Load() <= 0 {
		return errors.New("extproc: not serving")
	}
	return nil
}

// processor is the handler type of serviceDesc.
type processor interface {
	process(ss grpc.ServerStream) error
}

// serviceDesc registers ExternalProcessor with a stream handler that reads
// and writes raw frames (see codec.go) instead of generated messages.
var serviceDesc = grpc.ServiceDesc{
	ServiceName: extprocv3.ExternalProcessor_ServiceDesc.ServiceName,
	HandlerType: (*processor)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Process",
		Handler:       func(srv any, ss grpc.ServerStream) error { return srv.(processor).process(ss) },
		ServerStreams: true,
		ClientStreams: true,
	}},
	Metadata: extprocv3.ExternalProcessor_ServiceDesc.Metadata,
}

// process serves one Process stream: one answer per message, in order.
func (srv *Server) process(ss grpc.ServerStream) error {
	srv.m.streams.Inc()
	defer srv.m.streams.Dec()
	ctx := ss.Context()
	var (
		in  inFrame
		out outFrame
	)
	for {
		if err := ss.RecvMsg(&in); err != nil {
			if streamEnded(err) {
				return nil
			}
			return err
		}
		answered, err := srv.handle(ctx, &in, &out)
		if err != nil {
			srv.log.Debug("extproc: malformed message", "error", err)
			return status.Errorf(codes.InvalidArgument, "extproc: decode ProcessingRequest: %v", err)
		}
		if !answered {
			continue
		}
		if err := ss.SendMsg(&out); err != nil {
			if streamEnded(err) {
				return nil
			}
			return err
		}
	}
}

// streamEnded reports whether err is the normal end of a stream: the client
// half-closed (io.EOF) or went away (cancelled).
func streamEnded(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled
}

var _ processor = (*Server)(nil)
