package host

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/realipd/realipd/internal/plugintest"
)

// bin holds the paths of the plugin binaries TestMain builds once for the
// package's tests.
var bin struct {
	denylist, geotag, testpolicy, badversion, hostbin, impostor string
}

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "realipd-host-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins, err := plugintest.Build(dir,
		"../../examples/plugins/denylist",
		"../../examples/plugins/geotag",
		"./testdata/testpolicy",
		"./testdata/badversion",
		"./testdata/hostbin",
		"./testdata/impostor",
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bin.denylist, bin.geotag, bin.testpolicy = bins["denylist"], bins["geotag"], bins["testpolicy"]
	bin.badversion, bin.hostbin, bin.impostor = bins["badversion"], bins["hostbin"], bins["impostor"]
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}

// sha returns the hex sha256 of the file at path.
func sha(t testing.TB, path string) string {
	t.Helper()
	sum, err := plugintest.SHA256(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// newHost starts a host for cfg, filling in the sha256 and a recording
// logger, and closes it at the end of the test.
func newHost(t testing.TB, cfg Config) (*Host, *recorder) {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "test"
	}
	if cfg.SHA256 == "" {
		cfg.SHA256 = sha(t, cfg.Path)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second // generous on a loaded CI machine; fault tests set their own
	}
	rec := newRecorder()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(rec)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		h.Close()
		if t.Failed() {
			for _, r := range rec.all() {
				t.Logf("log: %s %s %v", r.level, r.msg, r.attrs)
			}
		}
	})
	return h, rec
}

// waitState waits until cond holds for the host's state.
func waitState(t *testing.T, h *Host, what string, cond func(up bool, restarts int) bool) {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		up, restarts, changed := h.state()
		if cond(up, restarts) {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s (up=%v restarts=%d)", what, up, restarts)
		}
	}
}

// record is one log record kept by a recorder.
type record struct {
	level slog.Level
	msg   string
	attrs map[string]any
}

// recorder is a slog.Handler that keeps every record and lets tests wait
// for one.
type recorder struct {
	mu      *sync.Mutex
	recs    *[]record
	changed *chan struct{}
	attrs   []slog.Attr
}

func newRecorder() *recorder {
	ch := make(chan struct{})
	return &recorder{mu: new(sync.Mutex), recs: new([]record), changed: &ch}
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	m := map[string]any{}
	for _, a := range r.attrs {
		m[a.Key] = a.Value.Any()
	}
	rec.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.Any()
		return true
	})
	r.mu.Lock()
	*r.recs = append(*r.recs, record{level: rec.Level, msg: rec.Message, attrs: m})
	close(*r.changed)
	*r.changed = make(chan struct{})
	r.mu.Unlock()
	return nil
}

func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	c := *r
	c.attrs = append(slices.Clip(r.attrs), as...)
	return &c
}

func (r *recorder) WithGroup(string) slog.Handler { return r }

func (r *recorder) all() []record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(*r.recs)
}

// wait returns the first record (from index from on) matching match.
func (r *recorder) wait(t *testing.T, what string, from int, match func(record) bool) (record, int) {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		recs, ch := *r.recs, *r.changed
		r.mu.Unlock()
		for i := from; i < len(recs); i++ {
			if match(recs[i]) {
				return recs[i], i + 1
			}
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for log record: %s", what)
		}
	}
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(*r.recs)
}
