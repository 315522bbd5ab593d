// Package admin serves realipd's admin HTTP listener: Prometheus metrics on
// /metrics, liveness on /healthz, readiness on /readyz, the effective
// configuration on /config_dump and the Go profiler on /debug/pprof/.
//
// A Server is built once with New; roles register readiness checks
// (AddReadinessCheck) and extra endpoints (Handle) on it, before or while it
// serves. All methods are safe for concurrent use. One Server serves one
// listener at a time (Run or Serve).
//
// The listener is meant for loopback: Serve warns when it is not. Against
// DNS rebinding (a web page whose host name is made to resolve to this
// listener, so that the browser reaches it), every endpoint answers only
// requests whose Host header, port aside and case ignored, is an IP
// address, localhost, the host name that Run was given, or one of
// Options.AllowedHosts. Other requests, an absent Host included, get 403.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Defaults for the zero values of Options.
const (
	DefaultReadinessTimeout = 2 * time.Second
	DefaultShutdownTimeout  = 5 * time.Second
)

// Registry is what the admin listener needs of a metrics registry: it
// registers its own collectors and serves what it gathers. A
// *prometheus.Registry is one; a wrapper may record what is registered.
type Registry interface {
	prometheus.Registerer
	prometheus.Gatherer
}

// Options configures a Server. The zero value is usable: it serves a fresh
// registry holding only the Go and process collectors, and no /config_dump.
type Options struct {
	// Logger receives the listener's lifecycle and errors; nil discards them.
	Logger *slog.Logger
	// Registry is served on /metrics. New registers the Go and process
	// collectors in it (an already registered one is kept). Nil: a new registry.
	Registry Registry
	// ConfigDump returns the effective configuration, served as indented JSON
	// on /config_dump. It is called once per request and must be safe for
	// concurrent use. Nil: /config_dump is not served (404).
	ConfigDump func() any
	// ReadinessTimeout bounds one /readyz request (all checks run in parallel
	// under it). Zero: DefaultReadinessTimeout.
	ReadinessTimeout time.Duration
	// ShutdownTimeout bounds the graceful shutdown once the context given to
	// Run or Serve is done; after it, open connections are closed. Zero:
	// DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// AllowedHosts are host names (no port) accepted in the Host header
	// besides IP addresses, localhost and the host name given to Run.
	// They are compared case-insensitively and match exactly: no
	// wildcards, no subdomains.
	AllowedHosts []string
}

// ReadinessCheck reports whether a role is ready to take traffic: nil when
// ready, otherwise an error saying why not. It must return soon after ctx is
// done.
type ReadinessCheck func(ctx context.Context) error

type namedCheck struct {
	name  string
	check ReadinessCheck
}

// Server is the admin HTTP listener.
type Server struct {
	log              *slog.Logger
	mux              *http.ServeMux
	handler          http.Handler // mux behind the Host check
	readinessTimeout time.Duration
	shutdownTimeout  time.Duration
	allowedHosts     map[string]bool // normalised (hostName)
	hostRefused      prometheus.Counter

	mu         sync.Mutex
	checks     []namedCheck
	paths      []string // served paths, for the index page
	addr       net.Addr
	listenName string // the host name Run was given (normalised), or ""

	listening     chan struct{}
	listeningOnce sync.Once
}

// New builds a Server from opts. It fails only when the Go or process
// collector cannot be registered in opts.Registry.
func New(opts Options) (*Server, error) {
	s := &Server{
		log:              opts.Logger,
		mux:              http.NewServeMux(),
		readinessTimeout: opts.ReadinessTimeout,
		shutdownTimeout:  opts.ShutdownTimeout,
		allowedHosts:     map[string]bool{"localhost": true},
		listening:        make(chan struct{}),
	}
	for _, h := range opts.AllowedHosts {
		s.allowedHosts[hostName(h)] = true
	}
	s.handler = http.HandlerFunc(s.checkHost)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.readinessTimeout <= 0 {
		s.readinessTimeout = DefaultReadinessTimeout
	}
	if s.shutdownTimeout <= 0 {
		s.shutdownTimeout = DefaultShutdownTimeout
	}
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			if are := (prometheus.AlreadyRegisteredError{}); !errors.As(err, &are) {
				return nil, fmt.Errorf("admin: register collector: %w", err)
			}
		}
	}
	s.hostRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "realipd_admin_host_refused_total",
		Help: "Admin requests refused with 403 because their Host header is not an IP address, localhost, the listen host name or a name of admin.allowed_hosts (DNS rebinding protection).",
	})
	if err := reg.Register(s.hostRefused); err != nil {
		are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err)
		if !ok {
			return nil, fmt.Errorf("admin: register metrics: %w", err)
		}
		c, ok := are.ExistingCollector.(prometheus.Counter)
		if !ok {
			return nil, fmt.Errorf("admin: register metrics: %w", err)
		}
		s.hostRefused = c // another Server on the same registry
	}

	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      promLogger{s.log},
		ErrorHandling: promhttp.ContinueOnError,
	})
	s.Handle("GET /metrics", promhttp.InstrumentMetricHandler(reg, metrics))
	s.Handle("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	}))
	s.Handle("GET /readyz", http.HandlerFunc(s.serveReadyz))
	if opts.ConfigDump != nil {
		s.Handle("GET /config_dump", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			s.serveConfigDump(w, opts.ConfigDump)
		}))
	}
	s.Handle("/debug/pprof/", http.HandlerFunc(pprof.Index))
	s.mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	s.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	s.mux.HandleFunc("GET /{$}", s.serveIndex)
	return s, nil
}

