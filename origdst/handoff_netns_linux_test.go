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
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/realipd/realipd/intercept"
	"github.com/realipd/realipd/internal/netnstest"
	"github.com/realipd/realipd/sockowner"
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
	srv, err := New(opts, current(t, Settings{}))
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
		network := "tcp4"
		if addr.Addr().Is6() {
			network = "tcp6" // IPv6 only, as the native listener's [::] beside 0.0.0.0
		}
		ln, err = lc.Listen(context.Background(), network, addr.String())
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

// envoyRoot is the ADS peer of these tests' Envoy: the stand-in Envoy and
// realipd both run as root, the user the kernel lets share the port.
var envoyRoot = sockowner.Peer{UID: 0, Known: true}

// standInEnvoy listens like Envoy on the capture addresses of port (each
// family's wildcard, SO_REUSEPORT) and answers every connection with
// "envoy\n"; close stops it.
func standInEnvoy(t *testing.T, ns *netnstest.Netns, port uint16) (close func()) {
	t.Helper()
	var lns []net.Listener
	for _, f := range families() {
		ln, err := reusePortListener(t, ns, anyAddr(f, port), true)
		if err != nil {
			t.Fatalf("a stand-in Envoy with SO_REUSEPORT cannot bind %v beside the native listener: %v", anyAddr(f, port), err)
		}
		standIn(ln)
		lns = append(lns, ln)
	}
	return func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
}

