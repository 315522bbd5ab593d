package origdst

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/plugins"
)

// proxyConn is one connection being set up or proxied.
type proxyConn struct {
	client *net.TCPConn
	up     *net.TCPConn // nil until dialled; guarded by Server.mu
	cut    cutReason    // non-zero once realipd cut it; guarded by Server.mu
	last   atomic.Int64 // when bytes last moved either way, on now's clock (a time.Duration)
	now    func() time.Duration
	// http marks a connection of the HTTP mode, idle-swept like a proxied
	// one from the start (its upstream connections are the Transport's).
	http bool
	// onCut, when set, runs after a cut closed the sockets: an HTTP
	// connection waiting in an event loop, which a closed socket does not
	// wake, is given back to its goroutine. Guarded by Server.mu.
	onCut func()
}

// touch records that bytes moved.
func (pc *proxyConn) touch() { pc.last.Store(int64(pc.now())) }

// serveConn sets up one accepted connection (PROXY header, policies,
// upstream dial) and proxies it. A connection refused on the way is
// reset; nothing was sent to an upstream, and for a deny no upstream was
// dialled.
func (srv *Server) serveConn(c *Conn, listener string) {
	defer srv.handlers.Done()
	defer func() {
		srv.active.Add(-1)
		srv.m.active.Dec()
	}()
	defer func() {
		// A bug must cost one connection, not every connection of the
		// process.
		if r := recover(); r != nil {
			abort(c.TCPConn)
			srv.log.Error("origdst: a connection's handler failed; the connection was reset", "peer", c.RemoteAddr().String(), "panic", r, "stack", string(debug.Stack()))
		}
	}()
	pc := &proxyConn{client: c.TCPConn, now: srv.now}
	ctx := srv.track(pc)
	defer srv.untrack(pc)

	if srv.isHTTPPort(c.OriginalDst().Port()) {
		pre, res, err := srv.setUpHTTP(c)
		if err != nil {
			abort(c.TCPConn)
			if !srv.wasCut(pc) {
				srv.m.refused[refusedProxyHeader].Inc()
				srv.log.Debug("origdst: refused", "reason", refusedProxyHeader.String(), "peer", c.RemoteAddr().String(), "error", err)
			}
			return
		}
		srv.serveHTTP(pc, c, pre, res, listener)
		return
	}

	up, pre, detect, why, err := srv.setUp(ctx, c, listener)
	if err != nil {
		abort(c.TCPConn)
		if !srv.wasCut(pc) {
			if why != refusedPolicyDeny { // decide counted it, by policy
				srv.m.refused[why].Inc()
			}
			if srv.log.Enabled(ctx, slog.LevelDebug) {
				srv.log.Debug("origdst: refused", "reason", why.String(), "peer", c.RemoteAddr().String(), "original_dst", c.OriginalDst().String(), "error", err)
			}
		}
		return
	}
	srv.m.setup.Observe(time.Since(c.Accepted).Seconds())
	// Stamped before the idle sweep can see it with its upstream.
	pc.touch()
	if !srv.setUpstream(pc, up) { // cut while dialling
		abort(up)
		abort(c.TCPConn)
		return
	}
	srv.pipe(pc, up, pre, detect)
}

