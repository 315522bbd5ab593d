package config

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startWatch watches path with the given debounce and returns the channel
// of reported changes and the channel closed when watching stopped.
func startWatch(t *testing.T, ctx context.Context, path string, debounce time.Duration) (<-chan Change, <-chan struct{}) {
	t.Helper()
	changes := make(chan Change, 16)
	stopped, err := Watch(ctx, path, WatchOptions{Debounce: debounce}, func(c Change) { changes <- c })
	if err != nil {
		t.Fatalf("Watch(%s) = %v", path, err)
	}
	return changes, stopped
}

// nextChange waits for the next change, at most 10 s.
func nextChange(t *testing.T, changes <-chan Change) Change {
	t.Helper()
	select {
	case c := <-changes:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no change reported within 10s")
		return Change{}
	}
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// configMapDir lays out dir like a Kubernetes ConfigMap volume holding
// realipd.yaml: realipd.yaml -> ..data/realipd.yaml, ..data -> ..<version>.
func configMapDir(t *testing.T, dir, version, content string) string {
	t.Helper()
	if err := os.Mkdir(filepath.Join(dir, version), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, version, "realipd.yaml"), content)
	mustSymlink(t, version, filepath.Join(dir, "..data"))
	mustSymlink(t, filepath.Join("..data", "realipd.yaml"), filepath.Join(dir, "realipd.yaml"))
	return filepath.Join(dir, "realipd.yaml")
}

// swapConfigMap updates a ConfigMap volume the way the kubelet does: a new
// version directory, a temporary symlink renamed over ..data, the old
// version removed.
func swapConfigMap(t *testing.T, dir, old, version, content string) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(dir, version), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, version, "realipd.yaml"), content)
	mustSymlink(t, version, filepath.Join(dir, "..data_tmp"))
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
		t.Fatal(err)
	}
}

