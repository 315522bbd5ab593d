package listenaddr

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// shortTempDir is a temporary directory with a path short enough for a
// unix socket.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rip")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// TestListenUnix: the socket is where it was asked for, mode 0600 with no
// group given, accepts, leaves nothing else in its directory, and is
// removed by Close.
func TestListenUnix(t *testing.T) {
	dir := shortTempDir(t)
	path := filepath.Join(dir, "x.sock")
	old := syscall.Umask(0) // what the umask would give is not what the socket gets
	ln, err := Listen("unix://"+path, Options{})
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got := String(ln); got != "unix://"+path {
		t.Errorf("String = %q, want unix://%s", got, path)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket file mode %v, want a socket with mode 0600", fi.Mode())
	}
	if got := entries(t, dir); len(got) != 1 || got[0] != "x.sock" {
		t.Errorf("the directory holds %q, want only x.sock", got)
	}
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatalf("Accept: %v", err)
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close: %v, want the socket file gone", err)
	}
	ln.Close() // twice is harmless
}

// TestCloseLeavesAnotherSocket: a socket that took the path after ours
// (another process started over it) is not removed by our Close.
func TestCloseLeavesAnotherSocket(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "x.sock")
	ln, err := Listen("unix://"+path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	other, err := Listen("unix://"+path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("the other listener's socket: %v", err)
	}
}

func TestListenRefuses(t *testing.T) {
	dir := shortTempDir(t)
	t.Run("stale socket is replaced", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close() // the file stays, nobody listens
		ln2, err := Listen("unix://"+path, Options{})
		if err != nil {
			t.Fatalf("Listen over a stale socket: %v", err)
		}
		ln2.Close()
	})
	t.Run("live socket is refused", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		ln, err := Listen("unix://"+path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if l, err := Listen("unix://"+path, Options{}); err == nil {
			l.Close()
			t.Fatal("Listen took over a live socket")
		}
	})
	t.Run("regular file is left alone", func(t *testing.T) {
		path := filepath.Join(dir, "file")
		if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if l, err := Listen("unix://"+path, Options{}); err == nil {
			l.Close()
			t.Fatal("Listen replaced a regular file")
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatal("file removed")
		}
	})
	t.Run("path too long", func(t *testing.T) {
		path := filepath.Join(dir, strings.Repeat("p", maxPath))
		if l, err := Listen("unix://"+path, Options{}); err == nil || !strings.Contains(err.Error(), "at most 107 bytes") {
			if l != nil {
				l.Close()
			}
			t.Fatalf("Listen: %v, want an error saying the path is too long", err)
		}
	})
	t.Run("directory missing", func(t *testing.T) {
		if l, err := Listen("unix://"+filepath.Join(dir, "none", "x.sock"), Options{}); err == nil || !errors.Is(err, os.ErrNotExist) {
			if l != nil {
				l.Close()
			}
			t.Fatalf("Listen: %v, want ErrNotExist", err)
		}
	})
	for _, bad := range []string{"unix://relative.sock", "unix://", "http://127.0.0.1:1", "127.0.0.1:notaport"} {
		if l, err := Listen(bad, Options{}); err == nil {
			l.Close()
			t.Errorf("Listen(%q) succeeded", bad)
		}
	}
	if got := entries(t, dir); len(got) != 1 || got[0] != "file" {
		t.Errorf("left in the directory: %q, want only the regular file", got)
	}
}

func TestListenTCP(t *testing.T) {
	ln, err := Listen("127.0.0.1:0", Options{Group: new(int)}) // Group: ignored
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, ok := ln.Addr().(*net.TCPAddr); !ok {
		t.Errorf("Addr %v, want TCP", ln.Addr())
	}
}
