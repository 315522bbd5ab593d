package origdst

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/plugins"
)

// The HTTP mode: connections whose original destination port is one of
// Options.HTTPPorts are served as HTTP/1.1 (keep-alive included) by the
// standard library's server, one http.Server per connection. Every
// request is resolved and decided on, as the ext_proc server does for
// Envoy, and then forwarded to the original destination by an
// httputil.ReverseProxy.

// Limits of the HTTP mode, Envoy's where Envoy has one.
const (
	// maxRequestHeaderBytes is Envoy's default max_request_headers_kb (60
	// KiB): a request with more header bytes is refused (431).
	maxRequestHeaderBytes = 60 << 10
	// requestHeaderTimeout bounds the wait for a request's headers.
	requestHeaderTimeout = 30 * time.Second
	// idleUpstreamTimeout is how long an upstream connection kept alive
	// for later requests may stay unused.
	idleUpstreamTimeout = 60 * time.Second
)

// upstreamErrorBody answers a request whose original destination could
// not be reached.
const upstreamErrorBody = "upstream connect error\n"

// httpConn serves the requests of one connection.
type httpConn struct {
	srv      *Server
	pc       *proxyConn
	peer     string           // the peer as resolution sees it: the TCP peer, or a trusted PROXY header's source
	peerIP   netip.Addr       // the IP Envoy would append to X-Forwarded-For: that peer's
	fixed    *clientip.Result // set when a trusted PROXY header names a client that is not an IP: unresolved
	dst      netip.AddrPort
	listener string
	handlers sync.WaitGroup // requests being served, upgraded ones included
}

// rewrite is what one allowed request's forwarding needs; it travels in
// the request's context to the reverse proxy's Rewrite.
type rewrite struct {
	pc             *proxyConn
	dst            netip.AddrPort
	decider        *decide.Decider // what decided: which policy headers may be written
	clientIPHeader string
	clientIP       string // "" removes the header
	peerIP         string
	policy         []plugins.Header
}

type rewriteKey struct{}

// serveHTTP serves conn, whose first bytes may be pre (read past a PROXY
// header), as HTTP/1.1 until it closes. res is the client a trusted PROXY
// header named (its Source is SourceHeader), the peer's (no header, or
// one that names no source: each request is resolved from the peer and
// its forwarding header), or unresolved.
func (srv *Server) serveHTTP(pc *proxyConn, c *Conn, pre []byte, res clientip.Result, listener string) {
	hc := &httpConn{srv: srv, pc: pc, dst: c.OriginalDst(), listener: listener}
	pc.touch()
	peer := addrPortOf(c.RemoteAddr())
	switch {
	case res.Source == clientip.SourceHeader:
		// A trusted proxy speaking PROXY protocol: its source is the
		// peer, as for Envoy's proxy_protocol listener filter.
		hc.peerIP = res.IP
		hc.peer = netip.AddrPortFrom(res.IP, 0).String()
	case !res.OK():
		hc.fixed = &res
		hc.peerIP = peer.Addr()
		hc.peer = peer.String()
	default:
		hc.peerIP = peer.Addr()
		hc.peer = peer.String()
	}
	done := make(chan struct{})
	var closeDone sync.Once
	hs := &http.Server{
		Handler:           hc,
		ReadHeaderTimeout: requestHeaderTimeout,
		IdleTimeout:       srv.opts.IdleTimeout,
		MaxHeaderBytes:    maxRequestHeaderBytes,
		// OPTIONS * goes to the handler, to be decided on like any
		// request, not answered by net/http.
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     log.New(io.Discard, "", 0),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				closeDone.Do(func() { close(done) })
			}
		},
	}
	if !srv.trackHTTP(pc, hs) { // the drain began meanwhile
		abort(c.TCPConn)
		return
	}
	_ = hs.Serve(&oneConnListener{conn: &prefixConn{Conn: c.TCPConn, tcp: c.TCPConn, pc: pc, pre: pre}, done: done})
	// Serve returns once the connection is closed, or hijacked by an
	// upgrade (WebSocket) that its handler still serves.
	hc.handlers.Wait()
	_ = c.TCPConn.Close()
}

