package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/goleak"

	"github.com/realipd/realipd/internal/admin"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// running is a Server serving on a real loopback listener.
type running struct {
	srv    *admin.Server
	base   string // http://127.0.0.1:port
	client *http.Client
	cancel context.CancelFunc
	done   chan error // Serve's result
}

// start serves s on 127.0.0.1:0 and stops it (requiring a clean shutdown) when
// the test ends, unless the test stops it itself.
func start(t *testing.T, s *admin.Server) *running {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	r := &running{
		srv:    s,
		base:   "http://" + ln.Addr().String(),
		client: &http.Client{Transport: &http.Transport{}},
		cancel: cancel,
		done:   make(chan error, 1),
	}
	go func() { r.done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		r.client.CloseIdleConnections()
		cancel()
		if err, ok := <-r.done; ok && err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return r
}

func newServer(t *testing.T, opts admin.Options) *admin.Server {
	t.Helper()
	s, err := admin.New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

func (r *running) get(t *testing.T, path string) (int, string, http.Header) {
	t.Helper()
	return r.do(t, http.MethodGet, path)
}

func (r *running) do(t *testing.T, method, path string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, r.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, string(body), resp.Header
}

func TestHealthz(t *testing.T) {
	r := start(t, newServer(t, admin.Options{}))
	code, body, _ := r.get(t, "/healthz")
	if code != http.StatusOK || body != "ok\n" {
		t.Errorf("GET /healthz = %d %q, want 200 \"ok\\n\"", code, body)
	}
	if code, _, _ := r.do(t, http.MethodPost, "/healthz"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz = %d, want 405", code)
	}
	if code, _, _ := r.get(t, "/no-such-endpoint"); code != http.StatusNotFound {
		t.Errorf("GET /no-such-endpoint = %d, want 404", code)
	}
}

func TestReadyz(t *testing.T) {
	errNotYet := errors.New("no snapshot yet")
	pass := func(context.Context) error { return nil }
	fail := func(context.Context) error { return errNotYet }
	hang := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	crash := func(context.Context) error { panic("boom") }

	type check struct {
		name string
		fn   admin.ReadinessCheck
	}
	tests := []struct {
		name     string
		checks   []check
		wantCode int
		wantBody []string
	}{
		{"no checks", nil, http.StatusOK, []string{"ready\n"}},
		{"all pass", []check{{"extproc", pass}, {"xds", pass}}, http.StatusOK, []string{"ok extproc\n", "ok xds\n", "ready\n"}},
		{"one fails", []check{{"extproc", pass}, {"xds", fail}}, http.StatusServiceUnavailable,
			[]string{"ok extproc\n", "fail xds: no snapshot yet\n", "not ready\n"}},
		{"all fail", []check{{"extproc", fail}, {"xds", fail}}, http.StatusServiceUnavailable,
			[]string{"fail extproc: no snapshot yet\n", "fail xds: no snapshot yet\n", "not ready\n"}},
		{"check overruns the timeout", []check{{"extproc", pass}, {"slow", hang}}, http.StatusServiceUnavailable,
			[]string{"ok extproc\n", "fail slow: check did not answer in time: context deadline exceeded\n"}},
		{"check panics", []check{{"extproc", crash}}, http.StatusServiceUnavailable,
			[]string{"fail extproc: check panicked: boom\n"}},
		{"later check replaces earlier of the same name", []check{{"extproc", fail}, {"extproc", pass}}, http.StatusOK,
			[]string{"ok extproc\n", "ready\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, admin.Options{ReadinessTimeout: 100 * time.Millisecond})
			for _, c := range tt.checks {
				s.AddReadinessCheck(c.name, c.fn)
			}
			r := start(t, s)
			code, body, hdr := r.get(t, "/readyz")
			if code != tt.wantCode {
				t.Errorf("GET /readyz = %d, want %d; body:\n%s", code, tt.wantCode, body)
			}
			for _, w := range tt.wantBody {
				if !strings.Contains(body, w) {
					t.Errorf("body %q does not contain %q", body, w)
				}
			}
			if got := hdr.Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", got)
			}
		})
	}
}

// TestReadyzFollowsChecks registers and flips checks while the server runs, as
// roles do when they start and drain.
func TestReadyzFollowsChecks(t *testing.T) {
	s := newServer(t, admin.Options{})
	r := start(t, s)
	var mu sync.Mutex
	var state error = errors.New("starting")
	s.AddReadinessCheck("extproc", func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		return state
	})
	set := func(err error) {
		mu.Lock()
		state = err
		mu.Unlock()
	}
	for _, step := range []struct {
		state error
		want  int
	}{
		{errors.New("starting"), http.StatusServiceUnavailable},
		{nil, http.StatusOK},
		{errors.New("draining"), http.StatusServiceUnavailable},
	} {
		set(step.state)
		if code, body, _ := r.get(t, "/readyz"); code != step.want {
			t.Errorf("state %v: GET /readyz = %d, want %d; body:\n%s", step.state, code, step.want, body)
		}
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "realipd_test_requests_total",
		Help: "Test counter.",
	}, []string{"decision"})
	reg.MustRegister(requests)
	requests.WithLabelValues("allow").Add(3)

	r := start(t, newServer(t, admin.Options{Registry: reg}))
	code, body, hdr := r.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d, body:\n%s", code, body)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type = %q, want the Prometheus text format", ct)
	}
	want := []string{
		`realipd_test_requests_total{decision="allow"} 3`,
		"go_goroutines ",
		"promhttp_metric_handler_requests_total",
	}
	if runtime.GOOS == "linux" {
		want = append(want, "process_cpu_seconds_total ", "process_open_fds ")
	}
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("/metrics lacks %q", w)
		}
	}
}

