package host

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// impostorMarkEnv names the directory where testdata/impostor records its
// starts.
const impostorMarkEnv = "REALIPD_TEST_IMPOSTOR_DIR"

// TestSwappedBinaryNeverRuns kills the plugin again and again while another
// goroutine keeps renaming an impostor and the pinned binary over the
// plugin's path. The impostor speaks the same protocol and leaves a mark
// whenever it runs: every start must run the pinned bytes, and no copy of a
// binary may stay open in the host's process after a start.
func TestSwappedBinaryNeverRuns(t *testing.T) {
	marks := t.TempDir()
	t.Setenv(impostorMarkEnv, marks)
	dir := t.TempDir()
	path, good, bad := filepath.Join(dir, "policy"), filepath.Join(dir, "good"), filepath.Join(dir, "bad")
	copyFile(t, bin.testpolicy, good)
	copyFile(t, bin.impostor, bad)
	if err := os.Link(good, path); err != nil {
		t.Fatal(err)
	}
	h, rec := newHost(t, Config{Path: path, SHA256: sha(t, bin.testpolicy),
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})

	stop := make(chan struct{})
	swapped := make(chan error, 1)
	go func() { swapped <- swapFiles(stop, path, bad, good) }()
	stopSwapping := func() error {
		if stop == nil {
			return nil
		}
		close(stop)
		stop = nil
		return <-swapped
	}
	t.Cleanup(func() { _ = stopSwapping() })

	// Swap for swapFor, and on until at least one start was refused: before
	// that the swaps never met a start and the test proved nothing. The
	// guard only bounds a test that fails.
	const swapFor, guard = 3 * time.Second, 20 * time.Second
	refused := func() int {
		n := 0
		for _, r := range rec.all() {
			if err, _ := r.attrs["error"].(error); r.msg == "plugin restart failed" && errors.Is(err, ErrChecksum) {
				n++
			}
		}
		return n
	}
	starts := 0
	for begin := time.Now(); time.Since(begin) < swapFor || refused() == 0 && time.Since(begin) < guard; starts++ {
		waitState(t, h, "restart", func(up bool, restarts int) bool { return up && restarts == starts })
		d, err := h.Decide(context.Background(), req("192.0.2.1"))
		if err != nil {
			t.Fatalf("start %d: Decide: %v", starts, err)
		}
		if d.Deny || header(d, "x-policy") != "testpolicy" {
			t.Fatalf("start %d ran another binary: decision %+v", starts, d)
		}
		if n := openMemfds(t); n != 0 {
			t.Fatalf("after start %d the host still has %d in-memory copies open", starts, n)
		}
		kill(t, d.Metadata["pid"])
	}
	if err := stopSwapping(); err != nil {
		t.Fatalf("swapping: %v", err)
	}
	ran, err := os.ReadDir(marks)
	if err != nil {
		t.Fatal(err)
	}
	if len(ran) > 0 {
		t.Errorf("the impostor ran %d times", len(ran))
	}
	if refused() == 0 {
		t.Errorf("no start was refused in %v of swapping (%d starts)", guard, starts)
	}
	t.Logf("%d starts, %d refused with a checksum mismatch", starts, refused())
}

// TestSealedCopy: the copy a plugin runs from is sealed against every
// change, and a copy whose sum does not match is refused and not kept open.
func TestSealedCopy(t *testing.T) {
	sum, err := hex.DecodeString(sha(t, bin.testpolicy))
	if err != nil {
		t.Fatal(err)
	}
	f, err := sealedCopy(bin.testpolicy, sum)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE; seals&want != want {
		t.Errorf("seals = %#x, want %#x set", seals, want)
	}
	if _, err := f.WriteAt([]byte{0}, 0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("write to the copy: %v, want EPERM", err)
	}
	if err := f.Truncate(0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("truncate the copy: %v, want EPERM", err)
	}
	f.Close()

	sum[0] ^= 0xff
	if _, err := sealedCopy(bin.testpolicy, sum); !errors.Is(err, ErrChecksum) {
		t.Errorf("copy with the wrong sum: %v, want ErrChecksum", err)
	}
	if n := openMemfds(t); n != 0 {
		t.Errorf("%d memfds open after a refused copy", n)
	}
}

// swapFiles renames each of srcs over path in turn (through a hard link, so
// that every rename is atomic and the sources stay) until stop is closed.
func swapFiles(stop <-chan struct{}, path string, srcs ...string) error {
	tmp := path + ".swap"
	for n := 0; ; n++ {
		select {
		case <-stop:
			return nil
		default:
		}
		if err := os.Link(srcs[n%len(srcs)], tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
	}
}

// openMemfds counts this process's open memfd descriptors.
func openMemfds(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		// A descriptor can close between ReadDir and Readlink: not an error.
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(target, "/memfd:") {
			n++
		}
	}
	return n
}
