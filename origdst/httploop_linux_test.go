//go:build linux

package origdst

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/plugins"
)

// echoUpstream answers each request with one write: by default a 200
// whose body names the x-real-ip and X-Forwarded-For it got; /chunked: a
// chunked body; /7k: 7,000 bytes; /big: 100,000 bytes; a request body is read and its
// length answered. Each response is one write, so that it arrives whole.
func echoUpstream(tb testing.TB) netip.AddrPort {
	tb.Helper()
	return scriptedUpstream(tb, func(c net.Conn, _ int) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			n, _ := io.Copy(io.Discard, req.Body)
			var resp string
			switch req.URL.Path {
			case "/chunked":
				resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nchunk\r\n0\r\n\r\n"
			case "/7k":
				resp = "HTTP/1.1 200 OK\r\nContent-Length: 7000\r\n\r\n" + strings.Repeat("7", 7000)
			case "/big":
				resp = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("b", 100000)
			default:
				body := fmt.Sprintf("%s ip=%s xff=%s body=%d", req.URL.Path, req.Header.Get("X-Real-Ip"), req.Header.Get("X-Forwarded-For"), n)
				resp = fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			}
			if _, err := io.WriteString(c, resp); err != nil {
				return
			}
		}
	})
}

// loopServer serves connections with the HTTP mode (to up) in a serving
// session, so that its event loops run; reg has its metrics.
func loopServer(tb testing.TB, s Settings, up netip.AddrPort, opts Options) (*Server, *prometheus.Registry) {
	tb.Helper()
	reg := prometheus.NewRegistry()
	opts.Mode, opts.Listen, opts.HTTPPorts, opts.Registerer = ModeRedirect, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}, []uint16{up.Port()}, reg
	srv, err := New(opts, current(tb, s))
	if err != nil {
		tb.Fatal(err)
	}
	return srv, reg
}

// serveOne connects a client to srv, serving for the original
// destination up; it returns the client's end.
func serveOne(tb testing.TB, srv *Server, up netip.AddrPort) *net.TCPConn {
	tb.Helper()
	c, _ := serveOneWithEnd(tb, srv, up)
	return c
}

// serveOneWithEnd is serveOne, and returns realipd's end too.
func serveOneWithEnd(tb testing.TB, srv *Server, up netip.AddrPort) (client, server *net.TCPConn) {
	tb.Helper()
	c, sc := tcpPair(tb)
	go srv.ServeConn(sc, up, "loop")
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, sc
}

// loopServed is realipd_origdst_http_event_loop_requests_total in reg.
func loopServed(tb testing.TB, reg *prometheus.Registry) float64 {
	tb.Helper()
	return metricValue(tb, reg, "http_event_loop_requests_total", "")
}

// TestHTTPEventLoopServes: on one kept-alive connection, the requests an
// event loop can serve whole (no body, a policy that answers from memory,
// a response that comes whole) are served by it — one at a time or
// pipelined, each resolved and rewritten on its own — and every other
// request (a deny, a body, a chunked or long response) goes through the
// connection's goroutine with the same answer, after which the loop serves
// again.
func TestHTTPEventLoopServes(t *testing.T) {
	for _, loops := range []int{0, -1} {
		t.Run(fmt.Sprintf("http_event_loops=%d", loops), func(t *testing.T) { testHTTPEventLoopServes(t, loops) })
	}
}

