package origdst

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns the two ends of a TCP connection over loopback (the
// dialling end first), closed when the test ends.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// TestIdleSweepMonotonic: idle_timeout is measured on the server's
// monotonic clock alone, at both ends — when bytes moved (touch) and when
// the sweep looks — so that a step of the wall clock (NTP, a resumed VM)
// neither cuts every proxied connection at once nor keeps an idle one. The
// test's clock starts at 1 s, some 1.8e18 ns away from the wall clock's
// Unix time: a stamp or a sweep that read the wall clock would cut the
// connection at once or never.
func TestIdleSweepMonotonic(t *testing.T) {
	const idle = time.Minute
	srv, err := New(Options{Mode: ModeRedirect, Listen: aps("127.0.0.1:1"), IdleTimeout: idle}, current(t, Settings{}))
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Second
	srv.now = func() time.Duration { return clock }

	client, clientPeer := tcpPair(t)
	up, upPeer := tcpPair(t)
	pc := &proxyConn{client: client, up: up, now: srv.now}
	srv.track(pc)
	pc.touch() // bytes moved at 1 s

	for _, step := range []struct {
		at      time.Duration
		touch   bool // bytes move at this time
		wantCut bool
	}{
		{at: time.Second, wantCut: false},
		{at: time.Second + idle - 1, wantCut: false},
		{at: time.Second + idle - 1, touch: true},
		{at: time.Second + 2*idle - 1, wantCut: false}, // idle for exactly idle_timeout
		{at: time.Second + 2*idle, wantCut: true},      // and a nanosecond more
	} {
		clock = step.at
		if step.touch {
			pc.touch()
			continue
		}
		srv.sweepIdle(nil)
		if got := srv.wasCut(pc); got != step.wantCut {
			t.Fatalf("at %v on the monotonic clock (bytes last moved at %v): cut %v, want %v", step.at, time.Duration(pc.last.Load()), got, step.wantCut)
		}
	}
	if pc.cut != cutIdle {
		t.Errorf("cut for %v, want idle_timeout", pc.cut)
	}
	// Both ends were reset.
	for name, c := range map[string]*net.TCPConn{"client": clientPeer, "upstream": upPeer} {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("the %s's end after the cut: %v, want a reset", name, err)
		}
	}
}
