package intercept

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/realipd/realipd/internal/netnstest"
)

// TestEBPFClientProcess is the client process of the eBPF tests
// (netnstest.RunClient starts this binary again running only this test);
// in a normal run it does nothing.
func TestEBPFClientProcess(t *testing.T) {
	if netnstest.IsClient() {
		netnstest.ClientMain()
	}
}

// requireEBPF skips (or fails, under REALIPD_REQUIRE_NETNS=1) unless the
// test can create namespaces and cgroups and load the capture; it returns
// the cgroup2 mount.
func requireEBPF(t *testing.T, inbound bool) string {
	t.Helper()
	netnstest.Require(t)
	mount := netnstest.Cgroup2Mount(t)
	if err := ProbeEBPF(inbound); err != nil {
		netnstest.Unavailablef(t, "needs a kernel that runs the eBPF capture: %v", err)
	}
	return mount
}

// TestEBPFContextLayout checks the context offsets the programs use
// against the running kernel's BTF.
func TestEBPFContextLayout(t *testing.T) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		netnstest.Unavailablef(t, "needs the kernel's BTF: %v", err)
	}
	check := func(typ string, want map[string]uint32) {
		var st *btf.Struct
		if err := spec.TypeByName(typ, &st); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		got := map[string]uint32{}
		for _, m := range st.Members {
			got[m.Name] = m.Offset.Bytes()
		}
		for name, off := range want {
			if g, ok := got[name]; !ok || g != off {
				t.Errorf("%s.%s at %d, the programs use %d", typ, name, g, off)
			}
		}
	}
	check("bpf_sock_addr", map[string]uint32{"user_ip4": saUserIP4, "user_ip6": saUserIP6, "user_port": saUserPort, "type": saType, "protocol": saProtocol})
	check("bpf_sock", map[string]uint32{"family": skFamily, "protocol": skProtocol, "mark": skMark, "src_ip4": skSrcIP4, "src_ip6": skSrcIP6,
		"src_port": skSrcPort, "dst_port": skDstPort, "dst_ip4": skDstIP4, "dst_ip6": skDstIP6})
	check("bpf_sock_ops", map[string]uint32{"op": soOp, "family": soFamily, "remote_ip4": soRemoteIP4, "local_ip4": soLocalIP4, "remote_ip6": soRemoteIP6,
		"local_ip6": soLocalIP6, "remote_port": soRemotePrt, "local_port": soLocalPort, "bpf_sock_ops_cb_flags": soCbFlags})
	check("bpf_sockopt", map[string]uint32{"level": sopLevel, "optname": sopOptname, "optlen": sopOptlen, "retval": sopRetval})
	check("bpf_sk_lookup", map[string]uint32{"family": slFamily, "protocol": slProtocol, "local_ip4": slLocalIP4, "local_ip6": slLocalIP6, "local_port": slLocalPort})
}

// ebpfServer is a TCP listener in the test namespace that answers each
// connection with one line.
type ebpfServer struct {
	ln   net.Listener
	wg   sync.WaitGroup
	line func(net.Conn) string
}

func ebpfServe(ln net.Listener, line func(net.Conn) string) *ebpfServer {
	s := &ebpfServer{ln: ln, line: line}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Go(func() {
				defer c.Close()
				fmt.Fprintf(c, "%s\n", s.line(c))
			})
		}
	})
	return s
}

func (s *ebpfServer) close() { s.ln.Close(); s.wg.Wait() }

// ebpfCaptureLine is the capture listener's answer: the original destination
// that a plain getsockopt(SO_ORIGINAL_DST) returns.
func ebpfCaptureLine(c net.Conn) string {
	dst, err := netnstest.OriginalDst(c.(*net.TCPConn))
	if err != nil {
		return "captured, no original destination: " + err.Error()
	}
	return "captured " + dst.String()
}

// ebpfNet is the network the outbound tests use: a namespace with
// 192.0.2.10 and 2001:db8::10 on lo, servers on port 8080 of both that
// answer "direct ADDR", one on 127.0.0.1:8081, and capture listeners on
// 127.0.0.1:P and [::1]:P that answer "captured ORIGINAL-DESTINATION".
type ebpfNet struct {
	ns      *netnstest.Netns
	port    uint16 // P
	servers []*ebpfServer
}

var (
	ebpfDst4   = netip.MustParseAddrPort("192.0.2.10:8080")
	ebpfDst6   = netip.MustParseAddrPort("[2001:db8::10]:8080")
	ebpfDst4in = netip.MustParseAddrPort("[::ffff:192.0.2.10]:8080")
	ebpfLocal4 = netip.MustParseAddrPort("127.0.0.1:8081")
)

