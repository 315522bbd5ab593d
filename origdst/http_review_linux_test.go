//go:build linux

package origdst

// Regression tests from the security review of the HTTP mode's forwarding
// path (issue 18). Each test failed on the code it was written against;
// its comment describes the flaw it guards against.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/plugins"
)

// reviewServer starts a server in the HTTP mode forwarding to up, deciding
// with cur; conn serves one new loopback connection with it and returns
// the client's end and a channel that receives a panic of the serving
// goroutine (recovered there so that the test binary survives it) or nil
// when ServeConn returned; the connection closes at the end of tb.
func reviewServer(tb testing.TB, cur *decide.Current, up netip.AddrPort, opts ...func(*Options)) (srv *Server, conn func(testing.TB) (net.Conn, <-chan any)) {
	tb.Helper()
	o := Options{Mode: ModeRedirect, Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}, HTTPPorts: []uint16{up.Port()}, Registerer: prometheus.NewRegistry()}
	for _, f := range opts {
		f(&o)
	}
	srv, err := New(o, cur)
	if err != nil {
		tb.Fatal(err)
	}
	startSession(tb, srv)
	conn = func(tb testing.TB) (net.Conn, <-chan any) {
		tb.Helper()
		c, sc := tcpPair(tb)
		ended := make(chan any, 1)
		go func() {
			defer func() { ended <- recover() }()
			srv.ServeConn(sc, up, "review")
		}()
		return c, ended
	}
	return srv, conn
}

// scriptedUpstream calls serve with each connection it accepts and its
// index (0 for the first).
func scriptedUpstream(tb testing.TB, serve func(c net.Conn, i int)) netip.AddrPort {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c, i)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// denyAll is a Settings whose only policy denies every client (all of
// them come from 127.0.0.1).
func denyAll(tb testing.TB) Settings {
	tb.Helper()
	chain, err := plugins.NewChain(plugins.ChainEntry{Name: "block", Policy: plugins.NewCIDR(nil, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})})
	if err != nil {
		tb.Fatal(err)
	}
	return Settings{Chain: chain, Resolver: resolver(tb, clientip.Config{Strategy: clientip.RemoteAddr})}
}

// TestReviewExpectWithoutBodyPanics: a request with Expect: 100-continue
// and no body (no Content-Length), followed by a pipelined request, to an
// upstream that answers every Expect with 100 Continue (as Node.js's http
// server does by default) makes sendBody call copyN with n =
// ContentLength = -1 while the input buffer holds the pipelined request:
// copyN slices buf[r:r-1] and panics. Nothing recovers it in the serving
// goroutine, so realipd as a whole crashes.
func TestReviewExpectWithoutBodyPanics(t *testing.T) {
	up := scriptedUpstream(t, func(c net.Conn, _ int) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
				io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
			}
			io.Copy(io.Discard, req.Body)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	_, conn := reviewServer(t, current(t, Settings{Resolver: resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})}), up)
	c, ended := conn(t)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /a HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\n\r\nGET /b HTTP/1.1\r\nHost: app\r\n\r\n")
	br := bufio.NewReader(c)
	fail := func(format string, args ...any) {
		t.Helper()
		select {
		case p := <-ended:
			if p != nil {
				t.Fatalf("the serving goroutine panicked (in realipd: the process dies): %v", p)
			}
		case <-time.After(5 * time.Second):
		}
		t.Fatalf(format, args...)
	}
	for _, path := range []string{"/a", "/b"} {
		resp, err := http.ReadResponse(br, nil)
		if err == nil && resp.StatusCode == 100 {
			resp, err = http.ReadResponse(br, nil)
		}
		if err != nil {
			fail("%s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d", path, resp.StatusCode)
		}
	}
}

