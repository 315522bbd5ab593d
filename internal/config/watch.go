package config

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultDebounce is how long Watch waits after the last event of a burst
// before it reports the change.
const DefaultDebounce = 100 * time.Millisecond

// maxChangeEvents bounds Change.Events during an event storm.
const maxChangeEvents = 16

// WatchOptions tune Watch. The zero value is ready to use.
type WatchOptions struct {
	// Logger receives the watcher's warnings; nil discards them.
	Logger *slog.Logger
	// Debounce is the quiet time that ends a burst of events (default
	// DefaultDebounce).
	Debounce time.Duration
}

// A Change is one burst of file system events that touched the watched
// file.
type Change struct {
	// Path is the watched file, as given to Watch but made absolute.
	Path string
	// Events are the burst's events, oldest first, as "OP /path" (at most
	// 16 are kept); they say what happened, for the logs.
	Events []string
}

// Watch reports changes to the file at path until ctx ends. It watches the
// file's directory rather than the file, so that every way of updating a
// file is seen: a write in place, an editor's or a tool's atomic replace (a
// rename over the file), a removal and re-creation, and a Kubernetes
// ConfigMap update (the "..data" symlink swapped to a new directory). When
// the file is a symlink, the directory of its target is watched too, so
// that the target written in place is seen. Events for other files in those
// directories are ignored.
//
// A burst of events ends after opts.Debounce without one; onChange is then
// called once with the burst's events. It is called from one goroutine,
// never concurrently, and the next burst waits for it to return. A change
// does not mean the contents differ (a file rewritten with the same text is
// a change); the caller loads the file and decides.
//
// Watch returns once the watch is in place: a change made after it returns
// is reported. The returned channel is closed when watching has stopped
// after ctx ended; onChange is not called after that.
func Watch(ctx context.Context, path string, opts WatchOptions, onChange func(Change)) (stopped <-chan struct{}, err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config: watch %s: %w", path, err)
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("config: watch %s: %w", abs, err)
	}
	w := &watcher{
		fsw:      fsw,
		log:      opts.Logger,
		debounce: opts.Debounce,
		path:     abs,
		dir:      filepath.Dir(abs),
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	if w.debounce <= 0 {
		w.debounce = DefaultDebounce
	}
	if err := fsw.Add(w.dir); err != nil {
		fsw.Close()
		return nil, fmt.Errorf("config: watch directory %s: %w", w.dir, err)
	}
	w.resolve()
	done := make(chan struct{})
	go w.loop(ctx, onChange, done)
	return done, nil
}

// watcher is the state of one Watch; only its loop goroutine uses it after
// Watch returns.
type watcher struct {
	fsw      *fsnotify.Watcher
	log      *slog.Logger
	debounce time.Duration
	path     string          // absolute path of the watched file
	dir      string          // its directory, always watched
	chain    map[string]bool // the paths whose change may change the file (see resolve)
	real     string          // the file with symlinks resolved; "" while it does not exist
	realDir  string          // the directory of real, watched too when not dir; "" when not watched
}

func (w *watcher) loop(ctx context.Context, onChange func(Change), done chan<- struct{}) {
	defer close(done)
	defer w.fsw.Close()
	timer := time.NewTimer(w.debounce)
	timer.Stop()
	defer timer.Stop()
	var events []string
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			if !w.relevant(ev) {
				continue
			}
			if len(events) < maxChangeEvents {
				events = append(events, ev.Op.String()+" "+ev.Name)
			}
			timer.Reset(w.debounce)
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			// An overflow loses events: report a change to be safe.
			w.log.Warn("config: watch error", "path", w.path, "error", err)
			if len(events) < maxChangeEvents {
				events = append(events, "ERROR "+err.Error())
			}
			timer.Reset(w.debounce)
		case <-timer.C:
			c := Change{Path: w.path, Events: events}
			events = nil
			if ctx.Err() != nil {
				return
			}
			onChange(c)
		}
	}
}

// relevant reports whether ev may have changed the watched file's contents:
// it names the file, a symlink on the way to its contents or the contents
// themselves. After such an event the way is looked up again, so that a
// swapped symlink is followed.
func (w *watcher) relevant(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	if !w.chain[filepath.Clean(ev.Name)] {
		return false
	}
	w.resolve()
	return true
}

// maxSymlinks bounds symlink resolution, as the kernel's ELOOP does.
const maxSymlinks = 40

// resolve follows the watched file's symlinks and records every path on the
// way (each one and its parent directories) in chain, and the final file in
// real ("" when it does not exist); then it watches the final file's
// directory (see followTarget).
func (w *watcher) resolve() {
	w.chain = map[string]bool{}
	w.real = ""
	add := func(p string) {
		for ; !w.chain[p]; p = filepath.Dir(p) {
			w.chain[p] = true
		}
	}
	p := w.path
	for range maxSymlinks {
		add(p)
		fi, err := os.Lstat(p)
		if err != nil {
			break
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			// p may still go through symlinked directories (a
			// ConfigMap's ..data): the real path is the contents.
			if real, err := filepath.EvalSymlinks(p); err == nil {
				if real, err = filepath.Abs(real); err == nil {
					add(real)
					w.real = real
				}
			}
			break
		}
		target, err := os.Readlink(p)
		if err != nil {
			break
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		p = filepath.Clean(target)
	}
	w.followTarget()
}

// followTarget watches the directory of the symlink target when it is not
// the file's own directory, and stops watching the previous one.
func (w *watcher) followTarget() {
	want := ""
	if w.real != "" && filepath.Dir(w.real) != w.dir {
		want = filepath.Dir(w.real)
	}
	if want == w.realDir {
		return
	}
	if w.realDir != "" {
		// The old target directory may be gone already (a ConfigMap
		// deletes it after the swap), and its watch with it.
		_ = w.fsw.Remove(w.realDir)
		w.realDir = ""
	}
	if want == "" {
		return
	}
	if err := w.fsw.Add(want); err != nil {
		w.log.Warn("config: watch the symlink target's directory", "path", w.path, "directory", want, "error", err)
		return
	}
	w.realDir = want
}
