package netnstest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests that need a real kernel run in network namespaces of their
// own. Code runs "inside" one on an OS thread that joined it with
// setns(2) (Netns.Do): the sockets it creates, the binaries it starts and
// the netlink sockets it opens belong to that namespace, while Go's
// netpoller serves them from any thread. The thread is never unlocked, so
// it ends with its goroutine and no other goroutine ever runs in the
// namespace.

// RequireEnv is the variable that turns the skips into failures (CI sets
// it, where every test must run for real).
const RequireEnv = "REALIPD_REQUIRE_NETNS"

// Require skips the test, with the reason, unless it can make network
// namespaces and run iptables in them: root, ip(8), iptables-save/-restore
// and ip6tables-save/-restore on PATH. With REALIPD_REQUIRE_NETNS=1 it
// fails instead, so that a machine that silently lacks them is noticed.
func Require(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, bin := range []string{"ip", "iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if len(missing) > 0 {
		Unavailable(t, "needs "+strings.Join(missing, ", "))
	}
}

// Unavailable skips the test because reason ("needs root", "cannot make a
// network namespace: ..."), or fails it when REALIPD_REQUIRE_NETNS=1.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s=1, but this test %s", RequireEnv, reason)
	}
	t.Skipf("network namespace test: %s (set %s=1 to fail instead)", reason, RequireEnv)
}

// Unavailablef is Unavailable with the reason formatted.
func Unavailablef(t testing.TB, format string, args ...any) {
	t.Helper()
	Unavailable(t, fmt.Sprintf(format, args...))
}

// How long the helpers wait for the kernel to settle what they configured
// (an address to leave the tentative state, a link to be up, a cgroup to
// be empty), and how often they look.
const (
	settleTimeout = 10 * time.Second
	pollInterval  = 5 * time.Millisecond
)

var seq atomic.Int64

// uniqueName returns prefix-PID-N-RANDOM: unique among the running
// processes (PID), within this one (N), and against what a killed run of
// an earlier process with the same PID left behind (RANDOM).
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%d-%08x", prefix, os.Getpid(), seq.Add(1), rand.Uint32())
}

// Netns is a network namespace the test made.
type Netns struct {
	Name string
}

// New makes a namespace with lo up and the addresses loAddrs (CIDRs) on
// lo, usable when it returns (see AddAddr); it is deleted when the test
// ends. It calls Require first.
func New(t testing.TB, loAddrs ...string) *Netns {
	t.Helper()
	Require(t)
	n := &Netns{Name: uniqueName("realipd-t")}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		Unavailable(t, fmt.Sprintf("cannot make a network namespace: ip netns add: %v: %s", err, out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
		}
	})
	// No duplicate address detection in a test's private network: the
	// addresses of the links made later are usable as soon as the kernel
	// has configured them (AddAddr, Veth wait for that), not a second or
	// two later.
	n.Must(t, func() error {
		for _, conf := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+conf+"/accept_dad", []byte("0"), 0o644); err != nil {
				return fmt.Errorf("namespace %s: %w", n.Name, err)
			}
		}
		return nil
	})
	n.IP(t, "link", "set", "lo", "up")
	n.AddAddr(t, "lo", loAddrs...)
	return n
}

// Path is the namespace's file, /run/netns/NAME.
func (n *Netns) Path() string { return "/run/netns/" + n.Name }