// TestNewKeepsRegisteredCollectors: a registry that already holds the Go and
// process collectors (or is handed to New twice) is accepted.
func TestNewKeepsRegisteredCollectors(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	newServer(t, admin.Options{Registry: reg})
	r := start(t, newServer(t, admin.Options{Registry: reg}))
	if code, body, _ := r.get(t, "/metrics"); code != http.StatusOK || !strings.Contains(body, "go_goroutines ") {
		t.Errorf("GET /metrics = %d, go_goroutines present: %v", code, strings.Contains(body, "go_goroutines "))
	}
}

func TestConfigDump(t *testing.T) {
	type cfg struct {
		Listen string `json:"listen"`
		Hops   int    `json:"trusted_hops"`
	}
	tests := []struct {
		name     string
		dump     func() any
		wantCode int
		want     *cfg
	}{
		{"effective config", func() any { return cfg{Listen: "127.0.0.1:9001", Hops: 2} }, http.StatusOK, &cfg{"127.0.0.1:9001", 2}},
		{"not configured", nil, http.StatusNotFound, nil},
		{"unencodable", func() any { return map[string]any{"bad": make(chan int)} }, http.StatusInternalServerError, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := start(t, newServer(t, admin.Options{ConfigDump: tt.dump}))
			code, body, hdr := r.get(t, "/config_dump")
			if code != tt.wantCode {
				t.Fatalf("GET /config_dump = %d, want %d; body:\n%s", code, tt.wantCode, body)
			}
			if tt.want == nil {
				return
			}
			if ct := hdr.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			var got cfg
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("body is not JSON: %v\n%s", err, body)
			}
			if got != *tt.want {
				t.Errorf("config_dump = %+v, want %+v", got, *tt.want)
			}
		})
	}
}

func TestPprof(t *testing.T) {
	r := start(t, newServer(t, admin.Options{}))
	tests := []struct {
		path string
		want string
	}{
		{"/debug/pprof/", "goroutine"},
		{"/debug/pprof/goroutine?debug=1", "goroutine profile:"},
		{"/debug/pprof/cmdline", "admin.test"},
	}
	for _, tt := range tests {
		code, body, _ := r.get(t, tt.path)
		if code != http.StatusOK || !strings.Contains(body, tt.want) {
			t.Errorf("GET %s = %d, body contains %q: %v", tt.path, code, tt.want, strings.Contains(body, tt.want))
		}
	}
}

