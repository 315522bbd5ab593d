package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/internal/config"
)

// logTail collects log output, safe for concurrent use, and lets a test
// wait for a line.
type logTail struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func newLogTail() *logTail { return &logTail{changed: make(chan struct{})} }

func (l *logTail) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.buf.Write(p)
	close(l.changed)
	l.changed = make(chan struct{})
	return n, err
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// wait waits, at most 10 s, until the log has more than n lines matching re
// and returns the (n+1)-th one's submatches.
func (l *logTail) wait(t *testing.T, re *regexp.Regexp, n int) []string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		l.mu.Lock()
		ms := re.FindAllStringSubmatch(l.buf.String(), -1)
		changed := l.changed
		l.mu.Unlock()
		if len(ms) > n {
			return ms[n]
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no log line matching %s (#%d) within 10s:\n%s", re, n+1, l)
		}
	}
}

var (
	reExtProcAddr = regexp.MustCompile(`msg="extproc: serving".* address=(\S+)`)
	reAdminAddr   = regexp.MustCompile(`msg="admin listening".* addr=(\S+)`)
	reRunning     = regexp.MustCompile(`msg="realipd running"`)
	// reReloadDone matches the one line that ends every reload.
	reReloadDone = regexp.MustCompile(`(?m)^.*msg="configuration (reloaded|reload rejected)[^"]*".*$`)
)

// serveRun is a serve running in-process.
type serveRun struct {
	logs    *logTail
	extproc string // ext_proc address
	admin   string // admin base URL
	client  *extproctest.Client
	reloads int // reloads finished so far
	// stop ends serve and waits for it to return; the test's cleanup
	// calls it too.
	stop func()
}

// testSettle is the settle time of the reload tests' serve: the two reads
// of a changed file are this far apart (serve's default is
// config.DefaultSettle).
const testSettle = 20 * time.Millisecond

// startServe runs serve --config path in-process with hup as its SIGHUP
// channel until the test ends, reading a changed file after testSettle.
func startServe(t *testing.T, path string, hup <-chan os.Signal) *serveRun {
	t.Helper()
	return startServeTimed(t, path, hup, reloadTiming{settler: config.Settler{Settle: testSettle}})
}

// startServeTimed is startServe with the reload timing given.
func startServeTimed(t *testing.T, path string, hup <-chan os.Signal, timing reloadTiming) *serveRun {
	t.Helper()
	ctx, cancel := context.WithCancel(withReloadTiming(withReloadSignal(t.Context(), hup), timing))
	logs := newLogTail()
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", path}, io.Discard, logs) }()
	stop := sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve after cancel = %v\n%s", err, logs)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("serve still running 30s after its context ended:\n%s", logs)
		}
	})
	t.Cleanup(stop)
	ready := make(chan struct{})
	go func() {
		defer close(ready)
		logs.wait(t, reRunning, 0)
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("serve returned before running: %v\n%s", err, logs)
	}
	s := &serveRun{
		stop:    stop,
		logs:    logs,
		extproc: logs.wait(t, reExtProcAddr, 0)[1],
		admin:   "http://" + logs.wait(t, reAdminAddr, 0)[1],
	}
	client, err := extproctest.Dial(s.extproc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	s.client = client
	return s
}

// nextReload waits for the next reload to finish and returns its last line.
func (s *serveRun) nextReload(t *testing.T) string {
	t.Helper()
	m := s.logs.wait(t, reReloadDone, s.reloads)
	s.reloads++
	return m[0]
}