// ServeHTTP resolves the client of r, lets the policies decide, and
// answers a deny itself or forwards r to the original destination.
func (hc *httpConn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hc.handlers.Add(1)
	defer hc.handlers.Done()
	srv := hc.srv
	// What Envoy's HTTP connection manager refuses or rewrites before any
	// filter runs (so ext_proc never sees it) is refused or rewritten
	// here first.
	if refusal := envoyRefuses(r); refusal != "" {
		d := srv.cur.Load()
		srv.m.deniedHTTP(srv.countersOf(d), decide.PolicyHTTPRefused)
		srv.log.Debug("origdst: HTTP request refused", "reason", refusal, "peer", hc.peer)
		d.Refuse(r.Context(), &srv.httpDoor, &decide.Input{Peer: hc.peer, Resolution: clientip.Result{Reason: clientip.ReasonNone}, OriginalDst: hc.dst}, decide.PolicyHTTPRefused)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, refusal+"\n")
		return
	}
	d, held := srv.cur.Acquire()
	if held {
		defer d.Release()
	}
	local := srv.countersOf(d)
	var res clientip.Result
	switch {
	case hc.fixed != nil:
		res = *hc.fixed
	case local.header == "":
		res = d.Resolver().Client(hc.peer, nil)
	case local.header == "X-Forwarded-For":
		// Envoy joins the lines of X-Forwarded-For (an inline header)
		// into one and skips the empty ones.
		res = d.Resolver().Client(hc.peer, nonBlank(r.Header[local.header]))
	default:
		res = d.Resolver().Client(hc.peer, r.Header[local.header])
	}
	if !res.OK() {
		srv.m.httpUnresolved.WithLabelValues(res.Reason.String()).Inc()
	}
	o := d.Decide(r.Context(), &srv.httpDoor, &decide.Input{Peer: hc.peer, Resolution: res, OriginalDst: hc.dst}, func() *plugins.Request {
		return &plugins.Request{
			ClientIP:    res.IP,
			Peer:        hc.peer,
			OriginalDst: hc.dst,
			Resolution:  res,
			Strategy:    d.Resolver().Strategy(),
			Headers:     policyHeaders(d.Chain(), r),
			Listener:    hc.listener,
		}
	})
	if o.Deny {
		srv.m.deniedHTTP(local, o.Policy)
		hdr := w.Header()
		for _, ph := range o.Headers {
			if d.WritableHeader(ph, true) {
				hdr.Set(ph.Name, ph.Value)
			}
		}
		hdr.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(o.Status)
		_, _ = io.WriteString(w, o.Body)
		return
	}
	srv.m.httpAllowed.Inc()
	rw := &rewrite{pc: hc.pc, dst: hc.dst, decider: d, clientIPHeader: local.clientIPHeader, peerIP: hc.peerIP.Unmap().String(), policy: o.Headers}
	if res.OK() {
		rw.clientIP = res.IP.String()
	}
	srv.reverseProxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), rewriteKey{}, rw)))
}

// policyHeaders are the headers of r the chain's policies read
// (plugins.HeaderInputs), names lower-case, with the request's pseudo
// headers as Envoy gives them (:authority, :method, :path, :scheme);
// nil when no policy reads any. Names come sorted (net/http keeps no
// order between names), repeated lines in order.
func policyHeaders(chain *plugins.Chain, r *http.Request) []plugins.Header {
	names, all := chain.RequestHeaders()
	if !all && len(names) == 0 {
		return nil
	}
	path := r.RequestURI
	if r.URL.IsAbs() {
		// Absolute form (GET http://host/p): Envoy's :path is /p, what
		// is forwarded.
		path = r.URL.RequestURI()
	}
	pseudo := []plugins.Header{
		{Name: ":authority", Value: r.Host},
		{Name: ":method", Value: r.Method},
		{Name: ":path", Value: path},
		{Name: ":scheme", Value: "http"},
	}
	var out []plugins.Header
	for _, p := range pseudo {
		if all || slices.Contains(names, p.Name) {
			out = append(out, p)
		}
	}
	if all {
		keys := make([]string, 0, len(r.Header))
		for k := range r.Header {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			for _, v := range r.Header[k] {
				out = append(out, plugins.Header{Name: strings.ToLower(k), Value: v})
			}
		}
		return out
	}
	for _, n := range names {
		if strings.HasPrefix(n, ":") {
			continue
		}
		for _, v := range r.Header[textproto.CanonicalMIMEHeaderKey(n)] {
			out = append(out, plugins.Header{Name: n, Value: v})
		}
	}
	return out
}