func TestIndexAndHandle(t *testing.T) {
	s := newServer(t, admin.Options{})
	s.Handle("GET /debug/xds", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, `{"nodes":{}}`)
	}))
	r := start(t, s)
	if code, body, _ := r.get(t, "/debug/xds"); code != http.StatusOK || body != `{"nodes":{}}` {
		t.Errorf("GET /debug/xds = %d %q", code, body)
	}
	code, body, _ := r.get(t, "/")
	if code != http.StatusOK {
		t.Fatalf("GET / = %d", code)
	}
	for _, p := range []string{"/metrics", "/healthz", "/readyz", "/debug/pprof/", "/debug/xds"} {
		if !strings.Contains(body, p+"\n") {
			t.Errorf("index %q does not list %s", body, p)
		}
	}
	if strings.Contains(body, "/config_dump") {
		t.Errorf("index %q lists /config_dump, which is not served without ConfigDump", body)
	}
}

// TestGracefulShutdown: cancelling the context stops new connections, lets the
// request in flight finish, and Serve returns nil.
func TestGracefulShutdown(t *testing.T) {
	s := newServer(t, admin.Options{ShutdownTimeout: time.Minute})
	entered, release := make(chan struct{}), make(chan struct{})
	s.Handle("GET /slow", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "finished")
	}))
	r := start(t, s)

	type result struct {
		code int
		body string
		err  error
	}
	resc := make(chan result, 1)
	go func() {
		resp, err := r.client.Get(r.base + "/slow")
		if err != nil {
			resc <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		resc <- result{resp.StatusCode, string(b), err}
	}()
	<-entered
	r.cancel()

	// The listener closes at once; the OS gives no event for that, so poll.
	addr := strings.TrimPrefix(r.base, "http://")
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepts connections 10s after shutdown began")
		}
		runtime.Gosched()
	}
	select {
	case err := <-r.done:
		t.Fatalf("Serve returned (%v) while a request was in flight", err)
	default:
	}

	close(release)
	res := <-resc
	if res.err != nil || res.code != http.StatusOK || res.body != "finished" {
		t.Errorf("request in flight: %d %q %v, want 200 \"finished\"", res.code, res.body, res.err)
	}
	if err := <-r.done; err != nil {
		t.Errorf("Serve = %v, want nil after a clean shutdown", err)
	}
	close(r.done)
}

// TestShutdownTimeout: a request that outlives the shutdown timeout has its
// connection closed and Serve reports the deadline.
func TestShutdownTimeout(t *testing.T) {
	s := newServer(t, admin.Options{ShutdownTimeout: 50 * time.Millisecond})
	entered, release := make(chan struct{}), make(chan struct{})
	s.Handle("GET /stuck", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	r := start(t, s)
	errc := make(chan error, 1)
	go func() {
		resp, err := r.client.Get(r.base + "/stuck")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		errc <- err
	}()
	<-entered
	r.cancel()
	err := <-r.done
	close(r.done)
	close(release)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Serve = %v, want an error wrapping context.DeadlineExceeded", err)
	}
	if err := <-errc; err == nil {
		t.Error("the stuck request succeeded, want its connection closed")
	}
}

// TestRun listens on an address, reports it, and stops on cancel.
func TestRun(t *testing.T) {
	s := newServer(t, admin.Options{})
	if s.Addr() != nil {
		t.Errorf("Addr before Run = %v, want nil", s.Addr())
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, "127.0.0.1:0") }()
	select {
	case <-s.Listening():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + s.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz = %d", resp.StatusCode)
	}
	client.CloseIdleConnections()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
}

func TestRunListenErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, addr := range []string{"127.0.0.1:99999", "not an address", busy.Addr().String()} {
		err := newServer(t, admin.Options{}).Run(t.Context(), addr)
		if err == nil || !strings.HasPrefix(err.Error(), "admin: listen on") {
			t.Errorf("Run(%q) = %v, want a listen error", addr, err)
		}
	}
}
