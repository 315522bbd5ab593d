package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/realipd/realipd/intercept"
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

// ebpfWorld is what the serve tests need: a namespace with an upstream on
// 192.0.2.30:8080, a test transparent proxy on 127.0.0.1:P inside it that
// only reads SO_ORIGINAL_DST and forwards there (its upstream dials carry
// the exclusion mark, like Envoy's), and an empty cgroup for the client.
type ebpfWorld struct {
	ns        *netnstest.Netns
	cgroupRel string
	cgroupDir string
	self      string // this process's cgroup: where the proxy runs
	port      int
	stop      chan struct{} // closed when the test ends
	proxied   atomic.Int64
	lastDst   atomic.Value // netip.AddrPort
}

var ebpfUpstream = netip.MustParseAddrPort("192.0.2.30:8080")

func newEBPFWorld(t *testing.T) *ebpfWorld {
	t.Helper()
	netnstest.Require(t)
	mount := netnstest.Cgroup2Mount(t)
	if err := intercept.ProbeEBPF(false); err != nil {
		netnstest.Unavailablef(t, "needs a kernel that runs the eBPF capture: %v", err)
	}
	self, err := intercept.ProcessCgroup(0)
	if err != nil {
		netnstest.Unavailablef(t, "needs to run in a cgroup v2: %v", err)
	}
	w := &ebpfWorld{ns: netnstest.New(t, ebpfUpstream.Addr().String()+"/32"), self: self}
	w.cgroupRel, w.cgroupDir = netnstest.NewCgroup(t, mount)

	var wg sync.WaitGroup
	var lns []net.Listener
	w.stop = make(chan struct{})
	t.Cleanup(func() {
		close(w.stop)
		for _, ln := range lns {
			ln.Close()
		}
		wg.Wait()
	})
	// One thread in the namespace makes the listeners, then every upstream
	// dial of the proxy, until the proxy's listener closes.
	ready := make(chan error, 1)
	go func() {
		_ = w.ns.Do(func() error {
			up, err := net.Listen("tcp", ebpfUpstream.String())
			if err != nil {
				ready <- err
				return err
			}
			proxy, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				up.Close()
				ready <- err
				return err
			}
			lns = append(lns, up, proxy)
			w.port = proxy.Addr().(*net.TCPAddr).Port
			wg.Go(func() {
				for {
					c, err := up.Accept()
					if err != nil {
						return
					}
					fmt.Fprintf(c, "upstream %s\n", ebpfUpstream)
					c.Close()
				}
			})
			dials := make(chan ebpfProxyDial)
			wg.Go(func() {
				for {
					c, err := proxy.Accept()
					if err != nil {
						return
					}
					wg.Go(func() { w.forward(c, dials) })
				}
			})
			ready <- nil
			for {
				select {
				case d := <-dials:
					d.reply <- ebpfDialMarked(d.dst)
				case <-w.stop:
					return nil
				}
			}
		})
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	return w
}

// ebpfProxyDial asks the namespace thread for an upstream connection.
type ebpfProxyDial struct {
	dst   netip.AddrPort
	reply chan ebpfDialResult
}

type ebpfDialResult struct {
	c   net.Conn
	err error
}

func ebpfDialMarked(dst netip.AddrPort) ebpfDialResult {
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		if cerr := rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, 1338) }); cerr != nil {
			return cerr
		}
		return err
	}}
	c, err := d.Dial("tcp", dst.String())
	return ebpfDialResult{c, err}
}

