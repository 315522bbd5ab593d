//go:build linux

package intercept

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// The tests that need a real kernel run in network namespaces of their
// own, made with `ip netns add` and deleted when the test ends. Code runs
// "inside" one on an OS thread that joined it with setns(2) (netns.do):
// the sockets it creates, the binaries it starts and the netlink sockets
// it opens belong to that namespace, while Go's netpoller serves them from
// any thread. The thread is never unlocked, so it ends with its goroutine
// and no other goroutine ever runs in the namespace.

// requireNetns skips the test, with the reason, unless it can make network
// namespaces and run iptables in them: root, ip(8), iptables-save/-restore
// and ip6tables-save/-restore on PATH. With REALIPD_REQUIRE_NETNS=1 (CI)
// it fails instead, so that a machine that silently lacks them is noticed.
func requireNetns(t testing.TB) {
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
		netnsUnavailable(t, "needs "+strings.Join(missing, ", "))
	}
}

func netnsUnavailable(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("REALIPD_REQUIRE_NETNS") == "1" {
		t.Fatalf("REALIPD_REQUIRE_NETNS=1, but this test %s", reason)
	}
	t.Skipf("network namespace test: %s (set REALIPD_REQUIRE_NETNS=1 to fail instead)", reason)
}

// netns is a network namespace the test made.
type netns struct {
	name string
}

var netnsSeq atomic.Int32

// newNetns makes a namespace with lo up, deleted when the test ends.
func newNetns(t testing.TB) *netns {
	t.Helper()
	requireNetns(t)
	n := &netns{name: fmt.Sprintf("realipd-t%d-%d", os.Getpid(), netnsSeq.Add(1))}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		netnsUnavailable(t, fmt.Sprintf("cannot make a network namespace: ip netns add: %v: %s", err, out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.name, err, out)
		}
	})
	n.ip(t, "link", "set", "lo", "up")
	return n
}

// ip runs ip(8) in the namespace.
func (n *netns) ip(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", n.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// do runs f on a thread in the namespace and returns its error.
func (n *netns) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		fd, err := unix.Open("/run/netns/"+n.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", n.name, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// must is do that fails the test on an error.
func (n *netns) must(t testing.TB, f func() error) {
	t.Helper()
	if err := n.do(f); err != nil {
		t.Fatal(err)
	}
}

// run runs a command in the namespace and returns its stdout.
func (n *netns) run(t testing.TB, stdin string, name string, args ...string) string {
	t.Helper()
	var out []byte
	n.must(t, func() error {
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

// veth links a and b with a veth pair (veth-a in a, veth-b in b) and
// gives each end its addresses (IPv6 ones without duplicate address
// detection, so that they are usable at once).
func veth(t testing.TB, a, b *netns, aAddrs, bAddrs []string) {
	t.Helper()
	if out, err := exec.Command("ip", "link", "add", "veth-a", "netns", a.name, "type", "veth", "peer", "name", "veth-b", "netns", b.name).CombinedOutput(); err != nil {
		t.Fatalf("ip link add veth: %v: %s", err, out)
	}
	for _, end := range []struct {
		ns    *netns
		dev   string
		addrs []string
	}{{a, "veth-a", aAddrs}, {b, "veth-b", bAddrs}} {
		for _, addr := range end.addrs {
			args := []string{"addr", "add", addr, "dev", end.dev}
			if strings.Contains(addr, ":") {
				args = append(args, "nodad")
			}
			end.ns.ip(t, args...)
		}
		end.ns.ip(t, "link", "set", end.dev, "up")
	}
}