// setUp reads the PROXY header of a trusted peer, lets the policies
// decide, and dials the original destination. pre are the client's bytes
// read past the header, to forward first; detect says that the first
// bytes of an untrusted peer must be checked for a PROXY header. On an
// error, why says which refusal it is.
func (srv *Server) setUp(ctx context.Context, c *Conn, listener string) (up *net.TCPConn, pre []byte, detect bool, why refusal, err error) {
	client := c.TCPConn
	peer := addrPortOf(client.RemoteAddr())
	// Plain TCP has no forwarding header: the peer is the client, unless
	// a trusted peer says otherwise in a PROXY header.
	res := clientip.Result{IP: peer.Addr(), Source: clientip.SourcePeer, Reason: clientip.ReasonPeer}
	if srv.opts.ProxyProtocol {
		if srv.cur.Load().TrustsProxyHeaderOf(peer.Addr()) {
			// A trusted peer must send a header; it is read now, before
			// anything is decided.
			h, rest, err := readProxyHeader(client, srv.opts.ProxyHeaderTimeout)
			if err != nil {
				return nil, nil, false, refusedProxyHeader, fmt.Errorf("PROXY header of a trusted peer: %w", err)
			}
			res, pre = proxyResult(h, res), rest
		} else {
			// Any other peer must not send one. It is looked for on the
			// first bytes the client sends, in the copy to the upstream,
			// so that protocols where the server speaks first still work.
			detect = true
		}
	}
	if v, denied := srv.decide(ctx, c, peer, res, listener); denied {
		return nil, nil, false, refusedPolicyDeny, fmt.Errorf("denied by %s", v.Policy)
	}
	var conn net.Conn
	d := &srv.dial
	if srv.opts.OriginalSource {
		d = srv.originalSourceDialer(peer.Addr(), c.OriginalDst().Addr())
	}
	dial := func() { conn, err = d.DialContext(ctx, "tcp", c.OriginalDst().String()) }
	if srv.dialOn != nil {
		srv.dialOn(dial)
	} else {
		dial()
	}
	if err != nil {
		srv.m.dialErrors.WithLabelValues(dialReason(err)).Inc()
		return nil, nil, false, refusedDialError, err
	}
	return conn.(*net.TCPConn), pre, detect, 0, nil
}

// readProxyHeader reads a PROXY protocol header (v1 or v2) from the start
// of c, waiting at most timeout, and returns the bytes read past it.
// Without a header the error is proxyproto.ErrNoProxyProtocol, or the
// timeout or EOF when c sent nothing before either; the bytes read are
// returned all the same. Bytes that may still be a header's (a signature
// or a part of one, cut by the timeout or EOF) are an error of their own,
// errIncompleteHeader, never "no header".
func readProxyHeader(c *net.TCPConn, timeout time.Duration) (*proxyproto.Header, []byte, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(c, 256)
	h, err := parseProxyHeader(br)
	if derr := c.SetReadDeadline(time.Time{}); err == nil {
		err = derr
	}
	var rest []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		rest = bytes.Clone(b)
	}
	return h, rest, err
}

// errIncompleteHeader is the error of a peer whose first bytes begin a
// PROXY header that did not come whole (before the timeout, or EOF).
var errIncompleteHeader = errors.New("an incomplete PROXY header")

// parseProxyHeader reads a PROXY protocol header from br with
// go-proxyproto's Read, and itself the one kind Read refuses that the
// specification lets a receiver accept: a v2 PROXY command of family
// AF_UNSPEC, which, like v1 UNKNOWN, names no source (its address block
// and TLVs are skipped). br is left just past the header, or untouched
// when it starts with no signature.
func parseProxyHeader(br *bufio.Reader) (*proxyproto.Header, error) {
	signed, err := signature(br)
	switch {
	case err != nil && br.Buffered() > 0:
		// Cut in the middle of a signature: what comes later could
		// complete it.
		return nil, fmt.Errorf("%w: %v", errIncompleteHeader, err)
	case err != nil:
		return nil, err // nothing at all
	case !signed:
		return nil, proxyproto.ErrNoProxyProtocol
	}
	// A v1 header is whole at 15 bytes ("PROXY UNKNOWN\r\n"): the fixed
	// part of a v2 one is peeked only after its signature.
	if b, _ := br.Peek(br.Buffered()); !bytes.HasPrefix(b, proxyproto.SIGV2) {
		return readV1V2(br)
	}
	if b, err := br.Peek(v2Fixed); err == nil &&
		proxyproto.ProtocolVersionAndCommand(b[12]) == proxyproto.PROXY && proxyproto.AddressFamilyAndProtocol(b[13]) == proxyproto.UNSPEC {
		n := binary.BigEndian.Uint16(b[14:16])
		if n > proxyproto.MaxV2HeaderSize {
			return nil, proxyproto.ErrInvalidLength
		}
		if _, err := br.Discard(v2Fixed + int(n)); err != nil {
			return nil, fmt.Errorf("%w: %v", errIncompleteHeader, err)
		}
		return &proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.UNSPEC}, nil
	}
	return readV1V2(br)
}

