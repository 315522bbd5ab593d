package origdst

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/plugins"
)

// policyUnresolved names the deny of a connection whose client IP is
// unresolved (trust.on_unresolved: deny), as in the ext_proc server.
const policyUnresolved = "trust.on_unresolved"

// proxyConn is one connection being set up or proxied.
type proxyConn struct {
	client *net.TCPConn
	up     *net.TCPConn // nil until dialled; guarded by Server.mu
	cut    cutReason    // non-zero once realipd cut it; guarded by Server.mu
}

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
	pc := &proxyConn{client: c.TCPConn}
	ctx := srv.track(pc)
	defer srv.untrack(pc)

	up, src, why, err := srv.setUp(ctx, c, listener)
	if err != nil {
		abort(c.TCPConn)
		if !srv.wasCut(pc) {
			srv.m.refused[why].Inc()
			if srv.log.Enabled(ctx, slog.LevelDebug) {
				srv.log.Debug("origdst: refused", "reason", why.String(), "peer", c.RemoteAddr().String(), "original_dst", c.OriginalDst().String(), "error", err)
			}
		}
		return
	}
	srv.m.setup.Observe(time.Since(c.Accepted).Seconds())
	if !srv.setUpstream(pc, up) { // cut while dialling
		abort(up)
		abort(c.TCPConn)
		return
	}
	srv.pipe(pc, src, up)
}

// setUp reads the PROXY header of a trusted peer, lets the policies
// decide, and dials the original destination. src is what the client's
// bytes are read from (the connection, or the PROXY protocol reader over
// it). On an error, why says which refusal it is.
func (srv *Server) setUp(ctx context.Context, c *Conn, listener string) (up *net.TCPConn, src io.Reader, why refusal, err error) {
	client := c.TCPConn
	peer := addrPortOf(client.RemoteAddr())
	src = client
	// Plain TCP has no forwarding header: the peer is the client, unless
	// a trusted peer says otherwise in a PROXY header.
	res := clientip.Result{IP: peer.Addr(), Source: clientip.SourcePeer, Reason: clientip.ReasonPeer}
	if srv.opts.ProxyProtocol {
		if srv.state.Load().trusted.Contains(peer.Addr()) {
			// A trusted peer must send a header; it is read now, before
			// anything is decided.
			pp := proxyproto.NewConn(client, proxyproto.WithPolicy(proxyproto.REQUIRE), proxyproto.SetReadHeaderTimeout(srv.opts.ProxyHeaderTimeout))
			// A zero-length Read processes the header and returns its
			// error, without reading past it.
			if _, err := pp.Read(nil); err != nil {
				return nil, nil, refusedProxyHeader, fmt.Errorf("PROXY header of a trusted peer: %w", err)
			}
			res = proxyResult(pp.ProxyHeader())
			src = pp
		} else {
			// Any other peer must not send one. It is detected on the
			// first bytes the client sends, in the copy to the upstream,
			// so that protocols where the server speaks first still work:
			// the header is never forwarded, and the connection is reset.
			src = proxyproto.NewConn(client, proxyproto.WithPolicy(proxyproto.REJECT), proxyproto.SetReadHeaderTimeout(srv.opts.ProxyHeaderTimeout))
		}
	}
	if v, denied := srv.decide(ctx, c, peer, res, listener); denied {
		return nil, nil, refusedPolicyDeny, fmt.Errorf("denied by %s", v.Policy)
	}
	var conn net.Conn
	dial := func() { conn, err = srv.dial.DialContext(ctx, "tcp", c.OriginalDst().String()) }
	if srv.dialOn != nil {
		srv.dialOn(dial)
	} else {
		dial()
	}
	if err != nil {
		srv.m.dialErrors.WithLabelValues(dialReason(err)).Inc()
		return nil, nil, refusedDialError, err
	}
	return conn.(*net.TCPConn), src, 0, nil
}