// testHTTPEventLoopServes is TestHTTPEventLoopServes with loops event
// loops (-1: none, and every request goes through the goroutine with the
// same answers).
func testHTTPEventLoopServes(t *testing.T, loops int) {
	up := echoUpstream(t)
	chain, err := plugins.NewChain(plugins.ChainEntry{Name: "block", Policy: plugins.NewCIDR(nil, []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")})})
	if err != nil {
		t.Fatal(err)
	}
	r := resolver(t, clientip.Config{Strategy: clientip.RightmostTrustedRange, TrustedCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	srv, reg := loopServer(t, Settings{Chain: chain, Resolver: r}, up, Options{HTTPEventLoops: loops})
	startSession(t, srv)
	c := serveOne(t, srv, up)
	br := bufio.NewReader(c)
	get := func(path, xff string) string {
		return "GET " + path + " HTTP/1.1\r\nHost: app\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-For: " + xff + "\r\n\r\n"
	}
	for i, step := range []struct {
		send   string
		want   []string // the responses' status and body, in order
		byLoop float64  // how many of them the loop served
	}{
		{send: get("/first", "203.0.113.1"), want: []string{"200 /first ip=203.0.113.1 xff=203.0.113.1, 127.0.0.1 body=0"}},    // dials: the goroutine
		{send: get("/a", "203.0.113.2"), want: []string{"200 /a ip=203.0.113.2 xff=203.0.113.2, 127.0.0.1 body=0"}, byLoop: 1}, // the loop
		{send: get("/p1", "192.0.2.1") + get("/p2", "192.0.2.2") + get("/p3", "192.0.2.3"), want: []string{ // pipelined
			"200 /p1 ip=192.0.2.1 xff=192.0.2.1, 127.0.0.1 body=0",
			"200 /p2 ip=192.0.2.2 xff=192.0.2.2, 127.0.0.1 body=0",
			"200 /p3 ip=192.0.2.3 xff=192.0.2.3, 127.0.0.1 body=0",
		}, byLoop: 3},
		{send: get("/denied", "198.51.100.9"), want: []string{"403 access denied\n"}}, // decided in the loop, answered by the goroutine
		{send: get("/b", "203.0.113.3"), want: []string{"200 /b ip=203.0.113.3 xff=203.0.113.3, 127.0.0.1 body=0"}, byLoop: 1},
		{send: "POST /post HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello", want: []string{"200 /post ip=127.0.0.1 xff=127.0.0.1 body=5"}},
		{send: get("/chunked", "203.0.113.4"), want: []string{"200 chunk"}},
		{send: get("/big", "203.0.113.5"), want: []string{"200 " + strings.Repeat("b", 100000)}},
		{send: get("/c", "203.0.113.6"), want: []string{"200 /c ip=203.0.113.6 xff=203.0.113.6, 127.0.0.1 body=0"}, byLoop: 1},
	} {
		before := loopServed(t, reg)
		if _, err := io.WriteString(c, step.send); err != nil {
			t.Fatal(err)
		}
		for _, want := range step.want {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			if got := fmt.Sprintf("%d %s", resp.StatusCode, body); got != want {
				t.Errorf("step %d: got %.80q, want %.80q", i, got, want)
			}
		}
		if loops < 0 {
			step.byLoop = 0
		}
		if got := loopServed(t, reg) - before; got != step.byLoop {
			t.Errorf("step %d: the event loop served %v requests, want %v", i, got, step.byLoop)
		}
	}
}

// TestHTTPEventLoopClientThatDoesNotRead: a client that pipelines requests
// and never reads its answers fills its socket; the loop that serves it
// writes only what the socket takes and gives the connection back to its
// goroutine, so that every other connection — on the same loop too — is
// served meanwhile.
func TestHTTPEventLoopClientThatDoesNotRead(t *testing.T) {
	up := echoUpstream(t)
	r := resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})
	srv, reg := loopServer(t, Settings{Resolver: r}, up, Options{})
	startSession(t, srv)

	stuck, stuckEnd := serveOneWithEnd(t, srv, up)
	if err := stuck.SetReadBuffer(4 << 10); err != nil {
		t.Fatal(err)
	}
	// A first request, read, so that the connection waits in a loop.
	br := bufio.NewReader(stuck)
	if resp, _ := roundTrip(t, stuck, br, "GET /first HTTP/1.1\r\nHost: app\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	// Then requests whose 7 KB answers (whole in a loop's buffer) it
	// never reads: far more than the sockets hold.
	go func() {
		req := strings.Repeat("GET /7k HTTP/1.1\r\nHost: app\r\n\r\n", 100)
		for range 100 {
			if _, err := io.WriteString(stuck, req); err != nil {
				return // the test ended
			}
		}
	}()
	// Until realipd's socket to it is full: a write would wait.
	full := func() bool {
		writable := true
		rc, err := stuckEnd.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if n, err := unix.Poll(fds, 0); err == nil {
				writable = n == 1 && fds[0].Revents&unix.POLLOUT != 0
			}
		})
		return !writable
	}
	deadline := time.Now().Add(10 * time.Second)
	for !full() {
		if time.Now().After(deadline) {
			t.Fatal("realipd's socket to the client that does not read never filled")
		}
		time.Sleep(time.Millisecond)
	}
	// Every other connection is served: with two or more loops, one of
	// these waits in the stuck connection's loop.
	srv.mu.Lock()
	loops := len(srv.loops)
	srv.mu.Unlock()
	if loops == 0 {
		t.Fatal("the server runs no event loop")
	}
	for i := range loops + 1 {
		c := serveOne(t, srv, up)
		br := bufio.NewReader(c)
		for j := range 50 {
			resp, body := roundTrip(t, c, br, "GET /other HTTP/1.1\r\nHost: app\r\n\r\n")
			if resp.StatusCode != 200 || !strings.HasPrefix(body, "/other ") {
				t.Fatalf("connection %d, request %d: %d %q", i, j, resp.StatusCode, body)
			}
		}
	}
	if loopServed(t, reg) < float64(49*(loops+1)) {
		t.Errorf("the event loops served %v requests; want at least %d", loopServed(t, reg), 49*(loops+1))
	}
}

// TestHTTPEventLoopCutAndDrain: a kept-alive connection waiting in an
// event loop, where a closed socket makes no event, is still ended by an
// idle_timeout cut (reset, counted, its goroutine gone) and by the drain
// (closed in order, without waiting for drain_timeout).
func TestHTTPEventLoopCutAndDrain(t *testing.T) {
	up := echoUpstream(t)
	r := resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})
	srv, reg := loopServer(t, Settings{Resolver: r}, up, Options{IdleTimeout: time.Hour, DrainTimeout: time.Hour})
	var clock atomic.Int64 // a time.Duration; the loops touch meanwhile
	clock.Store(int64(time.Second))
	srv.now = func() time.Duration { return time.Duration(clock.Load()) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeListeners(ctx, nil) }()
	t.Cleanup(func() { cancel(); <-done })
	for !srv.serving.Load() {
		time.Sleep(time.Millisecond)
	}
	// waitInLoop sends two requests on a new connection (the second is
	// the loop's), and returns once the connection waits in its loop.
	waitInLoop := func() *net.TCPConn {
		c := serveOne(t, srv, up)
		br := bufio.NewReader(c)
		before := loopServed(t, reg)
		for range 2 {
			if resp, _ := roundTrip(t, c, br, "GET / HTTP/1.1\r\nHost: app\r\n\r\n"); resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
		}
		if loopServed(t, reg) != before+1 {
			t.Fatal("the second request was not the event loop's")
		}
		return c
	}

	cutOne := waitInLoop()
	clock.Add(int64(2 * time.Hour))
	srv.sweepIdle(nil)
	if _, err := io.ReadAll(cutOne); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the cut connection: %v, want a reset", err)
	}
	if got := metricValue(t, reg, "connections_cut_total", "idle_timeout"); got != 1 {
		t.Errorf("connections_cut_total{idle_timeout} = %v, want 1", got)
	}
	// Its goroutine ended: the connection is no longer active.
	deadline := time.Now().Add(10 * time.Second)
	for srv.active.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the cut connection is still counted active")
		}
		time.Sleep(time.Millisecond)
	}

	drained := waitInLoop()
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		done <- err // for the cleanup
	case <-time.After(20 * time.Second):
		t.Fatal("the drain waited for the idle connection")
	}
	if b, err := io.ReadAll(drained); err != nil || len(b) != 0 {
		t.Errorf("the drained connection: %q, %v; want a close", b, err)
	}
	t.Logf("drained in %v", time.Since(start))
}