// TestHandoffNetns: a connection proxied by the native listener is
// established and mid-exchange; a stand-in Envoy binds the capture port
// beside realipd (SO_REUSEPORT, same user); an ACK from Envoy's user hands
// the port over: realipd stops accepting, new connections reach the
// stand-in, and the established connection finishes correctly. When the
// stand-in's socket is gone, the native listener takes the port back at
// the next check, whatever the node says, and proxies new connections.
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

	stopEnvoy := standInEnvoy(t, w.a, outboundPort)
	x.h.ListenerACKed("envoy-1", envoyRoot, outboundPort)
	x.settle(t)
	if got := x.holder(outboundPort); got != "envoy envoy-1" {
		t.Fatalf("after the ACK the port is held by %q: %+v", got, x.h.Ports())
	}
	x.waitMetric(t, "listeners", "", 0)
	x.waitMetric(t, "handoffs_total", "envoy", 1)

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

	// Envoy's sockets are gone; the node is still connected. Until the
	// next check nobody listens and the kernel refuses; at the check the
	// native listener takes the port back.
	stopEnvoy()
	err := w.a.Do(func() error {
		c, err := net.DialTimeout("tcp", target.String(), 5*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("before the check, with neither Envoy nor the native listener: %v, want connection refused", err)
	}
	x.clock.Advance(DefaultVerifyEvery)
	x.settle(t)
	if got := x.holder(outboundPort); got != "native " {
		t.Fatalf("once Envoy's socket is gone the port is held by %q", got)
	}
	x.waitMetric(t, "listeners", "", 2)
	x.waitMetric(t, "handoffs_total", "native", 1)
	x.waitMetric(t, "handoff_claims_refused_total", "socket_gone", 1)
	if err := x.h.Ready(context.Background()); err != nil {
		t.Errorf("Ready once taken back: %v", err)
	}
	before := up.accepted.Load()
	if g, rest, err := exchange(dial(t, w.a, target), "back"); err != nil || g != "hi "+target.String() || rest != "got back\n" {
		t.Errorf("a new connection once taken back: %q %q %v", g, rest, err)
	}
	if n := up.accepted.Load() - before; n != 1 {
		t.Errorf("the upstream accepted %d connections, want 1", n)
	}
	x.waitMetric(t, "connections_accepted_total", "", accepted+1)

	// The node goes: nothing changes.
	x.h.NodeGone("envoy-1")
	x.settle(t)
	x.clock.Advance(testGrace)
	x.settle(t)
	if got := x.holder(outboundPort); got != "native " {
		t.Errorf("after the grace the port is held by %q", got)
	}
	if err := x.stop(); err != nil {
		t.Error(err)
	}
	if x.h.Ready(context.Background()) == nil {
		t.Error("ready after Serve returned")
	}
}

// TestHandoffClaimWithoutSocketNetns: an ACK from Envoy's user while no
// socket of Envoy's listens on the port leaves it with the native
// listener, which keeps proxying; an ACK from another user, even with a
// socket of that user ready, changes nothing.
func TestHandoffClaimWithoutSocketNetns(t *testing.T) {
	w := newWorld(t)
	f := intercept.IPv4
	w.rules(t, intercept.ModeRedirect, f)
	target := netip.AddrPortFrom(w.bIP[f], 80)
	w.upstream(t, w.b, target)
	x := w.serveHandoff(t, Options{Mode: ModeRedirect, Listen: []netip.AddrPort{anyAddr(f, outboundPort)}})

	x.h.ListenerACKed("envoy-1", envoyRoot, outboundPort)
	x.h.ListenerACKed("definitely-not-envoy", sockowner.Peer{UID: 65534, Known: true}, outboundPort)
	x.settle(t)
	x.clock.Advance(DefaultVerifyEvery)
	x.settle(t)
	if got := x.holder(outboundPort); got != "native " {
		t.Fatalf("claimed without a socket, the port is held by %q", got)
	}
	if p := x.h.Ports()[0]; !slices.Equal(p.Claimed, []string{"envoy-1"}) || !strings.Contains(p.Waiting, "no socket of uid 0") {
		t.Errorf("PortState = %+v", p)
	}
	x.waitMetric(t, "handoff_claims_refused_total", "peer", 1)
	if _, rest, err := exchange(dial(t, w.a, target), "still"); err != nil || rest != "got still\n" {
		t.Errorf("a connection while the claim waits: %q, %v", rest, err)
	}
	if err := x.h.Ready(context.Background()); err != nil {
		t.Errorf("Ready: %v", err)
	}
}

// TestHandoffParkedPortNetns: while Envoy holds the port, the native
// listener's parked socket keeps it from every other user: a process of
// another user cannot bind it, with SO_REUSEPORT or without, nor can one
// of the same user without SO_REUSEPORT; and when Envoy's socket is gone
// there is no moment in which the port is free.
func TestHandoffParkedPortNetns(t *testing.T) {
	w := newWorld(t)
	f := intercept.IPv4
	w.rules(t, intercept.ModeRedirect, f)
	target := netip.AddrPortFrom(w.bIP[f], 80)
	w.upstream(t, w.b, target)
	port := anyAddr(f, outboundPort)
	x := w.serveHandoff(t, Options{Mode: ModeRedirect, Listen: []netip.AddrPort{port}})

	squat := func(step string) {
		t.Helper()
		for _, reuse := range []bool{true, false} {
			if _, err := w.a.ListenAs(t, 65534, port.String(), reuse); !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("%s: uid 65534 (SO_REUSEPORT %v) listening on %v: %v, want address in use", step, reuse, port, err)
			}
		}
		if _, err := reusePortListener(t, w.a, port, false); !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("%s: the same user without SO_REUSEPORT: %v, want address in use", step, err)
		}
	}
	squat("served natively")

	envoy, err := reusePortListener(t, w.a, port, true)
	if err != nil {
		t.Fatal(err)
	}
	standIn(envoy)
	x.h.ListenerACKed("envoy-1", envoyRoot, outboundPort)
	x.settle(t)
	if got := x.holder(outboundPort); got != "envoy envoy-1" {
		t.Fatalf("the port is held by %q", got)
	}
	x.waitMetric(t, "listeners", "", 0)
	squat("held by Envoy")

	envoy.Close()
	squat("Envoy gone, before the check") // the parked socket still holds it
	x.clock.Advance(DefaultVerifyEvery)
	x.settle(t)
	if got := x.holder(outboundPort); got != "native " {
		t.Fatalf("the port is held by %q", got)
	}
	squat("taken back")
	if _, rest, err := exchange(dial(t, w.a, target), "back"); err != nil || rest != "got back\n" {
		t.Errorf("a connection once taken back: %q, %v", rest, err)
	}
}

// TestHandoffReusePortNetns: while auto holds the port, another socket of
// the same user that sets SO_REUSEPORT can bind it; one that does not
// set it cannot, nor can one of another user even with SO_REUSEPORT (the
// kernel shares a port only within one user), which is why only Envoy's
// user's claims count.
func TestHandoffReusePortNetns(t *testing.T) {
	w := newWorld(t)
	x := w.serveHandoff(t, Options{Mode: ModeRedirect, Listen: []netip.AddrPort{anyAddr(intercept.IPv4, outboundPort)}})
	if _, err := reusePortListener(t, w.a, anyAddr(intercept.IPv4, outboundPort), true); err != nil {
		t.Errorf("a second SO_REUSEPORT socket: %v", err)
	}
	if _, err := reusePortListener(t, w.a, anyAddr(intercept.IPv4, outboundPort), false); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("a socket without SO_REUSEPORT: %v, want address in use", err)
	}
	if _, err := w.a.ListenAs(t, 65534, anyAddr(intercept.IPv4, outboundPort).String(), true); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("a socket of another user with SO_REUSEPORT: %v, want address in use", err)
	}
	if got := x.holder(outboundPort); got != "native " {
		t.Errorf("the port is held by %q", got)
	}
}