// readV1V2 is go-proxyproto's Read of a header whose signature br starts
// with. Its timeout, EOF or "no signature" then is an incomplete header,
// never "no header".
func readV1V2(br *bufio.Reader) (*proxyproto.Header, error) {
	h, err := proxyproto.Read(br)
	if err != nil && noHeader(err) {
		return nil, fmt.Errorf("%w: %v", errIncompleteHeader, err)
	}
	return h, err
}

// v2Fixed is the length of a v2 header's fixed part: the signature, the
// version and command, the family and protocol, the length.
const v2Fixed = 16

// signature reports whether br starts with a PROXY protocol signature
// ("PROXY" for v1, the 12-byte v2 signature). It reads only as far as it
// must: it answers false as soon as the bytes part from both signatures,
// so that a client whose first message is shorter than a signature
// ("PING\r\n") is not kept waiting for more (proxyproto.Read would wait
// for 12 bytes whenever the first is 'P').
func signature(br *bufio.Reader) (bool, error) {
	for n := 1; ; n++ {
		b, err := br.Peek(n)
		if err != nil {
			return false, err
		}
		v1 := bytes.HasPrefix(proxyproto.SIGV1, b) || bytes.HasPrefix(b, proxyproto.SIGV1)
		v2 := bytes.HasPrefix(proxyproto.SIGV2, b) || bytes.HasPrefix(b, proxyproto.SIGV2)
		switch {
		case !v1 && !v2:
			return false, nil
		case n >= len(proxyproto.SIGV1) && v1, n >= len(proxyproto.SIGV2) && v2:
			return true, nil
		}
	}
}

// noHeader reports whether readProxyHeader's error means that the peer
// sent no PROXY header: its first bytes are something else, it sent
// nothing before the timeout, or it closed without a byte.
func noHeader(err error) bool {
	return errors.Is(err, proxyproto.ErrNoProxyProtocol) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.EOF)
}

// proxyResult is the client that a trusted peer's PROXY header names,
// given the result without a header, peer (the TCP peer as the client).
// A header that names no source means, as the PROXY protocol
// specification says, that the real connection endpoints are used, as if
// no header had come: LOCAL (a connection of the proxy itself, HAProxy's
// health checks), v1 UNKNOWN (which go-proxyproto reads as LOCAL) and a
// v2 PROXY of family AF_UNSPEC give peer, and the policies decide. A
// source that is not a TCP client's (AF_UNIX, whose client has no IP; a
// datagram one) is unresolved: it does name a client, and the trusted
// proxy's own address must never be judged as that client's.
func proxyResult(h *proxyproto.Header, peer clientip.Result) clientip.Result {
	unresolved := clientip.Result{Reason: clientip.ReasonInvalidEntry}
	switch {
	case h == nil:
		return unresolved
	case h.Command.IsLocal(), h.Command.IsProxy() && h.TransportProtocol == proxyproto.UNSPEC:
		return peer
	}
	a, ok := h.SourceAddr.(*net.TCPAddr)
	if !ok {
		return unresolved
	}
	ip := a.AddrPort().Addr().Unmap()
	if !ip.IsValid() || ip.IsUnspecified() {
		return unresolved
	}
	return clientip.Result{IP: ip, Source: clientip.SourceHeader, Reason: clientip.ReasonPicked, Position: 1}
}

