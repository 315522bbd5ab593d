package origdst

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/origdst/internal/h1"
	"github.com/realipd/realipd/plugins"
)

// The HTTP mode: connections whose original destination port is one of
// Options.HTTPPorts are served as HTTP/1.1, keep-alive and pipelining
// included, by a forwarding path written for the job (not net/http): one
// goroutine per client connection reads each request head with a strict,
// bounded parser (internal/h1), resolves and decides on it as the ext_proc
// server does for Envoy (decide), and forwards it, rewritten in place, over
// one upstream connection of its own to the connection's original
// destination; the response goes back as the upstream framed it, its head
// copied and its body spliced or copied by its framing. There is no shared
// pool of upstream connections, so nothing can go to one client's upstream
// connection from another; a connection that waits for its next request
// holds no buffer. Once it has its upstream connection, a kept-alive
// connection waits in an event loop, which serves the plain requests in
// place (httploop_linux.go).

// Limits of the HTTP mode, Envoy's where Envoy has one.
const (
	// requestHeaderTimeout bounds the wait for the rest of a request's
	// head once its first bytes came.
	requestHeaderTimeout = 30 * time.Second
	// httpBufSize is the buffer of a connection while it works; heads up
	// to h1.MaxHeadBytes get a large one.
	httpBufSize = 8 << 10
	// spliceAbove is the body size from which a body is spliced from one
	// socket to the other rather than copied through the buffer.
	spliceAbove = 64 << 10
	// maxDrainBody is how much of the body of a request answered without
	// forwarding (a deny, a refusal) is read and dropped to keep the
	// connection; a longer one closes it.
	maxDrainBody = 64 << 10
)

// Bodies of the answers the HTTP mode gives itself.
const (
	upstreamErrorBody = "upstream connect error\n"
	textPlain         = "text/plain; charset=utf-8"
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, httpBufSize); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, h1.MaxHeadBytes+httpBufSize); return &b }}
)

func getBuf() *[]byte { return smallBufs.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if b == nil {
		return
	}
	if len(*b) > httpBufSize {
		largeBufs.Put(b)
		return
	}
	smallBufs.Put(b)
}

// buffer is a window [r:w) of read but unconsumed bytes in a pooled buffer.
type buffer struct {
	b    *[]byte
	r, w int
}

func (b *buffer) data() []byte { return (*b.b)[b.r:b.w] }

func (b *buffer) empty() bool { return b.r == b.w }

func (b *buffer) consume(n int) {
	b.r += n
	if b.r == b.w {
		b.r, b.w = 0, 0
	}
}

// hold makes sure a buffer is held.
func (b *buffer) hold() {
	if b.b == nil {
		b.b = getBuf()
	}
}

// release gives an empty buffer back to its pool.
func (b *buffer) release() {
	if b.b != nil && b.empty() {
		putBuf(b.b)
		b.b = nil
	}
}

// room makes room to read into: it moves the data to the start when the
// end is full, and grows a full small buffer to a large one when grow.
func (b *buffer) room(grow bool) []byte {
	buf := *b.b
	if b.w == len(buf) && b.r > 0 {
		n := copy(buf, buf[b.r:b.w])
		b.r, b.w = 0, n
	}
	if b.w == len(buf) && grow && len(buf) == httpBufSize {
		big := largeBufs.Get().(*[]byte)
		n := copy(*big, buf[b.r:b.w])
		putBuf(b.b)
		b.b, b.r, b.w = big, 0, n
		buf = *big
	}
	return buf[b.w:]
}