// TestHTTPEventLoopFailedLoop: should a loop ever fail (its epoll set
// unusable: "cannot happen", a bug), the connections it held end, and
// every connection that would wait in it afterwards waits in its own
// goroutine instead and is served, as the loop's log line says; none
// waits for the failed loop forever.
func TestHTTPEventLoopFailedLoop(t *testing.T) {
	up := echoUpstream(t)
	r := resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})
	srv, _ := loopServer(t, Settings{Resolver: r}, up, Options{HTTPEventLoops: 1})
	startSession(t, srv)
	srv.mu.Lock()
	l := srv.loops[0]
	srv.mu.Unlock()
	// The failure: the loop's wait in Go's poller fails.
	if err := l.ep.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the loop did not end on the failure")
	}
	c := serveOne(t, srv, up)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for i := range 3 {
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d after the loop failed: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
}

// TestHTTPEventLoopStrayUpstreamBytes: bytes an upstream sends with no
// request outstanding (an answer nobody asked for, after the client has had
// the real one) are never taken for the answer to the client's next
// request, which goes on a new upstream connection; with the event loops
// and without.
func TestHTTPEventLoopStrayUpstreamBytes(t *testing.T) {
	for _, loops := range []int{0, -1} {
		t.Run(fmt.Sprintf("http_event_loops=%d", loops), func(t *testing.T) {
			sendStray, strayed := make(chan struct{}), make(chan struct{})
			var conns atomic.Int64
			up := scriptedUpstream(t, func(c net.Conn, _ int) {
				conns.Add(1)
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					body := "real answer to " + req.URL.Path
					io.WriteString(c, fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
					if req.URL.Path == "/then-stray" {
						// Once the client has the answer, so once
						// realipd has read it: the stray bytes come
						// after. On loopback they are in realipd's
						// socket once Write returns.
						<-sendStray
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!")
						strayed <- struct{}{}
					}
				}
			})
			r := resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})
			srv, _ := loopServer(t, Settings{Resolver: r}, up, Options{HTTPEventLoops: loops})
			startSession(t, srv)
			c := serveOne(t, srv, up)
			br := bufio.NewReader(c)
			for _, path := range []string{"/first", "/then-stray", "/next", "/after"} {
				resp, body := roundTrip(t, c, br, "GET "+path+" HTTP/1.1\r\nHost: app\r\n\r\n")
				if want := "real answer to " + path; resp.StatusCode != 200 || body != want {
					t.Fatalf("GET %s: %d %q, want %q", path, resp.StatusCode, body, want)
				}
				if path == "/then-stray" {
					sendStray <- struct{}{}
					<-strayed
				}
			}
			if conns.Load() != 2 {
				t.Errorf("%d upstream connections, want 2 (the one that sent stray bytes dropped)", conns.Load())
			}
		})
	}
}