// AddReadinessCheck registers check under name; /readyz answers 200 only while
// every registered check passes. A second check under the same name replaces
// the first.
func (s *Server) AddReadinessCheck(name string, check ReadinessCheck) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.checks, func(c namedCheck) bool { return c.name == name })
	if i >= 0 {
		s.checks[i].check = check
		return
	}
	s.checks = append(s.checks, namedCheck{name, check})
}

// Handle serves handler on pattern (http.ServeMux syntax, e.g. "GET
// /debug/xds"), next to the built-in endpoints. Like http.ServeMux.Handle it
// panics on a pattern that conflicts with one already registered.
func (s *Server) Handle(pattern string, handler http.Handler) {
	s.mux.Handle(pattern, handler)
	path := pattern
	if _, p, ok := strings.Cut(pattern, " "); ok {
		path = strings.TrimSpace(p)
	}
	s.mu.Lock()
	s.paths = append(s.paths, path)
	s.mu.Unlock()
}

// Handler returns the admin endpoints as an http.Handler, to mount elsewhere
// or to test without a listener. It applies the Host check.
func (s *Server) Handler() http.Handler { return s.handler }

// Listening returns a channel closed once Run or Serve has a bound listener;
// Addr is then its address.
func (s *Server) Listening() <-chan struct{} { return s.listening }

// Addr returns the address the server listens on, or nil before it listens.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Run listens on the TCP address listen (host:port; port 0 picks a free one,
// see Addr) and serves until ctx is done, then shuts down gracefully (see
// Serve). When the host of listen is a name, not an IP address, that name
// is accepted in the Host header too.
func (s *Server) Run(ctx context.Context, listen string) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return fmt.Errorf("admin: listen on %q: %w", listen, err)
	}
	return s.serve(ctx, ln, listenHostName(listen))
}

// ServeListen serves on ln, opened for the listen address listen, as Run
// does: a host name in listen is accepted in the Host header too.
func (s *Server) ServeListen(ctx context.Context, ln net.Listener, listen string) error {
	return s.serve(ctx, ln, listenHostName(listen))
}

// listenHostName returns the host of the listen address listen when it is
// a name (normalised), or "" when it is an IP address or empty.
func listenHostName(listen string) string {
	host, _, err := net.SplitHostPort(listen)
	if err != nil || host == "" {
		return ""
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	return hostName(host)
}

// Serve serves on ln until ctx is done, then stops accepting connections and
// waits for requests in flight to finish, for at most the shutdown timeout,
// after which it closes the remaining connections and returns an error
// wrapping context.DeadlineExceeded. A clean shutdown returns nil. Serve closes
// ln. It logs a warning when ln is not on a loopback address: the admin
// endpoints hold the configuration and the profiler.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.serve(ctx, ln, "")
}

func (s *Server) serve(ctx context.Context, ln net.Listener, listenName string) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	s.mu.Lock()
	s.addr = ln.Addr()
	s.listenName = listenName
	s.mu.Unlock()
	s.listeningOnce.Do(func() { close(s.listening) })
	s.log.Info("admin listening", "addr", ln.Addr().String())
	if a, ok := ln.Addr().(*net.TCPAddr); ok && !a.IP.IsLoopback() {
		s.log.Warn("admin listener is not on loopback: it serves /debug/pprof and /config_dump to whoever reaches it; listen on loopback or firewall the port",
			"addr", a.String(), "all_interfaces", len(a.IP) == 0 || a.IP.IsUnspecified())
	}

	select {
	case err := <-errc:
		return fmt.Errorf("admin: serve on %v: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		srv.Close()
	}
	<-errc // http.ErrServerClosed once Shutdown or Close has begun
	if err != nil {
		s.log.Warn("admin shutdown timed out, connections closed", "addr", ln.Addr().String(), "timeout", s.shutdownTimeout)
		return fmt.Errorf("admin: shutdown on %v: %w", ln.Addr(), err)
	}
	s.log.Info("admin stopped", "addr", ln.Addr().String())
	return nil
}