// decide decides on one connection (decide.Decider.Decide) and counts a
// deny.
func (srv *Server) decide(ctx context.Context, c *Conn, peer netip.AddrPort, res clientip.Result, listener string) (plugins.Verdict, bool) {
	d, held := srv.cur.Acquire()
	if held {
		defer d.Release()
	}
	in := decide.Input{PeerAddr: peer, Resolution: res, OriginalDst: c.OriginalDst()}
	if res.OK() && res.Source == clientip.SourceHeader {
		in.ResolvedFrom = resolvedProxyHeader
	}
	o := d.Decide(ctx, &srv.tcpDoor, &in, func() *plugins.Request {
		return &plugins.Request{
			ClientIP:    res.IP,
			Peer:        peer.String(),
			OriginalDst: c.OriginalDst(),
			Resolution:  res,
			Strategy:    clientip.RemoteAddr,
			Listener:    listener,
		}
	})
	if o.Deny {
		srv.m.deniedTCP(srv.countersOf(d), o.Policy)
	}
	return o.Verdict, o.Deny
}

// resolvedProxyHeader is the decision log's resolved_from for a client
// named by a trusted peer's PROXY header.
const resolvedProxyHeader = "proxy_header"

// pipe copies both ways until both directions have ended: first pre to
// the upstream (and, with detect, the check of the client's first bytes
// for a PROXY header), then whatever arrives (relay). A direction that
// reaches EOF half-closes the other side (CloseWrite), so that the other
// direction can still answer; an error (a reset, a cut, a PROXY header
// from an untrusted peer) resets both.
func (srv *Server) pipe(pc *proxyConn, up *net.TCPConn, pre []byte, detect bool) {
	client := pc.client
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		if detect {
			h, rest, err := readProxyHeader(client, srv.opts.ProxyHeaderTimeout)
			if h != nil || err != nil && !noHeader(err) {
				if !srv.wasCut(pc) && (h != nil || !isReset(err)) {
					srv.m.refused[refusedProxyHeader].Inc()
					srv.log.Debug("origdst: refused a PROXY header from an untrusted peer", "peer", client.RemoteAddr().String(), "error", err)
				}
				abort(client)
				abort(up)
				return
			}
			pre = rest
		}
		if len(pre) > 0 {
			n, err := up.Write(pre)
			srv.m.bytesUp.Add(float64(n))
			pc.touch()
			if err != nil {
				abort(client)
				abort(up)
				return
			}
		}
		if err := srv.relay(pc, up, client, srv.m.bytesUp); err != nil {
			abort(client)
			abort(up)
			return
		}
		_ = up.CloseWrite()
	}()
	if err := srv.relay(pc, client, up, srv.m.bytesDown); err != nil {
		abort(client)
		abort(up)
	} else {
		_ = client.CloseWrite()
	}
	<-upDone
	_ = client.Close()
	_ = up.Close()
}

// relay copies from src to dst until src's EOF. It waits for src to have
// data without holding anything (dataWaiter), then moves exactly what is
// there with io.CopyN between the two *net.TCPConn, which splices in the
// kernel. (A plain io.Copy splices too, but holds a pipe, two file
// descriptors, for as long as it waits: an idle connection would keep two
// pipes.)
func (srv *Server) relay(pc *proxyConn, dst, src *net.TCPConn, moved prometheus.Counter) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	w := newDataWaiter(rc)
	for {
		avail, err := w.wait()
		if err != nil {
			return err
		}
		if avail == 0 {
			return nil // EOF
		}
		pc.touch()
		n, err := io.CopyN(dst, src, int64(avail))
		moved.Add(float64(n))
		pc.touch()
		if err != nil {
			return err
		}
	}
}

// isReset reports whether err is the peer resetting the connection.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// track registers pc and returns the connections' context.
func (srv *Server) track(pc *proxyConn) context.Context {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	srv.conns[pc] = struct{}{}
	return srv.connCtx
}

func (srv *Server) untrack(pc *proxyConn) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	delete(srv.conns, pc)
	delete(srv.httpConns, pc)
}

// setUpstream records pc's upstream connection; false when pc was cut
// meanwhile.
func (srv *Server) setUpstream(pc *proxyConn, up *net.TCPConn) bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if pc.cut != 0 {
		return false
	}
	pc.up = up
	return true
}

