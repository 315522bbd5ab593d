package intercept

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/realipd/realipd/internal/netnstest"
)

// newEBPFBPFFS mounts a bpffs of the test's own and returns a directory on it.
func newEBPFBPFFS(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		netnstest.Unavailablef(t, "cannot mount a bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting the test bpffs: %v", err)
		}
	})
	return filepath.Join(dir, "realipd")
}

func ebpfLinkNames(links []EBPFLink) []string {
	var names []string
	for _, l := range links {
		names = append(names, l.Name)
	}
	return names
}

// TestEBPFPinned: a pinned capture outlives Close, is taken over in place
// by a second attach, is described by EBPFStatus, and DetachEBPF removes it.
func TestEBPFPinned(t *testing.T) {
	mount := requireEBPF(t, false)
	self, err := ProcessCgroup(0)
	if err != nil {
		netnstest.Unavailablef(t, "needs to run in a cgroup v2: %v", err)
	}
	pin := newEBPFBPFFS(t)
	n := newEBPFNet(t)
	rel, dir := netnstest.NewCgroup(t, mount)
	opts := EBPFOptions{Cgroup: rel, GetsockoptCgroup: self, OutboundPort: n.port, ExcludeMark: 1338, Pin: pin}
	dials := []netnstest.Dial{{Family: 4, Addr: ebpfDst4}}
	captured, direct := "captured "+ebpfDst4.String(), "direct "+ebpfDst4.String()

	c, err := AttachEBPF(opts)
	if err != nil {
		t.Fatalf("AttachEBPF: %v", err)
	}
	if !c.Pinned() {
		t.Error("Pinned() is false")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DetachEBPF(pin) }) // if the test fails half way
	if got := netnstest.RunClient(t, "TestEBPFClientProcess", dir, n.ns, dials); got[0].Reply != captured {
		t.Fatalf("after Close of a pinned capture: %+v, want %q", got[0], captured)
	}

	st, err := EBPFStatus(pin)
	if err != nil {
		t.Fatalf("EBPFStatus: %v", err)
	}
	if names := ebpfLinkNames(st.Links); !slices.Equal(names, []string{"getsockopt", "sockops", "connect4", "connect6"}) {
		t.Errorf("EBPFStatus links %v", names)
	}
	for _, l := range st.Links {
		if l.Name == "connect4" && (l.Target != rel || l.Hook != "cgroup/connect4" || l.LinkID == 0 || l.ProgramID == 0) {
			t.Errorf("connect4 link %+v, want it on %s", l, rel)
		}
	}
	if st.Counters.Captured != 1 || st.Counters.Answered != 1 {
		t.Errorf("EBPFStatus counters %+v, want 1 captured and answered", st.Counters)
	}

	// A second attach (a restart) takes the pinned links over: same links,
	// new programs, counters kept.
	before := map[string]EBPFLink{}
	for _, l := range st.Links {
		before[l.Name] = l
	}
	c, err = AttachEBPF(opts)
	if err != nil {
		t.Fatalf("AttachEBPF again: %v", err)
	}
	for _, l := range c.Links() {
		if b := before[l.Name]; b.LinkID != l.LinkID || b.ProgramID == l.ProgramID {
			t.Errorf("link %s: was %+v, now %+v; want the same link with a new program", l.Name, b, l)
		}
	}
	if got := netnstest.RunClient(t, "TestEBPFClientProcess", dir, n.ns, dials); got[0].Reply != captured {
		t.Errorf("after the takeover: %+v, want %q", got[0], captured)
	}
	if cnt, _ := c.Counters(); cnt.Captured != 2 {
		t.Errorf("counters after the takeover %+v, want 2 captured", cnt)
	}
	c.Close()

	if err := DetachEBPF(pin); err != nil {
		t.Fatalf("DetachEBPF: %v", err)
	}
	if got := netnstest.RunClient(t, "TestEBPFClientProcess", dir, n.ns, dials); got[0].Reply != direct {
		t.Errorf("after DetachEBPF: %+v, want %q", got[0], direct)
	}
	if _, err := EBPFStatus(pin); !errors.Is(err, ErrEBPFNotPinned) {
		t.Errorf("EBPFStatus after DetachEBPF: %v", err)
	}
	if entries, _ := os.ReadDir(pin); len(entries) != 0 {
		t.Errorf("left in the pin directory: %v", entries)
	}
}