func newEBPFNet(t *testing.T) *ebpfNet {
	t.Helper()
	n := &ebpfNet{ns: netnstest.New(t, "192.0.2.10/32", "2001:db8::10/128")}
	err := n.ns.Do(func() error {
		for _, a := range []netip.AddrPort{ebpfDst4, ebpfDst6, ebpfLocal4} {
			ln, err := net.Listen("tcp", a.String())
			if err != nil {
				return err
			}
			line := "direct " + a.String()
			n.servers = append(n.servers, ebpfServe(ln, func(net.Conn) string { return line }))
		}
		ln4, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return err
		}
		n.port = uint16(ln4.Addr().(*net.TCPAddr).Port)
		ln6, err := net.Listen("tcp6", fmt.Sprintf("[::1]:%d", n.port))
		if err != nil {
			ln4.Close()
			return err
		}
		n.servers = append(n.servers, ebpfServe(ln4, ebpfCaptureLine), ebpfServe(ln6, ebpfCaptureLine))
		return nil
	})
	t.Cleanup(func() {
		for _, s := range n.servers {
			s.close()
		}
	})
	if err != nil {
		t.Fatalf("listening in the test namespace: %v", err)
	}
	return n
}

// dialFromTest dials from the test process (outside the captured cgroup),
// inside the namespace, and returns the server's line.
func (n *ebpfNet) dialFromTest(t *testing.T, addr netip.AddrPort) string {
	t.Helper()
	var line string
	err := n.ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
		line = strings.TrimSuffix(line, "\n")
		return err
	})
	if err != nil {
		t.Fatalf("dialing %v from the test process: %v", addr, err)
	}
	return line
}

// ebpfAssertNoIPTables checks that the namespace has no iptables rule at all
// (the capture must not need one).
func ebpfAssertNoIPTables(t *testing.T, ns *netnstest.Netns) {
	t.Helper()
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Logf("%s is not installed: no iptables rule can exist", tool)
			continue
		}
		out, err := ns.Exec(tool)
		if err != nil {
			t.Fatalf("%s: %v: %s", tool, err, out)
		}
		for line := range strings.SplitSeq(string(out), "\n") {
			if strings.HasPrefix(line, "-A ") {
				t.Errorf("%s shows a rule in the test namespace: %s", tool, line)
			}
		}
	}
}

func TestEBPFOutbound(t *testing.T) {
	mount := requireEBPF(t, false)
	self, err := ProcessCgroup(0)
	if err != nil {
		netnstest.Unavailablef(t, "needs to run in a cgroup v2: %v", err)
	}
	n := newEBPFNet(t)
	rel, dir := netnstest.NewCgroup(t, mount)

	c, err := AttachEBPF(EBPFOptions{
		Cgroup:           rel,
		GetsockoptCgroup: self, // the capture listeners are this process's
		OutboundPort:     n.port,
		ExcludeMark:      1338,
	})
	if err != nil {
		t.Fatalf("AttachEBPF: %v", err)
	}
	defer c.Close()
	ebpfAssertNoIPTables(t, n.ns)

	captured := func(a netip.AddrPort) string { return "captured " + a.String() }
	direct := func(a netip.AddrPort) string { return "direct " + a.String() }
	dials := []netnstest.Dial{
		{Family: 4, Addr: ebpfDst4},
		{Family: 6, Addr: ebpfDst6},
		{Family: 6, Addr: ebpfDst4in},           // an IPv4-mapped destination from an AF_INET6 socket
		{Family: 4, Addr: ebpfDst4, Mark: 1338}, // the exclusion mark: Envoy's and realipd's upstream dials
		{Family: 6, Addr: ebpfDst6, Mark: 1338},
		{Family: 6, Addr: ebpfDst4in, Mark: 1338},
		{Family: 4, Addr: ebpfDst4, Mark: 7},                                  // another mark is captured
		{Family: 4, Addr: ebpfLocal4},                                         // loopback is never captured
		{Family: 6, Addr: netip.MustParseAddrPort("[::ffff:127.0.0.1]:8081")}, // nor mapped loopback
	}
	want := []string{captured(ebpfDst4), captured(ebpfDst6), captured(ebpfDst4), direct(ebpfDst4), direct(ebpfDst6), direct(ebpfDst4), captured(ebpfDst4), direct(ebpfLocal4), direct(ebpfLocal4)}
	got := netnstest.RunClient(t, "TestEBPFClientProcess", dir, n.ns, dials)
	for i := range dials {
		if got[i].Err != "" || got[i].Reply != want[i] {
			t.Errorf("client dial %+v: got %+v, want %q", dials[i], got[i], want[i])
		}
	}
	// This process is outside the captured cgroup.
	if line := n.dialFromTest(t, ebpfDst4); line != direct(ebpfDst4) {
		t.Errorf("a dial from outside the cgroup got %q, want %q", line, direct(ebpfDst4))
	}

	cnt, err := c.Counters()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("counters: %+v", cnt)
	if cnt.Captured != 4 || cnt.Recorded != 4 || cnt.Answered != 4 || cnt.Excluded != 3 {
		t.Errorf("counters %+v, want 4 captured, recorded and answered, 3 excluded", cnt)
	}
	// The records go when the accepted connections close.
	if n := ebpfWaitEmpty(c.maps[mapPair], 2*time.Second); n != 0 {
		t.Errorf("%d connection records left after every connection closed", n)
	}
	if n := ebpfWaitEmpty(c.maps[mapCookie], 0); n != 0 {
		t.Errorf("%d socket-cookie records left after every connection was established", n)
	}
	links := c.Links()
	if len(links) != 4 { // getsockopt, one sockops (this process's cgroup contains the test cgroup), connect4, connect6
		t.Errorf("links %+v, want getsockopt, sockops, connect4 and connect6", links)
	}

	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	got = netnstest.RunClient(t, "TestEBPFClientProcess", dir, n.ns, dials[:3])
	for i, d := range dials[:3] {
		if w := direct(netip.AddrPortFrom(d.Addr.Addr().Unmap(), d.Addr.Port())); got[i].Reply != w {
			t.Errorf("after Close, dial %+v: got %+v, want %q", d, got[i], w)
		}
	}
	ebpfAssertNoIPTables(t, n.ns)
}

