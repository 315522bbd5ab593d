//go:build linux

package origdst

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/intercept"
	"github.com/realipd/realipd/internal/netnstest"
)

// The benchmarks run in the namespaces of the tests, through the same
// REDIRECT rules, and report what they compare side by side in one run.

// BenchmarkAccept: accepting a redirected connection and reading its
// original destination (Listener.AcceptOrigDst) against a plain accept of
// the same socket, through the same REDIRECT rule. Each iteration makes
// one connection of each kind, from a thread in the namespace: connect,
// accept, then reset both ends (no TIME_WAIT). Reported: connections per
// second of each and their ratio (goal: >= 0.95).
func BenchmarkAccept(b *testing.B) {
	w := newWorld(b)
	w.rules(b, intercept.ModeRedirect, intercept.IPv4)
	var ln *Listener
	w.a.Must(b, func() error {
		lc := ListenConfig{Mode: ModeRedirect}
		var err error
		ln, err = lc.Listen(context.Background(), netip.MustParseAddrPort("0.0.0.0:15001"))
		return err
	})
	defer ln.Close()
	target := netip.AddrPortFrom(w.bIP[intercept.IPv4], 80)
	raddr := net.TCPAddrFromAddrPort(target)
	var plain, lookup time.Duration
	err := w.a.Do(func() error {
		connect := func() (*net.TCPConn, error) { return net.DialTCP("tcp4", nil, raddr) }
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			c, err := connect()
			if err != nil {
				return err
			}
			s, err := ln.tcp.AcceptTCP()
			if err != nil {
				return err
			}
			abort(s)
			abort(c)
			t1 := time.Now()
			if c, err = connect(); err != nil {
				return err
			}
			oc, err := ln.AcceptOrigDst()
			if err != nil {
				return err
			}
			if oc.OriginalDst() != target {
				return fmt.Errorf("original destination %v, want %v", oc.OriginalDst(), target)
			}
			abort(oc.TCPConn)
			abort(c)
			plain += t1.Sub(t0)
			lookup += time.Since(t1)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/plain.Seconds(), "plain-conns/s")
	b.ReportMetric(float64(b.N)/lookup.Seconds(), "origdst-conns/s")
	b.ReportMetric(plain.Seconds()/lookup.Seconds(), "ratio")
}

// BenchmarkThroughput: bulk bytes from a client through the native
// listener to an upstream (redirected, spliced) against the same bytes
// sent directly, on two paths: all on loopback (a REDIRECT rule of the
// benchmark's own for 127.0.0.2:9000, since the interception rules never
// capture local destinations), and across the veth pair to the peer
// namespace (the interception rules). Each iteration sends 16 MiB on each
// connection in turn and waits for the receiver's acknowledgement.
// Reported: MB/s of each and the ratio of proxied to direct on each path
// (goal: >= 0.9). On loopback a third sender goes through the least a
// user-space relay can do (io.Copy both ways, spliced): ratio-relay-loopback
// is what any relay keeps of the direct rate there, ratio-to-relay what
// realipd keeps of that relay's.
func BenchmarkThroughput(b *testing.B) {
	const chunk = 16 << 20
	w := newWorld(b)
	w.rules(b, intercept.ModeRedirect, intercept.IPv4)
	w.a.Run(b, fmt.Sprintf("*nat\n-I OUTPUT 1 -p tcp -d 127.0.0.2/32 --dport 9000 -m mark ! --mark %d -j REDIRECT --to-ports %d\nCOMMIT\n", upstreamMark, outboundPort),
		"iptables-restore", "--noflush")
	w.serve(b, Options{Mode: ModeRedirect, Listen: []netip.AddrPort{anyAddr(intercept.IPv4, outboundPort)}}, Settings{})
	sink := func(ns *netnstest.Netns, addr string) net.Listener {
		var ln net.Listener
		ns.Must(b, func() error {
			var err error
			ln, err = net.Listen("tcp4", addr)
			return err
		})
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					buf := make([]byte, 256<<10)
					for {
						for rest := chunk; rest > 0; {
							m, err := c.Read(buf[:min(len(buf), rest)])
							if err != nil {
								return
							}
							rest -= m
						}
						if _, err := c.Write([]byte{1}); err != nil {
							return
						}
					}
				}()
			}
		}()
		b.Cleanup(func() { ln.Close() })
		return ln
	}
	local := sink(w.a, "127.0.0.2:9000")
	remote := sink(w.b, "10.77.0.2:9000")
	// The least a user-space relay can do on the same path: accept, dial,
	// io.Copy both ways (spliced), no original destination, no policy.
	var relayLn net.Listener
	w.a.Must(b, func() error {
		var err error
		relayLn, err = net.Listen("tcp4", "127.0.0.3:9001")
		return err
	})
	b.Cleanup(func() { relayLn.Close() })
	relayDial := w.a.Pool(b, 1)
	go func() {
		for {
			c, err := relayLn.Accept()
			if err != nil {
				return
			}
			var up net.Conn
			relayDial(func() {
				d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
					var serr error
					rc.Control(func(fd uintptr) { serr = setMark(int(fd), upstreamMark) })
					return serr
				}}
				up, err = d.Dial("tcp4", local.Addr().String())
			})
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
			go func() { io.Copy(c, up); c.(*net.TCPConn).CloseWrite() }()
		}
	}()
	dialIn := func(addr string, mark int) *net.TCPConn {
		var c net.Conn
		w.a.Must(b, func() error {
			d := net.Dialer{}
			if mark != 0 {
				d.Control = func(_, _ string, rc syscall.RawConn) error {
					var serr error
					rc.Control(func(fd uintptr) { serr = setMark(int(fd), uint32(mark)) })
					return serr
				}
			}
			var err error
			c, err = d.Dial("tcp4", addr)
			return err
		})
		b.Cleanup(func() { c.Close() })
		return c.(*net.TCPConn)
	}
	// The mark keeps a direct connection from being captured.
	conns := []struct {
		name string
		c    *net.TCPConn
		took time.Duration
	}{
		{"loopback", dialIn(local.Addr().String(), upstreamMark), 0},
		{"proxied-loopback", dialIn(local.Addr().String(), 0), 0},
		{"relay-loopback", dialIn(relayLn.Addr().String(), upstreamMark), 0},
		{"veth", dialIn(remote.Addr().String(), upstreamMark), 0},
		{"proxied-veth", dialIn(remote.Addr().String(), 0), 0},
	}
	buf := make([]byte, 256<<10)
	ack := make([]byte, 1)
	send := func(c *net.TCPConn) error {
		for sent := 0; sent < chunk; {
			n, err := c.Write(buf[:min(len(buf), chunk-sent)])
			if err != nil {
				return err
			}
			sent += n
		}
		_, err := io.ReadFull(c, ack)
		return err
	}
	for i := range conns { // warm up
		if err := send(conns[i].c); err != nil {
			b.Fatalf("%s: %v", conns[i].name, err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range conns {
			t0 := time.Now()
			if err := send(conns[j].c); err != nil {
				b.Fatalf("%s: %v", conns[j].name, err)
			}
			conns[j].took += time.Since(t0)
		}
	}
	b.StopTimer()
	mbps := func(d time.Duration) float64 { return float64(b.N) * chunk / 1e6 / d.Seconds() }
	for _, c := range conns {
		b.ReportMetric(mbps(c.took), c.name+"-MB/s")
	}
	b.ReportMetric(conns[0].took.Seconds()/conns[1].took.Seconds(), "ratio-loopback")
	b.ReportMetric(conns[0].took.Seconds()/conns[2].took.Seconds(), "ratio-relay-loopback")
	b.ReportMetric(conns[2].took.Seconds()/conns[1].took.Seconds(), "ratio-to-relay")
	b.ReportMetric(conns[3].took.Seconds()/conns[4].took.Seconds(), "ratio-veth")
}

// BenchmarkIdleConnections holds 10,000 proxied connections open, idle:
// the clients and the upstream ends live in two helper processes (the
// test binary again, in the namespaces), so that this process holds only
// the native listener's sockets and its Go memory is the listener's.
// Reported: the Go heap and stacks per connection (goal: <= 32 KiB), the
// file descriptors per connection, the rate at which they were set up,
// and, once everything is closed again, the file descriptors left
// (none). RLIMIT_NOFILE is raised as far as the process may; when its
// hard limit does not allow two sockets per connection, fewer connections
// are held, and "conns" says how many.
func BenchmarkIdleConnections(b *testing.B) {
	want := 10000
	w := newWorld(b)
	w.rules(b, intercept.ModeRedirect, intercept.IPv4)
	target := netip.AddrPortFrom(w.bIP[intercept.IPv4], 80)
	n := want
	if limit := raiseNoFile(b, uint64(2*want+512)); (int(limit)-countFDs(b)-256)/2 < n {
		n = (int(limit) - countFDs(b) - 256) / 2
		b.Logf("RLIMIT_NOFILE allows %d files (hard limit; raising it needs CAP_SYS_RESOURCE): holding %d proxied connections, not %d", limit, n, want)
	}
	var perConn, fdsPerConn, rate float64
	for i := 0; i < b.N; i++ {
		r := w.serve(b, Options{Mode: ModeRedirect, Listen: []netip.AddrPort{anyAddr(intercept.IPv4, outboundPort)}, MaxConnections: n + 100}, Settings{})
		up := startHelper(b, w.b, "upstream", target, n)
		up.wait(b, "READY")
		fds, mem := countFDs(b), settle()
		start := time.Now()
		clients := startHelper(b, w.a, "clients", target, n)
		clients.wait(b, "HELD")
		up.wait(b, "HELD")
		r.waitMetric(b, "active_connections", "", float64(n))
		rate = float64(n) / time.Since(start).Seconds()
		perConn = float64(settle()-mem) / float64(n)
		fdsPerConn = float64(countFDs(b)-fds) / float64(n)
		clients.stop(b)
		up.stop(b)
		r.waitMetric(b, "active_connections", "", 0)
		if err := r.stop(); err != nil {
			b.Fatal(err)
		}
		left := countFDs(b) - fds
		for range 50 {
			if left <= 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
			settle() // splice pipes sit in a pool that the GC empties
			left = countFDs(b) - fds
		}
		if left > 0 {
			b.Errorf("%d file descriptors left open after the connections closed", left)
		}
		b.ReportMetric(float64(max(left, 0)), "fds-left")
	}
	b.ReportMetric(float64(n), "conns")
	b.ReportMetric(perConn/1024, "KiB/conn")
	b.ReportMetric(fdsPerConn, "fds/conn")
	b.ReportMetric(rate, "setup-conns/s")
}

// BenchmarkIdleHTTPConnections: how much realipd holds per idle
// keep-alive connection of the HTTP mode (a request served, the client
// and the upstream connection both kept): 10,000 of them (or as many as
// RLIMIT_NOFILE allows), Go heap and stacks per connection, and file
// descriptors per connection (the client's and the upstream's).
func BenchmarkIdleHTTPConnections(b *testing.B) {
	want := 10000
	w := newWorld(b)
	w.rules(b, intercept.ModeRedirect, intercept.IPv4)
	target := netip.AddrPortFrom(w.bIP[intercept.IPv4], 8080)
	n := want
	if limit := raiseNoFile(b, uint64(2*want+512)); (int(limit)-countFDs(b)-256)/2 < n {
		n = (int(limit) - countFDs(b) - 256) / 2
		b.Logf("RLIMIT_NOFILE allows %d files: holding %d connections, not %d", limit, n, want)
	}
	var perConn, fdsPerConn float64
	for i := 0; i < b.N; i++ {
		r := w.serve(b, Options{Mode: ModeRedirect, Listen: []netip.AddrPort{anyAddr(intercept.IPv4, outboundPort)}, HTTPPorts: []uint16{target.Port()}, MaxConnections: n + 100}, Settings{})
		up := startHelper(b, w.b, "httpupstream", target, n)
		up.wait(b, "READY")
		fds, mem := countFDs(b), settle()
		clients := startHelper(b, w.a, "httpclients", target, n)
		clients.wait(b, "HELD")
		up.wait(b, "HELD")
		r.waitMetric(b, "active_connections", "", float64(n))
		perConn = float64(settle()-mem) / float64(n)
		fdsPerConn = float64(countFDs(b)-fds) / float64(n)
		clients.stop(b)
		up.stop(b)
		r.waitMetric(b, "active_connections", "", 0)
		if err := r.stop(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n), "conns")
	b.ReportMetric(perConn/1024, "KiB/conn")
	b.ReportMetric(fdsPerConn, "fds/conn")
}

// settle collects garbage and returns the Go heap and stacks in use.
func settle() uint64 {
	var ms runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc + ms.StackInuse
}

// raiseNoFile raises RLIMIT_NOFILE's soft limit towards want, as far as
// the hard limit allows (or beyond it, with CAP_SYS_RESOURCE), and
// returns the limit in force.
func raiseNoFile(b *testing.B, want uint64) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	if lim.Cur >= want {
		return lim.Cur
	}
	raised := syscall.Rlimit{Cur: want, Max: max(lim.Max, want)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
		return want
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	return lim.Cur
}

func countFDs(b *testing.B) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		b.Fatal(err)
	}
	return len(ents)
}