// TestReviewRetryResendsNonIdempotent: a request without a body that went
// out on a kept-alive upstream connection which the upstream then closed
// without answering is sent again on a new connection, whatever its
// method. The upstream may have acted on it (a POST with Content-Length:
// 0, a DELETE): it then runs twice. Go's Transport, which the code cites,
// retries such a request only when nothing of it was written, or when it
// is idempotent (GET, HEAD, OPTIONS, TRACE, or an Idempotency-Key).
func TestReviewRetryResendsNonIdempotent(t *testing.T) {
	var mu sync.Mutex
	var got []string
	up := scriptedUpstream(t, func(c net.Conn, i int) {
		br := bufio.NewReader(c)
		for n := 0; ; n++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			mu.Lock()
			got = append(got, req.Method+" "+req.URL.Path)
			mu.Unlock()
			if i == 0 && n == 1 {
				return // acted on the second request, then went away
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	_, conn := reviewServer(t, current(t, Settings{Resolver: resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})}), up)
	c, _ := conn(t)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v", err)
	}
	io.WriteString(c, "POST /transfer?amount=100 HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n")
	http.ReadResponse(br, nil) // whatever the answer
	mu.Lock()
	defer mu.Unlock()
	posts := 0
	for _, r := range got {
		if r == "POST /transfer" {
			posts++
		}
	}
	if posts != 1 {
		t.Errorf("the upstream received the POST %d times: %q", posts, got)
	}
}

// TestReviewUnsolicitedUpstreamBytes: bytes an upstream sends past the end
// of a response (a body to a HEAD, or to a 204 or 304, or more than its
// Content-Length) stay in realipd's upstream buffer, and the connection is
// kept: they are taken for the response to the client's next request,
// which the upstream has not even answered yet (response queue poisoning;
// every later response is one behind). Envoy and Go's Transport close an
// upstream connection that sends bytes when no response is due.
func TestReviewUnsolicitedUpstreamBytes(t *testing.T) {
	fake := "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
	up := scriptedUpstream(t, func(c net.Conn, _ int) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.Method == "HEAD" {
				// A HEAD answered with its body, in one write.
				io.WriteString(c, fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(fake), fake))
				continue
			}
			body := "real answer to " + req.URL.Path
			io.WriteString(c, fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
		}
	})
	_, conn := reviewServer(t, current(t, Settings{Resolver: resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})}), up)
	c, _ := conn(t)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	io.WriteString(c, "HEAD / HTTP/1.1\r\nHost: app\r\n\r\n")
	if resp, err := http.ReadResponse(br, &http.Request{Method: "HEAD"}); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	io.WriteString(c, "GET /second HTTP/1.1\r\nHost: app\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return // realipd refused the connection: fine
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "real answer to /second" {
		t.Errorf("the answer to GET /second is %q", b)
	}
}

// TestReviewDeniedHeadGetsBody: realipd's own answers (a deny, a refusal)
// carry their body whatever the request: a HEAD's deny answer has
// "access denied\n" after its head, which the client, by the rules of
// HEAD, does not read: on a kept-alive connection those bytes are the
// start of what it takes for the next response. The same holds for a
// policy's deny status 204 or 304 (both valid deny statuses).
func TestReviewDeniedHeadGetsBody(t *testing.T) {
	_, conn := reviewServer(t, current(t, denyAll(t)), netip.MustParseAddrPort("127.0.0.1:9"))
	c, _ := conn(t)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	io.WriteString(c, "HEAD / HTTP/1.1\r\nHost: app\r\n\r\nGET / HTTP/1.1\r\nHost: app\r\n\r\n")
	resp, err := http.ReadResponse(br, &http.Request{Method: "HEAD"})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("HEAD: %d", resp.StatusCode)
	}
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the response after a denied HEAD: %v", err)
	}
	if resp.StatusCode != 403 {
		t.Errorf("GET: %d", resp.StatusCode)
	}
}