// proxyResult is the client a trusted peer's PROXY header names: its
// source address, or unresolved when it names none (LOCAL, a health check
// of the proxy itself; v1 UNKNOWN; a non-TCP source), since the trusted
// proxy's own address must never be judged as the client's.
func proxyResult(h *proxyproto.Header) clientip.Result {
	unresolved := clientip.Result{Reason: clientip.ReasonInvalidEntry}
	if h == nil || h.Command.IsLocal() {
		return unresolved
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

// decide applies trust.on_unresolved and the policies to one connection.
func (srv *Server) decide(ctx context.Context, c *Conn, peer netip.AddrPort, res clientip.Result, listener string) (plugins.Verdict, bool) {
	st, held := srv.acquire()
	if held {
		defer st.chain.Release()
	}
	if !res.OK() && !st.passUnresolved {
		return plugins.Verdict{Decision: plugins.Decision{Deny: true}, Policy: policyUnresolved}, true
	}
	if st.chain.Len() == 0 {
		return plugins.Verdict{}, false
	}
	v := st.chain.Decide(ctx, &plugins.Request{
		ClientIP:    res.IP,
		Peer:        peer.String(),
		OriginalDst: c.OriginalDst(),
		Resolution:  res,
		Strategy:    clientip.RemoteAddr,
		Listener:    listener,
	})
	if v.Err != nil {
		srv.m.policyErrors.WithLabelValues(v.ErrPolicy).Inc()
		srv.log.Debug("origdst: policy failed; on_error applied", "policy", v.ErrPolicy, "error", v.Err, "deny", v.Deny)
	}
	return v, v.Deny
}

// pipe copies both ways until both directions have ended. A direction
// that reaches EOF half-closes the other side (CloseWrite), so that the
// other direction can still answer; an error (a reset, a cut, a PROXY
// header from an untrusted peer) resets both. Between two *net.TCPConn
// io.Copy splices in the kernel.
func (srv *Server) pipe(pc *proxyConn, src io.Reader, up *net.TCPConn) {
	client := pc.client
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		n, err := io.Copy(up, src)
		srv.m.bytesUp.Add(float64(n))
		if err != nil {
			if errors.Is(err, proxyproto.ErrSuperfluousProxyHeader) && !srv.wasCut(pc) {
				srv.m.refused[refusedProxyHeader].Inc()
				srv.log.Debug("origdst: refused a PROXY header from an untrusted peer", "peer", client.RemoteAddr().String())
			}
			abort(client)
			abort(up)
			return
		}
		_ = up.CloseWrite()
	}()
	n, err := io.Copy(client, up)
	srv.m.bytesDown.Add(float64(n))
	if err != nil {
		abort(client)
		abort(up)
	} else {
		_ = client.CloseWrite()
	}
	<-upDone
	_ = client.Close()
	_ = up.Close()
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
	up := pc.up
	srv.mu.Unlock()
	abort(pc.client)
	if up != nil {
		abort(up)
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

// idlePair is one proxied connection as an idle sweep sees it.
type idlePair struct {
	pc         *proxyConn
	client, up *net.TCPConn
}

// startIdleSweeps checks the proxied connections every quarter of
// IdleTimeout (at most every 30 s) and cuts those whose two sockets have
// received no data for IdleTimeout (TCP_INFO, which a splice in progress
// does not disturb). stop ends the sweeps.
func (srv *Server) startIdleSweeps() (stop func()) {
	idle := srv.opts.IdleTimeout
	if idle <= 0 {
		return func() {}
	}
	every := min(max(idle/4, 10*time.Millisecond), 30*time.Second)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		var buf []idlePair
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				buf = srv.sweepIdle(buf[:0], idle)
			}
		}
	}()
	return func() { close(quit); <-done }
}

func (srv *Server) sweepIdle(buf []idlePair, idle time.Duration) []idlePair {
	srv.mu.Lock()
	for pc := range srv.conns {
		if pc.up != nil && pc.cut == 0 {
			buf = append(buf, idlePair{pc, pc.client, pc.up})
		}
	}
	srv.mu.Unlock()
	for _, p := range buf {
		a, okA := sinceDataReceived(p.client)
		b, okB := sinceDataReceived(p.up)
		if okA && okB && min(a, b) >= idle && srv.cut(p.pc, cutIdle) {
			srv.log.Debug("origdst: idle connection closed", "peer", p.client.RemoteAddr().String(), "idle_timeout", idle)
		}
	}
	clear(buf) // drop the references until the next sweep
	return buf
}
