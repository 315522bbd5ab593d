package origdst

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/decide"
)

// Defaults of Options fields left zero.
const (
	DefaultDialTimeout        = 5 * time.Second
	DefaultProxyHeaderTimeout = 5 * time.Second
	DefaultMaxConnections     = 10000
)

// Options are the fixed parts of a Server.
type Options struct {
	// Mode says how connections reach the listeners (origdst.mode).
	Mode Mode
	// Listen are the capture addresses (origdst.listen): IP:port, wildcard
	// addresses included, at least one. When 0.0.0.0:P and [::]:P are both
	// listed the IPv6 socket is IPv6-only.
	Listen []netip.AddrPort
	// Mark is the SO_MARK of the upstream connections (origdst.mark), which
	// the interception rules never capture; 0 sets none.
	Mark uint32
	// DialTimeout bounds the connection to the original destination
	// (default DefaultDialTimeout).
	DialTimeout time.Duration
	// IdleTimeout closes a proxied connection that moved no byte either
	// way for this long, on the monotonic clock (decide.Monotonic); 0:
	// never.
	IdleTimeout time.Duration
	// DrainTimeout is how long, once Serve's ctx ends, proxied connections
	// may finish before they are cut; 0 cuts them at once.
	DrainTimeout time.Duration
	// MaxConnections bounds the connections being set up or proxied at
	// once; more are refused (default DefaultMaxConnections).
	MaxConnections int
	// ProxyProtocol reads a PROXY protocol header (v1 or v2) from the
	// peers in Settings.TrustedCIDRs, which must send one, and refuses
	// one from any other peer.
	ProxyProtocol bool
	// ProxyHeaderTimeout bounds the wait for a trusted peer's PROXY header,
	// and for an untrusted peer's first bytes to show that they are none:
	// a part of a signature still pending then refuses the connection
	// (default DefaultProxyHeaderTimeout).
	ProxyHeaderTimeout time.Duration
	// HTTPPorts are the original-destination ports whose connections are
	// served as HTTP/1.1 (origdst.http_ports): each request is resolved
	// from its forwarding headers and decided on, gets the client-IP
	// header, and is forwarded; a deny is answered as the Decider shapes
	// it for every door (extproc.deny_status unless the policy gives its
	// own).
	HTTPPorts []uint16
	// HTTPEventLoops is the number of the HTTP mode's event loops
	// (origdst.http_event_loops; httploop_linux.go), where kept-alive
	// connections wait and their plain requests are served: 0 for half of
	// GOMAXPROCS (at least one), -1 for none (every connection waits in
	// its own goroutine). Linux only.
	HTTPEventLoops int
	// OriginalSource, in ModeTProxy, dials each TCP connection's upstream
	// from the client's own address (the TCP peer's IP, a transparent
	// socket: IP_TRANSPARENT) with SO_MARK TProxyMark instead of Mark, as
	// Envoy's original_src filter does, so that the application sees the
	// client: the TPROXY rules skip that mark and route the application's
	// answers, which the connection mark gets back, to realipd's socket.
	// The HTTP mode dials from the host's address and says who the client
	// is in the client-IP header.
	OriginalSource bool
	// TProxyMark is the mark of the TPROXY rules (origdst.tproxy_mark),
	// needed with OriginalSource.
	TProxyMark uint32
	// RunDial, when set, runs each upstream dial (a function that dials
	// and returns); nil dials on the connection's own goroutine. It lets
	// a caller whose goroutines are outside the network namespace of the
	// capture listeners dial from inside it (a thread that entered it).
	RunDial func(dial func())
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the server's metrics; nil keeps them
	// unregistered.
	Registerer prometheus.Registerer
}

// Server is realipd's native listener: it accepts the connections steered
// to its capture addresses, reads their original destination, lets the
// policies decide on the client, and proxies the bytes to the original
// destination. It is safe for concurrent use.
type Server struct {
	opts Options
	log  *slog.Logger
	m    *metrics
	dial net.Dialer
	// dialOn, when set, runs each upstream dial (tests run it on a thread
	// inside a network namespace, where the dialled socket must be made).
	dialOn func(dial func())
	// listenOn, when set, runs each bind, as dialOn the dials.
	listenOn func(listen func())
	// v6only[i] tells whether Listen[i] is an IPv6 wildcard that shares
	// its port with an IPv4 listener.
	v6only []bool

	serving   atomic.Bool  // a serving session runs (begin to its end)
	active    atomic.Int64 // connections accepted and not yet closed
	handlers  sync.WaitGroup
	accepting sync.WaitGroup // the accept loops; Add only under mu, while not draining

	mu       sync.Mutex
	conns    map[*proxyConn]struct{} // the connections being set up or proxied
	lns      map[*Listener]struct{}  // the listeners accepting
	draining bool
	connCtx  context.Context // the connections' context, cancelled when they are cut

	// now is the clock of the idle timeout: decide.Monotonic (tests
	// inject one).
	now func() time.Duration

	warnLookup, warnAccept decide.Every
	cur                    *decide.Current // the decision in force, shared with the other doors
	tcpDoor, httpDoor      decide.Door

	httpPorts    []uint16
	httpConns    map[*proxyConn]*httpConn // the HTTP connections; guarded by mu
	httpDraining atomic.Bool              // the drain ends the HTTP connections' keep-alive
	loops        []*httpLoop              // the HTTP mode's event loops, while serving; guarded by mu
	nextLoop     int                      // the loop the next HTTP connection waits in; guarded by mu
}

