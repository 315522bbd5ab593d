package netnstest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Cgroup2Mount returns the cgroup2 mount point from /proc/mounts, or skips.
func Cgroup2Mount(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile("/proc/mounts")
	if err != nil {
		Unavailablef(t, "has no /proc/mounts: %v", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[2] == "cgroup2" {
			return f[1]
		}
	}
	Unavailablef(t, "needs a cgroup2 file system, and none is mounted")
	return ""
}

// NewCgroup creates a cgroup under the cgroup2 mount and returns its path
// relative to the mount ("/realipd-cg-...") and its directory. It is
// removed when the test ends (its processes must have exited by then).
func NewCgroup(t testing.TB, mount string) (rel, dir string) {
	t.Helper()
	rel = "/" + uniqueName("realipd-cg")
	dir = filepath.Join(mount, rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		Unavailablef(t, "cannot create a cgroup under %s: %v", mount, err)
	}
	t.Cleanup(func() {
		// A process that has just exited may still be listed for a moment
		// (longer on a loaded machine): EBUSY until the kernel has let go.
		deadline := time.Now().Add(settleTimeout)
		for {
			err := unix.Rmdir(dir)
			if err == nil || errors.Is(err, unix.ENOENT) {
				return
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				t.Errorf("removing the cgroup %s: %v", dir, err)
				return
			}
			time.Sleep(pollInterval)
		}
	})
	return rel, dir
}

// Dial is one connection the client process makes: over an AF_INET socket
// (Family 4) or an AF_INET6 one (Family 6, which may dial an IPv4-mapped
// address), with SO_MARK set to Mark when it is not 0.
type Dial struct {
	Family int
	Addr   netip.AddrPort
	Mark   uint32
}

// Result is what one Dial got: the first line the server sent, or the
// error.
type Result struct {
	Reply string `json:"reply,omitempty"`
	Err   string `json:"err,omitempty"`
}

// Environment of the client process.
const (
	envHelper = "REALIPD_EBPFTEST_CLIENT"
	envNetns  = "REALIPD_EBPFTEST_NETNS"
	envDials  = "REALIPD_EBPFTEST_DIALS"
)

// IsClient reports whether this process is a client started by RunClient;
// the test named by RunClient's testName then calls ClientMain.
func IsClient() bool { return os.Getenv(envHelper) == "1" }

// RunClient starts this test binary again, running only testName (a test
// that calls ClientMain when IsClient), as a process born in the cgroup
// directory cgroupDir (clone3 with CLONE_INTO_CGROUP: it never runs outside
// it), which enters the namespace netns, makes dials in order and reports
// their results.
func RunClient(t testing.TB, testName, cgroupDir string, netns *Netns, dials []Dial) []Result {
	t.Helper()
	spec, err := json.Marshal(dials)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+testName+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), envHelper+"=1", envNetns+"="+netns.Path(), envDials+"="+string(spec))
	if cgroupDir != "" {
		cg, err := os.Open(cgroupDir)
		if err != nil {
			t.Fatal(err)
		}
		defer cg.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client process: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.Bytes())
	}
	var results []Result
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "RESULT ")
		if !ok {
			continue
		}
		var r Result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("client process: bad result %q: %v", line, err)
		}
		results = append(results, r)
	}
	if len(results) != len(dials) {
		t.Fatalf("client process reported %d results for %d dials:\n%s\nstderr:\n%s", len(results), len(dials), out, stderr.Bytes())
	}
	return results
}

// ClientMain is the client process: it enters the namespace, makes the
// dials and prints one RESULT line each, then exits.
func ClientMain() {
	runtime.LockOSThread() // every socket is made on this thread, in the namespace
	if err := enter(os.Getenv(envNetns)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	var dials []Dial
	if err := json.Unmarshal([]byte(os.Getenv(envDials)), &dials); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	for _, d := range dials {
		reply, err := dialOnce(d)
		r := Result{Reply: reply}
		if err != nil {
			r.Err = err.Error()
		}
		b, _ := json.Marshal(r)
		fmt.Printf("RESULT %s\n", b)
	}
	os.Exit(0)
}

// dialOnce connects with plain system calls (so that the family and the
// mark are exactly those asked for) and reads one line.
func dialOnce(d Dial) (string, error) {
	fam := unix.AF_INET
	if d.Family == 6 {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 5}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	if d.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(d.Mark)); err != nil {
			return "", fmt.Errorf("SO_MARK: %w", err)
		}
	}
	var sa unix.Sockaddr
	if fam == unix.AF_INET {
		if !d.Addr.Addr().Is4() {
			return "", fmt.Errorf("%v is not an IPv4 address", d.Addr)
		}
		sa = &unix.SockaddrInet4{Port: int(d.Addr.Port()), Addr: d.Addr.Addr().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(d.Addr.Port()), Addr: d.Addr.Addr().As16()}
	}
	if err := unix.Connect(fd, sa); err != nil {
		return "", fmt.Errorf("connect %v: %w", d.Addr, err)
	}
	var buf []byte
	one := make([]byte, 256)
	for !bytes.Contains(buf, []byte("\n")) {
		n, err := unix.Read(fd, one)
		if err != nil {
			return string(buf), fmt.Errorf("read: %w", err)
		}
		if n == 0 {
			break
		}
		buf = append(buf, one[:n]...)
	}
	line, _, _ := strings.Cut(string(buf), "\n")
	return line, nil
}

// OriginalDst reads getsockopt(SO_ORIGINAL_DST) of an accepted TCP
// connection, as Envoy's original_dst filter does: SOL_IP for an AF_INET
// socket, SOL_IPV6 (IP6T_SO_ORIGINAL_DST) for an AF_INET6 one.
func OriginalDst(c syscall.Conn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		ap     netip.AddrPort
		optErr error
	)
	err = rc.Control(func(fd uintptr) {
		sa, err := unix.Getsockname(int(fd))
		if err != nil {
			optErr = err
			return
		}
		level := unix.SOL_IP
		if _, v6 := sa.(*unix.SockaddrInet6); v6 {
			level = unix.SOL_IPV6
		}
		// A 32-byte buffer, large enough for a sockaddr_in6; the kernel
		// (or the eBPF hook) fills a sockaddr_in or a sockaddr_in6.
		info, err := unix.GetsockoptIPv6MTUInfo(int(fd), level, 80)
		if err != nil {
			optErr = fmt.Errorf("getsockopt(SO_ORIGINAL_DST): %w", err)
			return
		}
		raw := unsafe.Slice((*byte)(unsafe.Pointer(info)), unsafe.Sizeof(*info))
		port := uint16(raw[2])<<8 | uint16(raw[3])
		switch info.Addr.Family {
		case unix.AF_INET:
			ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte(raw[4:8])), port)
		case unix.AF_INET6:
			ap = netip.AddrPortFrom(netip.AddrFrom16([16]byte(raw[8:24])), port)
		default:
			optErr = fmt.Errorf("getsockopt(SO_ORIGINAL_DST): family %d", info.Addr.Family)
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	return ap, optErr
}
