//go:build linux

package origdst

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/realipd/realipd/intercept"
	"github.com/realipd/realipd/internal/netnstest"
)

// handing is a Server run by a Handoff in the pod, on a fake clock.
type handing struct {
	*running
	h     *Handoff
	clock *fakeClock
	logs  *lockedBuffer
}

// lockedBuffer collects logs.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serveHandoff binds opts' addresses in a with SO_REUSEPORT and serves
// them with a Handoff (grace testGrace, a fake clock) until the test
// ends.
func (w *world) serveHandoff(t *testing.T, opts Options) *handing {
	t.Helper()
	r := &running{reg: prometheus.NewRegistry()}
	opts.Registerer = r.reg
	opts.Mark = upstreamMark
	logs := &lockedBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	srv, err := New(opts, Settings{})
	if err != nil {
		t.Fatal(err)
	}
	srv.dialOn, srv.listenOn = w.dialOn, w.dialOn
	r.srv = srv
	x := &handing{running: r, clock: newFakeClock(), logs: logs}
	if x.h, err = NewHandoff(srv, HandoffOptions{Grace: testGrace, Clock: x.clock}); err != nil {
		t.Fatal(err)
	}
	if r.lns, err = x.h.Bind(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- x.h.Serve(ctx, r.lns) }()
	stopped := false
	r.stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return errors.New("Handoff.Serve did not return")
		}
	}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Error(err)
		}
	})
	x.settle(t)
	if err := x.h.Ready(ctx); err != nil {
		t.Fatalf("not ready once serving: %v", err)
	}
	return x
}

// settle waits until the Handoff has acted on every event so far.
func (x *handing) settle(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := x.h.sync(ctx); err != nil {
		t.Fatalf("the handoff loop did not answer: %v", err)
	}
}

func (x *handing) holder(port uint16) string {
	for _, p := range x.h.Ports() {
		if p.Port == port {
			return p.Holder + " " + strings.Join(p.Nodes, ",")
		}
	}
	return ""
}

// reusePortListener listens on addr in ns with SO_REUSEPORT, as Envoy's
// listeners do (a stand-in for Envoy); without reuse, it listens plainly.
func reusePortListener(t *testing.T, ns *netnstest.Netns, addr netip.AddrPort, reuse bool) (net.Listener, error) {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() error {
		lc := net.ListenConfig{}
		if reuse {
			lc.Control = func(_, _ string, rc syscall.RawConn) error {
				var serr error
				if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
					return err
				}
				return serr
			}
		}
		var err error
		ln, err = lc.Listen(context.Background(), "tcp4", addr.String())
		return err
	})
	if ln != nil {
		t.Cleanup(func() { ln.Close() })
	}
	return ln, err
}

// standIn is a stand-in Envoy on ln: it answers every connection with
// "envoy\n" and closes it.
func standIn(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "envoy\n")
			c.Close()
		}
	}()
}