// replaceFile replaces path's contents atomically, as editors and
// configuration tools do, so that serve never reads half a file.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// outcome is what one request got: the x-real-ip set, or the deny status.
func (s *serveRun) outcome(t *testing.T) string {
	t.Helper()
	got, err := s.tryOutcome(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// tryOutcome is outcome for any goroutine.
func (s *serveRun) tryOutcome(ctx context.Context) (string, error) {
	// The peer 10.0.0.5 (appended by Envoy) got the request from
	// 192.168.1.1, which forwarded it for 203.0.113.9.
	res, err := s.client.Process(ctx, extproctest.Request{
		SourceAddress: "10.0.0.5:4321",
		Headers:       []extproctest.Header{{Name: ":path", Value: "/"}, {Name: "x-forwarded-for", Value: "203.0.113.9, 192.168.1.1, 10.0.0.5"}},
	})
	if err != nil {
		return "", err
	}
	if res.Immediate != nil {
		return "deny " + res.Immediate.GetStatus().GetCode().String(), nil
	}
	ip, _ := res.SetHeader("x-real-ip")
	return ip, nil
}

// metric returns the /metrics lines that start with name.
func (s *serveRun) metric(t *testing.T, name string) string {
	t.Helper()
	body, code := get(t, s.admin+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	var lines []string
	for line := range strings.Lines(body) {
		if strings.HasPrefix(line, name) {
			lines = append(lines, strings.TrimSpace(line))
		}
	}
	return strings.Join(lines, "\n")
}

// reloadConfig is the base configuration of the reload tests; %s is the
// trust section's trusted_cidrs and what follows the file's last section.
const reloadConfig = `
trust:
  strategy: rightmost_trusted_range
  trusted_cidrs: [%s]
extproc:
  listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
xds:
  enabled: false
%s`

func reloadFile(cidrs, rest string) string {
	return strings.Replace(strings.Replace(reloadConfig, "%s", cidrs, 1), "%s", rest, 1)
}

// TestReload edits the file of a running serve, step by step: each valid
// edit is applied to the requests that follow, each invalid one is
// rejected with its key path while the last good configuration keeps
// serving, and the reload metrics and /config_dump follow.
func TestReload(t *testing.T) {
	path := writeFile(t, "realipd.yaml", reloadFile("10.0.0.0/8", ""))
	s := startServe(t, path, nil)
	if got := s.outcome(t); got != "192.168.1.1" {
		t.Fatalf("before any reload the client is %q, want 192.168.1.1", got)
	}

	steps := []struct {
		name     string
		file     string
		applied  bool
		wantLogs []string // in the reload's log lines
		want     string   // outcome of a request afterwards
		dump     string   // in /config_dump afterwards
	}{
		{
			name:    "trust one more proxy range",
			file:    reloadFile("10.0.0.0/8, 192.168.0.0/16", ""),
			applied: true,
			want:    "203.0.113.9",
			dump:    "192.168.0.0/16",
		},
		{
			name:     "invalid CIDR and unknown key",
			file:     reloadFile("10.0.0.0/8, 192.168.0.0/33", "bogus: 1\n"),
			wantLogs: []string{`level=ERROR msg="configuration rejected"`, `key=trust.trusted_cidrs[1] reason=`, `key=bogus reason="unknown key`},
			want:     "203.0.113.9",
			dump:     "192.168.0.0/16",
		},
		{
			name:     "not YAML",
			file:     "trust: [\n",
			wantLogs: []string{`level=ERROR msg="configuration rejected"`, `parse YAML`},
			want:     "203.0.113.9",
			dump:     "192.168.0.0/16",
		},
		{
			name:     "listen address changed",
			file:     strings.Replace(reloadFile("10.0.0.0/8", ""), "extproc:\n  listen: 127.0.0.1:0", "extproc:\n  listen: 127.0.0.1:1", 1),
			wantLogs: []string{`key=extproc.listen reason="changing it needs a restart"`},
			want:     "203.0.113.9",
			dump:     "192.168.0.0/16",
		},
		{
			name: "admin and xds sections changed",
			file: strings.NewReplacer("xds:\n  enabled: false", "xds:\n  listen: 127.0.0.1:0\n  extproc_address: 127.0.0.1:9001\n  http_ports: [80]",
				"admin:\n  listen: 127.0.0.1:0", "admin:\n  listen: 127.0.0.1:1").Replace(reloadFile("10.0.0.0/8", "")),
			wantLogs: []string{
				`key=xds.enabled reason="changing it needs a restart"`, `key=xds.listen reason=`,
				`key=admin.listen reason="changing it needs a restart"`,
			},
			want: "203.0.113.9",
			dump: "192.168.0.0/16",
		},
		{
			name:     "plugin binary missing",
			file:     reloadFile("10.0.0.0/8", "policies:\n  - {name: p, type: plugin, path: ./absent, sha256: \""+strings.Repeat("0", 64)+"\"}\n"),
			wantLogs: []string{`level=ERROR msg="configuration rejected"`, `policies[0]`},
			want:     "203.0.113.9",
			dump:     "192.168.0.0/16",
		},
		{
			name:    "a policy added, trust back to 10/8",
			file:    reloadFile("10.0.0.0/8", "policies:\n  - {name: block, type: cidr, deny: [192.168.1.0/24]}\n"),
			applied: true,
			want:    "deny Forbidden",
			dump:    `"name": "block"`,
		},
		{
			name:    "deny status changed",
			file:    strings.Replace(reloadFile("10.0.0.0/8", "policies:\n  - {name: block, type: cidr, deny: [192.168.1.0/24]}\n"), "listen: 127.0.0.1:0\nadmin", "listen: 127.0.0.1:0\n  deny_status: 429\nadmin", 1),
			applied: true,
			want:    "deny TooManyRequests",
			dump:    `"deny_status": 429`,
		},
	}
	applied, rejected := 0, 0
	for _, step := range steps {
		before := len(s.logs.String())
		replaceFile(t, path, step.file)
		last := s.nextReload(t)
		logs := s.logs.String()[before:]
		if step.applied {
			applied++
			if !strings.Contains(last, `msg="configuration reloaded"`) {
				t.Errorf("%s: reload ended with %s, want it applied:\n%s", step.name, last, logs)
			}
		} else {
			rejected++
			if !strings.Contains(last, `level=ERROR msg="configuration reload rejected; the last good configuration keeps serving"`) {
				t.Errorf("%s: reload ended with %s, want it rejected:\n%s", step.name, last, logs)
			}
		}
		for _, want := range step.wantLogs {
			if !strings.Contains(logs, want) {
				t.Errorf("%s: reload logs lack %q:\n%s", step.name, want, logs)
			}
		}
		if got := s.outcome(t); got != step.want {
			t.Errorf("%s: request outcome %q, want %q", step.name, got, step.want)
		}
		if body, _ := get(t, s.admin+"/config_dump"); !strings.Contains(body, step.dump) {
			t.Errorf("%s: /config_dump lacks %q:\n%s", step.name, step.dump, body)
		}
	}
	got := s.metric(t, "realipd_config_reloads_total")
	want := "realipd_config_reloads_total{result=\"applied\"} " + strconv.Itoa(applied) + "\nrealipd_config_reloads_total{result=\"rejected\"} " + strconv.Itoa(rejected)
	if got != want {
		t.Errorf("metrics:\n%s\nwant:\n%s", got, want)
	}
	if got := s.metric(t, "realipd_config_last_reload_successful "); got != "realipd_config_last_reload_successful 1" {
		t.Errorf("metrics: %q, want the last reload successful", got)
	}
	if got := s.metric(t, "realipd_config_last_reload_success_timestamp_seconds "); !regexp.MustCompile(`^\S+ [0-9.e+]+$`).MatchString(got) || strings.HasSuffix(got, " 0") {
		t.Errorf("metrics: %q, want a timestamp", got)
	}
}

// TestReloadOnSIGHUP delivers SIGHUP the way main does: the file is
// reloaded even though it did not change.
func TestReloadOnSIGHUP(t *testing.T) {
	path := writeFile(t, "realipd.yaml", reloadFile("10.0.0.0/8", ""))
	hup := make(chan os.Signal, 1)
	s := startServe(t, path, hup)
	hup <- syscall.SIGHUP
	last := s.nextReload(t)
	if !strings.Contains(last, `msg="configuration reloaded: unchanged"`) || !strings.Contains(last, "trigger=SIGHUP") {
		t.Errorf("after SIGHUP: %s, want an unchanged reload triggered by SIGHUP", last)
	}
	if got := s.metric(t, `realipd_config_reloads_total{result="applied"}`); got != `realipd_config_reloads_total{result="applied"} 1` {
		t.Errorf("metrics: %q, want 1 applied reload", got)
	}
}

// TestServeReloadsOnRealSIGHUP sends a real SIGHUP to the real process: it
// reloads and keeps running.
func TestServeReloadsOnRealSIGHUP(t *testing.T) {
	cmd, logs, exited := startMain(t, "serve", "--config", writeFile(t, "serve.yaml", ephemeralConfig))
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	logs.wait(t, regexp.MustCompile(`msg="configuration reloaded: unchanged".* trigger=SIGHUP`), 0)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err != nil {
		t.Fatalf("realipd serve after SIGHUP and SIGTERM: %v\n%s", err, logs)
	}
}

// TestIgnoreReloads: serve with no file has nothing to reload; a SIGHUP is
// logged and nothing else happens.
func TestIgnoreReloads(t *testing.T) {
	hup := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(t.Context())
	logs := newLogTail()
	wait := ignoreReloads(ctx, slog.New(slog.NewTextHandler(logs, nil)), hup)
	hup <- syscall.SIGHUP
	logs.wait(t, regexp.MustCompile(`level=WARN msg="SIGHUP ignored`), 0)
	cancel()
	wait()
}
