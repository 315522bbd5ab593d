package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/config"
)

// The tests of this file check that what is at the configuration path can
// neither replace the configuration in force with one nobody wrote (an
// empty or half-written file), nor crash or wedge serve (a named pipe, a
// device), and that a reload that changes who is trusted or what is denied
// says so at WARN.

// safetyHead and safetyTail make the file of these tests. The keys that
// need a restart come first, so that a file cut after them changes only
// keys that reload: the case where a half-written file would be applied.
const (
	safetyHead = `extproc:
  listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
xds:
  enabled: false
`
	safetyTail = `trust:
  strategy: rightmost_trusted_range
  trusted_cidrs: [10.0.0.0/8, 192.168.0.0/16]
policies:
  - {name: block, type: cidr, deny: [198.51.100.0/24]}
`
	// safetyOutcome is what a request gets with the whole file in force
	// (see serveRun.outcome): 192.168.1.1 is trusted, so the client is
	// 203.0.113.9. Without the trust section it would be 192.168.1.1.
	safetyOutcome = "203.0.113.9"
)

// watchOutcomes sends requests to s without pause until the returned
// function is called, which returns every answer that was not want.
func watchOutcomes(t *testing.T, s *serveRun, want string) (stop func() []string) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	var mu sync.Mutex
	var bad []string
	var sent atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			got, err := s.tryOutcome(ctx)
			if ctx.Err() != nil {
				return
			}
			sent.Add(1)
			if err != nil {
				got = "error: " + err.Error()
			}
			if got != want {
				mu.Lock()
				bad = append(bad, got)
				mu.Unlock()
			}
		}
	}()
	return func() []string {
		cancel()
		<-done
		if sent.Load() == 0 {
			t.Error("no request was sent while the file changed")
		}
		mu.Lock()
		defer mu.Unlock()
		return bad
	}
}