// TestReviewHTTP10ExpectHangs: an HTTP/1.0 request with Expect:
// 100-continue goes upstream in HTTP/1.0 with its Expect, and realipd
// holds its body back until the upstream's 100 Continue; but a server
// must ignore that expectation in an HTTP/1.0 request (RFC 9110 10.1.1),
// and Go's net/http does: it waits for the body, realipd for the 100, until
// idle_timeout (1 h by default) cuts them, the upstream connection and its
// worker held all along.
func TestReviewHTTP10ExpectHangs(t *testing.T) {
	app := framingApp(t)
	_, conn := reviewServer(t, current(t, Settings{Resolver: resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})}), app)
	c, _ := conn(t)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST /sum HTTP/1.0\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nxyz")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer in 5 s: %v", err)
	}
	if resp.StatusCode != 200 {
		t.Errorf("%d", resp.StatusCode)
	}
}

// TestReviewDenyWithExpectWaitsForBody: a denied request that announces a
// short body with Expect: 100-continue is answered only once its body has
// been read and dropped (to keep the connection); but the client waits
// for 100 Continue before it sends the body, which realipd never sends:
// the deny waits for the client's own timeout (curl 1 s, others wait
// longer, some for ever until idle_timeout).
func TestReviewDenyWithExpectWaitsForBody(t *testing.T) {
	_, conn := reviewServer(t, current(t, denyAll(t)), netip.MustParseAddrPort("127.0.0.1:9"))
	c, _ := conn(t)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer in 5 s: %v", err)
	}
	if resp.StatusCode != 403 {
		t.Errorf("%d", resp.StatusCode)
	}
}

// authorityPolicy allows every request and records the :authority it
// decided on.
type authorityPolicy struct {
	mu   sync.Mutex
	seen []string
}

func (p *authorityPolicy) Decide(_ context.Context, r *plugins.Request) (plugins.Decision, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, h := range r.Headers {
		if h.Name == ":authority" {
			p.seen = append(p.seen, h.Value)
		}
	}
	return plugins.Decision{}, nil
}

func (p *authorityPolicy) RequestHeaders() ([]string, bool) { return []string{":authority"}, false }

// TestReviewConnectionNominatesHost: a client that names Host in its
// Connection header has the Host line removed from the request the
// upstream gets, while the policies decided on that Host (:authority).
// Forwarded in HTTP/1.0 (an HTTP/1.0 client's request), the upstream
// takes a request without Host for its default virtual host: the policy
// allowed one host, the upstream serves another. Envoy does not remove a
// Host named in Connection.
func TestReviewConnectionNominatesHost(t *testing.T) {
	heads := make(chan string, 1)
	up := scriptedUpstream(t, func(c net.Conn, _ int) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			heads <- "error: " + err.Error()
			return
		}
		heads <- "Host=" + req.Host
		io.WriteString(c, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	p := &authorityPolicy{}
	chain, err := plugins.NewChain(plugins.ChainEntry{Name: "hosts", Policy: p})
	if err != nil {
		t.Fatal(err)
	}
	_, conn := reviewServer(t, current(t, Settings{Chain: chain, Resolver: resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})}), up)
	c, _ := conn(t)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET / HTTP/1.0\r\nHost: public.example\r\nConnection: host\r\n\r\n")
	if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
		t.Fatal(err)
	}
	got := <-heads
	p.mu.Lock()
	defer p.mu.Unlock()
	if got != "Host=public.example" {
		t.Errorf("the policy decided on :authority %q; the upstream got %s", p.seen, got)
	}
}