// Helper processes: the test binary again, run in a namespace with
// TestHelperProcess selected and these variables set.
const (
	envHelper       = "REALIPD_ORIGDST_HELPER" // clients or upstream
	envHelperTarget = "REALIPD_ORIGDST_HELPER_TARGET"
	envHelperConns  = "REALIPD_ORIGDST_HELPER_CONNS"
)

type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines *bufio.Scanner
}

// startHelper starts a helper process in ns: "upstream" listens on target
// and accepts n connections; "clients" makes n connections to it. Each
// says READY, then HELD once it holds them, and closes them and exits when
// its stdin closes.
func startHelper(b *testing.B, ns *netnstest.Netns, mode string, target netip.AddrPort, n int) *helper {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns.Name, exe, "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envHelper+"="+mode, envHelperTarget+"="+target.String(), fmt.Sprintf("%s=%d", envHelperConns, n))
	cmd.Stderr = os.Stderr
	h := &helper{cmd: cmd}
	if h.stdin, err = cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.cmd.Process.Kill(); h.cmd.Wait() })
	h.lines = bufio.NewScanner(out)
	return h
}

// wait reads the helper's output until a line starting with word.
func (h *helper) wait(b *testing.B, word string) {
	b.Helper()
	for h.lines.Scan() {
		if strings.HasPrefix(h.lines.Text(), word) {
			return
		}
	}
	b.Fatalf("helper %v ended before %s: %v", h.cmd.Args, word, h.lines.Err())
}