// forward is the whole transparent proxy: SO_ORIGINAL_DST, dial, copy.
func (w *ebpfWorld) forward(c net.Conn, dials chan<- ebpfProxyDial) {
	defer c.Close()
	dst, err := netnstest.OriginalDst(c.(*net.TCPConn))
	if err != nil {
		fmt.Fprintf(c, "proxy: %v\n", err)
		return
	}
	w.lastDst.Store(dst)
	reply := make(chan ebpfDialResult, 1)
	select {
	case dials <- ebpfProxyDial{dst, reply}:
	case <-w.stop:
		return
	}
	r := <-reply
	if r.err != nil {
		fmt.Fprintf(c, "proxy: %v\n", r.err)
		return
	}
	defer r.c.Close()
	w.proxied.Add(1)
	go func() { _, _ = io.Copy(r.c, c) }()
	_, _ = io.Copy(c, r.c)
}

func (w *ebpfWorld) config(t *testing.T, extra string) string {
	return writeFile(t, "ebpf.yaml", fmt.Sprintf(`
extproc:
  listen: 127.0.0.1:0
xds:
  enabled: false
admin:
  listen: 127.0.0.1:0
intercept:
  ebpf:
    enabled: true
    cgroup: %s
    getsockopt_cgroup: %s
    outbound_port: %d
%s`, w.cgroupRel, w.self, w.port, extra))
}

// dial runs a client in the captured cgroup and returns its reply.
func (w *ebpfWorld) dial(t *testing.T) string {
	t.Helper()
	r := netnstest.RunClient(t, "TestEBPFClientProcess", w.cgroupDir, w.ns, []netnstest.Dial{{Family: 4, Addr: ebpfUpstream}})[0]
	if r.Err != "" {
		t.Fatalf("client: %s", r.Err)
	}
	return r.Reply
}

// startServe runs serve in-process until the returned stop is called.
func startServeEBPF(t *testing.T, cfg string) (admin string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	logs := newLogWatch(map[string]string{
		"admin": `msg="admin listening".* addr=(\S+)`,
		"ebpf":  `msg="eBPF capture (attached)"`,
	})
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", cfg}, io.Discard, logs) }()
	select {
	case <-logs.ready:
	case err := <-done:
		cancel()
		t.Fatalf("serve returned before listening: %v\n%s", err, logs)
	}
	return logs.value("admin"), func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return fmt.Errorf("serve did not stop\n%s", logs)
		}
	}
}

func ebpfScrape(t *testing.T, admin string) string {
	t.Helper()
	res, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func ebpfMetricLines(all string, prefix string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(all))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			out = append(out, sc.Text())
		}
	}
	return out
}