// TestEBPFInbound: the sk_lookup program steers connections to the inbound
// ports to the capture listener, whose accepted sockets have the original
// destination as their local address; loopback destinations and other
// ports reach their own listener.
func TestEBPFInbound(t *testing.T) {
	mount := requireEBPF(t, true)
	ns := netnstest.New(t, "192.0.2.20/32", "2001:db8::20/128")
	rel, _ := netnstest.NewCgroup(t, mount) // empty: nothing is captured outbound

	var servers []*ebpfServer
	t.Cleanup(func() {
		for _, s := range servers {
			s.close()
		}
	})
	var in4, in6, mptcp net.Listener
	err := ns.Do(func() error {
		for _, a := range []string{":9090", ":9091"} {
			ln, err := net.Listen("tcp", a)
			if err != nil {
				return err
			}
			servers = append(servers, ebpfServe(ln, func(c net.Conn) string { return "app " + c.LocalAddr().String() }))
		}
		// A sockmap takes TCP sockets, and Go listens with MPTCP by default.
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		if in4, err = lc.Listen(context.Background(), "tcp4", "127.0.0.1:0"); err != nil {
			return err
		}
		if in6, err = lc.Listen(context.Background(), "tcp6", "[::1]:0"); err != nil {
			return err
		}
		if mp, err := net.Listen("tcp4", "127.0.0.1:0"); err == nil {
			mptcp = mp
		}
		inbound := func(c net.Conn) string { return "inbound " + c.LocalAddr().String() }
		servers = append(servers, ebpfServe(in4, inbound), ebpfServe(in6, inbound))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	c, err := AttachEBPF(EBPFOptions{Cgroup: rel, OutboundPort: 15001, InboundPorts: []uint16{9090}, NetNS: ns.Path()})
	if err != nil {
		t.Fatalf("AttachEBPF: %v", err)
	}
	defer c.Close()
	n := &ebpfNet{ns: ns}
	// No listener in the sockmap yet: nothing is steered.
	if got := n.dialFromTest(t, netip.MustParseAddrPort("192.0.2.20:9090")); got != "app 192.0.2.20:9090" {
		t.Errorf("before SetInboundListener: %q", got)
	}
	if mptcp != nil {
		defer mptcp.Close()
		// MPTCP, where the kernel has it: refused with a hint.
		if err := c.SetInboundListener(mptcp.(*net.TCPListener)); err != nil && !strings.Contains(err.Error(), "SetMultipathTCP(false)") {
			t.Errorf("SetInboundListener of a default Go listener: %v", err)
		}
	}
	for _, l := range []net.Listener{in4, in6} {
		if err := c.SetInboundListener(l.(*net.TCPListener)); err != nil {
			t.Fatalf("SetInboundListener: %v", err)
		}
	}
	for addr, want := range map[string]string{
		"192.0.2.20:9090":     "inbound 192.0.2.20:9090",
		"[2001:db8::20]:9090": "inbound [2001:db8::20]:9090",
		"192.0.2.20:9091":     "app 192.0.2.20:9091", // not an inbound port
		"127.0.0.1:9090":      "app 127.0.0.1:9090",  // loopback: how the capture reaches the app
		"[::1]:9090":          "app [::1]:9090",
		"[2001:db8::20]:9091": "app [2001:db8::20]:9091",
	} {
		if got := n.dialFromTest(t, netip.MustParseAddrPort(addr)); got != want {
			t.Errorf("dial %s: %q, want %q", addr, got, want)
		}
	}
	if cnt, _ := c.Counters(); cnt.Steered != 2 {
		t.Errorf("counters %+v, want 2 steered", cnt)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := n.dialFromTest(t, netip.MustParseAddrPort("192.0.2.20:9090")); got != "app 192.0.2.20:9090" {
		t.Errorf("after Close: %q", got)
	}
}

// TestEBPFDetachAtOnce: once DetachEBPF returns, no program of the
// capture is attached any more, so that the next connect goes where it
// was going ('realipd ebpf detach', then traffic). Removing the pins alone
// left the links to be released later by the kernel; a few rounds catch
// that.
func TestEBPFDetachAtOnce(t *testing.T) {
	mount := requireEBPF(t, false)
	pin := newEBPFBPFFS(t)
	rel, dir := netnstest.NewCgroup(t, mount)
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	t.Cleanup(func() { _ = DetachEBPF(pin) }) // if the test fails half way
	hooks := []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupSockOps, ebpf.AttachCGroupGetsockopt}
	for round := range 100 {
		c, err := AttachEBPF(EBPFOptions{Cgroup: rel, OutboundPort: 15001, ExcludeMark: 1338, Pin: pin})
		if err != nil {
			t.Fatalf("AttachEBPF: %v", err)
		}
		c.Close()
		if err := DetachEBPF(pin); err != nil {
			t.Fatalf("DetachEBPF: %v", err)
		}
		for _, h := range hooks {
			r, err := link.QueryPrograms(link.QueryOptions{Target: int(cg.Fd()), Attach: h})
			if err != nil {
				t.Fatalf("querying the %v programs of the cgroup: %v", h, err)
			}
			if len(r.Programs) != 0 {
				t.Fatalf("round %d: right after DetachEBPF, %d %v program(s) still attached", round, len(r.Programs), h)
			}
		}
	}
}