// sleepCtx waits d or until ctx ends, as config.Settler's default wait.
func sleepCtx(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestReloadNeverServesAnEmptyOrHalfWrittenFile writes the file of a
// running serve in place, as `: > file` and editors or tools that write
// in place do: truncated (and left empty a while), then written again in
// two parts with serve's first read falling between them. Requests sent
// all along must get the answer of the whole file: the defaults (no
// trusted proxy, no policy) and the half file must never serve.
func TestReloadNeverServesAnEmptyOrHalfWrittenFile(t *testing.T) {
	path := writeFile(t, "realipd.yaml", safetyHead+safetyTail)
	// between runs once, in the first wait between two reads of a
	// reload: it finishes the writer's work after serve's first read.
	var between atomic.Pointer[func()]
	s := startServeTimed(t, path, nil, reloadTiming{settler: config.Settler{
		Settle: testSettle,
		Wait: func(ctx context.Context, d time.Duration) error {
			if f := between.Swap(nil); f != nil {
				(*f)()
			}
			return sleepCtx(ctx, d)
		},
	}})
	if got := s.outcome(t); got != safetyOutcome {
		t.Fatalf("before any change the client is %q, want %s", got, safetyOutcome)
	}
	stop := watchOutcomes(t, s, safetyOutcome)

	// 1. Truncated, and left so: refused.
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	last := s.nextReload(t)
	if !strings.Contains(last, "reload rejected") || !strings.Contains(s.logs.String(), "the file is empty") {
		t.Errorf("the truncated file: %s, want it rejected as empty:\n%s", last, s.logs)
	}

	// 2. Written in place in two parts, serve reading the first alone:
	// the restart keys alone, a valid file that trusts no proxy and
	// denies nothing.
	rest := func() {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err == nil {
			_, err = f.WriteString(safetyTail)
			err = errors.Join(err, f.Close())
		}
		if err != nil {
			t.Error(err)
		}
	}
	between.Store(&rest)
	if err := os.WriteFile(path, []byte(safetyHead), 0o644); err != nil {
		t.Fatal(err)
	}
	// The reload that read the head, and the one the tail's write causes.
	for range 2 {
		if last := s.nextReload(t); !strings.Contains(last, `msg="configuration reloaded: unchanged"`) {
			t.Errorf("the file written in two parts: %s, want it read whole, unchanged:\n%s", last, s.logs)
		}
	}
	if between.Load() != nil {
		t.Error("serve never waited between two reads")
	}
	if bad := stop(); len(bad) > 0 {
		t.Errorf("while the file was rewritten, %d requests got another answer than %s: %q", len(bad), safetyOutcome, bad[:min(len(bad), 5)])
	}
	want := "realipd_config_reloads_total{result=\"applied\"} 2\nrealipd_config_reloads_total{result=\"rejected\"} 1"
	if got := s.metric(t, "realipd_config_reloads_total"); got != want {
		t.Errorf("metrics:\n%s\nwant:\n%s", got, want)
	}
}

// TestReloadWarnsOfTrustAndPolicyChanges: a reload that changes whom
// serve trusts or what it denies ends with a WARN line saying what
// changed; other changes end at INFO.
func TestReloadWarnsOfTrustAndPolicyChanges(t *testing.T) {
	file := func(trust, policies, extproc string) string {
		return fmt.Sprintf("extproc:\n  listen: 127.0.0.1:0\n%sadmin:\n  listen: 127.0.0.1:0\nxds:\n  enabled: false\ntrust:\n%spolicies:\n%s", extproc, trust, policies)
	}
	trust := "  strategy: rightmost_trusted_range\n  trusted_cidrs: [10.0.0.0/8, 192.168.0.0/16]\n"
	policies := "  - {name: block, type: cidr, deny: [198.51.100.0/24]}\n  - {name: extra, type: cidr, deny: [192.0.2.0/24]}\n"
	path := writeFile(t, "realipd.yaml", file(trust, policies, ""))
	s := startServe(t, path, nil)

	steps := []struct {
		name      string
		file      string
		level     string
		want, not []string
	}{
		{
			name: "ranges and policies",
			file: file("  strategy: rightmost_trusted_range\n  trusted_cidrs: [10.0.0.0/8, 172.16.0.0/12, 192.0.2.1]\n",
				"  - {name: block, type: cidr, deny: [198.51.100.0/24, 203.0.113.0/24]}\n  - {name: other, type: cidr, allow: [0.0.0.0/0]}\n", ""),
			level: "WARN",
			want: []string{`trust_changed=[trust.trusted_cidrs]`, "trusted_cidrs=3", "trusted_cidrs_added=2", "trusted_cidrs_removed=1",
				"policies_added=[other]", "policies_removed=[extra]", "policies_changed=[block]", "strategy=rightmost_trusted_range"},
			not: []string{"strategy_was"},
		},
		{
			name:  "the strategy",
			file:  file("  strategy: remote_addr\n", "  - {name: other, type: cidr, allow: [0.0.0.0/0]}\n  - {name: block, type: cidr, deny: [198.51.100.0/24, 203.0.113.0/24]}\n", ""),
			level: "WARN",
			want: []string{`trust_changed="[trust.strategy trust.trusted_cidrs]"`, "strategy=remote_addr", "strategy_was=rightmost_trusted_range",
				"trusted_cidrs_added=0", "trusted_cidrs_removed=3", `policies_order="[other block]"`},
			not: []string{"policies_added", "policies_removed", "policies_changed"},
		},
		{
			name:  "neither",
			file:  file("  strategy: remote_addr\n", "  - {name: other, type: cidr, allow: [0.0.0.0/0]}\n  - {name: block, type: cidr, deny: [198.51.100.0/24, 203.0.113.0/24]}\n", "  deny_status: 429\n"),
			level: "INFO",
			not:   []string{"trust_changed", "trusted_cidrs_added", "policies_"},
		},
	}
	for _, step := range steps {
		replaceFile(t, path, step.file)
		last := s.nextReload(t)
		if !strings.Contains(last, "level="+step.level+` msg="configuration reloaded"`) {
			t.Errorf("%s: the reload ended with %s, want it applied at %s", step.name, last, step.level)
		}
		for _, w := range step.want {
			if !strings.Contains(last, " "+w) {
				t.Errorf("%s: %s lacks %s", step.name, last, w)
			}
		}
		for _, n := range step.not {
			if strings.Contains(last, n) {
				t.Errorf("%s: %s has %s", step.name, last, n)
			}
		}
	}
}

// specialFiles makes, in a new directory, what a configuration path must
// not be, by name: a named pipe, a symlink to /dev/zero, a directory.
// When the test ends it opens the pipe for writing and closes it, so that
// a reader stuck on it (serve before this was refused) is let go.
func specialFiles(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"named pipe":           filepath.Join(dir, "fifo.yaml"),
		"symlink to /dev/zero": filepath.Join(dir, "zero.yaml"),
		"directory":            filepath.Join(dir, "dir.yaml"),
	}
	if err := syscall.Mkfifo(files["named pipe"], 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if f, err := os.OpenFile(files["named pipe"], os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	})
	if err := os.Symlink("/dev/zero", files["symlink to /dev/zero"]); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(files["directory"], 0o755); err != nil {
		t.Fatal(err)
	}
	return files
}

// specialFileErrors is what each of specialFiles is refused with.
var specialFileErrors = map[string]string{
	"named pipe":           "a named pipe (FIFO), not a regular file",
	"symlink to /dev/zero": "a character device, not a regular file",
	"directory":            "a directory, not a regular file",
}

