package origdst

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/origdst/internal/h1"
	"github.com/realipd/realipd/plugins"
)

// errClientBody marks a failure to read the request's body from the
// client (a malformed chunk, the client gone): the client's fault, not the
// upstream's.
var errClientBody = errors.New("origdst: reading the request body")

// forward sends the allowed request hc.req to the original destination,
// rewritten as Envoy's connection manager would forward it (the client-IP
// header, X-Forwarded-For, the policies' headers, hop-by-hop headers
// removed), and relays the response; it reports whether the connection
// goes on.
func (hc *httpConn) forward(d *decide.Decider, local *denyCounters, res clientip.Result, policy []plugins.Header) bool {
	req := &hc.req
	websocket := req.Upgrade != nil // envoyRefuses let only WebSocket through
	replayable := !hasBody(req) && replayableRequest(req)
	head := hc.rewriteHead(d, local, res, policy, websocket)
	// From here on the request's views of the input buffer may be
	// overwritten (reading its body reuses the buffer).
	hc.in.consume(req.HeadLen)
	if req.ExpectContinue && hasBody(req) {
		// As Envoy does by default: realipd, having decided, asks for the
		// body itself; the upstream gets no Expect.
		if _, err := io.WriteString(hc.client, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
			return false
		}
		req.ExpectContinue = false
	}
	return hc.exchange(head, websocket, replayable, sendHead)
}

// exchangeStep is where an exchange begins.
type exchangeStep uint8

const (
	sendHead      exchangeStep = iota // nothing was sent
	sendRest                          // an event loop sent the head's first bytes; hc.unsent is the rest
	awaitResponse                     // the request went out; the response is awaited (its first bytes may be in hc.upIn)
)

// exchange sends the request, head then body, to the original destination
// and relays the response, from step at on (an event loop may have done
// the first steps); it reports whether the connection goes on.
func (hc *httpConn) exchange(head []byte, websocket, replayable bool, at exchangeStep) bool {
	retried := false
	for {
		if at == sendHead {
			if hc.up != nil && !hc.upstreamReusable() {
				// The upstream closed the kept-alive connection, or sent
				// what nobody asked for: a new one, before anything is
				// sent.
				hc.dropUpstream()
			}
			if hc.up == nil {
				if err := hc.dialUpstream(); err != nil {
					hc.srv.m.httpUpstreamErrors.Inc()
					hc.srv.log.Debug("origdst: HTTP request to the original destination failed", "original_dst", hc.dst.String(), "error", err)
					return hc.answer(http503, upstreamErrorBody, nil, false) && false
				}
			}
		}
		reused := hc.upServed > 0
		var err error
		switch at {
		case sendHead:
			err = hc.sendRequest(head)
		case sendRest:
			_, err = hc.upIO.Write(hc.unsent)
			hc.unsent = nil
			hc.pc.touch()
		}
		at = sendHead // a retry sends it all again
		if err == nil {
			var started bool
			started, err = hc.relayResponse(websocket)
			if err == nil {
				return hc.afterResponse()
			}
			if started {
				return false // the client has part of a response: only closing can tell it
			}
		}
		hc.dropUpstream()
		switch {
		case errors.Is(err, errClientBody):
			// The client's body was malformed or cut: its fault, a 400.
			hc.srv.log.Debug("origdst: HTTP request body refused", "peer", hc.peer, "error", err)
			hc.answer(http400, "malformed request body\n", nil, false)
			return false
		case reused && !retried && replayable && isUpstreamGone(err):
			// The upstream closed a kept-alive connection as the request
			// went out: a request that may be sent twice goes once more
			// on a new one, as Go's Transport does.
			retried = true
			continue
		}
		if hc.srv.wasCut(hc.pc) {
			return false // realipd cut the connection (idle_timeout, the drain)
		}
		hc.srv.m.httpUpstreamErrors.Inc()
		hc.srv.log.Debug("origdst: HTTP request to the original destination failed", "original_dst", hc.dst.String(), "error", err)
		hc.answer(http503, upstreamErrorBody, nil, false)
		return false
	}
}