// stop closes the helper's stdin and waits for it to exit.
func (h *helper) stop(b *testing.B) {
	b.Helper()
	h.stdin.Close()
	if err := h.cmd.Wait(); err != nil {
		b.Fatalf("helper %v: %v", h.cmd.Args, err)
	}
}

// TestHelperProcess is not a test: it is the helper processes of
// BenchmarkIdleConnections, and does nothing otherwise.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(envHelper)
	if mode == "" {
		return
	}
	n, _ := strconv.Atoi(os.Getenv(envHelperConns))
	target := os.Getenv(envHelperTarget)
	conns := make([]net.Conn, 0, n)
	switch mode {
	case "upstream":
		ln, err := net.Listen("tcp", target)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		fmt.Println("READY")
		for len(conns) < n {
			c, err := ln.Accept()
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(3)
			}
			conns = append(conns, c)
		}
	case "clients":
		fmt.Println("READY")
		for len(conns) < n {
			c, err := net.Dial("tcp", target)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(3)
			}
			conns = append(conns, c)
		}
	case "httpupstream":
		// Answers one request on each connection, then holds it.
		ln, err := net.Listen("tcp", target)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		fmt.Println("READY")
		for len(conns) < n {
			c, err := ln.Accept()
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(3)
			}
			conns = append(conns, c)
			go func() {
				if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			}()
		}
	case "httpclients":
		// Each connection sends one keep-alive request, reads its
		// answer, and is held.
		fmt.Println("READY")
		for len(conns) < n {
			c, err := net.Dial("tcp", target)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(3)
			}
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != 200 {
				fmt.Fprintln(os.Stderr, "httpclients:", err)
				os.Exit(3)
			}
			io.Copy(io.Discard, resp.Body)
			conns = append(conns, c)
		}
	}
	fmt.Println("HELD", len(conns))
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
	os.Exit(0)
}