// New checks opts and builds a Server deciding with cur, which the other
// doors may share: a reload stores a new Decider there, for all of them at
// once. It registers the metrics; it binds nothing (see Bind and Serve).
func New(opts Options, cur *decide.Current) (*Server, error) {
	if cur == nil || cur.Load() == nil {
		return nil, errors.New("origdst: no decider")
	}
	if opts.ProxyProtocol && !cur.Load().HasTrustedCIDRs() {
		return nil, errors.New("origdst: the PROXY protocol needs trusted CIDRs (trust.trusted_cidrs)")
	}
	if _, err := ParseMode(string(opts.Mode)); err != nil {
		return nil, err
	}
	if len(opts.Listen) == 0 {
		return nil, errors.New("origdst: no capture address to listen on")
	}
	listen := make([]netip.AddrPort, len(opts.Listen))
	for i, a := range opts.Listen {
		a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
		switch {
		case !a.Addr().IsValid() || a.Addr().Zone() != "":
			return nil, fmt.Errorf("origdst: listen[%d] %v: not an IP:port without zone", i, opts.Listen[i])
		case slices.Contains(listen[:i], a):
			return nil, fmt.Errorf("origdst: listen[%d] %v: listed twice", i, a)
		}
		listen[i] = a
	}
	opts.Listen = listen
	switch {
	case opts.DialTimeout < 0, opts.IdleTimeout < 0, opts.DrainTimeout < 0, opts.ProxyHeaderTimeout < 0:
		return nil, errors.New("origdst: negative timeout")
	case opts.MaxConnections < 0:
		return nil, errors.New("origdst: negative MaxConnections")
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	if opts.ProxyHeaderTimeout == 0 {
		opts.ProxyHeaderTimeout = DefaultProxyHeaderTimeout
	}
	if opts.MaxConnections == 0 {
		opts.MaxConnections = DefaultMaxConnections
	}
	httpPorts := slices.Clone(opts.HTTPPorts)
	slices.Sort(httpPorts)
	if slices.Contains(httpPorts, 0) {
		return nil, errors.New("origdst: HTTP port 0")
	}
	httpPorts = slices.Compact(httpPorts)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	srv := &Server{
		opts:       opts,
		log:        log,
		m:          m,
		conns:      map[*proxyConn]struct{}{},
		lns:        map[*Listener]struct{}{},
		connCtx:    context.Background(),
		warnLookup: decide.Every{Interval: 10 * time.Second},
		warnAccept: decide.Every{Interval: 10 * time.Second},
		cur:        cur,
		httpPorts:  httpPorts,
		httpConns:  map[*proxyConn]*httpConn{},
	}
	policyError := func(policy string) { srv.m.policyErrors.WithLabelValues(policy).Inc() }
	srv.tcpDoor = decide.Door{Name: decide.DoorTCP, PolicyError: policyError, Logger: log}
	srv.httpDoor = decide.Door{Name: decide.DoorHTTP, PolicyError: policyError, Logger: log}
	srv.now = decide.Monotonic
	srv.dialOn = opts.RunDial
	srv.v6only = make([]bool, len(listen))
	for i, a := range listen {
		if a.Addr().Is6() && a.Addr().IsUnspecified() {
			srv.v6only[i] = slices.ContainsFunc(listen, func(b netip.AddrPort) bool { return b.Addr().Is4() && b.Port() == a.Port() })
		}
	}
	if opts.OriginalSource && (opts.Mode != ModeTProxy || opts.TProxyMark == 0) {
		return nil, errors.New("origdst: OriginalSource needs ModeTProxy and a TProxyMark")
	}
	srv.dial = net.Dialer{Timeout: opts.DialTimeout}
	srv.dial.SetMultipathTCP(false)
	if mark := opts.Mark; mark != 0 {
		srv.dial.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) { serr = setMark(int(fd), mark) }); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("SO_MARK %d: %w", mark, serr)
			}
			return nil
		}
	}
	srv.countersOf(cur.Load()) // the series exist from the start
	return srv, nil
}