// writeResponseRest writes what an event loop could not write at once of
// a response it relayed (the first hc.respLeft bytes of hc.upIn), then
// ends the request as exchange does.
func (hc *httpConn) writeResponseRest() bool {
	n := hc.respLeft
	hc.respLeft = 0
	if _, err := hc.clientIO.Write(hc.upIn.data()[:n]); err != nil {
		return false
	}
	hc.pc.touch()
	hc.upIn.consume(n)
	return hc.afterResponse()
}

func hasBody(req *h1.Request) bool { return req.Chunked || req.ContentLength > 0 }

// replayableRequest reports whether req may be sent a second time when the
// first may have reached the upstream: an idempotent method that changes
// nothing (GET, HEAD, OPTIONS, TRACE), or a request with an idempotency
// key, as Go's Transport decides.
func replayableRequest(req *h1.Request) bool {
	switch string(req.Method) {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	for _, h := range req.Headers {
		if h1.EqualFold(h.Name, "idempotency-key") || h1.EqualFold(h.Name, "x-idempotency-key") {
			return true
		}
	}
	return false
}

// upstreamReusable reports whether the kept-alive upstream connection can
// carry the next request: nothing came on it since the last response (no
// close, no stray bytes, which would be taken for the next answer).
func (hc *httpConn) upstreamReusable() bool {
	if !hc.upIn.empty() || hc.upStray {
		return false
	}
	// Looked at every time (a system call): bytes that came a moment
	// after the last response are as wrong as later ones. The event
	// loops, which serve the busy connections, know it from the socket's
	// edges without a call.
	return hc.upWaiter.quiet()
}

// upstreamFreshFor is how long after its last answer an event loop sends a
// request on a kept-alive upstream connection; an older one goes through
// the goroutine, which checks it: an upstream that closes idle connections
// without saying so (one that closes after a number of requests says
// Connection: close in its last answer) does it after a while, and a
// request sent as it closes would be lost or sent twice.
const upstreamFreshFor = 500 * time.Millisecond

// isUpstreamGone reports whether err is the upstream having closed or
// reset the connection.
func isUpstreamGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// dialUpstream connects to the original destination.
func (hc *httpConn) dialUpstream() error {
	conn, err := hc.srv.dialUpstream(context.Background(), hc.dst.String())
	if err != nil {
		return err
	}
	up := conn.(*net.TCPConn)
	if !hc.srv.setUpstream(hc.pc, up) { // cut meanwhile
		abort(up)
		return errors.New("origdst: the connection was cut")
	}
	rc, err := up.SyscallConn()
	if err != nil {
		abort(up)
		return err
	}
	hc.up, hc.upRC, hc.upIO, hc.upWaiter, hc.upServed, hc.upStray = up, rc, newRawSocket(rc), newDataWaiter(rc), 0, false
	return nil
}

// waiterOf returns the dataWaiter of c, the client's or the upstream's.
func (hc *httpConn) waiterOf(c *net.TCPConn) *dataWaiter {
	if c == hc.up {
		return hc.upWaiter
	}
	if hc.clientWaiter == nil {
		rc, err := c.SyscallConn()
		if err != nil {
			return newDataWaiter(nil)
		}
		hc.clientWaiter = newDataWaiter(rc)
	}
	return hc.clientWaiter
}

// discardCounter counts the bytes relay moves for the HTTP mode, which
// has no byte counters.
var discardCounter = prometheus.NewCounter(prometheus.CounterOpts{Name: "origdst_http_bytes_unused", Help: "not registered"})

// dropUpstream closes the upstream connection.
func (hc *httpConn) dropUpstream() {
	if hc.up != nil {
		abort(hc.up)
		hc.up = nil
	}
	hc.upIn.r, hc.upIn.w = 0, 0
}

// afterResponse decides whether the connection goes on after a response.
// An upstream that sent more than the response keeps no connection: the
// extra bytes would be taken for the next answer.
func (hc *httpConn) afterResponse() bool {
	if !hc.resp.KeepAlive || !hc.upIn.empty() {
		_ = hc.up.Close()
		hc.up = nil
		hc.upIn.r, hc.upIn.w = 0, 0
	}
	return hc.req.KeepAlive && !hc.srv.httpDraining.Load()
}

// hop-by-hop fields a proxy does not forward (as Go's ReverseProxy and
// Envoy's connection manager); Transfer-Encoding and Upgrade are written
// again when the request has them.
var hopByHop = []string{"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization"}

// rewriteHead writes the head hc.req is forwarded with into hc.out and
// returns it.
func (hc *httpConn) rewriteHead(d *decide.Decider, local *denyCounters, res clientip.Result, policy []plugins.Header, websocket bool) []byte {
	req := &hc.req
	b := hc.head()
	b = append(b, req.Method...)
	b = append(b, ' ')
	b = append(b, originPath(req)...)
	if req.Minor == 0 {
		// An HTTP/1.0 client cannot read a chunked response: asking in
		// HTTP/1.0 keeps the upstream from sending one.
		b = append(b, " HTTP/1.0\r\n"...)
	} else {
		b = append(b, " HTTP/1.1\r\n"...)
	}
	clientIPHeader := d.ClientIPHeader()
	nominates := false // a Connection header names more than close, keep-alive, upgrade
	for _, h := range req.Headers {
		if h1.EqualFold(h.Name, "connection") && nominatesFields(h.Value) {
			nominates = true
		}
	}
	for _, h := range req.Headers {
		switch {
		case inList(h.Name, hopByHop):
			if h1.EqualFold(h.Name, "te") && h1.EqualFold(h.Value, "trailers") {
				break // "TE: trailers" is end to end
			}
			continue
		case sameNameUnderscores(h.Name, clientIPHeader):
			// A client-sent client-IP header never survives, nor one
			// spelt with underscores (X_Real_IP), which CGI-style
			// servers take for the same header.
			continue
		case h1.EqualFold(h.Name, "x-forwarded-for"):
			continue // joined below
		case sameNameUnderscores(h.Name, "x-forwarded-for"):
			continue // X_Forwarded_For: what CGI-style servers take for it
		case h1.EqualFold(h.Name, "expect"):
			continue // realipd answered it (forward)
		case envoySanitizes(h.Name):
			continue
		case nominates && !h1.EqualFold(h.Name, "host") && connectionListed(req, h.Name):
			// A field the client named in Connection is hop-by-hop: it
			// goes. Naming x-real-ip or X-Forwarded-For there changes
			// nothing: realipd writes both itself, after.
			continue
		case h1.EqualFold(h.Name, "host") && req.Absolute:
			continue // written from the target below
		case h1.EqualFold(h.Name, "content-length"):
			continue // written once below
		case h1.EqualFold(h.Name, "http2-settings"):
			continue // an h2c upgrade goes as a plain request
		case policySets(d, policy, h.Name):
			continue // the policy's value replaces it
		}
		b = append(b, h.Name...)
		b = append(b, ": "...)
		b = append(b, h.Value...)
		b = append(b, "\r\n"...)
	}
	if req.Absolute {
		b = appendField(b, "Host", bytesString(req.Host))
	}
	switch {
	case req.Chunked:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	case req.ContentLength >= 0:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, req.ContentLength, 10)
		b = append(b, "\r\n"...)
	}
	switch {
	case websocket:
		b = append(b, "Connection: Upgrade\r\nUpgrade: "...)
		b = append(b, req.Upgrade...)
		b = append(b, "\r\n"...)
	case !req.KeepAlive && req.Minor > 0:
		// The client's connection ends with this answer, and so does the
		// upstream one: saying so lets the upstream close first and keep
		// the TIME_WAIT, not realipd, whose upstream dials would
		// otherwise run out of local ports under many short connections
		// (an HTTP/1.0 request closes by default).
		b = append(b, "Connection: close\r\n"...)
	}
	// As Envoy at the edge: the scheme the client used.
	b = append(b, "X-Forwarded-Proto: http\r\n"...)
	// Envoy with use_remote_address: true appends the peer to
	// X-Forwarded-For (one line, the client's lines joined).
	b = append(b, "X-Forwarded-For: "...)
	for _, h := range req.Headers {
		if len(h.Value) > 0 && h1.EqualFold(h.Name, "x-forwarded-for") {
			b = append(b, h.Value...)
			b = append(b, ", "...)
		}
	}
	b = append(b, hc.peerIP...)
	b = append(b, "\r\n"...)
	if res.OK() {
		b = append(b, local.clientIPHeader...)
		b = append(b, ": "...)
		b = res.IP.AppendTo(b)
		b = append(b, "\r\n"...)
	}
	for _, ph := range policy {
		if d.WritableHeader(ph, false) {
			b = appendField(b, ph.Name, ph.Value)
		}
	}
	b = append(b, "\r\n"...)
	hc.out = b
	return b
}