// IP runs ip(8) in the namespace and returns its output. Add addresses
// with AddAddr, which waits until they can be used.
func (n *Netns) IP(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.Name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", n.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// AddAddr gives dev the addresses (CIDRs) and returns once every one can
// be bound and reached. An IPv6 address is added with nodad, and still
// waited for: the kernel's address-configuration work, which marks an
// address usable (without nodad it is tentative until then, and bind(2)
// to it fails with EADDRNOTAVAIL, even on lo) and adds its local route
// (until then a connection to it fails with ENETUNREACH), runs after
// "ip addr add" has returned, under the RTNL lock, and may wait behind
// the namespaces other tests make or delete. So AddAddr waits until no
// address of the namespace is tentative (a new link's link-local address
// included) and every IPv6 address it added is in the local routing
// table. (An IPv4 address's routes are added before "ip addr add"
// returns.)
func (n *Netns) AddAddr(t testing.TB, dev string, addrs ...string) {
	t.Helper()
	var local []string // "local ADDR " lines the local table must show
	for _, addr := range addrs {
		args := []string{"addr", "add", addr, "dev", dev}
		if p, err := netip.ParsePrefix(addr); err == nil && p.Addr().Is6() {
			args = append(args, "nodad")
			local = append(local, "local "+p.Addr().String()+" ")
		}
		n.IP(t, args...)
	}
	n.waitFor(t, "done configuring its IPv6 addresses", func() (bool, string) {
		if out := n.IP(t, "-6", "addr", "show", "tentative"); strings.TrimSpace(out) != "" {
			return false, "tentative:\n" + out
		}
		routes := n.IP(t, "-6", "route", "show", "table", "local")
		for _, l := range local {
			if !strings.Contains(routes, l) {
				return false, "no " + strings.TrimSpace(l) + " route in the local table:\n" + routes
			}
		}
		return true, ""
	})
}

// waitUp returns once dev's operational state is UP: the kernel has seen
// its carrier and activated its queue (link events are handled after
// "ip link set up" returns; until then a veth drops what it sends).
func (n *Netns) waitUp(t testing.TB, dev string) {
	t.Helper()
	n.waitFor(t, dev+" up", func() (bool, string) {
		out := n.IP(t, "-o", "link", "show", "dev", dev)
		return strings.Contains(out, " state UP "), out
	})
}

// waitFor polls ok until it holds, or fails the test after settleTimeout
// with ok's last report.
func (n *Netns) waitFor(t testing.TB, what string, ok func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for {
		done, last := ok()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("namespace %s: still not %s after %v:\n%s", n.Name, what, settleTimeout, last)
		}
		time.Sleep(pollInterval)
	}
}

// Exec runs a command in the namespace (ip netns exec) and returns its
// combined output.
func (n *Netns) Exec(name string, args ...string) ([]byte, error) {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...).CombinedOutput()
}

// Do runs f on an OS thread that joined the namespace and returns its
// error: the sockets f creates belong to the namespace for their whole
// life. The thread is never returned to the Go scheduler (it ends with f).
func (n *Netns) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := enter(n.Path()); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// enter makes the calling thread, which must be locked to its goroutine
// for good, join the network namespace of the file path.
func enter(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", path, err)
	}
	return nil
}

// Must is Do that fails the test on an error.
func (n *Netns) Must(t testing.TB, f func() error) {
	t.Helper()
	if err := n.Do(f); err != nil {
		t.Fatal(err)
	}
}

// Run runs a command in the namespace and returns its stdout; stdin, when
// not empty, is its input.
func (n *Netns) Run(t testing.TB, stdin string, name string, args ...string) string {
	t.Helper()
	var out []byte
	n.Must(t, func() error {
		cmd := exec.Command(name, args...)
		if stdin != "" {
			cmd.Stdin = strings.NewReader(stdin)
		}
		var err error
		out, err = cmd.Output()
		if err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, ee.Stderr)
			}
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
	return string(out)
}

// Veth links a and b with a veth pair (veth-a in a, veth-b in b), up
// at both ends, and gives each end its addresses (AddAddr): when it
// returns, packets flow and the addresses can be bound.
func Veth(t testing.TB, a, b *Netns, aAddrs, bAddrs []string) {
	t.Helper()
	VethNamed(t, a, b, "veth-a", "veth-b", aAddrs, bAddrs)
}

// VethNamed is Veth with the ends named aDev (in a) and bDev (in b), for
// a namespace linked to more than one other.
func VethNamed(t testing.TB, a, b *Netns, aDev, bDev string, aAddrs, bAddrs []string) {
	t.Helper()
	if out, err := exec.Command("ip", "link", "add", aDev, "netns", a.Name, "type", "veth", "peer", "name", bDev, "netns", b.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip link add veth: %v: %s", err, out)
	}
	ends := []struct {
		ns    *Netns
		dev   string
		addrs []string
	}{{a, aDev, aAddrs}, {b, bDev, bAddrs}}
	for _, end := range ends {
		end.ns.IP(t, "link", "set", end.dev, "up")
	}
	for _, end := range ends {
		end.ns.waitUp(t, end.dev)
		end.ns.AddAddr(t, end.dev, end.addrs...)
	}
}

