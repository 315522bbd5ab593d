//go:build linux

package origdst

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/plugins"
)

// countingPolicy allows every request and counts its decisions; it
// answers from memory (plugins.Immediate), so that the event loops decide
// with it.
type countingPolicy struct{ n atomic.Int64 }

func (p *countingPolicy) Decide(context.Context, *plugins.Request) (plugins.Decision, error) {
	p.n.Add(1)
	return plugins.Decision{}, nil
}

func (p *countingPolicy) DecidesImmediately() {}

// loopFailures is a logger that keeps the event loops' reports of a
// connection they failed on (a recovered panic), which a fuzz target
// checks: a loop's panic does not reach ServeConn.
type loopFailures struct {
	mu    sync.Mutex
	lines []string
}

func (l *loopFailures) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("event loop failed")) {
		l.mu.Lock()
		l.lines = append(l.lines, string(p))
		l.mu.Unlock()
	}
	return len(p), nil
}

// take returns the reports kept since the last call.
func (l *loopFailures) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.lines
	l.lines = nil
	return v
}

// logTo makes a server log to w.
func logTo(w io.Writer) func(*Options) {
	return func(o *Options) { o.Logger = slog.New(slog.NewTextHandler(w, nil)) }
}

// checkingUpstream reads requests with net/http on every connection and
// records what breaks realipd's promise: a head net/http cannot read, a
// request framed two ways, more or other client-IP headers than realipd's
// own (x-real-ip: 127.0.0.1, X-Forwarded-For ending in 127.0.0.1), a
// client-IP header spelt with underscores. It answers every request (a 100
// Continue first to an HTTP/1.1 Expect, as Node.js's and Python's servers
// do), and counts them.
type checkingUpstream struct {
	ln       net.Listener
	requests atomic.Int64
	done     atomic.Int64 // connections whose handler has returned
	mu       sync.Mutex
	bad      []string
}

func newCheckingUpstream(tb testing.TB) *checkingUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	u := &checkingUpstream{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer u.done.Add(1)
				defer c.Close()
				u.serve(c)
			}()
		}
	}()
	return u
}

func (u *checkingUpstream) fail(format string, args ...any) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.bad = append(u.bad, fmt.Sprintf(format, args...))
}

func (u *checkingUpstream) serve(c net.Conn) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var raw bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &raw))
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			if err != io.EOF && !isReset(err) && !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "reset") {
				u.fail("net/http cannot read what realipd forwarded (%v): %q", err, raw.Bytes())
			}
			return
		}
		u.requests.Add(1)
		u.check(req, raw.Bytes())
		if req.ProtoAtLeast(1, 1) && strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
			io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return // realipd gave up on a body: it must end the connection
		}
		closing := ""
		if req.Close {
			closing = "Connection: close\r\n"
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\n"+closing+"Content-Length: 2\r\n\r\nok")
		if req.Close {
			return
		}
	}
}

func (u *checkingUpstream) check(req *http.Request, raw []byte) {
	if v := req.Header.Values("X-Real-Ip"); len(v) != 1 || v[0] != "127.0.0.1" {
		u.fail("x-real-ip %q: %q", v, raw)
	}
	if v := req.Header.Values("X-Forwarded-For"); len(v) != 1 || !(v[0] == "127.0.0.1" || strings.HasSuffix(v[0], ", 127.0.0.1")) {
		u.fail("X-Forwarded-For %q: %q", v, raw)
	}
	for k := range req.Header {
		if k != "X-Real-Ip" && strings.EqualFold(strings.ReplaceAll(k, "_", "-"), "x-real-ip") {
			u.fail("header %q: %q", k, raw)
		}
	}
	if len(req.TransferEncoding) > 0 && req.Header.Get("Content-Length") != "" || len(req.Header.Values("Content-Length")) > 1 {
		u.fail("framed two ways: %q", raw)
	}
}

func (u *checkingUpstream) violations() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	v := u.bad
	u.bad = nil
	return v
}

// FuzzHTTPModeForwarding sends arbitrary client bytes through the HTTP
// mode to an upstream that checks every request it gets (checkingUpstream),
// and checks that realipd neither panics nor hangs, that the upstream
// never receives more requests than the policies allowed (no request
// smuggled in a body, no request sent twice) and that each carries
// realipd's client-IP headers only.
func FuzzHTTPModeForwarding(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Real-IP: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-Real-IP: 6.6.6.6\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
		"GET /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET http://app/p?q HTTP/1.1\r\nHost: b\r\nConnection: x-real-ip, host\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n",
		"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	up := newCheckingUpstream(f)
	policy := &countingPolicy{}
	chain, err := plugins.NewChain(plugins.ChainEntry{Name: "count", Policy: policy})
	if err != nil {
		f.Fatal(err)
	}
	s := Settings{Chain: chain, Resolver: resolver(f, clientip.Config{Strategy: clientip.RemoteAddr})}
	var dials atomic.Int64
	var failures loopFailures
	srv, conn := reviewServer(f, current(f, s), up.ln.Addr().(*net.TCPAddr).AddrPort(), logTo(&failures))
	srv.dialOn = func(dial func()) { dial(); dials.Add(1) }
	f.Fuzz(func(t *testing.T, data []byte) {
		c, ended := conn(t)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		go func() {
			c.Write(data)
			c.(*net.TCPConn).CloseWrite()
		}()
		if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
			t.Fatalf("no end to the answers: %v: %q", err, data)
		}
		select {
		case p := <-ended:
			if p != nil {
				t.Fatalf("panic: %v: %q", p, data)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("ServeConn has not returned: %q", data)
		}
		// Every upstream connection realipd made has been read to its end.
		deadline := time.Now().Add(5 * time.Second)
		for up.done.Load() < dials.Load() {
			if time.Now().After(deadline) {
				t.Fatalf("an upstream connection is still open: %q", data)
			}
			time.Sleep(time.Millisecond)
		}
		if v := up.violations(); len(v) > 0 {
			t.Fatalf("%q:\n%s", data, strings.Join(v, "\n"))
		}
		if v := failures.take(); len(v) > 0 {
			t.Fatalf("%q:\n%s", data, strings.Join(v, "\n"))
		}
		if got, decided := up.requests.Load(), policy.n.Load(); got > decided {
			t.Fatalf("the upstream got %d requests, %d were decided: %q", got, decided, data)
		}
	})
}

