package xds

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestListen(t *testing.T) {
	dir := shortTempDir(t)
	t.Run("stale socket is replaced", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close() // the file stays, nobody listens
		if _, err := os.Stat(path); err != nil {
			t.Fatal(err)
		}
		ln2, err := Listen("unix://" + path)
		if err != nil {
			t.Fatalf("Listen over a stale socket: %v", err)
		}
		if got := addrString(ln2); got != "unix://"+path {
			t.Errorf("address %q", got)
		}
		ln2.Close()
	})
	t.Run("live socket is refused", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if l, err := Listen("unix://" + path); err == nil {
			l.Close()
			t.Fatal("Listen took over a live socket")
		}
	})
	t.Run("regular file is left alone", func(t *testing.T) {
		path := filepath.Join(dir, "file")
		if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if l, err := Listen("unix://" + path); err == nil {
			l.Close()
			t.Fatal("Listen replaced a regular file")
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatal("file removed")
		}
	})
	t.Run("tcp", func(t *testing.T) {
		ln, err := Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
	})
	for _, bad := range []string{"unix://relative.sock", "unix://", "http://127.0.0.1:1", "127.0.0.1:notaport"} {
		if l, err := Listen(bad); err == nil {
			l.Close()
			t.Errorf("Listen(%q) succeeded", bad)
		}
	}
}

// shortTempDir is a temporary directory with a path short enough for a
// unix socket (108 bytes).
func shortTempDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "rip")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
