package intercept

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/netnstest"
)

// BenchmarkConnectionSetup measures one intercepted connection's setup, side
// by side: connect, accept, the lookup of the original destination and a
// one-byte answer, inside a test namespace.
//
//	none               the client dials the capture listener itself; the
//	                   lookup finds nothing (the local address, read at
//	                   accept, is the destination)
//	ebpf               the client dials 192.0.2.10:8080, the eBPF capture
//	                   sends it to the listener, which reads SO_ORIGINAL_DST
//	                   (this process is moved into the captured cgroup for
//	                   the run, as Envoy is in a pod's)
//	iptables_redirect  the same through an iptables REDIRECT rule in the
//	                   namespace and conntrack's SO_ORIGINAL_DST (skipped
//	                   without iptables)
//
// The client resets its connections (SO_LINGER 0), so that no TIME_WAIT
// piles up; run it with a bounded count, e.g. -benchtime=5000x.
func BenchmarkConnectionSetup(b *testing.B) {
	netnstest.Require(b)
	ns := netnstest.New(b, "192.0.2.10/32")
	var ln *net.TCPListener
	if err := ns.Do(func() error {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err == nil {
			ln = l.(*net.TCPListener)
		}
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	capture := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	orig := netip.MustParseAddrPort("192.0.2.10:8080")

	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			// Without a redirection this fails (no record, no conntrack
			// entry) and the local address is the destination.
			_, _ = netnstest.OriginalDst(c)
			_, _ = c.Write([]byte{1})
			c.Close()
		}
	})

	run := func(b *testing.B, dst netip.AddrPort, lookedUp func() bool) {
		b.Helper()
		errc := make(chan error, 1)
		go func() {
			errc <- ns.Do(func() error {
				b.ResetTimer()
				for range b.N {
					if err := ebpfSetupOnce(dst); err != nil {
						return err
					}
				}
				b.StopTimer()
				return nil
			})
		}()
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
		if lookedUp != nil && !lookedUp() {
			b.Error("the original destination was not looked up")
		}
	}

	b.Run("none", func(b *testing.B) { run(b, capture, nil) })

	b.Run("iptables_redirect", func(b *testing.B) {
		if _, err := exec.LookPath("iptables"); err != nil {
			b.Skip("iptables is not installed: no REDIRECT to compare with")
		}
		rule := []string{"-t", "nat", "OUTPUT", "-p", "tcp", "-d", orig.Addr().String(), "--dport", strconv.Itoa(int(orig.Port())), "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(port))}
		iptables := func(op string) error {
			args := append([]string{rule[0], rule[1], op}, rule[2:]...)
			if out, err := ns.Exec("iptables", args...); err != nil {
				return fmt.Errorf("iptables %v: %v: %s", args, err, out)
			}
			return nil
		}
		if err := iptables("-A"); err != nil {
			b.Skip(err)
		}
		defer func() {
			if err := iptables("-D"); err != nil {
				b.Error(err)
			}
		}()
		run(b, orig, nil)
	})

	b.Run("ebpf", func(b *testing.B) {
		mount := netnstest.Cgroup2Mount(b)
		if err := ProbeEBPF(false); err != nil {
			netnstest.Unavailablef(b, "needs a kernel that runs the eBPF capture: %v", err)
		}
		self, err := ProcessCgroup(0)
		if err != nil {
			netnstest.Unavailablef(b, "needs to run in a cgroup v2: %v", err)
		}
		rel, dir := netnstest.NewCgroup(b, mount)
		// The listener was made before this process moved: a socket
		// stays in the cgroup it was created in, and the getsockopt hook
		// runs for the accepted sockets' cgroup, the listener's.
		c, err := AttachEBPF(EBPFOptions{Cgroup2Mount: mount, Cgroup: rel, GetsockoptCgroup: self, OutboundPort: port, ExcludeMark: 1338})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		// This whole process joins the captured cgroup for the run, and
		// goes back before the cgroup is removed.
		moveTo := func(cgroupDir string) error {
			return os.WriteFile(filepath.Join(cgroupDir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
		}
		if err := moveTo(dir); err != nil {
			b.Fatal(err)
		}
		defer func() {
			if err := moveTo(filepath.Join(mount, self)); err != nil {
				b.Error(err)
			}
		}()
		before, _ := c.Counters()
		run(b, orig, func() bool {
			after, _ := c.Counters()
			return after.Answered-before.Answered >= uint64(b.N)
		})
	})
}

// ebpfSetupOnce connects to dst, reads the listener's byte and resets the
// connection.
func ebpfSetupOnce(dst netip.AddrPort) error {
	c, err := net.DialTimeout("tcp4", dst.String(), 5*time.Second)
	if err != nil {
		return err
	}
	tc := c.(*net.TCPConn)
	defer func() { _ = tc.SetLinger(0); tc.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var one [1]byte
	_, err = c.Read(one[:])
	return err
}
