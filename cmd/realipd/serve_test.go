package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/realipd/realipd/extproc/extproctest"
)

// logWatch collects log output and closes ready once every wanted pattern
// has matched, keeping each pattern's first submatch.
type logWatch struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	want  map[string]*regexp.Regexp
	got   map[string]string
	ready chan struct{}
}

func newLogWatch(want map[string]string) *logWatch {
	w := &logWatch{want: map[string]*regexp.Regexp{}, got: map[string]string{}, ready: make(chan struct{})}
	for k, re := range want {
		w.want[k] = regexp.MustCompile(re)
	}
	return w
}

func (w *logWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, _ := w.buf.Write(p)
	if len(w.want) == 0 {
		return n, nil
	}
	for k, re := range w.want {
		if m := re.FindStringSubmatch(w.buf.String()); m != nil {
			w.got[k] = m[1]
			delete(w.want, k)
		}
	}
	if len(w.want) == 0 {
		close(w.ready)
	}
	return n, nil
}

func (w *logWatch) value(k string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.got[k]
}

func (w *logWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestServeWiresRoles runs serve in-process and checks that the roles are
// connected: ext_proc answers with the resolved client IP and applies the
// configured policy, and the admin listener reports ext_proc's readiness and
// serves its metrics.
func TestServeWiresRoles(t *testing.T) {
	cfg := writeFile(t, "serve.yaml", `
trust:
  strategy: rightmost_trusted_range
  trusted_cidrs: [10.0.0.0/8]
extproc:
  listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
xds:
  enabled: false
policies:
  - name: blocklist
    type: cidr
    deny: [198.51.100.0/24]
`)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	logs := newLogWatch(map[string]string{
		"extproc": `msg="extproc: serving".* address=(\S+)`,
		"admin":   `msg="admin listening".* addr=(\S+)`,
	})
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", cfg}, io.Discard, logs) }()
	select {
	case <-logs.ready:
	case err := <-done:
		t.Fatalf("serve returned before listening: %v\n%s", err, logs)
	}

	client, err := extproctest.Dial(logs.value("extproc"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	// Envoy appended the peer 10.0.0.5; the trusted proxy 10.1.1.1 forwarded for 203.0.113.9.
	res, err := client.Process(ctx, extproctest.Request{
		SourceAddress: "10.0.0.5:4321",
		Headers:       []extproctest.Header{{Name: ":path", Value: "/"}, {Name: "x-forwarded-for", Value: "203.0.113.9, 10.1.1.1, 10.0.0.5"}, {Name: "x-real-ip", Value: "6.6.6.6"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if ip, ok := res.SetHeader("x-real-ip"); !ok || ip != "203.0.113.9" {
		t.Errorf("x-real-ip = %q, %v; want 203.0.113.9", ip, ok)
	}
	res, err = client.Process(ctx, extproctest.Request{
		SourceAddress: "10.0.0.5:4321",
		Headers:       []extproctest.Header{{Name: ":path", Value: "/"}, {Name: "x-forwarded-for", Value: "198.51.100.7, 10.0.0.5"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Immediate == nil || res.Immediate.GetStatus().GetCode() != 403 {
		t.Errorf("blocklisted client: immediate response %v, want 403", res.Immediate)
	}

	adminURL := "http://" + logs.value("admin")
	body, code := get(t, adminURL+"/readyz")
	if code != http.StatusOK || !strings.Contains(body, "extproc") {
		t.Errorf("/readyz = %d %q, want 200 naming extproc", code, body)
	}
	body, code = get(t, adminURL+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	for _, want := range []string{`realipd_extproc_`, `decision="deny"`, `decision="allow"`, "go_goroutines"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	body, code = get(t, adminURL+"/config_dump")
	if code != http.StatusOK || !strings.Contains(body, "blocklist") {
		t.Errorf("/config_dump = %d, lacks the policy:\n%s", code, body)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve after cancel = %v\n%s", err, logs)
	}
}

func get(t *testing.T, url string) (string, int) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), resp.StatusCode
}

// TestServeRoleCannotStart: a listen address in use stops serve before
// anything runs, with exit 1 and one line naming the role, the key and the
// reason.
func TestServeRoleCannotStart(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	for _, key := range []string{"extproc", "xds", "admin"} {
		t.Run(key, func(t *testing.T) {
			listen := map[string]string{"extproc": "127.0.0.1:0", "xds": "127.0.0.1:0", "admin": "127.0.0.1:0"}
			listen[key] = addr
			cfg := writeFile(t, "serve.yaml", fmt.Sprintf("extproc: {listen: %q}\nxds: {listen: %q, extproc_address: 127.0.0.1:9001}\nadmin: {listen: %q}\n",
				listen["extproc"], listen["xds"], listen["admin"]))
			var out, errb bytes.Buffer
			err := run(t.Context(), []string{"serve", "--config", cfg}, &out, &errb)
			want := fmt.Sprintf("serve: the %s role cannot start: %s.listen %s: the address is already in use", key, key, addr)
			if exitCode(err) != 1 || err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("serve = exit %d, %v; want exit 1 and one line starting %q", exitCode(err), err, want)
			}
			if strings.Contains(errb.String(), "realipd running") {
				t.Errorf("roles ran before the failure:\n%s", errb.String())
			}
		})
	}
}

// TestServeWarnsAboutInterception: serve says at start when the rules
// `realipd iptables` would render from its file steer to a port no role
// listens on, and when they would be refused (xds and the native listener
// in different modes). The native listener never binds here (fallback
// never), so nothing needs root.
func TestServeWarnsAboutInterception(t *testing.T) {
	for _, tt := range []struct {
		name, config string
		want         []*regexp.Regexp
	}{
		{"no listener on the capture ports", "xds: {enabled: false}\norigdst: {enabled: true, fallback: never}\n", []*regexp.Regexp{
			regexp.MustCompile(`level=WARN msg="the interception rules steer outbound connections to a port no role listens on: they will be refused" port=15001 key=xds.outbound_port fix="add \\"0.0.0.0:15001\\" to origdst.listen"`),
			regexp.MustCompile(`level=WARN msg="the interception rules steer inbound connections to a port no role listens on: they will be refused" port=15006 key=xds.inbound_port`),
		}},
		{"two modes", "xds: {listen: 127.0.0.1:0, extproc_address: 127.0.0.1:9001}\norigdst: {enabled: true, mode: tproxy, fallback: never}\n", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := writeFile(t, "serve.yaml", "extproc: {listen: 127.0.0.1:0}\nadmin: {enabled: false}\n"+tt.config)
			cmd, logs, exited := startMain(t, "serve", "--config", cfg)
			for _, re := range tt.want {
				logs.wait(t, re, 0)
			}
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := <-exited; err != nil {
				t.Fatalf("serve: %v\n%s", err, logs)
			}
			if tt.want == nil && strings.Contains(logs.String(), "level=WARN") {
				t.Errorf("a warning with fallback never:\n%s", logs)
			}
		})
	}
	cfg := writeFile(t, "serve.yaml", "extproc: {listen: 127.0.0.1:0}\nadmin: {enabled: false}\nxds: {listen: 127.0.0.1:0, extproc_address: 127.0.0.1:9001}\norigdst: {enabled: true, mode: tproxy, fallback: never}\n")
	c, err := loadOrDefault(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.OrigDst.Fallback = "always" // as serve would see it, without binding
	logs := newLogTail()
	warnInterception(c, slog.New(slog.NewTextHandler(logs, nil)))
	if !strings.Contains(logs.String(), `level=WARN msg="the interception rules: realipd iptables refuses this configuration" error="config: origdst.mode: tproxy differs from xds.mode (redirect)`) {
		t.Errorf("two modes: no warning:\n%s", logs.String())
	}
}

// TestServeUnixSockets: serve makes its unix sockets for its own user
// (mode 0600), or for the group of the role's socket_group too (mode 0660,
// that group), whatever the umask, and ext_proc answers on its socket.
func TestServeUnixSockets(t *testing.T) {
	dir, err := os.MkdirTemp("", "rip") // short: a socket path has at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	extprocSock, xdsSock := filepath.Join(dir, "e.sock"), filepath.Join(dir, "x.sock")
	gid := os.Getgid() // a group of this process: no root needed to give a socket to it
	cfg := writeFile(t, "serve.yaml", fmt.Sprintf("extproc: {listen: 'unix://%s', socket_group: %d}\nxds: {listen: 'unix://%s'}\nadmin: {listen: 127.0.0.1:0}\n",
		extprocSock, gid, xdsSock))
	old := syscall.Umask(0)
	s := startServe(t, cfg, nil)
	syscall.Umask(old)
	for _, tt := range []struct {
		path  string
		mode  os.FileMode
		group int
	}{{extprocSock, 0o660, gid}, {xdsSock, 0o600, os.Getegid()}} {
		fi, err := os.Lstat(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != tt.mode || int(st.Gid) != tt.group {
			t.Errorf("%s: mode %v, group %d; want a socket with mode %v, group %d", tt.path, fi.Mode(), st.Gid, tt.mode, tt.group)
		}
	}
	if s.extproc != "unix://"+extprocSock {
		t.Errorf("ext_proc serves on %s, want unix://%s", s.extproc, extprocSock)
	}
	res, err := s.client.Process(t.Context(), extproctest.Request{SourceAddress: "203.0.113.7:1234"})
	if err != nil {
		t.Fatalf("ext_proc over the socket: %v", err)
	}
	if ip, _ := res.SetHeader("x-real-ip"); ip != "203.0.113.7" {
		t.Errorf("ext_proc over the socket: x-real-ip %q, want 203.0.113.7", ip)
	}
	s.stop()
	for _, p := range []string{extprocSock, xdsSock} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s after serve stopped: %v, want it removed", p, err)
		}
	}
}