func (srv *Server) wasCut(pc *proxyConn) bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return pc.cut != 0
}

// cut resets both sides of pc, once; it reports whether this call did.
func (srv *Server) cut(pc *proxyConn, why cutReason) bool {
	srv.mu.Lock()
	if pc.cut != 0 {
		srv.mu.Unlock()
		return false
	}
	pc.cut = why
	up, onCut := pc.up, pc.onCut
	srv.mu.Unlock()
	abort(pc.client)
	if up != nil {
		abort(up)
	}
	if onCut != nil {
		onCut()
	}
	srv.m.cut.WithLabelValues(why.String()).Inc()
	return true
}

// cutAll cuts every connection and returns how many it cut.
func (srv *Server) cutAll(why cutReason) int {
	srv.mu.Lock()
	all := make([]*proxyConn, 0, len(srv.conns))
	for pc := range srv.conns {
		all = append(all, pc)
	}
	srv.mu.Unlock()
	n := 0
	for _, pc := range all {
		if srv.cut(pc, why) {
			n++
		}
	}
	return n
}

// startIdleSweeps checks the proxied connections every quarter of
// IdleTimeout (at most every 30 s) and cuts those that moved no byte
// either way for IdleTimeout. stop ends the sweeps.
func (srv *Server) startIdleSweeps() (stop func()) {
	if srv.opts.IdleTimeout <= 0 {
		return func() {}
	}
	every := min(max(srv.opts.IdleTimeout/4, 10*time.Millisecond), 30*time.Second)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		var buf []*proxyConn
		for {
			select {
			case <-quit:
				return
			case <-t.C: // the tick's time is the wall clock's: not used
				buf = srv.sweepIdle(buf[:0])
			}
		}
	}()
	return func() { close(quit); <-done }
}

// sweepIdle cuts the proxied connections whose bytes last moved
// IdleTimeout or longer ago. Both times are read on srv.now, the
// monotonic clock: a step of the wall clock (NTP, a resumed VM) neither
// cuts every connection at once nor keeps an idle one.
func (srv *Server) sweepIdle(buf []*proxyConn) []*proxyConn {
	since := int64(srv.now() - srv.opts.IdleTimeout)
	srv.mu.Lock()
	for pc := range srv.conns {
		if (pc.up != nil || pc.http) && pc.cut == 0 && pc.last.Load() < since {
			buf = append(buf, pc)
		}
	}
	srv.mu.Unlock()
	for _, pc := range buf {
		if pc.last.Load() < since && srv.cut(pc, cutIdle) {
			srv.log.Debug("origdst: idle connection closed", "peer", pc.client.RemoteAddr().String(), "idle_timeout", srv.opts.IdleTimeout)
		}
	}
	clear(buf) // drop the references until the next sweep
	return buf
}

// originalSourceDialer is the dialer of a connection from client to dst
// with OriginalSource: bound to the client's address from a transparent
// socket, with the TPROXY mark. A client of another family than dst
// (never, through the TPROXY rules) gets the ordinary dialer.
func (srv *Server) originalSourceDialer(client, dst netip.Addr) *net.Dialer {
	client, dst = client.Unmap(), dst.Unmap()
	if !client.IsValid() || client.Is4() != dst.Is4() {
		return &srv.dial
	}
	d := srv.dial
	d.LocalAddr = &net.TCPAddr{IP: client.AsSlice()}
	mark, v6 := srv.opts.TProxyMark, client.Is6()
	d.Control = func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			if serr = setTransparent(int(fd), v6); serr != nil {
				serr = fmt.Errorf("IP_TRANSPARENT: %w", serr)
				return
			}
			if serr = setMark(int(fd), mark); serr != nil {
				serr = fmt.Errorf("SO_MARK %d: %w", mark, serr)
			}
		}); err != nil {
			return err
		}
		return serr
	}
	return &d
}