// TestReviewTunnelHoldsRetiredChain: a request holds the policy chain it
// was decided with (Current.Acquire) until serveOne returns: through the
// whole forwarding, the response body and, after a WebSocket upgrade, the
// tunnel's whole life. A chain retired by a reload stays open (plugin
// processes and all) as long as any such connection lasts, which a client
// decides (a WebSocket kept alive under idle_timeout lasts for ever); each
// reload meanwhile adds one. The TCP proxy and the ext_proc server release
// the chain once the decision is made, as Current.Acquire documents.
func TestReviewTunnelHoldsRetiredChain(t *testing.T) {
	up := scriptedUpstream(t, func(c net.Conn, _ int) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		io.Copy(c, br) // echo until the client goes
	})
	allow := func() *plugins.Chain {
		chain, err := plugins.NewChain(plugins.ChainEntry{Name: "allow", Policy: plugins.NewCIDR(nil, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")})})
		if err != nil {
			t.Fatal(err)
		}
		return chain
	}
	old := allow()
	r := resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})
	cur := current(t, Settings{Chain: old, Resolver: r})
	_, conn := reviewServer(t, cur, up)
	c, _ := conn(t)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	io.WriteString(c, "ping")
	if b := make([]byte, 4); func() error { _, err := io.ReadFull(br, b); return err }() != nil || string(b) != "ping" {
		t.Fatalf("tunnel: %q", b)
	}
	// A reload: the new Decider in force, then the old chain retired.
	d, err := decide.New(Settings{Chain: allow(), Resolver: r}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cur.Store(d)
	old.Retire()
	select {
	case <-old.Done():
	case <-time.After(3 * time.Second):
		t.Error("the replaced chain is still open 3 s after the reload, held by a WebSocket tunnel decided before it")
	}
}

// TestReviewEnvoySanitizedHeadersPass: Envoy's connection manager, at the
// edge (use_remote_address: true, no trusted hop: the configuration
// realipd's control plane gives it), sanitizes request headers that carry
// what only the proxy may say: x-envoy-external-address (the client's
// address, which Envoy sets to the peer), x-forwarded-proto (set from the
// downstream connection), x-forwarded-client-cert (removed by default),
// x-envoy-internal and the x-envoy-* controls. The HTTP mode, which stands
// for Envoy, forwards whatever the client sent: a backend moved from
// behind Envoy that reads x-envoy-external-address gets a client IP of the
// client's choosing, one that reads x-forwarded-proto takes plain HTTP for
// HTTPS.
func TestReviewEnvoySanitizedHeadersPass(t *testing.T) {
	got := make(chan http.Header, 1)
	up := scriptedUpstream(t, func(c net.Conn, _ int) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			close(got)
			return
		}
		got <- req.Header
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	_, conn := reviewServer(t, current(t, Settings{Resolver: resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})}), up)
	c, _ := conn(t)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\nX-Envoy-External-Address: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Client-Cert: By=spiffe://admin\r\n\r\n")
	if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
		t.Fatal(err)
	}
	h := <-got
	if v := h.Values("X-Envoy-External-Address"); len(v) > 0 && v[0] == "6.6.6.6" {
		t.Errorf("x-envoy-external-address: the client's %q", v)
	}
	if v := h.Values("X-Forwarded-Proto"); len(v) > 0 && v[0] != "http" {
		t.Errorf("x-forwarded-proto: the client's %q", v)
	}
	if v := h.Values("X-Forwarded-Client-Cert"); len(v) > 0 {
		t.Errorf("x-forwarded-client-cert: the client's %q", v)
	}
}

// TestReviewLongSpliceCutAsIdle: a body over 64 KiB is moved by one
// io.CopyN of all that is left (copyN, spliced) and a close-delimited
// response by one io.Copy, and the connection's activity is recorded
// (pc.touch) only once they end: the idle sweeper sees a connection
// moving bytes all along as idle and cuts it once the transfer has lasted
// idle_timeout. With idle_timeout: 1s, a 1 MiB response that takes 3 s
// to come is cut after about 1 s.
func TestReviewLongSpliceCutAsIdle(t *testing.T) {
	const size, pieces = 1 << 20, 30
	up := scriptedUpstream(t, func(c net.Conn, _ int) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", size)
		piece := bytes.Repeat([]byte("x"), size/pieces+1)
		for left := size; left > 0; left -= len(piece) {
			time.Sleep(100 * time.Millisecond) // a slow upstream: 3 s for the body
			if _, err := c.Write(piece[:min(len(piece), left)]); err != nil {
				return
			}
		}
	})
	_, conn := reviewServer(t, current(t, Settings{Resolver: resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})}), up,
		func(o *Options) { o.IdleTimeout = time.Second })
	c, _ := conn(t)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: app\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if n != size {
		t.Errorf("%d bytes of %d, then %v: cut while moving bytes", n, size, err)
	}
}