// CheckMark reports whether the upstream dials can carry Options.Mark:
// setting SO_MARK needs CAP_NET_ADMIN, and without it every connection
// would fail at its dial. It is nil when Mark is 0.
func (srv *Server) CheckMark() error {
	if srv.opts.Mark == 0 {
		return nil
	}
	err := probeMark(srv.opts.Mark)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return fmt.Errorf("origdst: setting SO_MARK %d on the upstream dials needs CAP_NET_ADMIN: run realipd as root or grant it the capability", srv.opts.Mark)
	case errors.Is(err, errors.ErrUnsupported):
		return errors.New("origdst: SO_MARK needs Linux")
	}
	return fmt.Errorf("origdst: setting SO_MARK %d: %w", srv.opts.Mark, err)
}

// Addresses returns the capture addresses, as checked by New (unmapped).
func (srv *Server) Addresses() []netip.AddrPort { return slices.Clone(srv.opts.Listen) }

// Bind opens a capture listener on every Options.Listen address, in order.
// It opens all or none: after an error the ones already opened are closed.
// The error is a *BindError naming the address. Bind is separate from
// ServeListeners so that a caller can bind at start, to fail early, and
// serve later, or bind and unbind while running (Handoff).
func (srv *Server) Bind(ctx context.Context) ([]*Listener, error) {
	return srv.bind(ctx, srv.all(), false)
}