// TestEBPFExcludeMarkZero: ExcludeMark 0 excludes no socket. Every
// unmarked socket carries mark 0, so a program that compared the mark
// with it unconditionally left them all alone and captured nothing.
func TestEBPFExcludeMarkZero(t *testing.T) {
	mount := requireEBPF(t, false)
	self, err := ProcessCgroup(0)
	if err != nil {
		netnstest.Unavailablef(t, "needs to run in a cgroup v2: %v", err)
	}
	n := newEBPFNet(t)
	rel, dir := netnstest.NewCgroup(t, mount)
	c, err := AttachEBPF(EBPFOptions{Cgroup: rel, GetsockoptCgroup: self, OutboundPort: n.port})
	if err != nil {
		t.Fatalf("AttachEBPF: %v", err)
	}
	defer c.Close()
	dials := []netnstest.Dial{
		{Family: 4, Addr: ebpfDst4},
		{Family: 6, Addr: ebpfDst6},
		{Family: 6, Addr: ebpfDst4in},
		{Family: 4, Addr: ebpfDst4, Mark: 1338},
	}
	want := []string{"captured " + ebpfDst4.String(), "captured " + ebpfDst6.String(), "captured " + ebpfDst4.String(), "captured " + ebpfDst4.String()}
	got := netnstest.RunClient(t, "TestEBPFClientProcess", dir, n.ns, dials)
	for i := range dials {
		if got[i].Err != "" || got[i].Reply != want[i] {
			t.Errorf("client dial %+v: got %+v, want %q", dials[i], got[i], want[i])
		}
	}
	if cnt, err := c.Counters(); err != nil || cnt.Captured != 4 || cnt.Excluded != 0 {
		t.Errorf("counters %+v (%v), want 4 captured and none excluded", cnt, err)
	}
}

// ebpfWaitEmpty waits up to d for the hash map m to have no entry and returns
// how many it has.
func ebpfWaitEmpty(m *ebpf.Map, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		n := 0
		var k, v []byte
		it := m.Iterate()
		for it.Next(&k, &v) {
			n++
		}
		if n == 0 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEBPFAttachErrors(t *testing.T) {
	if _, err := AttachEBPF(EBPFOptions{Cgroup: "/"}); err == nil || !strings.Contains(err.Error(), "port") {
		t.Errorf("no port: %v", err)
	}
	if _, err := AttachEBPF(EBPFOptions{OutboundPort: 15001}); err == nil || !strings.Contains(err.Error(), "cgroup") {
		t.Errorf("no cgroup: %v", err)
	}
	netnstest.Require(t)
	mount := netnstest.Cgroup2Mount(t)
	_, err := AttachEBPF(EBPFOptions{Cgroup2Mount: mount, Cgroup: "/realipd-no-such-cgroup", OutboundPort: 15001})
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing cgroup: %v", err)
	}
	_, err = AttachEBPF(EBPFOptions{Cgroup2Mount: "/proc", Cgroup: "/", OutboundPort: 15001})
	if err == nil || !strings.Contains(err.Error(), "not in a cgroup v2 file system") {
		t.Errorf("not a cgroup2 mount: %v", err)
	}
	_, err = AttachEBPF(EBPFOptions{Cgroup2Mount: mount, Cgroup: "/", OutboundPort: 15001, Pin: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "not on a bpffs") {
		t.Errorf("pin outside a bpffs: %v", err)
	}
	if err := DetachEBPF(t.TempDir()); !errors.Is(err, ErrEBPFNotPinned) {
		t.Errorf("DetachEBPF of an empty directory: %v", err)
	}
}
