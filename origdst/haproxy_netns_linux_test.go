//go:build linux

package origdst

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/intercept"
	"github.com/realipd/realipd/internal/netnstest"
)

// TestHAProxyNetns: a real HAProxy in front of the native listener, as
// the PROXY protocol's reference sender. Three namespaces: a client, then
// HAProxy (b, trusted), then the pod (a), where realipd's native listener
// serves the app's port in the HTTP mode behind the inbound REDIRECT
// rules. HAProxy sends PROXY v1 (send-proxy) or v2 (send-proxy-v2), over
// IPv4 and IPv6, to its servers and to their health checks (option
// httpchk, check). A v2 check carries LOCAL (HAProxy 2.6's v1 checks
// carry HAProxy's own addresses, a later one's may carry UNKNOWN): the
// trusted peer stands in as the client. The checks must keep every server
// UP, as read from HAProxy's stats socket, and a client's request through
// HAProxy must reach the app with the client's address as x-real-ip.
func TestHAProxyNetns(t *testing.T) {
	netnstest.Require(t)
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		netnstest.Unavailable(t, "needs haproxy (the Debian package haproxy)")
	}
	w := newWorld(t)
	clientNS := netnstest.New(t)
	netnstest.VethNamed(t, clientNS, w.b, "veth-c", "veth-h", []string{"10.78.0.2/24", "fd78::2/64"}, []string{"10.78.0.1/24", "fd78::1/64"})
	clientIP := map[intercept.Family]netip.Addr{intercept.IPv4: netip.MustParseAddr("10.78.0.2"), intercept.IPv6: netip.MustParseAddr("fd78::2")}
	frontIP := map[intercept.Family]netip.Addr{intercept.IPv4: netip.MustParseAddr("10.78.0.1"), intercept.IPv6: netip.MustParseAddr("fd78::1")}
	for _, f := range families() {
		w.rules(t, intercept.ModeRedirect, f)
	}
	app := w.podApp(t, 8080)
	haproxyNS := []netip.Prefix{netip.PrefixFrom(w.bIP[intercept.IPv4], 32), netip.PrefixFrom(w.bIP[intercept.IPv6], 128)}
	w.serve(t, Options{Mode: ModeRedirect, Listen: both(inboundPort), HTTPPorts: []uint16{8080}, ProxyProtocol: true}, Settings{
		TrustedCIDRs: haproxyNS,
		Resolver:     resolver(t, clientip.Config{Strategy: clientip.RightmostTrustedRange, TrustedCIDRs: haproxyNS}),
	})

	type backend struct {
		name     string
		f        intercept.Family
		sendPROX string
		port     uint16
	}
	var backends []backend
	dir := t.TempDir()
	sock := filepath.Join(dir, "haproxy.sock")
	cfg := fmt.Sprintf(`global
	stats socket %s level admin
	nbthread 1
defaults
	mode http
	timeout connect 2s
	timeout client 10s
	timeout server 10s
	timeout check 2s
`, sock)
	port := uint16(8001)
	for _, f := range families() {
		for _, send := range []string{"send-proxy", "send-proxy-v2"} {
			b := backend{name: fmt.Sprintf("%s-%s", send, f), f: f, sendPROX: send, port: port}
			backends = append(backends, b)
			port++
			cfg += fmt.Sprintf(`frontend %[1]s
	bind %[2]s
	default_backend %[1]s
backend %[1]s
	option httpchk
	http-check send meth GET uri /health ver HTTP/1.1 hdr Host app
	http-check expect status 200
	server app %[3]s %[4]s check inter 20ms fastinter 20ms downinter 20ms
`, b.name, netip.AddrPortFrom(frontIP[f], b.port), netip.AddrPortFrom(w.aIP[f], 8080), send)
		}
	}
	cfgFile := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	startHAProxy(t, w.b, bin, cfgFile)

	// Every server must be UP, its last check passed (200), and no check
	// ever failed: HAProxy starts its servers UP, so UP alone would not
	// say that a check went through.
	deadline := time.Now().Add(10 * time.Second)
	for {
		states, err := haproxyServers(sock)
		ready := err == nil
		for _, b := range backends {
			s, ok := states[b.name]
			switch {
			case !ok:
				ready = false
			case s["chkfail"] != "0":
				t.Fatalf("HAProxy's health check of %s failed: status %s, last check %s %s", b.name, s["status"], s["check_status"], s["check_code"])
			case s["status"] != "UP" || s["check_status"] != "L7OK" || s["check_code"] != "200":
				ready = false
			}
		}
		// Each server passed several checks through realipd.
		for _, b := range backends {
			if app.count("/health", w.bIP[b.f]) < 3 {
				ready = false
			}
		}
		if ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("HAProxy's servers are not all UP after passing checks: %v (stats socket: %v)", states, err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			c := dial(t, clientNS, netip.AddrPortFrom(frontIP[b.f], b.port))
			resp, body := roundTrip(t, c, bufio.NewReader(c), "GET /who HTTP/1.1\r\nHost: app\r\nX-Real-IP: 6.6.6.6\r\n\r\n")
			var got http.Header
			if err := json.Unmarshal([]byte(body), &got); resp.StatusCode != 200 || err != nil {
				t.Fatalf("through HAProxy: %d %q", resp.StatusCode, body)
			}
			if ip := got.Get("X-Real-Ip"); ip != clientIP[b.f].String() {
				t.Errorf("x-real-ip %q, want the client %v", ip, clientIP[b.f])
			}
			if app.count("/who", clientIP[b.f]) == 0 {
				t.Errorf("the app saw no request of the client %v", clientIP[b.f])
			}
		})
	}
}

