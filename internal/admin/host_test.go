package admin_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/internal/admin"
)

// getHost sends GET path to r with the Host header host and returns the
// status and body.
func (r *running) getHost(t *testing.T, path, host string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, r.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatalf("GET %s (Host %q): %v", path, host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// rawStatus sends request as is on a new connection to r and returns the
// response status.
func (r *running) rawStatus(t *testing.T, request string) int {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(r.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%q: %v", request, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestHostCheck: over a real loopback listener, a request is answered only
// when its Host is an IP address or localhost (port optional, any case);
// any other name, as a DNS rebinding page would send, is refused on every
// endpoint with 403 and counted.
func TestHostCheck(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := start(t, newServer(t, admin.Options{Registry: reg, ConfigDump: func() any { return map[string]int{"hops": 1} }}))
	port := r.base[strings.LastIndexByte(r.base, ':')+1:]

	accepted := []string{
		strings.TrimPrefix(r.base, "http://"),
		"127.0.0.1", "127.9.9.9:1", "localhost", "localhost:" + port, "LocalHost:" + port, "localhost.",
		"[::1]", "[::1]:" + port, "[::ffff:127.0.0.1]:" + port,
		// IP literals cannot be rebound: a Kubernetes probe (pod IP), a
		// port forward or a NAT in front still reach the listener.
		"10.1.2.3:9902", "192.0.2.1", "[2001:db8::1]:9902",
	}
	refused := []string{
		"evil.example", "evil.example:" + port, "EVIL.example.", "localhost.evil.example", "app.localhost",
		"127.0.0.1.nip.io", "0x7f000001", "2130706433", "::1", "[::1", "[evil.example]", "localhost:http",
	}
	for _, host := range accepted {
		if code, body := r.getHost(t, "/healthz", host); code != http.StatusOK {
			t.Errorf("GET /healthz with Host %q = %d %q, want 200", host, code, body)
		}
	}
	for _, host := range refused {
		code, body := r.getHost(t, "/healthz", host)
		if code != http.StatusForbidden || !strings.Contains(body, "Host") {
			t.Errorf("GET /healthz with Host %q = %d %q, want 403 naming the Host", host, code, body)
		}
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/config_dump", "/metrics", "/readyz", "/"} {
		code, body := r.getHost(t, path, "rebind.attacker.example:"+port)
		if code != http.StatusForbidden || strings.Contains(body, "hops") || strings.Contains(body, "admin.test") {
			t.Errorf("GET %s with Host rebind.attacker.example = %d %q, want 403 and nothing served", path, code, body)
		}
	}
	// HTTP/1.0 allows no Host at all; no browser sends that, but the
	// rule is that the Host names this listener, so it is refused too.
	if code := r.rawStatus(t, "GET /healthz HTTP/1.0\r\n\r\n"); code != http.StatusForbidden {
		t.Errorf("HTTP/1.0 GET /healthz without Host = %d, want 403", code)
	}
	if code := r.rawStatus(t, "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n"); code != http.StatusOK {
		t.Errorf("HTTP/1.0 GET /healthz with Host localhost = %d, want 200", code)
	}

	wantRefused := len(refused) + 6 + 1
	_, metrics, _ := r.get(t, "/metrics")
	if want := fmt.Sprintf("realipd_admin_host_refused_total %d\n", wantRefused); !strings.Contains(metrics, want) {
		t.Errorf("/metrics lacks %q", want)
	}
}

// TestHostCheckAllowedHosts: the names of AllowedHosts are accepted too, in
// any case, and no others.
func TestHostCheckAllowedHosts(t *testing.T) {
	r := start(t, newServer(t, admin.Options{AllowedHosts: []string{"Admin.Internal", "realipd-admin"}}))
	for host, want := range map[string]int{
		"admin.internal":       http.StatusOK,
		"ADMIN.internal:9902":  http.StatusOK,
		"realipd-admin:1":      http.StatusOK,
		"localhost":            http.StatusOK,
		"other.internal":       http.StatusForbidden,
		"admin.internal.evil":  http.StatusForbidden,
		"sub.admin.internal":   http.StatusForbidden,
		"realipd-admin.evil.x": http.StatusForbidden,
	} {
		if code, body := r.getHost(t, "/healthz", host); code != want {
			t.Errorf("GET /healthz with Host %q = %d %q, want %d", host, code, body, want)
		}
	}
}

// TestHandlerChecksHost: Handler, mounted elsewhere, applies the same rule.
func TestHandlerChecksHost(t *testing.T) {
	h := newServer(t, admin.Options{}).Handler()
	for host, want := range map[string]int{"localhost:9902": http.StatusOK, "evil.example": http.StatusForbidden} {
		req, err := http.NewRequest(http.MethodGet, "http://"+host+"/healthz", nil)
		if err != nil {
			t.Fatal(err)
		}
		w := &recorder{header: http.Header{}}
		h.ServeHTTP(w, req)
		if w.code != want {
			t.Errorf("Handler: GET /healthz with Host %q = %d, want %d", host, w.code, want)
		}
	}
}

type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (w *recorder) Header() http.Header { return w.header }
func (w *recorder) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.body.Write(b)
}
func (w *recorder) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// addrListener is a loopback listener that reports another address, so
// that a test sees what Serve does on a wildcard or a network address
// without listening there.
type addrListener struct {
	net.Listener
	addr net.Addr
}

func (l addrListener) Addr() net.Addr { return l.addr }

// TestWarnsWhenNotLoopback: Serve warns, with the address, when the
// listener is reachable from other hosts, and not on loopback.
func TestWarnsWhenNotLoopback(t *testing.T) {
	tests := []struct {
		addr     string
		wantWarn string // "" for no warning
	}{
		{"127.0.0.1:9902", ""},
		{"[::1]:9902", ""},
		{"0.0.0.0:9902", `level=WARN msg="admin listener is not on loopback: it serves /debug/pprof and /config_dump to whoever reaches it; listen on loopback or firewall the port" addr=0.0.0.0:9902 all_interfaces=true`},
		{"[::]:9902", `addr=[::]:9902 all_interfaces=true`},
		{"10.1.2.3:9902", `level=WARN msg="admin listener is not on loopback: it serves /debug/pprof and /config_dump to whoever reaches it; listen on loopback or firewall the port" addr=10.1.2.3:9902 all_interfaces=false`},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			var logs syncBuffer
			s := newServer(t, admin.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr, err := net.ResolveTCPAddr("tcp", tt.addr)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- s.Serve(ctx, addrListener{ln, addr}) }()
			<-s.Listening()
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Serve: %v", err)
			}
			got := logs.String()
			switch {
			case tt.wantWarn == "" && strings.Contains(got, "level=WARN"):
				t.Errorf("listening on %s logged a warning:\n%s", tt.addr, got)
			case tt.wantWarn != "" && !strings.Contains(got, tt.wantWarn):
				t.Errorf("listening on %s: logs lack %q:\n%s", tt.addr, tt.wantWarn, got)
			}
		})
	}
}
