//go:build linux

package origdst

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"

	"strings"
	"sync"
	"testing"
	"time"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/intercept"
	"github.com/realipd/realipd/plugins"
)

// httpApp serves HTTP in ns on addr, answering with the headers it got
// as JSON; at /upgrade it switches protocols and echoes lines.
func (w *world) httpApp(t testing.TB, addr netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	w.b.Must(t, func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go http.Serve(ln, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/upgrade" {
			c, brw, err := http.NewResponseController(rw).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
			brw.Flush()
			for {
				line, err := brw.ReadString('\n')
				if err != nil {
					return
				}
				brw.WriteString("echo " + line)
				brw.Flush()
			}
		}
		if r.URL.Path == "/body" {
			body, err := io.ReadAll(r.Body)
			json.NewEncoder(rw).Encode(map[string]any{"header": r.Header, "body": string(body), "trailer": r.Trailer, "error": fmt.Sprint(err)})
			return
		}
		json.NewEncoder(rw).Encode(r.Header)
	}))
}

func resolver(t testing.TB, cfg clientip.Config) *clientip.Resolver {
	t.Helper()
	r, err := clientip.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// roundTrip writes raw on c and reads one response.
func roundTrip(t testing.TB, c net.Conn, br *bufio.Reader, raw string) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", raw, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// TestHTTPModeNetns: connections to an HTTP port are served as HTTP/1.1
// on outbound REDIRECT, IPv4 and IPv6. A trusted PROXY v1 or v2 header
// names the peer that resolution and X-Forwarded-For see; one from an
// untrusted peer resets the connection before any byte goes upstream; a
// malformed request gets 400 and nothing goes upstream; an upgrade
// (WebSocket's mechanism) is relayed both ways; an unreachable
// destination gets 503.
func TestHTTPModeNetns(t *testing.T) {
	for _, f := range families() {
		t.Run(f.String(), func(t *testing.T) {
			w := newWorld(t)
			w.rules(t, intercept.ModeRedirect, f)
			target := netip.AddrPortFrom(w.bIP[f], 8080)
			w.httpApp(t, target)
			pod := w.aIP[f]
			trustPod := []netip.Prefix{netip.PrefixFrom(pod, pod.BitLen())}
			rec := &recorder{}
			settings := Settings{
				Chain:        rec.chain(t),
				TrustedCIDRs: trustPod,
				Resolver:     resolver(t, clientip.Config{Strategy: clientip.RightmostTrustedRange, TrustedCIDRs: trustPod}),
			}
			r := w.serve(t, Options{Mode: ModeRedirect, Listen: both(outboundPort), HTTPPorts: []uint16{8080, 8081}, ProxyProtocol: true, IdleTimeout: 2 * time.Second}, settings)

			src := netip.MustParseAddrPort("198.51.100.7:1")
			if f == intercept.IPv6 {
				src = netip.MustParseAddrPort("[2001:db8::7]:1")
			}
			// conn connects to target through the native listener as a
			// trusted proxy for the client src.
			conn := func() (net.Conn, *bufio.Reader) {
				c := dial(t, w.a, target)
				c.Write(proxyHeader(t, 2, src, target))
				return c, bufio.NewReader(c)
			}
			request := "GET /x HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\r\n"
			for _, version := range []byte{1, 2} {
				t.Run(fmt.Sprintf("trusted PROXY v%d", version), func(t *testing.T) {
					client := netip.MustParseAddrPort("198.51.100.7:4444")
					if f == intercept.IPv6 {
						client = netip.MustParseAddrPort("[2001:db8::7]:4444")
					}
					c := dial(t, w.a, target)
					c.Write(proxyHeader(t, version, client, target))
					br := bufio.NewReader(c)
					// Two requests on one connection, each resolved.
					for i := range 2 {
						resp, body := roundTrip(t, c, br, request)
						var got http.Header
						if err := json.Unmarshal([]byte(body), &got); resp.StatusCode != 200 || err != nil {
							t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
						}
						// The PROXY source is the peer: untrusted, so the
						// client, whatever the headers say.
						if ip := got.Get("X-Real-Ip"); ip != client.Addr().String() {
							t.Errorf("x-real-ip %q, want %v", ip, client.Addr())
						}
						if xff := got.Values("X-Forwarded-For"); len(xff) != 1 || xff[0] != "6.6.6.6, "+client.Addr().String() {
							t.Errorf("X-Forwarded-For %q", xff)
						}
						if req := rec.last(t); req.ClientIP != client.Addr() || req.OriginalDst != target || req.Strategy != clientip.RightmostTrustedRange {
							t.Errorf("the policy saw %+v", req)
						}
					}
				})
			}

			t.Run("no PROXY source: resolved from the peer", func(t *testing.T) {
				// HAProxy's health checks (v2 LOCAL) and v1 UNKNOWN name no
				// source: each request is resolved from the real peer and
				// its forwarding header, as without a PROXY header. The
				// trusted peer stands in when there is none.
				for name, h := range map[string][]byte{"v2 LOCAL": haproxyLocal, "v1 UNKNOWN": []byte("PROXY UNKNOWN\r\n")} {
					c := dial(t, w.a, target)
					c.Write(h)
					br := bufio.NewReader(c)
					for _, tc := range []struct{ raw, realIP, xff string }{
						{"GET /health HTTP/1.1\r\nHost: app\r\n\r\n", pod.String(), pod.String()},
						{request, "6.6.6.6", "6.6.6.6, " + pod.String()},
					} {
						resp, body := roundTrip(t, c, br, tc.raw)
						var got http.Header
						if err := json.Unmarshal([]byte(body), &got); resp.StatusCode != 200 || err != nil {
							t.Fatalf("%s: %q: %d %q", name, tc.raw, resp.StatusCode, body)
						}
						if ip, xff := got.Get("X-Real-Ip"), got.Values("X-Forwarded-For"); ip != tc.realIP || len(xff) != 1 || xff[0] != tc.xff {
							t.Errorf("%s: %q: x-real-ip %q, X-Forwarded-For %q; want %q, %q", name, tc.raw, ip, xff, tc.realIP, tc.xff)
						}
					}
				}
			})

			t.Run("untrusted PROXY header", func(t *testing.T) {
				s := settings
				s.TrustedCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
				if err := update(r.srv, s); err != nil {
					t.Fatal(err)
				}
				defer update(r.srv, settings)
				before := r.metric(t, "http_requests_total", "allow")
				c := dial(t, w.a, target)
				c.Write(append(proxyHeader(t, 2, src, target), request...))
				refusedAfter(t, c)
				r.waitMetric(t, "connections_refused_total", "proxy_header", 1)
				if n := r.metric(t, "http_requests_total", "allow"); n != before {
					t.Errorf("a request behind an untrusted PROXY header was forwarded")
				}
				// Without the header, the same peer is served, as the client.
				c = dial(t, w.a, target)
				resp, body := roundTrip(t, c, bufio.NewReader(c), request)
				if resp.StatusCode != 200 || !strings.Contains(body, pod.String()) {
					t.Errorf("without a PROXY header: %d %q", resp.StatusCode, body)
				}
			})

			t.Run("malformed request", func(t *testing.T) {
				c := dial(t, w.a, target)
				c.Write(proxyHeader(t, 2, src, target))
				before := r.metric(t, "http_requests_total", "allow")
				resp, _ := roundTrip(t, c, bufio.NewReader(c), "GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
				if resp.StatusCode != http.StatusBadRequest {
					t.Errorf("status %d, want 400", resp.StatusCode)
				}
				if r.metric(t, "http_requests_total", "allow") != before {
					t.Error("a malformed request was forwarded")
				}
			})

			t.Run("upgrade", func(t *testing.T) {
				c := dial(t, w.a, target)
				c.Write(proxyHeader(t, 1, src, target))
				io.WriteString(c, "GET /upgrade HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
					t.Fatalf("upgrade: %v %v", resp, err)
				}
				for _, line := range []string{"one\n", "two\n"} {
					io.WriteString(c, line)
					if got, err := br.ReadString('\n'); err != nil || got != "echo "+line {
						t.Fatalf("after the upgrade: %q %v", got, err)
					}
				}
			})

			t.Run("what Envoy refuses or rewrites first", func(t *testing.T) {
				allowed := func() float64 { return r.metric(t, "http_requests_total", "allow") }
				// An upgrade other than WebSocket would tunnel requests
				// past the policies: 403, nothing upstream. So is CONNECT.
				for _, raw := range []string{
					"GET / HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: tunnel\r\n\r\n",
					"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n",
				} {
					before := allowed()
					c, br := conn()
					if resp, body := roundTrip(t, c, br, raw); resp.StatusCode != http.StatusForbidden {
						t.Errorf("%q: %d %q, want 403", raw, resp.StatusCode, body)
					}
					if allowed() != before {
						t.Errorf("%q was forwarded", raw)
					}
				}
				// An h2c upgrade is forwarded as a plain request, without
				// its upgrade headers, as Envoy's HTTP/1 codec does.
				c, br := conn()
				resp, body := roundTrip(t, c, br, "GET /x HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
				var got http.Header
				if err := json.Unmarshal([]byte(body), &got); resp.StatusCode != 200 || err != nil {
					t.Fatalf("h2c upgrade: %d %q", resp.StatusCode, body)
				}
				if got.Get("Upgrade") != "" || got.Get("Http2-Settings") != "" || got.Get("X-Real-Ip") != src.Addr().String() {
					t.Errorf("h2c upgrade: the upstream got %v", got)
				}
				// A client IP header spelt with underscores is removed too.
				resp, body = roundTrip(t, c, br, "GET /x HTTP/1.1\r\nHost: app\r\nX_Real_IP: 6.6.6.6\r\nx-real_ip: 6.6.6.6\r\n\r\n")
				got = nil
				if err := json.Unmarshal([]byte(body), &got); resp.StatusCode != 200 || err != nil {
					t.Fatalf("underscores: %d %q", resp.StatusCode, body)
				}
				for name, v := range got {
					if strings.EqualFold(strings.ReplaceAll(name, "_", "-"), "x-real-ip") && (name != "X-Real-Ip" || len(v) != 1 || v[0] != src.Addr().String()) {
						t.Errorf("the upstream got %s: %q", name, v)
					}
				}
			})

			t.Run("ambiguous framing refused before anything goes upstream", func(t *testing.T) {
				allowed := func() float64 { return r.metric(t, "http_requests_total", "allow") }
				for _, tc := range []struct {
					raw    string
					status int
				}{
					{"POST /x HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400},
					{"POST /x HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400},
					{"POST /x HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400},
					{"POST /x HTTP/1.1\r\nHost: app\r\nContent-Length: +3\r\n\r\nabc", 400},
					{"POST /x HTTP/1.1\r\nHost: app\r\nContent-Length: 3, 3\r\n\r\nabc", 400},
					{"GET /x HTTP/1.1\r\nHost: app\r\nX-A: b\r\n c\r\n\r\n", 400},
					{"GET /x HTTP/1.1\nHost: app\r\n\r\n", 400},
					{"GET /x HTTP/1.1\r\nHost: app\r\nX-A : b\r\n\r\n", 400},
					{"POST /x HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
					{"GET /x HTTP/1.1\r\n\r\n", 400},
				} {
					before := allowed()
					c, br := conn()
					if resp, body := roundTrip(t, c, br, tc.raw); resp.StatusCode != tc.status {
						t.Errorf("%q: %d %q, want %d", tc.raw, resp.StatusCode, body, tc.status)
					}
					if allowed() != before {
						t.Errorf("%q was forwarded", tc.raw)
					}
				}
			})

			t.Run("a malformed chunked body: 400, not an upstream error", func(t *testing.T) {
				upErrors := r.metric(t, "http_upstream_errors_total", "")
				for _, raw := range []string{
					"POST /body HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
					"POST /body HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
					"POST /body HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
				} {
					c, br := conn()
					if resp, body := roundTrip(t, c, br, raw); resp.StatusCode != http.StatusBadRequest {
						t.Errorf("%q: %d %q, want 400", raw, resp.StatusCode, body)
					}
				}
				if n := r.metric(t, "http_upstream_errors_total", ""); n != upErrors {
					t.Errorf("malformed request bodies counted as %v upstream errors", n-upErrors)
				}
			})

			t.Run("bodies, and no trailer forwarded", func(t *testing.T) {
				c, br := conn()
				type echoed struct {
					Header  http.Header
					Body    string
					Trailer http.Header
				}
				for _, tc := range []struct{ raw, body string }{
					{"POST /body HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello", "hello"},
					{"POST /body HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nX-Real-IP: 6.6.6.6\r\nX-Other: 1\r\n\r\n", "hello"},
				} {
					resp, body := roundTrip(t, c, br, tc.raw)
					var got echoed
					if err := json.Unmarshal([]byte(body), &got); resp.StatusCode != 200 || err != nil {
						t.Fatalf("%q: %d %q", tc.raw, resp.StatusCode, body)
					}
					if got.Body != tc.body || len(got.Trailer) != 0 || got.Header.Get("X-Real-Ip") != src.Addr().String() {
						t.Errorf("%q: the upstream got body %q, trailer %v, x-real-ip %q", tc.raw, got.Body, got.Trailer, got.Header.Get("X-Real-Ip"))
					}
				}
			})

			t.Run("pipelined requests, each decided", func(t *testing.T) {
				before := rec.count()
				c, br := conn()
				io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: app\r\n\r\nGET /2 HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
				for i := range 2 {
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatalf("response %d: %v", i, err)
					}
					body, _ := io.ReadAll(resp.Body)
					var got http.Header
					if err := json.Unmarshal(body, &got); resp.StatusCode != 200 || err != nil || got.Get("X-Real-Ip") != src.Addr().String() {
						t.Errorf("response %d: %d %q", i, resp.StatusCode, body)
					}
				}
				if n := rec.count() - before; n != 2 {
					t.Errorf("%d decisions for two pipelined requests", n)
				}
			})

			t.Run("naming realipd's headers in Connection does not strip them", func(t *testing.T) {
				c, br := conn()
				resp, body := roundTrip(t, c, br, "GET /x HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, X-Real-IP, X-Forwarded-For\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 1.2.3.4\r\n\r\n")
				var got http.Header
				if err := json.Unmarshal([]byte(body), &got); resp.StatusCode != 200 || err != nil {
					t.Fatalf("%d %q", resp.StatusCode, body)
				}
				if ip, xff := got.Get("X-Real-Ip"), got.Values("X-Forwarded-For"); ip != src.Addr().String() || len(xff) != 1 || xff[0] != "6.6.6.6, "+src.Addr().String() {
					t.Errorf("the upstream got x-real-ip %q, X-Forwarded-For %q; want %v and the client's line with it appended", ip, xff, src.Addr())
				}
			})

			t.Run("policies see Envoy's :path, also for OPTIONS * and the absolute form", func(t *testing.T) {
				hp := &pathPolicy{deny: "/admin"}
				chain, err := plugins.NewChain(plugins.ChainEntry{Name: "paths", Policy: hp})
				if err != nil {
					t.Fatal(err)
				}
				s := settings
				s.Chain = chain
				if err := update(r.srv, s); err != nil {
					t.Fatal(err)
				}
				defer update(r.srv, settings)
				c, br := conn()
				for _, tc := range []struct {
					raw, path string
					status    int
				}{
					{"GET /admin/x?q=1 HTTP/1.1\r\nHost: app\r\n\r\n", "/admin/x?q=1", 403},
					{"GET http://app/admin/x?q=1 HTTP/1.1\r\nHost: app\r\n\r\n", "/admin/x?q=1", 403},
					{"GET http://app/ok HTTP/1.1\r\nHost: app\r\n\r\n", "/ok", 200},
					{"OPTIONS * HTTP/1.1\r\nHost: app\r\n\r\n", "*", 200},
				} {
					resp, body := roundTrip(t, c, br, tc.raw)
					if resp.StatusCode != tc.status || hp.last() != tc.path {
						t.Errorf("%q: %d %q, the policy saw :path %q; want %d and %q", tc.raw, resp.StatusCode, body, hp.last(), tc.status, tc.path)
					}
				}
			})

			t.Run("idle_timeout in the middle of a request", func(t *testing.T) {
				before := r.metric(t, "connections_cut_total", "idle_timeout")
				c, _ := conn()
				io.WriteString(c, "POST /x HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nab")
				// The body never completes: the connection is cut after
				// idle_timeout with no byte either way.
				b, err := io.ReadAll(c)
				if err == nil && len(b) > 0 {
					t.Errorf("a stalled request got %q", b)
				}
				// Counted as an idle cut (with the keep-alive connections
				// of the subtests before, idle as long).
				deadline := time.Now().Add(10 * time.Second)
				for r.metric(t, "connections_cut_total", "idle_timeout") < before+1 {
					if time.Now().After(deadline) {
						t.Fatal("the stalled connection was not counted as cut for idle_timeout")
					}
					time.Sleep(5 * time.Millisecond) // polling a metric
				}
			})

			t.Run("unreachable destination", func(t *testing.T) {
				closed := netip.AddrPortFrom(w.bIP[f], 8081) // an HTTP port nobody listens on
				c := dial(t, w.a, closed)
				c.Write(proxyHeader(t, 1, src, closed))
				resp, body := roundTrip(t, c, bufio.NewReader(c), "GET / HTTP/1.1\r\nHost: app\r\n\r\n")
				if resp.StatusCode != http.StatusServiceUnavailable || body != upstreamErrorBody {
					t.Errorf("%d %q, want 503", resp.StatusCode, body)
				}
				r.waitMetric(t, "http_upstream_errors_total", "", 1)
			})
		})
	}
}

// pathPolicy reads :path (HeaderInputs), remembers the last one and
// denies the paths starting with deny.
type pathPolicy struct {
	deny string
	mu   sync.Mutex
	path string
}

func (p *pathPolicy) RequestHeaders() ([]string, bool) { return []string{":path"}, false }

func (p *pathPolicy) Decide(_ context.Context, req *plugins.Request) (plugins.Decision, error) {
	path := ""
	for _, h := range req.Headers {
		if h.Name == ":path" {
			path = h.Value
		}
	}
	p.mu.Lock()
	p.path = path
	p.mu.Unlock()
	return plugins.Decision{Deny: strings.HasPrefix(path, p.deny)}, nil
}

func (p *pathPolicy) last() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.path
}