// TestCommandsRefuseWhatIsNotAConfigFile: serve and validate given a
// named pipe, a device or a directory as --config refuse it at once, with
// exit 1, instead of waiting for a writer for ever or reading without
// end; an empty file is refused too.
func TestCommandsRefuseWhatIsNotAConfigFile(t *testing.T) {
	files := specialFiles(t)
	files["empty file"] = writeFile(t, "empty.yaml", "\n# nothing\n")
	wantErr := map[string]string{"empty file": "the file is empty"}
	for name, msg := range specialFileErrors {
		wantErr[name] = msg
	}
	for _, cmd := range []string{"serve", "validate"} {
		for name, path := range files {
			t.Run(cmd+" "+name, func(t *testing.T) {
				type result struct {
					stderr string
					code   int
				}
				done := make(chan result, 1)
				go func() {
					_, stderr, code := runCmd(t, cmd, "--config", path)
					done <- result{stderr, code}
				}()
				select {
				case r := <-done:
					if r.code != 1 || !strings.Contains(r.stderr, path+": "+wantErr[name]) {
						t.Errorf("exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, wantErr[name])
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("realipd %s --config %s still running after 10s", cmd, path)
				}
			})
		}
	}
}

// TestReloadRefusesWhatIsNotAConfigFile swaps the path of a running
// serve's file for a named pipe and for a symlink to /dev/zero: each
// reload is rejected at once and the last good configuration keeps
// serving; a symlink to a regular file (what a ConfigMap's is) is
// reloaded; and serve still stops when asked.
func TestReloadRefusesWhatIsNotAConfigFile(t *testing.T) {
	path := writeFile(t, "realipd.yaml", safetyHead+safetyTail)
	dir := filepath.Dir(path)
	s := startServe(t, path, nil)
	files := specialFiles(t)
	for _, name := range []string{"named pipe", "symlink to /dev/zero"} {
		if err := os.Rename(files[name], path); err != nil {
			t.Fatal(err)
		}
		last := s.nextReload(t)
		if !strings.Contains(last, "reload rejected") || !strings.Contains(s.logs.String(), specialFileErrors[name]) {
			t.Errorf("%s: %s, want it rejected with %q:\n%s", name, last, specialFileErrors[name], s.logs)
		}
		if got := s.outcome(t); got != safetyOutcome {
			t.Errorf("%s: request outcome %q, want %s still", name, got, safetyOutcome)
		}
	}
	// A symlink to a regular file, swapped in as a ConfigMap's is.
	target := filepath.Join(dir, "data-2", "realipd.yaml")
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target, []byte(strings.Replace(safetyHead+safetyTail, "192.168.0.0/16", "192.168.1.1", 1)+"  - {name: deny-it, type: cidr, deny: [203.0.113.9]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, ".link")
	if err := os.Symlink("data-2/realipd.yaml", link); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(link, path); err != nil {
		t.Fatal(err)
	}
	if last := s.nextReload(t); !strings.Contains(last, `msg="configuration reloaded"`) {
		t.Errorf("the symlink to a regular file: %s, want it applied:\n%s", last, s.logs)
	}
	if got := s.outcome(t); got != "deny Forbidden" {
		t.Errorf("after the symlink's file was applied the request got %q, want it denied", got)
	}
	s.stop()
}

// TestServeStopsDuringAReload: a reload that does not finish (here held
// in the wait between its two reads, as a read of a stalled file system
// would hold it) does not keep serve from stopping.
func TestServeStopsDuringAReload(t *testing.T) {
	path := writeFile(t, "realipd.yaml", safetyHead+safetyTail)
	waiting := make(chan struct{})
	var once sync.Once
	s := startServeTimed(t, path, nil, reloadTiming{settler: config.Settler{
		Wait: func(ctx context.Context, d time.Duration) error {
			once.Do(func() { close(waiting) })
			<-ctx.Done() // for ever, but for serve stopping
			return ctx.Err()
		},
	}})
	replaceFile(t, path, safetyHead+safetyTail+"  - {name: more, type: cidr, deny: [192.0.2.0/24]}\n")
	select {
	case <-waiting:
	case <-time.After(10 * time.Second):
		t.Fatalf("no reload started:\n%s", s.logs)
	}
	stopped := make(chan struct{})
	go func() { s.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(20 * time.Second):
		t.Fatalf("serve did not stop within 20s of its context ending with a reload under way:\n%s", s.logs)
	}
	logs := s.logs.String()
	for _, want := range []string{`msg="configuration reload abandoned: serve is shutting down"`, `msg="realipd stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
}
