package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
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

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/listenaddr"
	"github.com/realipd/realipd/plugins"
)

// ServiceName is the gRPC service realipd implements; grpc.health.v1 reports
// its status under this name and under "".
const ServiceName = "envoy.service.ext_proc.v3.ExternalProcessor"

// DefaultDrainTimeout bounds a graceful drain when Options.DrainTimeout is 0.
const DefaultDrainTimeout = 10 * time.Second

// Settings are the runtime settings of the server. They can be replaced
// while serving with Update (a configuration hot reload); streams in progress
// keep going, each message uses the settings current when it arrives.
type Settings struct {
	// Resolver resolves the client IP (required).
	Resolver *clientip.Resolver
	// Chain holds the policies run after resolution; nil allows every
	// request. Every message holds it (plugins.Chain.Acquire) while it is
	// handled, so the owner of a Chain replaced by Update retires it with
	// plugins.Chain.Retire and it closes once no message uses it.
	Chain *plugins.Chain
	// ClientIPHeader is the request header set to the client IP (lower-cased;
	// default x-real-ip).
	ClientIPHeader string
	// MetadataNamespace is the dynamic metadata namespace (default realipd).
	MetadataNamespace string
	// XFFAppendedByEnvoy removes the last X-Forwarded-For entry (the one
	// Envoy appends with use_remote_address: true) before resolving, when
	// it is the IP Envoy appends (see the package doc). It applies when the
	// resolver reads X-Forwarded-For.
	XFFAppendedByEnvoy bool
	// PassUnresolved lets a request whose client IP is unresolved go on to
	// the policies without an IP (trust.on_unresolved: pass). False, the
	// default, denies it with DenyStatus.
	PassUnresolved bool
	// DenyStatus is the HTTP status of a deny (default 403); it must be an
	// Envoy type.v3.StatusCode of at least 200.
	DenyStatus int
}

// TrimsEnvoyEntry reports whether a server with settings s removes the
// entry Envoy appended to X-Forwarded-For before resolving
// (TrimEnvoyEntry): with XFFAppendedByEnvoy, when the Resolver reads
// X-Forwarded-For.
func (s Settings) TrimsEnvoyEntry() bool {
	return s.XFFAppendedByEnvoy && s.Resolver != nil && s.Resolver.Header() == "x-forwarded-for"
}

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
	// DecisionLog records every decision (a deny at Info, an allow at
	// Debug, rate-limited); nil makes one on Logger with the default rate.
	// Roles that share one bound the log volume together.
	DecisionLog *plugins.DecisionLog
}

// Server is realipd's envoy.service.ext_proc.v3.ExternalProcessor. It is safe
// for concurrent use; one Server may Serve several listeners.
type Server struct {
	log          *slog.Logger
	m            *metrics
	state        atomic.Pointer[state]
	drainTimeout time.Duration
	serverOpts   []grpc.ServerOption
	warnNoPeer   rateLimit
	warnMismatch rateLimit
	local        *localAddrs
	decisions    *plugins.DecisionLog
	serving      atomic.Int32 // listeners serving and not draining
}

// New builds a Server with its first settings.
func New(s Settings, opts Options) (*Server, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	srv := &Server{
		log:          log,
		m:            m,
		drainTimeout: opts.DrainTimeout,
		serverOpts:   opts.ServerOptions,
		warnNoPeer:   rateLimit{every: warnInterval},
		warnMismatch: rateLimit{every: warnInterval},
		local:        newLocalAddrs(opts.LocalAddrs),
		decisions:    opts.DecisionLog,
	}
	if srv.decisions == nil {
		srv.decisions = plugins.NewDecisionLog(log, plugins.DecisionLogOptions{})
	}
	if srv.drainTimeout <= 0 {
		srv.drainTimeout = DefaultDrainTimeout
	}
	if err := srv.Update(s); err != nil {
		return nil, err
	}
	return srv, nil
}