// TestServeEBPF: serve attaches the capture; a client in the captured cgroup
// reaches the upstream through the transparent proxy, which learnt the
// destination from a plain getsockopt(SO_ORIGINAL_DST); SIGTERM (the end of
// ctx) detaches it.
func TestServeEBPF(t *testing.T) {
	w := newEBPFWorld(t)
	want := "upstream " + ebpfUpstream.String()
	if got := w.dial(t); got != want || w.proxied.Load() != 0 {
		t.Fatalf("before serve: %q (proxied %d)", got, w.proxied.Load())
	}
	admin, stop := startServeEBPF(t, w.config(t, ""))
	if got := w.dial(t); got != want || w.proxied.Load() != 1 {
		t.Errorf("with serve: %q, proxied %d; want %q through the proxy", got, w.proxied.Load(), want)
	}
	if dst, _ := w.lastDst.Load().(netip.AddrPort); dst != ebpfUpstream {
		t.Errorf("the proxy's SO_ORIGINAL_DST = %v, want %v", dst, ebpfUpstream)
	}
	m := ebpfScrape(t, admin)
	for _, line := range []string{
		"realipd_ebpf_attached 1",
		"realipd_ebpf_captured_connections_total 1",
		`realipd_ebpf_original_dst_lookups_total{result="answered"} 1`,
		"realipd_ebpf_excluded_connections_total 0",
	} {
		if !strings.Contains(m, line+"\n") {
			t.Errorf("metrics lack %q:\n%s", line, strings.Join(ebpfMetricLines(m, "realipd_ebpf"), "\n"))
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	if got := w.dial(t); got != want || w.proxied.Load() != 1 {
		t.Errorf("after serve stopped: %q, proxied %d; want the upstream directly", got, w.proxied.Load())
	}
}

// TestServeEBPFPinned: with intercept.ebpf.pin the capture outlives serve;
// 'realipd ebpf status' shows it and 'realipd ebpf detach' removes it.
func TestServeEBPFPinned(t *testing.T) {
	w := newEBPFWorld(t)
	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, ""); err != nil {
		netnstest.Unavailablef(t, "cannot mount a bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bpffs, unix.MNT_DETACH) })
	pin := filepath.Join(bpffs, "realipd")
	cfg := w.config(t, "    pin: "+pin+"\n")
	t.Cleanup(func() { _ = intercept.DetachEBPF(pin) })

	_, stop := startServeEBPF(t, cfg)
	if err := stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	for _, name := range []string{"link_connect4", "link_connect6", "link_sockops", "link_getsockopt", "counters"} {
		if _, err := os.Stat(filepath.Join(pin, name)); err != nil {
			t.Errorf("after serve stopped, the pinned %s: %v", name, err)
		}
	}
	want := "upstream " + ebpfUpstream.String()
	if got := w.dial(t); got != want || w.proxied.Load() != 1 {
		t.Errorf("after serve stopped, pinned: %q, proxied %d; want it through the proxy", got, w.proxied.Load())
	}

	out, errOut, code := runCmd(t, "ebpf", "status", "--config", cfg)
	if code != 0 || !strings.Contains(out, "connect4") || !strings.Contains(out, w.cgroupRel) || !strings.Contains(out, "captured 1,") {
		t.Errorf("ebpf status: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runCmd(t, "ebpf", "detach", "--config", cfg)
	if code != 0 {
		t.Fatalf("ebpf detach: exit %d\n%s%s", code, out, errOut)
	}
	if got := w.dial(t); got != want || w.proxied.Load() != 1 {
		t.Errorf("after ebpf detach: %q, proxied %d; want the upstream directly", got, w.proxied.Load())
	}
	if out, _, code := runCmd(t, "ebpf", "status", "--config", cfg); code != 1 || !strings.Contains(out, "no eBPF capture is pinned") {
		t.Errorf("ebpf status after detach: exit %d\n%s", code, out)
	}

	// attach (an init container) and detach again, without serve.
	out, errOut, code = runCmd(t, "ebpf", "attach", "--config", cfg)
	if code != 0 || !strings.Contains(out, "attached and pinned") {
		t.Fatalf("ebpf attach: exit %d\n%s%s", code, out, errOut)
	}
	if got := w.dial(t); got != want || w.proxied.Load() != 2 {
		t.Errorf("after ebpf attach: %q, proxied %d; want it through the proxy", got, w.proxied.Load())
	}
	if _, _, code := runCmd(t, "ebpf", "detach", "--pin", pin); code != 0 {
		t.Errorf("ebpf detach --pin: exit %d", code)
	}
}

// TestServeEBPFFailsClearly: a capture that cannot attach stops serve with
// the role's name and the reason.
func TestServeEBPFFailsClearly(t *testing.T) {
	cfg := writeFile(t, "ebpf.yaml", `
extproc: {listen: 127.0.0.1:0}
xds: {enabled: false}
admin: {enabled: false}
intercept:
  ebpf: {enabled: true, cgroup: /realipd-no-such-cgroup-for-sure}
`)
	_, errOut, code := runCmd(t, "serve", "--config", cfg)
	if code != 1 || !strings.Contains(errOut, "the ebpf role cannot start") {
		t.Errorf("exit %d, stderr:\n%s", code, errOut)
	}
	if _, err := intercept.FindCgroup2Mount(); err == nil && !strings.Contains(errOut, "realipd-no-such-cgroup-for-sure: no such file or directory") {
		t.Errorf("the error does not name the missing cgroup:\n%s", errOut)
	}
}