// all returns the indexes of every Options.Listen address.
func (srv *Server) all() []int {
	idx := make([]int, len(srv.opts.Listen))
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// bind opens the capture listeners of the Options.Listen addresses at the
// indexes idx, in order, all or none, with SO_REUSEPORT when reusePort is
// set. The error is a *BindError.
func (srv *Server) bind(ctx context.Context, idx []int, reusePort bool) ([]*Listener, error) {
	lns := make([]*Listener, 0, len(idx))
	for _, i := range idx {
		lc := ListenConfig{
			Mode:      srv.opts.Mode,
			V6Only:    srv.v6only[i],
			Captures:  srv.opts.Listen,
			Refused:   srv.refusedInAccept,
			ReusePort: reusePort,
		}
		var (
			ln  *Listener
			err error
		)
		listen := func() { ln, err = lc.Listen(ctx, srv.opts.Listen[i]) }
		if srv.listenOn != nil {
			srv.listenOn(listen)
		} else {
			listen()
		}
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			le, _ := errors.AsType[*ListenError](err)
			return nil, &BindError{Index: i, ListenError: le}
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// BindError says which capture address could not be opened: Index is its
// position in Options.Listen (origdst.listen[Index]).
type BindError struct {
	Index int
	*ListenError
}

func (e *BindError) Error() string {
	return fmt.Sprintf("origdst: listen[%d] %s: %s", e.Index, e.Addr, e.Reason())
}

func (e *BindError) Unwrap() error { return e.ListenError }

// Serve binds every capture address (Bind) and serves them
// (ServeListeners) until ctx ends, then drains.
func (srv *Server) Serve(ctx context.Context) error {
	lns, err := srv.Bind(ctx)
	if err != nil {
		return err
	}
	return srv.ServeListeners(ctx, lns)
}

// ServeListeners accepts and proxies the connections of lns until ctx
// ends, then drains: it closes the listeners (new connections are refused
// by the kernel), lets the connections in progress finish for at most
// DrainTimeout, cuts the remaining ones and returns nil once every
// connection is closed. It may be called again after it returned (to serve
// new listeners), but calls must not overlap (nor overlap Handoff.Serve).
func (srv *Server) ServeListeners(ctx context.Context, lns []*Listener) error {
	end, err := srv.begin(ctx)
	if err != nil {
		for _, l := range lns {
			l.Close()
		}
		return err
	}
	for _, ln := range lns {
		srv.serveListener(ln) // cannot fail: the session is not draining yet
	}
	<-ctx.Done()
	return end()
}

// begin starts a serving session: the connections' context and the idle
// sweeps. Listeners then join and leave it (serveListener, closeListener)
// while connections keep running. end, called once ctx has ended, drains:
// it closes the listeners still accepting, waits for the accept loops,
// lets the connections finish for at most DrainTimeout, cuts the rest and
// returns once every connection is closed. Sessions must not overlap.
func (srv *Server) begin(ctx context.Context) (end func() error, err error) {
	// Under mu, so that ServeConn, which takes it, serves with the loops.
	srv.mu.Lock()
	if !srv.serving.CompareAndSwap(false, true) {
		srv.mu.Unlock()
		return nil, errors.New("origdst: the server is already serving")
	}
	connCtx, cutConns := context.WithCancel(context.WithoutCancel(ctx))
	var loops []*httpLoop
	if len(srv.httpPorts) > 0 {
		var loopErr error
		if loops, loopErr = startHTTPLoops(srv, httpEventLoops(srv.opts.HTTPEventLoops)); loopErr != nil {
			// The goroutines wait in Go's poller instead: slower, the same.
			srv.log.Warn("origdst: the HTTP mode's event loops could not start; connections wait in goroutines", "error", loopErr)
		}
	}
	srv.connCtx = connCtx
	srv.draining = false
	srv.loops = loops
	srv.mu.Unlock()
	stopIdle := srv.startIdleSweeps()
	return func() error {
		defer srv.serving.Store(false)
		defer cutConns()
		defer stopIdle()
		srv.drain(cutConns)
		// Every connection is closed: the loops hold none.
		srv.mu.Lock()
		srv.loops = nil
		srv.mu.Unlock()
		stopHTTPLoops(loops)
		return nil
	}, nil
}

// httpEventLoops is the number of event loops Options.HTTPEventLoops
// asks for. The automatic number, half of GOMAXPROCS, leaves the other
// half to the goroutines (first requests, bodies, the TCP proxy, the other
// roles): on the 2-CPU benchmark machine, where realipd shares the CPUs
// with the client and the application, one loop gave the steadiest tail
// at the same requests per second (docs/performance.md).
func httpEventLoops(n int) int {
	switch {
	case n > 0:
		return n
	case n < 0:
		return 0
	}
	return max(1, (runtime.GOMAXPROCS(0)+1)/2)
}

// serveListener adds ln to the serving session and accepts on it until
// it is closed (closeListener, or the drain). Outside a session, or once
// the drain has begun, it closes ln and returns an error.
func (srv *Server) serveListener(ln *Listener) error {
	srv.mu.Lock()
	if !srv.serving.Load() || srv.draining {
		srv.mu.Unlock()
		ln.Close()
		return errors.New("origdst: not serving")
	}
	srv.lns[ln] = struct{}{}
	srv.countListeners()
	srv.accepting.Add(1)
	srv.mu.Unlock()
	srv.log.Info("origdst: serving", "address", ln.AddrPort().String(), "mode", string(ln.Mode()))
	go func() {
		defer srv.accepting.Done()
		srv.acceptLoop(ln)
	}()
	return nil
}

// closeListener stops accepting on ln: the kernel refuses new connections
// to its address (unless another socket shares it), and the connections
// already accepted go on.
func (srv *Server) closeListener(ln *Listener) {
	srv.mu.Lock()
	_, ok := srv.lns[ln]
	delete(srv.lns, ln)
	srv.countListeners()
	srv.mu.Unlock()
	ln.Close()
	if ok {
		srv.log.Info("origdst: stopped accepting", "address", ln.AddrPort().String())
	}
}

// parkListener stops ln accepting while its socket keeps the address,
// for Envoy's user only (Listener.park); its accept loop waits. The drain
// closes it like any other.
func (srv *Server) parkListener(ln *Listener) error {
	if err := ln.park(); err != nil {
		return err
	}
	srv.mu.Lock()
	srv.countListeners()
	srv.mu.Unlock()
	srv.log.Info("origdst: stopped accepting; the socket keeps the address, which only a socket of the same user with SO_REUSEPORT (Envoy's) may share", "address", ln.AddrPort().String())
	return nil
}

// resumeListener makes a parked ln accept again.
func (srv *Server) resumeListener(ln *Listener) error {
	if err := ln.resume(); err != nil {
		return err
	}
	srv.mu.Lock()
	srv.countListeners()
	srv.mu.Unlock()
	srv.log.Info("origdst: serving", "address", ln.AddrPort().String(), "mode", string(ln.Mode()))
	return nil
}

// countListeners sets the listeners gauge to the listeners accepting (not
// parked). srv.mu is held.
func (srv *Server) countListeners() {
	srv.m.listeners.Set(float64(srv.listening()))
}

// listening counts the listeners accepting. srv.mu is held.
func (srv *Server) listening() int {
	n := 0
	for ln := range srv.lns {
		if !ln.isParked() {
			n++
		}
	}
	return n
}

// drain closes every listener, waits for the accept loops, then lets the
// connections finish for at most DrainTimeout and cuts the rest.
func (srv *Server) drain(cutConns context.CancelFunc) {
	srv.mu.Lock()
	srv.draining = true
	lns := srv.lns
	srv.lns = map[*Listener]struct{}{}
	srv.m.listeners.Set(0)
	srv.mu.Unlock()
	for ln := range lns {
		ln.Close()
	}
	srv.accepting.Wait()
	srv.drainHTTP()

	done := make(chan struct{})
	go func() { srv.handlers.Wait(); close(done) }()
	n := srv.active.Load()
	if n > 0 {
		srv.log.Info("origdst: draining", "connections", n, "drain_timeout", srv.opts.DrainTimeout)
	}
	timer := time.NewTimer(srv.opts.DrainTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		cut := srv.cutAll(cutDrain)
		cutConns()
		if cut > 0 {
			srv.log.Warn("origdst: connections still open at the end of the drain were cut", "connections", cut, "drain_timeout", srv.opts.DrainTimeout)
		}
		<-done
	}
	srv.log.Info("origdst: stopped")
}

// Ready reports nil while capture listeners accept, an error before the
// first is bound and while draining.
func (srv *Server) Ready(context.Context) error {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	switch {
	case srv.draining:
		return errors.New("origdst: draining")
	case srv.listening() == 0:
		return errors.New("origdst: no capture listener is serving")
	}
	return nil
}

// isDraining reports whether the serving session is draining.
func (srv *Server) isDraining() bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return srv.draining
}

// ServeConn serves one connection that the caller accepted itself and
// whose original destination it knows, as a capture listener's connection
// is served: the connection limit, the PROXY header, the policies, then
// the TCP proxy or, for an HTTP port, the HTTP mode; listener names it to
// the policies. It returns once the connection is done. The server must be
// serving (ServeListeners, Serve or Handoff.Serve running, not draining);
// otherwise c is closed and an error returned. It is for callers with
// listeners of their own, and for tests that need no capture listener.
func (srv *Server) ServeConn(c *net.TCPConn, originalDst netip.AddrPort, listener string) error {
	srv.mu.Lock()
	if !srv.serving.Load() || srv.draining {
		srv.mu.Unlock()
		abort(c)
		return errors.New("origdst: not serving")
	}
	srv.handlers.Add(1)
	srv.mu.Unlock()
	srv.m.accepted.Inc()
	if srv.active.Add(1) > int64(srv.opts.MaxConnections) {
		srv.active.Add(-1)
		srv.handlers.Done()
		abort(c)
		srv.m.refused[refusedLimit].Inc()
		return errors.New("origdst: max_connections reached")
	}
	srv.m.active.Inc()
	dst := netip.AddrPortFrom(originalDst.Addr().Unmap(), originalDst.Port())
	srv.serveConn(&Conn{TCPConn: c, Accepted: time.Now(), dst: dst}, listener)
	return nil
}

// acceptLoop accepts on ln until it is closed. Accept errors other than
// the close are resource exhaustion (EMFILE, ENFILE, ENOBUFS): it waits a
// little, longer each time, and goes on.
func (srv *Server) acceptLoop(ln *Listener) {
	name := ln.AddrPort().String()
	var delay time.Duration
	for {
		c, err := ln.AcceptOrigDst()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			if srv.warnAccept.Allow() {
				srv.log.Warn("origdst: accept failed; retrying", "address", name, "error", err, "retry_in", delay)
			}
			time.Sleep(delay)
			continue
		}
		delay = 0
		srv.m.accepted.Inc()
		if srv.active.Add(1) > int64(srv.opts.MaxConnections) {
			srv.active.Add(-1)
			abort(c.TCPConn)
			srv.m.refused[refusedLimit].Inc()
			srv.log.Debug("origdst: refused: max_connections reached", "peer", c.RemoteAddr().String(), "max_connections", srv.opts.MaxConnections)
			continue
		}
		srv.m.active.Inc()
		srv.handlers.Add(1)
		go srv.serveConn(c, name)
	}
}

// refusedInAccept counts and logs a connection a Listener closed in
// Accept.
func (srv *Server) refusedInAccept(peer netip.AddrPort, err error) {
	srv.m.accepted.Inc()
	if errors.Is(err, ErrNotRedirected) {
		srv.m.refused[refusedNotRedirected].Inc()
		srv.log.Debug("origdst: refused a connection that was not redirected", "peer", peer.String())
		return
	}
	srv.m.refused[refusedLookupError].Inc()
	srv.m.lookupErrors.WithLabelValues(lookupReason(err)).Inc()
	if srv.warnLookup.Allow() {
		srv.log.Warn("origdst: refused a connection whose original destination could not be read", "peer", peer.String(), "error", err)
	}
}