func TestWatchReportsChanges(t *testing.T) {
	tests := []struct {
		name string
		// setup creates the watched file in dir and returns its path.
		setup func(t *testing.T, dir string) string
		// change changes the watched file's contents.
		change func(t *testing.T, dir, path string)
	}{
		{
			name:  "write in place",
			setup: plainFile,
			change: func(t *testing.T, _, path string) {
				mustWrite(t, path, "trust: {}\n")
			},
		},
		{
			name:  "rename over the file",
			setup: plainFile,
			change: func(t *testing.T, dir, path string) {
				tmp := filepath.Join(dir, ".realipd.yaml.swp")
				mustWrite(t, tmp, "trust: {}\n")
				if err := os.Rename(tmp, path); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name:  "removed and created again",
			setup: plainFile,
			change: func(t *testing.T, _, path string) {
				if err := os.Remove(path); err != nil {
					t.Fatal(err)
				}
				mustWrite(t, path, "trust: {}\n")
			},
		},
		{
			name: "ConfigMap symlink swap",
			setup: func(t *testing.T, dir string) string {
				return configMapDir(t, dir, "..2026_11_29_17_00_00.1", "extproc: {}\n")
			},
			change: func(t *testing.T, dir, _ string) {
				swapConfigMap(t, dir, "..2026_11_29_17_00_00.1", "..2026_11_29_17_05_00.2", "trust: {}\n")
			},
		},
		{
			name: "symlink target written in place",
			setup: func(t *testing.T, dir string) string {
				target := filepath.Join(t.TempDir(), "real.yaml")
				mustWrite(t, target, "extproc: {}\n")
				mustSymlink(t, target, filepath.Join(dir, "realipd.yaml"))
				return filepath.Join(dir, "realipd.yaml")
			},
			change: func(t *testing.T, _, path string) {
				target, err := filepath.EvalSymlinks(path)
				if err != nil {
					t.Fatal(err)
				}
				mustWrite(t, target, "trust: {}\n")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := tt.setup(t, dir)
			ctx, cancel := context.WithCancel(t.Context())
			changes, stopped := startWatch(t, ctx, path, 20*time.Millisecond)

			// Unrelated files in the same directory, before the change:
			// the events are delivered in order, so had they counted, they
			// would be in the first change reported.
			mustWrite(t, filepath.Join(dir, "unrelated.txt"), "x")
			if err := os.Mkdir(filepath.Join(dir, "unrelated.d"), 0o755); err != nil {
				t.Fatal(err)
			}
			tt.change(t, dir, path)

			c := nextChange(t, changes)
			if c.Path != path {
				t.Errorf("Change.Path = %q, want %q", c.Path, path)
			}
			if len(c.Events) == 0 {
				t.Error("Change.Events is empty")
			}
			for _, ev := range c.Events {
				if strings.Contains(ev, "unrelated") {
					t.Errorf("an unrelated file was reported: %q in %q", ev, c.Events)
				}
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != "trust: {}\n" {
				t.Errorf("after the change the file reads %q, %v", got, err)
			}

			cancel()
			<-stopped
		})
	}
}

func plainFile(t *testing.T, dir string) string {
	path := filepath.Join(dir, "realipd.yaml")
	mustWrite(t, path, "extproc: {}\n")
	return path
}

// TestWatchIgnoresUnrelatedFiles checks that changes to other files alone,
// including ConfigMap bookkeeping that leaves the file's target as it was,
// report nothing: the first change reported is the one to the file.
func TestWatchIgnoresUnrelatedFiles(t *testing.T) {
	dir := t.TempDir()
	path := configMapDir(t, dir, "..v1", "extproc: {}\n")
	changes, _ := startWatch(t, t.Context(), path, 20*time.Millisecond)

	mustWrite(t, filepath.Join(dir, "other.yaml"), "a")
	mustWrite(t, filepath.Join(dir, "other.yaml"), "b")
	if err := os.Rename(filepath.Join(dir, "other.yaml"), filepath.Join(dir, "moved.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "..v0"), 0o755); err != nil { // a stale version directory
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "..v0")); err != nil {
		t.Fatal(err)
	}
	// A marker: the first change must be this one, alone.
	swapConfigMap(t, dir, "..v1", "..v2", "trust: {}\n")
	c := nextChange(t, changes)
	for _, ev := range c.Events {
		if !strings.Contains(ev, "..data") {
			t.Errorf("event %q reported; want only the ..data swap in %q", ev, c.Events)
		}
	}
}

// TestWatchDebounces checks that a burst of changes is one change carrying
// the burst's events. The debounce is long enough that the changes, made
// back to back, always fall within it. (The kernel merges identical events
// in a row, so the burst is made of different ones.)
func TestWatchDebounces(t *testing.T) {
	path := plainFile(t, t.TempDir())
	ctx, cancel := context.WithCancel(t.Context())
	changes, stopped := startWatch(t, ctx, path, 500*time.Millisecond)
	mustWrite(t, path, "#\n")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, path, "trust: {}\n")
	c := nextChange(t, changes)
	var ops []string
	for _, ev := range c.Events {
		op, _, _ := strings.Cut(ev, " ")
		if len(ops) == 0 || ops[len(ops)-1] != op {
			ops = append(ops, op)
		}
	}
	if got := strings.Join(ops, ","); !strings.HasPrefix(got, "WRITE,REMOVE,CREATE") {
		t.Errorf("first change has events %q; want the whole burst (write, remove, create) in one change", c.Events)
	}
	cancel()
	<-stopped
}

// TestWatchStops checks that onChange is not called once ctx has ended,
// even for a change made just before.
func TestWatchStops(t *testing.T) {
	path := plainFile(t, t.TempDir())
	ctx, cancel := context.WithCancel(t.Context())
	changes, stopped := startWatch(t, ctx, path, time.Hour)
	mustWrite(t, path, "trust: {}\n")
	cancel()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not stop within 10s of ctx ending")
	}
	select {
	case c := <-changes:
		t.Errorf("change reported after ctx ended: %q", c.Events)
	default:
	}
}

func TestWatchMissingDirectory(t *testing.T) {
	_, err := Watch(t.Context(), filepath.Join(t.TempDir(), "absent", "realipd.yaml"), WatchOptions{}, func(Change) {})
	if err == nil || !strings.Contains(err.Error(), "config: watch directory") {
		t.Errorf("Watch in a missing directory = %v, want an error naming the directory", err)
	}
}