// fill reads once from c into the buffer; grow lets a full small buffer
// become a large one (a long head).
func (b *buffer) fill(c io.Reader, pc *proxyConn, grow bool) error {
	b.hold()
	room := b.room(grow)
	if len(room) == 0 {
		return errBufferFull
	}
	n, err := c.Read(room)
	if n > 0 {
		b.w += n
		pc.touch()
		return nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return err
}

var errBufferFull = errors.New("origdst: buffer full")

// httpConn serves the requests of one client connection.
type httpConn struct {
	srv      *Server
	pc       *proxyConn
	client   *net.TCPConn
	reader   *bufferedReader // the client's next request, into in
	dst      netip.AddrPort
	listener string
	peer     string           // the peer as resolution sees it: the TCP peer, or a trusted PROXY header's source
	peerIP   []byte           // the IP Envoy would append to X-Forwarded-For: that peer's
	fixed    *clientip.Result // set when a trusted PROXY header names a client that is not an IP: unresolved
	idle     atomic.Bool      // waiting for the next request (a drain wakes it)

	in     buffer  // from the client
	upIn   buffer  // from the upstream
	outBuf *[]byte // the pooled buffer of out, held while the connection works
	out    []byte  // a head being written

	clientIO     *rawSocket    // the client's socket, read and written without a thread handoff
	up           *net.TCPConn  // the upstream connection, nil until the first forwarded request
	upIO         *rawSocket    // up's socket, as clientIO
	upWaiter     *dataWaiter   // up's
	clientWaiter *dataWaiter   // the client's, made when a long body first needs it
	upServed     int           // responses read on up
	upLastUsed   time.Duration // when up's last response began, on decide.Monotonic

	req    h1.Request
	isHead bool // req is a HEAD: its response has no body
	resp   h1.Response
	// Per request, reused: the lines of the header resolution reads, and
	// the policies' request.
	lines []string

	// While the connection waits in an event loop (httploop_linux.go).
	loop       *httpLoop     // the loop it waits in; nil: it waits in Go's poller
	inLoop     atomic.Bool   // the loop has it
	back       chan loopBack // how the loop gives it back
	clientRC   syscall.RawConn
	upRC       syscall.RawConn // up's
	loopState                  // the loop's own, while it has the connection
	unsent     []byte          // the head's bytes a loop could not send (sendRest)
	respLeft   int             // the response's bytes in upIn a loop could not write (backResponseRest)
	replayable bool            // the request a loop forwarded may be sent twice (exchange)
	resumeAt   exchangeStep    // where exchange goes on (backExchange)
	upStray    bool            // bytes or a close came on up with no request outstanding: it carries no more requests
	decided    decided         // the decision a loop made (backDecided)
	preq       plugins.Request
}

// serveHTTP serves c as HTTP/1.1 until it closes; its first bytes may be
// pre (read past a PROXY header). res is the client a trusted PROXY
// header named (its Source is SourceHeader), or the peer's.
func (srv *Server) serveHTTP(pc *proxyConn, c *Conn, pre []byte, res clientip.Result, listener string) {
	hc := &httpConn{srv: srv, pc: pc, client: c.TCPConn, dst: c.OriginalDst(), listener: listener}
	defer hc.close()
	peer := addrPortOf(c.RemoteAddr())
	var ip netip.Addr
	switch {
	case res.Source == clientip.SourceHeader:
		// A trusted proxy speaking PROXY protocol: its source is the
		// peer, as for Envoy's proxy_protocol listener filter.
		ip = res.IP
		hc.peer = netip.AddrPortFrom(res.IP, 0).String()
	case !res.OK():
		hc.fixed = &res
		ip = peer.Addr()
		hc.peer = peer.String()
	default:
		ip = peer.Addr()
		hc.peer = peer.String()
	}
	hc.peerIP = ip.Unmap().AppendTo(nil)
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	hc.clientRC = rc
	hc.reader = newBufferedReader(rc, &hc.in)
	hc.clientIO = newRawSocket(rc)
	if len(pre) > 0 {
		hc.in.hold()
		hc.in.w = copy(*hc.in.b, pre) // pre is at most a PROXY header's read-ahead: it fits
	}
	if !srv.trackHTTP(pc, hc) { // the drain began meanwhile
		abort(c.TCPConn)
		return
	}
	pc.touch()
	for hc.serveOne() {
	}
}

// loopBack says where an event loop gave a connection back to its
// goroutine, which goes on from there.
type loopBack uint8

const (
	backEnd          loopBack = iota // the connection ends (the client closed, an error, a cut, the drain)
	backRequest                      // hc.in holds the start of a request, not decided
	backDecided                      // the request is decided (hc.decided), not answered
	backExchange                     // the request is forwarded up to hc.resumeAt
	backResponseRest                 // the response is relayed but for hc.respLeft bytes
)

// decided is a decision made in an event loop, acted upon by the
// connection's goroutine.
type decided struct {
	d       *decide.Decider
	local   *denyCounters
	res     clientip.Result
	outcome decide.Outcome
}

// close releases what the connection holds.
func (hc *httpConn) close() {
	if hc.up != nil {
		_ = hc.up.Close()
		hc.up = nil
	}
	_ = hc.client.Close()
	putBuf(hc.in.b)
	putBuf(hc.upIn.b)
	putBuf(hc.outBuf)
	hc.in.b, hc.upIn.b, hc.outBuf, hc.out = nil, nil, nil, nil
}

// serveOne serves one request; false ends the connection. A connection
// that waits for its next request with an upstream connection of its own
// waits in one of the server's event loops (httploop_linux.go), which
// serves the requests it can in place and gives the connection back at the
// point it stopped.
func (hc *httpConn) serveOne() bool {
	if hc.in.empty() {
		if hc.loop != nil && hc.up != nil {
			switch hc.waitInLoop() {
			case backEnd:
				return false
			case backDecided:
				o := hc.decided
				hc.decided = decided{}
				return hc.act(o.d, o.local, o.res, o.outcome)
			case backExchange:
				return hc.exchange(hc.out, false, hc.replayable, hc.resumeAt)
			case backResponseRest:
				return hc.writeResponseRest()
			}
			// backRequest: hc.in holds the start of a request.
		} else if !hc.waitRequest() {
			return false
		}
	}
	if err := hc.readHead(); err != nil {
		var he *h1.Error
		if errors.As(err, &he) {
			hc.isHead = false
			if hc.answer(he.Status, he.Reason+"\n", nil, false) {
				hc.lingerClose()
			}
		}
		return false
	}
	req := &hc.req
	hc.isHead = bytesEqual(req.Method, "HEAD")
	d := hc.srv.cur.Load()
	local := hc.srv.countersOf(d)
	if refusal := envoyRefuses(req); refusal != "" {
		hc.srv.m.deniedHTTP(local, decide.PolicyHTTPRefused)
		hc.srv.log.Debug("origdst: HTTP request refused", "reason", refusal, "peer", hc.peer)
		d.Refuse(context.Background(), &hc.srv.httpDoor, &decide.Input{Peer: hc.peer, Resolution: clientip.Result{Reason: clientip.ReasonNone}, OriginalDst: hc.dst}, decide.PolicyHTTPRefused)
		return hc.answerRequest(http403, refusal+"\n", nil)
	}
	return hc.act(hc.decide())
}

// decide resolves the client of hc.req and lets the policies decide. The
// chain is held while they decide, and released at once: a request that
// goes on (a long body, a WebSocket tunnel) must not keep a chain a reload
// replaced, nor its plugins, alive.
func (hc *httpConn) decide() (*decide.Decider, *denyCounters, clientip.Result, decide.Outcome) {
	d, held := hc.srv.cur.Acquire()
	if held {
		defer d.Release()
	}
	local, res, o := hc.decideWith(d)
	return d, local, res, o
}

// decideWith is decide with d, which the caller holds.
func (hc *httpConn) decideWith(d *decide.Decider) (*denyCounters, clientip.Result, decide.Outcome) {
	local := hc.srv.countersOf(d)
	res := hc.resolve(d, local)
	if !res.OK() {
		hc.srv.m.httpUnresolved.WithLabelValues(res.Reason.String()).Inc()
	}
	o := d.Decide(context.Background(), &hc.srv.httpDoor, &decide.Input{Peer: hc.peer, Resolution: res, OriginalDst: hc.dst}, func() *plugins.Request {
		// One per connection, reused: a policy keeps nothing of a
		// Request once its Decide has returned (plugins.Request).
		hc.preq = plugins.Request{
			ClientIP:    res.IP,
			Peer:        hc.peer,
			OriginalDst: hc.dst,
			Resolution:  res,
			Strategy:    d.Resolver().Strategy(),
			Headers:     hc.policyHeaders(d.Chain()),
			Listener:    hc.listener,
		}
		return &hc.preq
	})
	return local, res, o
}

// act answers a denied request or forwards an allowed one; it reports
// whether the connection goes on.
func (hc *httpConn) act(d *decide.Decider, local *denyCounters, res clientip.Result, o decide.Outcome) bool {
	if o.Deny {
		hc.srv.m.deniedHTTP(local, o.Policy)
		return hc.answerRequest(o.Status, o.Body, func(b []byte) []byte {
			for _, ph := range o.Headers {
				if d.WritableHeader(ph, true) {
					b = appendField(b, ph.Name, ph.Value)
				}
			}
			return b
		})
	}
	hc.srv.m.httpAllowed.Inc()
	return hc.forward(d, local, res, o.Headers)
}

// goIdle marks the connection idle, waiting for its next request, and
// gives back the buffers it does not need while it waits; false when the
// drain has begun (a drain that begins after wakes it: drainHTTP).
func (hc *httpConn) goIdle() bool {
	hc.in.release()
	hc.upIn.release()
	putBuf(hc.outBuf)
	hc.outBuf, hc.out = nil, nil
	hc.idle.Store(true)
	return !hc.srv.httpDraining.Load()
}

// waitRequest waits for the first bytes of the next request without
// holding a buffer; false when the connection ends (the client closed,
// realipd cut it, or a drain began).
func (hc *httpConn) waitRequest() bool {
	if !hc.goIdle() {
		return false
	}
	n, err := hc.reader.read()
	hc.idle.Store(false)
	if n > 0 {
		hc.pc.touch()
	}
	return err == nil && n > 0 && !hc.srv.httpDraining.Load()
}

// readHead reads until hc.in holds a whole request head and parses it.
func (hc *httpConn) readHead() error {
	deadline := false
	defer func() {
		if deadline {
			_ = hc.client.SetReadDeadline(time.Time{})
		}
	}()
	for {
		if !hc.in.empty() {
			err := h1.ParseRequest(hc.in.data(), &hc.req)
			if err != h1.ErrIncomplete {
				return err
			}
		}
		if !deadline && !hc.in.empty() {
			// The head is coming in pieces: bound the wait for the rest.
			deadline = true
			_ = hc.client.SetReadDeadline(time.Now().Add(requestHeaderTimeout))
		}
		if err := hc.in.fill(hc.clientIO, hc.pc, true); err != nil {
			return err
		}
	}
}

// resolve resolves the client of hc.req with d.
func (hc *httpConn) resolve(d *decide.Decider, local *denyCounters) clientip.Result {
	if hc.fixed != nil {
		return *hc.fixed
	}
	name := local.headerName
	if name == "" {
		return d.Resolver().Client(hc.peer, nil)
	}
	lines := hc.lines[:0]
	xff := name == "x-forwarded-for"
	for _, h := range hc.req.Headers {
		if h1.EqualFold(h.Name, name) && !(xff && len(h.Value) == 0) {
			// Envoy joins the lines of X-Forwarded-For (an inline header)
			// into one and skips the empty ones.
			lines = append(lines, bytesString(h.Value))
		}
	}
	hc.lines = lines
	res := d.Resolver().Client(hc.peer, lines)
	clear(lines) // keep no view of the buffer
	return res
}

// policyHeaders are the headers of hc.req the chain's policies read
// (plugins.HeaderInputs), names lower-case, values copied, with the
// request's pseudo headers as Envoy gives them (:authority, :method,
// :path, :scheme) first, then the header lines in request order; nil when
// no policy reads any.
func (hc *httpConn) policyHeaders(chain *plugins.Chain) []plugins.Header {
	names, all := chain.RequestHeaders()
	if !all && len(names) == 0 {
		return nil
	}
	req := &hc.req
	want := func(name string) bool { return all || slices.Contains(names, name) }
	var out []plugins.Header
	if want(":authority") {
		out = append(out, plugins.Header{Name: ":authority", Value: string(req.Host)})
	}
	if want(":method") {
		out = append(out, plugins.Header{Name: ":method", Value: string(req.Method)})
	}
	if want(":path") {
		out = append(out, plugins.Header{Name: ":path", Value: string(originPath(req))})
	}
	if want(":scheme") {
		out = append(out, plugins.Header{Name: ":scheme", Value: "http"})
	}
	for _, h := range req.Headers {
		name := lowerString(h.Name)
		if want(name) {
			out = append(out, plugins.Header{Name: name, Value: string(h.Value)})
		}
	}
	return out
}

// originPath is the request target as the origin server gets it (Envoy's
// :path): the absolute form's path and query, "/" when it has none.
func originPath(req *h1.Request) []byte {
	if !req.Absolute {
		return req.Path
	}
	if req.Path != nil {
		return req.Path
	}
	// http://host or http://host?q
	t := req.Target
	if i := slices.Index(t, '?'); i >= 0 {
		return append([]byte("/"), t[i:]...)
	}
	return []byte("/")
}

// The status codes the HTTP mode answers with itself.
const (
	http403 = 403
	http400 = 400
	http503 = 503
)

// answerRequest answers the current request with status and body (extra
// adds header fields), after reading and dropping its body when it is
// short; it reports whether the connection goes on.
func (hc *httpConn) answerRequest(status int, body string, extra func([]byte) []byte) bool {
	// A client that asked for 100 Continue has not sent its body, and
	// waits: the answer goes now, and the connection closes after it.
	keep := hc.req.KeepAlive && !hc.req.ExpectContinue && hc.dropBody()
	if !hc.answer(status, body, extra, keep) {
		return false
	}
	if !keep {
		hc.lingerClose()
	}
	return keep
}

// dropBody reads and drops the current request's head and body, when the
// body is at most maxDrainBody long; false when it is longer or malformed
// (the connection must then close).
func (hc *httpConn) dropBody() bool {
	req := &hc.req
	hc.in.consume(req.HeadLen)
	switch {
	case req.Chunked:
		var s h1.ChunkScanner
		total := 0
		for !s.Done() {
			n, _, err := s.Next(hc.in.data())
			if err != nil {
				return false
			}
			if n == 0 {
				if total > maxDrainBody || hc.in.fill(hc.clientIO, hc.pc, false) != nil {
					return false
				}
				continue
			}
			total += n
			hc.in.consume(n)
		}
		return true
	case req.ContentLength > maxDrainBody:
		return false
	case req.ContentLength > 0:
		left := int(req.ContentLength)
		for {
			k := min(left, hc.in.w-hc.in.r)
			hc.in.consume(k)
			if left -= k; left == 0 {
				return true
			}
			if hc.in.fill(hc.clientIO, hc.pc, false) != nil {
				return false
			}
		}
	}
	return true
}

// answer writes a response of realipd's own: status, the extra fields,
// Content-Type, Content-Length and, unless keep, Connection: close. It
// reports whether the write succeeded.
func (hc *httpConn) answer(status int, body string, extra func([]byte) []byte, keep bool) bool {
	b := hc.head()
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, statusText(status)...)
	b = append(b, "\r\n"...)
	if extra != nil {
		b = extra(b)
	}
	noBody := status == 204 || status == 304
	if !noBody {
		b = append(b, "Content-Type: "+textPlain+"\r\nContent-Length: "...)
		b = strconv.AppendInt(b, int64(len(body)), 10)
		b = append(b, "\r\n"...)
	}
	if !keep {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	if !noBody && !hc.isHead {
		// No body on a HEAD's answer, 204 or 304: the client would take
		// it for the start of its next response.
		b = append(b, body...)
	}
	hc.out = b[:0]
	_, err := hc.clientIO.Write(b)
	hc.pc.touch()
	return err == nil
}

// lingerClose ends a connection realipd refused, so that its answer is
// read: it half-closes, then reads and drops what the client still sends
// (at most 256 KiB, for at most a second) before closing. Closing at once
// with unread input resets the connection, and the reset can overtake the
// answer.
func (hc *httpConn) lingerClose() {
	_ = hc.client.CloseWrite()
	_ = hc.client.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.CopyN(io.Discard, hc.client, 256<<10)
}

// head returns the head buffer, empty.
func (hc *httpConn) head() []byte {
	if hc.outBuf == nil {
		hc.outBuf = getBuf()
		hc.out = (*hc.outBuf)[:0]
	}
	return hc.out[:0]
}

func statusText(code int) string {
	switch code {
	case 400:
		return "Bad Request"
	case 403:
		return "Forbidden"
	case 417:
		return "Expectation Failed"
	case 431:
		return "Request Header Fields Too Large"
	case 501:
		return "Not Implemented"
	case 502:
		return "Bad Gateway"
	case 503:
		return "Service Unavailable"
	}
	if t := http.StatusText(code); t != "" {
		return t
	}
	return "Status"
}

// appendField appends "name: value\r\n".
func appendField(b []byte, name, value string) []byte {
	b = append(b, name...)
	b = append(b, ": "...)
	b = append(b, value...)
	return append(b, "\r\n"...)
}

// bytesString views b as a string without copying; b must not change
// while the string is in use.
func bytesString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// lowerString returns b lower-cased, as a new string.
func lowerString(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return string(out)
}

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

// trackHTTP records an HTTP connection, so that a drain can end its
// keep-alive; false when the drain has begun.
func (srv *Server) trackHTTP(pc *proxyConn, hc *httpConn) bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.draining {
		return false
	}
	srv.httpConns[pc] = hc
	pc.http = true // idle-swept from now on
	if len(srv.loops) > 0 {
		hc.loop = srv.loops[srv.nextLoop%len(srv.loops)]
		srv.nextLoop++
		hc.back = make(chan loopBack, 1)
		pc.onCut = func() { hc.reclaim(true) }
	}
	return true
}

// drainHTTP ends the keep-alive of every HTTP connection: idle ones close
// now, the others after the response in progress; the drain timeout still
// cuts what is left.
func (srv *Server) drainHTTP() {
	srv.httpDraining.Store(true)
	srv.mu.Lock()
	conns := make([]*httpConn, 0, len(srv.httpConns))
	for _, hc := range srv.httpConns {
		conns = append(conns, hc)
	}
	srv.mu.Unlock()
	for _, hc := range conns {
		// A connection that marked itself idle before the drain began is
		// woken (its wait ends at the deadline, or its loop gives it
		// back); one that marks itself after sees the drain (see
		// waitRequest and waitInLoop).
		if hc.inLoop.Load() {
			hc.reclaim(false)
		} else if hc.idle.Load() {
			_ = hc.client.SetReadDeadline(time.Unix(1, 0))
		}
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