// envoySanitizes reports whether Envoy's connection manager, as realipd's
// xDS control plane configures it (at the edge: use_remote_address), would
// not let a client's header of that name through: the x-envoy-* headers
// (a backend moved from behind Envoy may trust x-envoy-external-address),
// x-forwarded-client-cert (sanitized) and x-forwarded-proto (set to the
// scheme the client used, which the HTTP mode writes).
func envoySanitizes(name []byte) bool {
	if len(name) >= 8 && h1.EqualFold(name[:8], "x-envoy-") {
		return true
	}
	return h1.EqualFold(name, "x-forwarded-client-cert") || h1.EqualFold(name, "x-forwarded-proto")
}

func inList(name []byte, list []string) bool {
	for _, l := range list {
		if h1.EqualFold(name, l) {
			return true
		}
	}
	return false
}

// nominatesFields reports whether a Connection value names a field to
// remove: a token other than close, keep-alive and upgrade.
func nominatesFields(v []byte) bool {
	return !onlyTokens(v, "close", "keep-alive", "upgrade")
}

// onlyTokens reports whether every element of the list v is one of toks.
func onlyTokens(v []byte, toks ...string) bool {
	for len(v) > 0 {
		var tok []byte
		if i := indexByte(v, ','); i < 0 {
			tok, v = v, nil
		} else {
			tok, v = v[:i], v[i+1:]
		}
		tok = trimSpace(tok)
		if len(tok) == 0 {
			continue
		}
		known := false
		for _, t := range toks {
			if h1.EqualFold(tok, t) {
				known = true
				break
			}
		}
		if !known {
			return false
		}
	}
	return true
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// connectionListed reports whether the request's Connection header names
// field name.
func connectionListed(req *h1.Request, name []byte) bool {
	for _, h := range req.Headers {
		if h1.EqualFold(h.Name, "connection") && h1.ListContains(h.Value, bytesString(name)) {
			return true
		}
	}
	return false
}

// sameNameUnderscores reports whether name is header (lower-case), each
// '_' of name taken for '-'.
func sameNameUnderscores(name []byte, header string) bool {
	if len(name) != len(header) {
		return false
	}
	for i, c := range name {
		if c == '_' {
			c = '-'
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != header[i] {
			return false
		}
	}
	return true
}

// policySets reports whether a policy header d lets the policy write
// replaces field name.
func policySets(d *decide.Decider, policy []plugins.Header, name []byte) bool {
	for _, ph := range policy {
		if h1.EqualFold(name, ph.Name) && d.WritableHeader(ph, false) {
			return true
		}
	}
	return false
}

// sendRequest writes head and the request's body to the upstream. With
// Expect: 100-continue the body waits for the upstream's interim answer,
// which relayResponse then forwards.
func (hc *httpConn) sendRequest(head []byte) error {
	req := &hc.req
	left := req.ContentLength
	if left > 0 {
		// The body's first bytes go out with the head, in one write.
		k := min(left, int64(len(hc.in.data())), int64(cap(head)-len(head)))
		head = append(head, hc.in.data()[:k]...)
		hc.in.consume(int(k))
		left -= k
	}
	if _, err := hc.upIO.Write(head); err != nil {
		return err
	}
	hc.pc.touch()
	switch {
	case !hasBody(req):
		return nil
	case !req.Chunked:
		return hc.copyN(hc.up, hc.client, &hc.in, left, errClientBody)
	}
	return hc.sendBody()
}

// sendBody copies the request's body to the upstream: Content-Length
// bytes, or the chunks, framed anew (no extensions, no trailers).
func (hc *httpConn) sendBody() error {
	req := &hc.req
	if !req.Chunked {
		return hc.copyN(hc.up, hc.client, &hc.in, req.ContentLength, errClientBody)
	}
	var s h1.ChunkScanner
	out := hc.out[:0] // the head went out: its buffer frames the chunks
	flush := func() error {
		if len(out) == 0 {
			return nil
		}
		_, err := hc.upIO.Write(out)
		out = out[:0]
		hc.pc.touch()
		return err
	}
	for !s.Done() {
		n, seg, err := s.Next(hc.in.data())
		if err != nil {
			return errors.Join(errClientBody, err)
		}
		if n == 0 && seg.Kind != h1.SegEnd {
			if err := flush(); err != nil {
				return err
			}
			if err := hc.in.fill(hc.clientIO, hc.pc, false); err != nil {
				return errors.Join(errClientBody, err)
			}
			continue
		}
		switch seg.Kind {
		case h1.SegSize:
			if seg.Size > 0 {
				out = strconv.AppendInt(out, seg.Size, 16)
				out = append(out, "\r\n"...)
			}
		case h1.SegData:
			if len(out)+len(seg.Data) > cap(out) {
				if err := flush(); err != nil {
					return err
				}
			}
			if len(seg.Data) > cap(out) {
				if _, err := hc.upIO.Write(seg.Data); err != nil {
					return err
				}
				hc.pc.touch()
			} else {
				out = append(out, seg.Data...)
			}
		case h1.SegChunkEnd:
			out = append(out, "\r\n"...)
		case h1.SegEnd:
			out = append(out, "0\r\n\r\n"...)
		}
		hc.in.consume(n)
	}
	return flush()
}

// copyN copies n bytes from src to dst: first what buf holds, then the
// rest, spliced when it is long. A failure to read is wrapped in readErr.
func (hc *httpConn) copyN(dst, src *net.TCPConn, buf *buffer, n int64, readErr error) error {
	if n <= 0 {
		return nil
	}
	if k := int64(buf.w - buf.r); k > 0 {
		k = min(k, n)
		if _, err := dst.Write((*buf.b)[buf.r : buf.r+int(k)]); err != nil {
			return err
		}
		buf.consume(int(k))
		n -= k
		hc.pc.touch()
	}
	for n > 0 {
		if n > spliceAbove {
			// Spliced in the kernel, as much as is there at a time, so
			// that a long transfer still moving is never taken for idle.
			w := hc.waiterOf(src)
			avail, err := w.wait()
			if err != nil || avail == 0 {
				if err == nil {
					err = io.ErrUnexpectedEOF
				}
				return errors.Join(readErr, err)
			}
			m, err := io.CopyN(dst, src, min(int64(avail), n))
			n -= m
			hc.pc.touch()
			if err != nil {
				if m == 0 || errors.Is(err, io.EOF) {
					return errors.Join(readErr, err)
				}
				return err
			}
			continue
		}
		buf.hold()
		room := buf.room(false)
		room = room[:min(int64(len(room)), n)]
		m, err := src.Read(room)
		if m == 0 {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return errors.Join(readErr, err)
		}
		hc.pc.touch()
		if _, err := dst.Write(room[:m]); err != nil {
			return err
		}
		n -= int64(m)
	}
	return nil
}

// relayResponse reads the upstream's response and writes it to the
// client: interim (1xx) answers first, then the final one, its body by
// its framing. started says whether any of it reached the client. A 101
// to a WebSocket upgrade turns the connection into a tunnel.
func (hc *httpConn) relayResponse(websocket bool) (started bool, err error) {
	req := &hc.req
	for {
		if err := hc.readResponseHead(); err != nil {
			return started, err
		}
		resp := &hc.resp
		head := hc.upIn.data()[:resp.HeadLen]
		if resp.Status == 101 {
			if !websocket {
				return started, errors.New("origdst: 101 to a request that asked for no upgrade")
			}
			if _, err := hc.clientIO.Write(head); err != nil {
				return true, err
			}
			hc.upIn.consume(resp.HeadLen)
			hc.tunnel()
			return true, errTunnelled
		}
		if resp.Status >= 200 {
			hc.upServed++
			hc.upLastUsed = decide.Monotonic()
			// The head goes out with the body's first bytes, in one write.
			return true, hc.relayBody(hc.isHead, resp.HeadLen)
		}
		// An interim answer: forwarded to an HTTP/1.1 client (not a 100:
		// realipd answered the client's Expect itself), dropped for an
		// HTTP/1.0 one, which has none.
		if resp.Status != 100 && req.Minor == 1 {
			if _, err := hc.clientIO.Write(head); err != nil {
				return true, err
			}
			started = true
			hc.pc.touch()
		}
		hc.upIn.consume(resp.HeadLen)
	}
}

// errTunnelled ends a connection that became a tunnel.
var errTunnelled = errors.New("origdst: tunnelled")

func bytesEqual(b []byte, s string) bool { return string(b) == s }

// readResponseHead reads until the upstream's input holds a whole response
// head, and parses it.
func (hc *httpConn) readResponseHead() error {
	for {
		if !hc.upIn.empty() {
			err := h1.ParseResponse(hc.upIn.data(), &hc.resp)
			if err != h1.ErrIncomplete {
				return err
			}
		}
		if err := hc.upIn.fill(hc.upIO, hc.pc, true); err != nil {
			return err
		}
	}
}

// relayBody copies the response to the client by its body's framing; the
// first pending bytes of the upstream's input are its head, not yet
// written, which go out with the body's first bytes.
func (hc *httpConn) relayBody(head bool, pending int) error {
	resp := &hc.resp
	// write sends the first n bytes of the upstream's input.
	write := func(n int) error {
		if n == 0 {
			return nil
		}
		if _, err := hc.clientIO.Write(hc.upIn.data()[:n]); err != nil {
			return err
		}
		hc.pc.touch()
		hc.upIn.consume(n)
		return nil
	}
	if pending > 0 && hc.srv.httpDraining.Load() {
		// Draining: the client is told this connection ends here.
		pending = hc.markClose(pending)
	}
	switch resp.BodyFraming(head) {
	case h1.FramingNone:
		return write(pending)
	case h1.FramingLength:
		k := min(resp.ContentLength, int64(len(hc.upIn.data())-pending))
		if err := write(pending + int(k)); err != nil {
			return err
		}
		return hc.copyN(hc.client, hc.up, &hc.upIn, resp.ContentLength-k, nil)
	case h1.FramingClose:
		resp.KeepAlive = false
		hc.req.KeepAlive = false
		if err := write(len(hc.upIn.data())); err != nil {
			return err
		}
		// Until the upstream closes, in steps (see copyN).
		return hc.srv.relay(hc.pc, hc.client, hc.up, discardCounter)
	}
	// Chunked: copied as it came, framed on the way to find its end.
	var s h1.ChunkScanner
	for {
		data := hc.upIn.data()
		n := pending
		for n < len(data) && !s.Done() {
			k, _, err := s.Next(data[n:])
			if err != nil {
				return err
			}
			if k == 0 {
				break
			}
			n += k
		}
		if err := write(n); err != nil {
			return err
		}
		pending = 0
		if s.Done() {
			return nil
		}
		if err := hc.upIn.fill(hc.upIO, hc.pc, false); err != nil {
			return err
		}
	}
}

// markClose inserts "Connection: close" at the end of the response head,
// the first pending bytes of the upstream's input, and returns the head's
// new length.
func (hc *httpConn) markClose(pending int) int {
	const field = "Connection: close\r\n"
	hc.upIn.hold()
	buf := *hc.upIn.b
	if hc.upIn.r >= len(field) {
		// Room before the data: move the head back, leave the body.
		r := hc.upIn.r
		copy(buf[r-len(field):], buf[r:r+pending-2])
		copy(buf[r-len(field)+pending-2:], field)
		hc.upIn.r -= len(field)
		return pending + len(field)
	}
	if hc.upIn.w+len(field) <= len(buf) {
		// Room after the data: move the body on.
		r := hc.upIn.r
		copy(buf[r+pending-2+len(field):], buf[r+pending-2:hc.upIn.w])
		copy(buf[r+pending-2:], field)
		hc.upIn.w += len(field)
		return pending + len(field)
	}
	return pending // no room: the client learns it from the close
}

// tunnel relays bytes both ways between the client and the upstream after
// an upgrade, until both directions end.
func (hc *httpConn) tunnel() {
	srv := hc.srv
	if !hc.upIn.empty() {
		if _, err := hc.client.Write(hc.upIn.data()); err != nil {
			return
		}
		hc.upIn.consume(hc.upIn.w - hc.upIn.r)
	}
	if !hc.in.empty() {
		if _, err := hc.up.Write(hc.in.data()); err != nil {
			return
		}
		hc.in.consume(hc.in.w - hc.in.r)
	}
	hc.in.release()
	hc.upIn.release()
	up, client := hc.up, hc.client
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.relay(hc.pc, up, client, srv.m.bytesUp); err != nil {
			abort(client)
			abort(up)
			return
		}
		_ = up.CloseWrite()
	}()
	if err := srv.relay(hc.pc, client, up, srv.m.bytesDown); err != nil {
		abort(client)
		abort(up)
	} else {
		_ = client.CloseWrite()
	}
	<-done
}

// envoyRefuses says why Envoy's HTTP connection manager, as realipd's xDS
// control plane configures it, would refuse req before its filters run,
// or "" when it would not. Envoy takes WebSocket upgrades only
// (upgrade_configs) and no CONNECT; anything else would be tunnelled past
// the policies and the client-IP header. An h2c upgrade is not refused:
// forward drops its upgrade fields and forwards the request, as Envoy's
// HTTP/1 codec does.
func envoyRefuses(req *h1.Request) string {
	if bytesEqual(req.Method, "CONNECT") {
		return "CONNECT is not allowed"
	}
	if req.Upgrade == nil {
		return ""
	}
	if h1.ListContains(req.Upgrade, "h2c") {
		req.Upgrade = nil
		return ""
	}
	if !h1.EqualFold(req.Upgrade, "websocket") {
		return "upgrade to " + strconvQuote(req.Upgrade) + " is not allowed"
	}
	return ""
}

// strconvQuote quotes s for a one-line answer, at most 64 bytes of it.
func strconvQuote(s []byte) string {
	if len(s) > 64 {
		s = s[:64]
	}
	return strconv.Quote(string(s))
}