// TestHandoffNetns: a connection proxied by the native listener is
// established and mid-exchange; a stand-in Envoy binds the capture port
// beside realipd (SO_REUSEPORT, same user); an ACK hands the port over:
// realipd stops accepting, new connections reach the stand-in, and the
// established connection finishes correctly. With the stand-in gone, new
// connections are refused by the kernel. The node's NodeGone and the
// grace passing on the clock bring the native listener back, which
// proxies a new connection.
func TestHandoffNetns(t *testing.T) {
	w := newWorld(t)
	f := intercept.IPv4
	w.rules(t, intercept.ModeRedirect, f)
	target := netip.AddrPortFrom(w.bIP[f], 80)
	up := w.upstream(t, w.b, target)
	x := w.serveHandoff(t, Options{Mode: ModeRedirect, Listen: both(outboundPort), DrainTimeout: 20 * time.Second})
	x.waitMetric(t, "listeners", "", 2)

	// Established and mid-exchange: the greeting came through realipd.
	inFlight := dial(t, w.a, target)
	br := bufio.NewReader(inFlight)
	if g, err := br.ReadString('\n'); err != nil || g != "hi "+target.String()+"\n" {
		t.Fatalf("greeting through the native listener: %q, %v", g, err)
	}
	x.waitMetric(t, "active_connections", "", 1)

	envoy, err := reusePortListener(t, w.a, anyAddr(f, outboundPort), true)
	if err != nil {
		t.Fatalf("a stand-in Envoy with SO_REUSEPORT cannot bind the port the native listener holds: %v", err)
	}
	x.h.ListenerACKed("envoy-1", outboundPort)
	x.settle(t)
	if got := x.holder(outboundPort); got != "envoy envoy-1" {
		t.Fatalf("after the ACK the port is held by %q", got)
	}
	x.waitMetric(t, "listeners", "", 0)
	x.waitMetric(t, "handoffs_total", "envoy", 1)
	standIn(envoy)

	accepted := x.metric(t, "connections_accepted_total", "")
	for i := range 3 {
		c := dial(t, w.a, target)
		if b, err := io.ReadAll(c); err != nil || string(b) != "envoy\n" {
			t.Fatalf("new connection %d after the handoff: %q, %v; want the stand-in Envoy's answer", i, b, err)
		}
	}
	if n := x.metric(t, "connections_accepted_total", ""); n != accepted {
		t.Errorf("the native listener accepted %v connections after the handoff", n-accepted)
	}

	// The connection accepted before the handoff goes on and finishes.
	if _, err := io.WriteString(inFlight, "after the handoff"); err != nil {
		t.Fatal(err)
	}
	inFlight.CloseWrite()
	if rest, err := io.ReadAll(br); err != nil || string(rest) != "got after the handoff\n" {
		t.Errorf("the connection established before the handoff: %q, %v", rest, err)
	}
	x.waitMetric(t, "active_connections", "", 0)
	if n := x.metric(t, "connections_cut_total", "drain"); n != 0 {
		t.Errorf("%v connections cut", n)
	}

	// Nobody listens: the kernel refuses.
	envoy.Close()
	err = w.a.Do(func() error {
		c, err := net.DialTimeout("tcp", target.String(), 5*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("with neither Envoy nor the native listener: %v, want connection refused", err)
	}

	// The node goes; within the grace the port stays Envoy's.
	x.h.NodeGone("envoy-1")
	x.settle(t)
	x.clock.Advance(testGrace - time.Millisecond)
	x.settle(t)
	if got := x.holder(outboundPort); got != "envoy envoy-1" {
		t.Errorf("within the grace the port is held by %q", got)
	}
	x.clock.Advance(time.Millisecond)
	x.settle(t)
	if got := x.holder(outboundPort); got != "native " {
		t.Fatalf("after the grace the port is held by %q", got)
	}
	x.waitMetric(t, "listeners", "", 2)
	x.waitMetric(t, "handoffs_total", "native", 1)
	if err := x.h.Ready(context.Background()); err != nil {
		t.Errorf("Ready after the rebind: %v", err)
	}
	before := up.accepted.Load()
	if g, rest, err := exchange(dial(t, w.a, target), "back"); err != nil || g != "hi "+target.String() || rest != "got back\n" {
		t.Errorf("a new connection after the rebind: %q %q %v", g, rest, err)
	}
	if n := up.accepted.Load() - before; n != 1 {
		t.Errorf("the upstream accepted %d connections, want 1", n)
	}
	x.waitMetric(t, "connections_accepted_total", "", accepted+1)
	if err := x.stop(); err != nil {
		t.Error(err)
	}
	if x.h.Ready(context.Background()) == nil {
		t.Error("ready after Serve returned")
	}
}

// TestHandoffReusePortNetns: while auto holds the port, another socket of
// the same user that sets SO_REUSEPORT can bind it; one that does not
// set it cannot.
func TestHandoffReusePortNetns(t *testing.T) {
	w := newWorld(t)
	x := w.serveHandoff(t, Options{Mode: ModeRedirect, Listen: []netip.AddrPort{anyAddr(intercept.IPv4, outboundPort)}})
	if _, err := reusePortListener(t, w.a, anyAddr(intercept.IPv4, outboundPort), true); err != nil {
		t.Errorf("a second SO_REUSEPORT socket: %v", err)
	}
	if _, err := reusePortListener(t, w.a, anyAddr(intercept.IPv4, outboundPort), false); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("a socket without SO_REUSEPORT: %v, want address in use", err)
	}
	if got := x.holder(outboundPort); got != "native " {
		t.Errorf("the port is held by %q", got)
	}
}

// TestHandoffRebindFailsNetns: when the port is taken by a socket without
// SO_REUSEPORT once Envoy is gone, the rebind fails without stopping
// Serve: not ready, counted, logged with the address, retried with
// backoff on the clock, and bound once the port is free.
func TestHandoffRebindFailsNetns(t *testing.T) {
	w := newWorld(t)
	f := intercept.IPv4
	w.rules(t, intercept.ModeRedirect, f)
	target := netip.AddrPortFrom(w.bIP[f], 80)
	w.upstream(t, w.b, target)
	x := w.serveHandoff(t, Options{Mode: ModeRedirect, Listen: []netip.AddrPort{anyAddr(f, outboundPort)}})

	x.h.ListenerACKed("envoy-1", outboundPort)
	x.settle(t)
	x.waitMetric(t, "listeners", "", 0)
	squatter, err := reusePortListener(t, w.a, anyAddr(f, outboundPort), false)
	if err != nil {
		t.Fatal(err)
	}
	x.h.NodeGone("envoy-1")
	x.settle(t)
	x.clock.Advance(testGrace)
	x.settle(t)
	if got := x.holder(outboundPort); got != "none " {
		t.Fatalf("with the port taken the holder is %q", got)
	}
	err = x.h.Ready(context.Background())
	if err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Errorf("Ready with the port taken = %v", err)
	}
	x.waitMetric(t, "bind_failures_total", "", 1)
	x.waitMetric(t, "ports", "none", 1)
	x.clock.Advance(rebindBackoffMin)
	x.settle(t)
	x.waitMetric(t, "bind_failures_total", "", 2)

	squatter.Close()
	x.clock.Advance(2 * rebindBackoffMin)
	x.settle(t)
	if got := x.holder(outboundPort); got != "native " {
		t.Fatalf("once the port is free the holder is %q", got)
	}
	x.waitMetric(t, "listeners", "", 1)
	if err := x.h.Ready(context.Background()); err != nil {
		t.Errorf("Ready once bound again: %v", err)
	}
	if _, rest, err := exchange(dial(t, w.a, target), "rebound"); err != nil || rest != "got rebound\n" {
		t.Errorf("a connection once bound again: %q, %v", rest, err)
	}
	if logs := x.logs.String(); !strings.Contains(logs, `level=WARN msg="origdst: no Envoy holds the port, and the native listener cannot bind it again; retrying" address=0.0.0.0:15001 reason="the address is already in use`) {
		t.Errorf("the failed rebind is not logged with its address and reason:\n%s", logs)
	}
}