// FuzzHTTPModeResponses has an upstream answer a client's requests with
// arbitrary bytes, then close: realipd must neither panic nor hang.
func FuzzHTTPModeResponses(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x\r\nok\r\n0\r\nA: b\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\n\r\nxyz",
		"HTTP/1.0 200 OK\r\n\r\nbody until close",
		"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add([]byte(s), false)
	}
	var answer atomic.Pointer[[]byte]
	up := scriptedUpstream(f, func(c net.Conn, _ int) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		c.Write(*answer.Load())
	})
	_, conn := reviewServer(f, current(f, Settings{Resolver: resolver(f, clientip.Config{Strategy: clientip.RemoteAddr})}), up)
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		answer.Store(&data)
		c, ended := conn(t)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		method := "GET"
		if head {
			method = "HEAD"
		}
		io.WriteString(c, method+" / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nhi")
		c.(*net.TCPConn).CloseWrite()
		if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
			t.Fatalf("no end to the answer: %v: %q", err, data)
		}
		select {
		case p := <-ended:
			if p != nil {
				t.Fatalf("panic: %v: %q", p, data)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("ServeConn has not returned: %q", data)
		}
	})
}

// FuzzHTTPEventLoopResponses has the upstream answer a connection's second
// request — the one an event loop forwards — with arbitrary bytes, then
// close, on a server with event loops and on one without: the client gets
// the same bytes from both (unless either connection was reset), and
// neither panics nor hangs.
func FuzzHTTPEventLoopResponses(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nbody until close",
		"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 304 Not Modified\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2",
	} {
		f.Add([]byte(s), false)
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"), true)
	var answer atomic.Pointer[[]byte]
	up := scriptedUpstream(f, func(c net.Conn, _ int) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		c.Write(*answer.Load())
	})
	s := Settings{Resolver: resolver(f, clientip.Config{Strategy: clientip.RemoteAddr})}
	var failures loopFailures
	withLoops, reg := loopServer(f, s, up, Options{HTTPEventLoops: 1, Logger: slog.New(slog.NewTextHandler(&failures, nil))})
	startSession(f, withLoops)
	withoutLoops, _ := loopServer(f, s, up, Options{HTTPEventLoops: -1})
	startSession(f, withoutLoops)
	// exchange sends two requests on a new connection to srv and returns
	// what came after the first answer, and whether the connection was
	// reset.
	exchange := func(t *testing.T, srv *Server, method string) ([]byte, bool) {
		c, sc := tcpPair(t)
		ended := make(chan any, 1)
		go func() {
			defer func() { ended <- recover() }()
			srv.ServeConn(sc, up, "fuzz")
		}()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		first := "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
		if resp, body := roundTrip(t, c, br, first); resp.StatusCode != 200 || body != "first" {
			t.Fatalf("first answer: %d %q", resp.StatusCode, body)
		}
		io.WriteString(c, method+" /2 HTTP/1.1\r\nHost: a\r\n\r\n")
		c.CloseWrite()
		got, err := io.ReadAll(br)
		reset := err != nil && isReset(err)
		if err != nil && !reset {
			t.Fatalf("no end to the answer: %v", err)
		}
		select {
		case p := <-ended:
			if p != nil {
				t.Fatalf("panic: %v", p)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("ServeConn has not returned")
		}
		return got, reset
	}
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		answer.Store(&data)
		method := "GET"
		if head {
			method = "HEAD"
		}
		before := loopServed(t, reg)
		viaLoop, loopReset := exchange(t, withLoops, method)
		if v := failures.take(); len(v) > 0 {
			t.Fatalf("%q:\n%s", data, strings.Join(v, "\n"))
		}
		viaGoroutine, goroutineReset := exchange(t, withoutLoops, method)
		if !loopReset && !goroutineReset && !bytes.Equal(viaLoop, viaGoroutine) {
			t.Fatalf("upstream answer %q: with event loops the client got %q, without %q (the loop served %v)", data, viaLoop, viaGoroutine, loopServed(t, reg)-before)
		}
	})
}