// podApp serves HTTP in the pod (a) on port, on every address: it answers
// with the request's headers as JSON and counts the requests per path and
// x-real-ip.
func (w *world) podApp(t testing.TB, port uint16) *podApp {
	t.Helper()
	app := &podApp{seen: map[string]int{}}
	for _, f := range families() {
		var ln net.Listener
		w.a.Must(t, func() error {
			var err error
			ln, err = net.Listen("tcp", netip.AddrPortFrom(w.aIP[f], port).String())
			return err
		})
		t.Cleanup(func() { ln.Close() })
		go http.Serve(ln, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			app.mu.Lock()
			app.seen[r.URL.Path+" "+r.Header.Get("X-Real-Ip")]++
			app.mu.Unlock()
			json.NewEncoder(rw).Encode(r.Header)
		}))
	}
	return app
}

type podApp struct {
	mu   sync.Mutex
	seen map[string]int // "path x-real-ip"
}

func (a *podApp) count(path string, realIP netip.Addr) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[path+" "+realIP.String()]
}

// startHAProxy runs HAProxy in the foreground (-db) in ns, a child of the
// test killed when it ends; its output is logged on failure.
func startHAProxy(t testing.TB, ns *netnstest.Netns, bin, cfgFile string) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, "-db", "-f", cfgFile)
	cmd.Stdout, cmd.Stderr = &out, &out
	ns.Must(t, cmd.Start) // forked from a thread in ns: HAProxy is in ns
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("haproxy:\n%s", out.String())
		}
	})
}

// haproxyServers reads "show stat" from HAProxy's stats socket: the
// fields of each backend's server, by backend name.
func haproxyServers(sock string) (map[string]map[string]string, error) {
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return nil, err
	}
	r := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(bytes.TrimSpace(b), []byte("# "))))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("show stat: %w: %q", err, b)
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("show stat: nothing")
	}
	states := map[string]map[string]string{}
	for _, row := range rows[1:] {
		s := map[string]string{}
		for i, name := range rows[0] {
			if i < len(row) {
				s[name] = row[i]
			}
		}
		if s["svname"] == "app" {
			states[s["pxname"]] = s
		}
	}
	return states, nil
}