// checkHost serves r when its Host is allowed (see the package
// documentation) and refuses it with 403 otherwise.
func (s *Server) checkHost(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	listenName := s.listenName
	s.mu.Unlock()
	if s.hostAllowed(r.Host, listenName) {
		s.mux.ServeHTTP(w, r)
		return
	}
	s.hostRefused.Inc()
	s.log.Debug("admin request refused: Host not allowed", "host", r.Host, "remote", r.RemoteAddr, "path", r.URL.Path)
	host := r.Host
	if len(host) > 100 {
		host = host[:100] + "..."
	}
	http.Error(w, fmt.Sprintf("admin: Host %q is not allowed: use an IP address, localhost or a name of admin.allowed_hosts (DNS rebinding protection)", host), http.StatusForbidden)
}

// hostAllowed reports whether the Host header value hostport is accepted:
// an IP address (IPv6 in brackets), localhost, listenName or an allowed
// host name, with an optional numeric port, in any case. IP addresses are
// all accepted, whatever the listener's address: DNS rebinding needs a
// name, and a browser sends an IP address as Host only to that address.
func (s *Server) hostAllowed(hostport, listenName string) bool {
	host, ok := splitHostPort(hostport)
	if !ok || host == "" {
		return false
	}
	if inner, ok := strings.CutPrefix(host, "["); ok {
		a, err := netip.ParseAddr(strings.TrimSuffix(inner, "]"))
		return err == nil && a.Is6()
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Is4()
	}
	name := hostName(host)
	return s.allowedHosts[name] || (listenName != "" && name == listenName)
}

// splitHostPort splits a Host header value into the host (IPv6 kept in its
// brackets) and drops the port, which must be digits when present. It
// reports false on a malformed value (an IPv6 address without brackets).
func splitHostPort(hostport string) (string, bool) {
	host, port := hostport, ""
	if strings.HasPrefix(hostport, "[") {
		end := strings.IndexByte(hostport, ']')
		if end < 0 {
			return "", false
		}
		host, port = hostport[:end+1], hostport[end+1:]
	} else if i := strings.LastIndexByte(hostport, ':'); i >= 0 {
		host, port = hostport[:i], hostport[i:]
		if strings.Contains(host, ":") {
			return "", false
		}
	}
	if port != "" {
		digits, ok := strings.CutPrefix(port, ":")
		if !ok || strings.Trim(digits, "0123456789") != "" {
			return "", false
		}
	}
	return host, true
}

// hostName normalises a host name for comparison: lower case, without the
// trailing dot of a fully qualified name.
func hostName(h string) string { return strings.TrimSuffix(strings.ToLower(h), ".") }

// serveReadyz runs every readiness check in parallel, bounded by the readiness
// timeout, and answers 200 when all pass, 503 otherwise, one line per check.
func (s *Server) serveReadyz(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	checks := slices.Clone(s.checks)
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(r.Context(), s.readinessTimeout)
	defer cancel()
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() { errs[i] = runCheck(ctx, c.check) })
	}
	wg.Wait()

	var b strings.Builder
	ready := true
	for i, c := range checks {
		if errs[i] != nil {
			ready = false
			fmt.Fprintf(&b, "fail %s: %v\n", c.name, errs[i])
			s.log.Debug("readiness check failed", "check", c.name, "error", errs[i])
		} else {
			fmt.Fprintf(&b, "ok %s\n", c.name)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
		b.WriteString("not ready\n")
	} else {
		b.WriteString("ready\n")
	}
	io.WriteString(w, b.String())
}

// runCheck runs check and turns a check that overruns ctx or panics into a
// failure, so one broken role cannot hang or kill /readyz.
func runCheck(ctx context.Context, check ReadinessCheck) (err error) {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("check panicked: %v", p)
			}
		}()
		done <- check(ctx)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("check did not answer in time: %w", ctx.Err())
	}
}

func (s *Server) serveConfigDump(w http.ResponseWriter, dump func() any) {
	body, err := json.MarshalIndent(dump(), "", "  ")
	if err != nil {
		s.log.Warn("config dump failed", "error", err)
		http.Error(w, fmt.Sprintf("admin: encode config: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(append(body, '\n'))
}

// serveIndex lists the served paths, for an operator poking at the listener.
func (s *Server) serveIndex(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	paths := slices.Clone(s.paths)
	s.mu.Unlock()
	slices.Sort(paths)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "realipd admin\n\n"+strings.Join(paths, "\n")+"\n")
}

// promLogger hands promhttp's errors (a collector failing during a scrape) to
// slog.
type promLogger struct{ log *slog.Logger }

func (l promLogger) Println(v ...any) {
	l.log.Warn("metrics scrape error", "error", strings.TrimSpace(fmt.Sprintln(v...)))
}