// Pool starts size threads in the namespace and returns run, which runs
// a function on one of them and returns when it has: the sockets the
// function creates belong to the namespace (a server's upstream dials, in
// tests where the server's goroutines are not inside it). The threads end
// with the test.
func (n *Netns) Pool(t testing.TB, size int) (run func(func())) {
	t.Helper()
	type job struct {
		f    func()
		done chan struct{}
	}
	jobs := make(chan job)
	ready := make(chan error, size)
	for range size {
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
			err := enter(n.Path())
			ready <- err
			if err != nil {
				return
			}
			for j := range jobs {
				j.f()
				close(j.done)
			}
		}()
	}
	for range size {
		if err := <-ready; err != nil {
			close(jobs)
			t.Fatalf("joining %s: %v", n.Name, err)
		}
	}
	t.Cleanup(func() { close(jobs) })
	return func(f func()) {
		j := job{f, make(chan struct{})}
		jobs <- j
		<-j.done
	}
}

// ExecutableForAnyone returns a copy of the running test binary that every
// user may run (in a directory of mode 0755, removed when the test ends),
// for tests that start it as another user: go test's own build directory
// is readable by its owner only.
func ExecutableForAnyone(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := PublicDir(t)
	bin := filepath.Join(dir, filepath.Base(exe))
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// PublicDir returns a new directory that every user may enter and read
// (mode 0755), removed when the test ends.
func PublicDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "realipd-public-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// bindChildEnv carries what a child started by ListenAs must bind:
// "ADDR REUSEPORT" ("0.0.0.0:15001 1").
const bindChildEnv = "NETNSTEST_LISTEN_AS"

// RunChild runs the child part of ListenAs when this process is such a
// child, and exits; otherwise it returns at once. A test binary that uses
// ListenAs calls it first in its TestMain.
func RunChild() {
	spec := os.Getenv(bindChildEnv)
	if spec == "" {
		return
	}
	addr, reuse, _ := strings.Cut(spec, " ")
	lc := net.ListenConfig{}
	if reuse == "1" {
		lc.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
				return err
			}
			return serr
		}
	}
	network := "tcp4"
	if strings.HasPrefix(addr, "[") {
		network = "tcp6"
	}
	ln, err := lc.Listen(context.Background(), network, addr)
	if err != nil {
		fmt.Println(err)
		os.Exit(0)
	}
	fmt.Println("listening")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the test closes stdin
	ln.Close()
	os.Exit(0)
}

// ListenAs makes a process of the user uid listen on addr in the
// namespace (with SO_REUSEPORT when reuse), and returns nil while it
// listens (until the test ends or stop is called), or the error of its
// bind or listen (errors.Is EADDRINUSE works on it). The test binary's
// TestMain must call RunChild.
func (n *Netns) ListenAs(t testing.TB, uid uint32, addr string, reuse bool) (stop func(), err error) {
	t.Helper()
	spec := addr + " 0"
	if reuse {
		spec = addr + " 1"
	}
	bin := ExecutableForAnyone(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), bindChildEnv+"="+spec)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	n.Must(t, cmd.Start) // forked on a thread inside the namespace
	var once sync.Once
	stop = func() {
		once.Do(func() {
			stdin.Close()
			_ = cmd.Wait()
		})
	}
	t.Cleanup(stop)
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case line == "listening":
		return stop, nil
	case strings.Contains(line, "address already in use"):
		stop()
		return nil, fmt.Errorf("uid %d listen %s: %s: %w", uid, addr, line, syscall.EADDRINUSE)
	}
	stop()
	return nil, fmt.Errorf("uid %d listen %s: %q", uid, addr, line)
}
