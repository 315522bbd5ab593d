package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadFileRefusesWhatIsNotARegularFile: a named pipe, a device (through
// a symlink, as a swapped ConfigMap link could be), a directory and a file
// over MaxFileSize are refused at once, without blocking or reading them; a
// symlink to a regular file is read.
func TestReadFileRefusesWhatIsNotARegularFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("trust: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink("good.yaml", link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero.yaml")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(dir, "huge.yaml")
	if err := os.WriteFile(huge, []byte("# "+strings.Repeat("x", MaxFileSize)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path, want string
	}{
		{good, ""},
		{link, ""},
		{fifo, "a named pipe (FIFO), not a regular file"},
		{zero, "a character device, not a regular file"},
		{dir, "a directory, not a regular file"},
		{huge, "larger than 4 MiB"},
		{filepath.Join(dir, "absent.yaml"), "no such file"},
	} {
		t.Run(filepath.Base(tt.path), func(t *testing.T) {
			done := make(chan struct{})
			var data []byte
			var err error
			go func() {
				defer close(done)
				data, err = ReadFile(t.Context(), tt.path)
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("ReadFile(%s) still blocked after 10s", tt.path)
			}
			switch {
			case tt.want == "" && (err != nil || string(data) != "trust: {}\n"):
				t.Errorf("ReadFile = %q, %v; want the file", data, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("ReadFile = %d bytes, %v; want an error with %q", len(data), err, tt.want)
			}
			if _, lerr := Load(tt.path); (lerr == nil) != (tt.want == "") {
				t.Errorf("Load = %v, want it to agree with ReadFile", lerr)
			}
		})
	}
}

// TestReadFileGivesUpWithItsContext: a read that does not return (a
// stalled file system) is abandoned as soon as the context ends.
func TestReadFileGivesUpWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	stuck := make(chan struct{})
	defer close(stuck)
	done := make(chan error, 1)
	go func() {
		_, err := withContext(ctx, "realipd.yaml", func() ([]byte, error) { <-stuck; return nil, nil })
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("withContext returned before its context ended: %v", err)
	default:
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("withContext after cancel = %v, want context.Canceled", err)
	}
}

// TestReadSettled: a file written in place is read only once two reads,
// settle apart, agree; one that keeps changing is given up; the wait ends
// with the context.
func TestReadSettled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "realipd.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("stable", func(t *testing.T) {
		write("trust: {}\n")
		waits := 0
		data, err := Settler{Settle: time.Second, Wait: func(context.Context, time.Duration) error { waits++; return nil }}.Read(t.Context(), path)
		if err != nil || string(data) != "trust: {}\n" || waits != 1 {
			t.Errorf("Read = %q, %v after %d waits; want the file after 1", data, err, waits)
		}
	})

	t.Run("written during the wait", func(t *testing.T) {
		// The first read catches the writer half-way: the file is
		// truncated; the rest comes while Read waits.
		write("")
		var settles []time.Duration
		data, err := Settler{Settle: 42 * time.Millisecond, Wait: func(_ context.Context, d time.Duration) error {
			settles = append(settles, d)
			if len(settles) == 1 {
				write("trust:\n  trusted_cidrs: [10.0.0.0/8]\n")
			}
			return nil
		}}.Read(t.Context(), path)
		if err != nil || string(data) != "trust:\n  trusted_cidrs: [10.0.0.0/8]\n" {
			t.Errorf("Read = %q, %v; want the whole file", data, err)
		}
		if len(settles) != 2 || settles[0] != 42*time.Millisecond {
			t.Errorf("waits %v, want two of 42ms", settles)
		}
	})

	t.Run("never settles", func(t *testing.T) {
		n := 0
		_, err := Settler{Settle: time.Millisecond, Wait: func(context.Context, time.Duration) error {
			n++
			write(strings.Repeat("#", n))
			return nil
		}}.Read(t.Context(), path)
		if !errors.Is(err, ErrUnsettled) || !strings.Contains(err.Error(), "atomically") {
			t.Errorf("Read = %v, want ErrUnsettled with advice", err)
		}
	})

	t.Run("the context ends during the wait", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := ReadSettled(ctx, path, time.Hour); !errors.Is(err, context.Canceled) {
			t.Errorf("ReadSettled = %v, want context.Canceled", err)
		}
	})
}

// TestEmptyFileRefused: a file with no keys is refused, whitespace and
// comments counting as nothing; {} is the way to ask for the defaults, and
// a document given without a file (Parse) may still be empty.
func TestEmptyFileRefused(t *testing.T) {
	for _, doc := range []string{"", "\n\n", "   \n \n", "# nothing here\n\n# at all\n", "---\n", "null\n"} {
		_, err := ParseFile([]byte(doc), "/etc/realipd/realipd.yaml")
		var ve *ValidationError
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), "/etc/realipd/realipd.yaml: the file is empty") || !strings.Contains(err.Error(), "write {}") {
			t.Errorf("ParseFile(%q) = %v, want the empty file refused", doc, err)
		}
	}
	if _, err := ParseFile([]byte("{}\n"), "/etc/realipd/realipd.yaml"); err != nil {
		t.Errorf("ParseFile({}) = %v, want the defaults", err)
	}
	if _, err := Parse(nil); err != nil {
		t.Errorf("Parse(nil) = %v, want the defaults", err)
	}
}

// TestPluginPathsRelativeToTheFile: policies[].path and the directory the
// plugin runs in (so the paths in its config) are the file's directory,
// whatever the working directory.
func TestPluginPathsRelativeToTheFile(t *testing.T) {
	dir := t.TempDir()
	doc := "policies:\n  - {name: p, type: plugin, path: ./bin/p, sha256: \"" + strings.Repeat("0", 64) + "\", config: {list: ./deny.txt}}\n" +
		"  - {name: c, type: cidr, deny: [192.0.2.1]}\n"
	cfg, err := ParseFile([]byte(doc), filepath.Join(dir, "realipd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policies[0]
	if p.Path != filepath.Join(dir, "bin", "p") || p.Dir() != dir {
		t.Errorf("path %q, dir %q; want both in %s", p.Path, p.Dir(), dir)
	}
	if cfg.Policies[1].Dir() != "" {
		t.Errorf("a cidr policy has a directory: %q", cfg.Policies[1].Dir())
	}
	// A relative file name is made absolute once, at load.
	t.Chdir(dir)
	cfg, err = ParseFile([]byte(doc), "realipd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Policies[0]; p.Dir() != dir || p.Path != filepath.Join(dir, "bin", "p") {
		t.Errorf("from %s: path %q, dir %q; want absolute ones in it", dir, p.Path, p.Dir())
	}
	// Parse has no file: the plugin runs where realipd runs.
	cfg, err = Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Policies[0]; p.Dir() != "" || p.Path != "./bin/p" {
		t.Errorf("Parse: path %q, dir %q; want them as written", p.Path, p.Dir())
	}
}