// Update checks s and makes it the settings of every following message. The
// previous Chain is not closed: once Update has returned, its owner retires
// it (plugins.Chain.Retire), and it closes when the last message deciding
// on it is done. Retiring it before Update returns would leave messages
// with no chain to acquire.
func (srv *Server) Update(s Settings) error {
	if s.Resolver == nil {
		return errors.New("extproc: settings: nil resolver")
	}
	st := &state{
		resolver:       s.Resolver,
		strategy:       s.Resolver.Strategy(),
		strategyName:   s.Resolver.Strategy().String(),
		header:         s.Resolver.Header(),
		chain:          s.Chain,
		passUnresolved: s.PassUnresolved,
		clientIPHeader: strings.ToLower(s.ClientIPHeader),
		namespace:      s.MetadataNamespace,
		denyStatus:     s.DenyStatus,
	}
	st.trimXFF = s.TrimsEnvoyEntry()
	// Whether any policy reads request headers is fixed for a Chain; which
	// ones can change (a plugin restarted with other inputs), so the
	// handler asks the Chain, allocation-free, per request.
	st.policyHeaders = s.Chain.ReadsHeaders()
	st.holdChain = s.Chain.Len() > 0
	if st.clientIPHeader == "" {
		st.clientIPHeader = DefaultClientIPHeader
	}
	if !plugins.ValidHeaderName(st.clientIPHeader) || strings.HasPrefix(st.clientIPHeader, ":") || st.clientIPHeader == "host" {
		return fmt.Errorf("extproc: settings: client_ip_header %q is not a header realipd can set", s.ClientIPHeader)
	}
	if st.namespace == "" {
		st.namespace = DefaultMetadataNamespace
	}
	if st.denyStatus == 0 {
		st.denyStatus = DefaultDenyStatus
	}
	if !plugins.ValidDenyStatus(st.denyStatus) {
		return fmt.Errorf("extproc: settings: deny_status %d is not an HTTP status Envoy can send (a defined status code from 200 to 599)", s.DenyStatus)
	}
	// The deny series of every policy that can deny exist from now on, so
	// that the hot path looks none up; the policy names come from the
	// configuration, which bounds them.
	st.allowCount = srv.m.requests.WithLabelValues("allow", st.strategyName, "")
	names := s.Chain.Names()
	if !s.PassUnresolved {
		names = append(names, policyUnresolved)
	}
	st.denyCount = make(map[string]prometheus.Counter, len(names))
	for _, name := range names {
		st.denyCount[name] = srv.m.requests.WithLabelValues("deny", st.strategyName, name)
	}
	srv.state.Store(st)
	return nil
}

// Listen opens the listener for an extproc.listen address: TCP "host:port"
// or "unix:///path". A stale unix socket file (one nobody accepts on) is
// removed first; a live one is an error.
func Listen(addr string) (net.Listener, error) {
	ln, err := listenaddr.Listen(addr)
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

	srv.log.Info("extproc: serving", "address", addrString(ln))
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(ln) }()
	srv.serving.Add(1)

	select {
	case err := <-errc:
		srv.serving.Add(-1)
		hs.Shutdown()
		gs.Stop()
		return fmt.Errorf("extproc: serve %s: %w", addrString(ln), err)
	case <-ctx.Done():
	}
	srv.serving.Add(-1)

	srv.log.Info("extproc: draining", "address", addrString(ln), "timeout", srv.drainTimeout)
	hs.Shutdown() // every service NOT_SERVING
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	t := time.NewTimer(srv.drainTimeout)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		srv.log.Warn("extproc: drain timeout: cutting remaining streams", "address", addrString(ln))
		gs.Stop()
		<-stopped
	}
	<-errc // Serve returned (nil after a stop)
	srv.log.Info("extproc: stopped", "address", addrString(ln))
	return nil
}

// Ready reports nil while the server serves on at least one listener and is
// not draining; it fits internal/admin's readiness checks.
func (srv *Server) Ready(context.Context) error {
	if srv.serving.Load() <= 0 {
		return errors.New("extproc: not serving")
	}
	return nil
}

func addrString(ln net.Listener) string { return listenaddr.String(ln) }

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