// newReverseProxy builds the proxy of the HTTP mode: it forwards each
// request to its connection's original destination over the server's
// upstream dials (SO_MARK), keeping upstream connections alive between
// requests, and answers 503 when the upstream cannot be reached.
func (srv *Server) newReverseProxy() *httputil.ReverseProxy {
	transport := &http.Transport{
		Proxy: nil, // never a proxy from the environment
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return srv.dialUpstream(ctx, addr)
		},
		MaxIdleConnsPerHost:    16,
		IdleConnTimeout:        idleUpstreamTimeout,
		DisableCompression:     true, // forward the body as the upstream sent it
		MaxResponseHeaderBytes: 1 << 20,
	}
	srv.closeIdleUpstreams = transport.CloseIdleConnections
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			rw := pr.In.Context().Value(rewriteKey{}).(*rewrite)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = rw.dst.String()
			pr.Out.Host = pr.In.Host
			hdr := pr.Out.Header
			// A client-sent client-IP header never survives, nor one
			// spelt with underscores (X_Real_IP), which CGI-style
			// servers take for the same header.
			for name := range hdr {
				if strings.EqualFold(strings.ReplaceAll(name, "_", "-"), rw.clientIPHeader) {
					delete(hdr, name)
				}
			}
			if rw.clientIP != "" {
				hdr.Set(rw.clientIPHeader, rw.clientIP)
			}
			// Envoy with use_remote_address: true appends the peer to
			// X-Forwarded-For (one line, the client's lines joined).
			xff := strings.Join(nonBlank(pr.In.Header["X-Forwarded-For"]), ", ")
			if xff != "" {
				xff += ", "
			}
			hdr["X-Forwarded-For"] = []string{xff + rw.peerIP}
			for _, ph := range rw.policy {
				if rw.decider.WritableHeader(ph, false) {
					hdr.Set(ph.Name, ph.Value)
				}
			}
		},
		Transport:     transport,
		FlushInterval: -1, // stream responses as they come (server-sent events)
		ErrorLog:      log.New(io.Discard, "", 0),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if rw, _ := r.Context().Value(rewriteKey{}).(*rewrite); rw != nil && srv.wasCut(rw.pc) {
				return // realipd cut the client's connection (idle_timeout, the drain)
			}
			srv.m.httpUpstreamErrors.Inc()
			srv.log.Debug("origdst: HTTP request to the original destination failed", "original_dst", r.URL.Host, "error", err)
			if errors.Is(err, context.Canceled) {
				return // the client went away
			}
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, upstreamErrorBody)
		},
	}
}

// dialUpstream connects to an original destination with the server's
// dialer (SO_MARK, dial_timeout), counting failures.
func (srv *Server) dialUpstream(ctx context.Context, addr string) (net.Conn, error) {
	var conn net.Conn
	var err error
	dial := func() { conn, err = srv.dial.DialContext(ctx, "tcp", addr) }
	if srv.dialOn != nil {
		srv.dialOn(dial)
	} else {
		dial()
	}
	if err != nil {
		srv.m.dialErrors.WithLabelValues(dialReason(err)).Inc()
		return nil, err
	}
	return conn, nil
}

// oneConnListener hands one connection to an http.Server, then blocks
// Accept until that connection is closed or hijacked (done), so that
// Serve returns then.
type oneConnListener struct {
	conn net.Conn
	once sync.Once
	done chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.conn })
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

// prefixConn is the client's TCP connection as the HTTP mode uses it:
// its first bytes read are pre, and every read and write marks the
// connection active for the idle sweep (idle_timeout holds in the middle
// of a request and after an upgrade, not only between requests). It is a
// net.Conn and no more, so that io.Copy of an upgraded connection goes
// through Read and Write rather than the TCP connection's own ReadFrom
// and WriteTo.
type prefixConn struct {
	net.Conn
	tcp *net.TCPConn
	pc  *proxyConn
	pre []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(b, c.pre)
		c.pre = c.pre[n:]
		c.pc.touch()
		return n, nil
	}
	n, err := c.tcp.Read(b)
	if n > 0 {
		c.pc.touch()
	}
	return n, err
}

func (c *prefixConn) Write(b []byte) (int, error) {
	n, err := c.tcp.Write(b)
	if n > 0 {
		c.pc.touch()
	}
	return n, err
}

// CloseWrite half-closes the connection (an upgraded connection whose
// upstream finished sending).
func (c *prefixConn) CloseWrite() error { return c.tcp.CloseWrite() }