// BenchmarkHTTPMode: keep-alive GET requests from the pod to an app of the
// peer, through the native listener's HTTP mode (resolution, a policy,
// x-real-ip, X-Forwarded-For, forwarding over a kept-alive upstream
// connection) against the same requests sent to the app directly (the
// client's socket carries the mark the rules skip). Reported: requests per
// second of each and their ratio; allocations are the whole process's
// (client, realipd and app) per proxied request.
func BenchmarkHTTPMode(b *testing.B) {
	w := newWorld(b)
	w.rules(b, intercept.ModeRedirect, intercept.IPv4)
	target := netip.AddrPortFrom(w.bIP[intercept.IPv4], 8080)
	w.httpApp(b, target)
	rec := &recorder{}
	pod := netip.PrefixFrom(w.aIP[intercept.IPv4], 32)
	w.serve(b, Options{Mode: ModeRedirect, Listen: both(outboundPort), HTTPPorts: []uint16{8080}}, Settings{
		Chain:    rec.chain(b),
		Resolver: resolver(b, clientip.Config{Strategy: clientip.RightmostTrustedRange, TrustedCIDRs: []netip.Prefix{pod}}),
	})
	inA := w.a.Pool(b, 2)
	newClient := func(mark int) *http.Client {
		d := &net.Dialer{Timeout: 5 * time.Second}
		if mark != 0 {
			d.Control = func(_, _ string, rc syscall.RawConn) error {
				var serr error
				rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, mark) })
				return serr
			}
		}
		return &http.Client{Transport: &http.Transport{Proxy: nil, MaxConnsPerHost: 1, DisableCompression: true,
			DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
				inA(func() { c, err = d.DialContext(ctx, network, addr) })
				return c, err
			}}}
	}
	get := func(c *http.Client) {
		resp, err := c.Get("http://" + target.String() + "/bench")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	direct, proxied := newClient(upstreamMark), newClient(0)
	get(direct)
	get(proxied)
	var tDirect, tProxied time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		get(direct)
		t1 := time.Now()
		get(proxied)
		tProxied += time.Since(t1)
		tDirect += t1.Sub(t0)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/tDirect.Seconds(), "direct-req/s")
	b.ReportMetric(float64(b.N)/tProxied.Seconds(), "http-mode-req/s")
	b.ReportMetric(tDirect.Seconds()/tProxied.Seconds(), "ratio")
}