// isHTTPPort reports whether connections to port are served as HTTP.
func (srv *Server) isHTTPPort(port uint16) bool {
	_, found := slices.BinarySearch(srv.httpPorts, port)
	return found
}

// setUpHTTP reads the PROXY header of a trusted peer, which names the
// client, and checks that no other peer sends one (an HTTP client speaks
// first, so its first bytes are looked at before anything is served). pre
// are the bytes read past the header.
func (srv *Server) setUpHTTP(c *Conn) (pre []byte, res clientip.Result, err error) {
	client := c.TCPConn
	peer := addrPortOf(client.RemoteAddr())
	res = clientip.Result{IP: peer.Addr(), Source: clientip.SourcePeer, Reason: clientip.ReasonPeer}
	if !srv.opts.ProxyProtocol {
		return nil, res, nil
	}
	h, rest, err := readProxyHeader(client, srv.opts.ProxyHeaderTimeout)
	if srv.cur.Load().TrustsProxyHeaderOf(peer.Addr()) {
		if err != nil {
			return nil, res, errors.New("PROXY header of a trusted peer: " + err.Error())
		}
		return rest, proxyResult(h, res), nil
	}
	if h != nil || err != nil && !noHeader(err) {
		return nil, res, errors.New("PROXY header from an untrusted peer")
	}
	return rest, res, nil
}

// trackHTTP records the server of an HTTP connection, so that a drain can
// end its keep-alive; false when the drain has begun.
func (srv *Server) trackHTTP(pc *proxyConn, hs *http.Server) bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.draining {
		return false
	}
	srv.httpServers[pc] = hs
	pc.http = true // idle-swept from now on
	return true
}

// drainHTTP ends the keep-alive of every HTTP connection: idle ones close
// now, the others after the response in progress (http.Server.Shutdown);
// the drain timeout still cuts what is left.
func (srv *Server) drainHTTP() {
	srv.mu.Lock()
	servers := make([]*http.Server, 0, len(srv.httpServers))
	for _, hs := range srv.httpServers {
		servers = append(servers, hs)
	}
	srv.mu.Unlock()
	for _, hs := range servers {
		hs.SetKeepAlivesEnabled(false)
		go func() { _ = hs.Shutdown(context.Background()) }()
	}
	if srv.closeIdleUpstreams != nil {
		srv.closeIdleUpstreams()
	}
}

// envoyRefuses says why Envoy's HTTP connection manager, as realipd's xDS
// control plane configures it, would refuse r before its filters run, or
// "" when it would not; it strips an h2c upgrade from r, as Envoy's
// HTTP/1 codec does, and forwards the request without it. Envoy takes
// WebSocket upgrades only (upgrade_configs) and no CONNECT; anything else
// would be tunnelled past the policies and the client-IP header.
func envoyRefuses(r *http.Request) string {
	if r.Method == http.MethodConnect {
		return "CONNECT is not allowed"
	}
	upgrade := r.Header.Get("Upgrade")
	if upgrade == "" {
		return ""
	}
	if httpguts.HeaderValuesContainsToken(r.Header["Upgrade"], "h2c") {
		r.Header.Del("Upgrade")
		r.Header.Del("Http2-Settings")
		var keep []string
		for _, v := range r.Header["Connection"] {
			for _, tok := range strings.Split(v, ",") {
				tok = strings.TrimSpace(tok)
				if tok != "" && !strings.EqualFold(tok, "upgrade") && !strings.EqualFold(tok, "http2-settings") {
					keep = append(keep, tok)
				}
			}
		}
		r.Header.Del("Connection")
		if len(keep) > 0 {
			r.Header.Set("Connection", strings.Join(keep, ", "))
		}
		return ""
	}
	if httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") && !strings.EqualFold(strings.TrimSpace(upgrade), "websocket") {
		return "upgrade to " + strconvQuote(upgrade) + " is not allowed"
	}
	return ""
}

// strconvQuote quotes s for a one-line answer, at most 64 bytes of it.
func strconvQuote(s string) string {
	if len(s) > 64 {
		s = s[:64]
	}
	return strconv.Quote(s)
}

// nonBlank returns lines without the blank ones (lines itself when there
// are none).
func nonBlank(lines []string) []string {
	if !slices.ContainsFunc(lines, isBlank) {
		return lines
	}
	out := make([]string, 0, len(lines))
	for _, l := range lines {
		if !isBlank(l) {
			out = append(out, l)
		}
	}
	return out
}

func isBlank(s string) bool { return strings.TrimSpace(s) == "" }
