//go:build linux

package origdst

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/intercept"
	"github.com/realipd/realipd/internal/netnstest"
	"github.com/realipd/realipd/plugins"
)

// The tests below run the native listener in a network namespace ("the
// pod", a) with the real iptables rules of the intercept package, next to
// a peer namespace (b) on a veth pair: a holds realipd and the clients of
// outbound connections, b the servers they reach and the clients of
// inbound ones. The server's listeners are bound on a thread inside a, and
// its upstream dials run on threads inside a (dialOn); everything else runs
// on ordinary goroutines, as the sockets stay in their namespace.

const (
	outboundPort = 15001
	inboundPort  = 15006
	upstreamMark = 1338
	tproxyMark   = 1337
)

// world is the two namespaces and their addresses.
type world struct {
	a, b     *netnstest.Netns
	aIP, bIP map[intercept.Family]netip.Addr
	dialOn   func(func())
}

func newWorld(t testing.TB) *world {
	t.Helper()
	w := &world{a: netnstest.New(t), b: netnstest.New(t)}
	netnstest.Veth(t, w.a, w.b, []string{"10.77.0.1/24", "fd77::1/64"}, []string{"10.77.0.2/24", "fd77::2/64"})
	w.aIP = map[intercept.Family]netip.Addr{intercept.IPv4: netip.MustParseAddr("10.77.0.1"), intercept.IPv6: netip.MustParseAddr("fd77::1")}
	w.bIP = map[intercept.Family]netip.Addr{intercept.IPv4: netip.MustParseAddr("10.77.0.2"), intercept.IPv6: netip.MustParseAddr("fd77::2")}
	w.dialOn = w.a.Pool(t, 8)
	return w
}

// rules applies the interception rules of mode for f in a (and removes
// them when the test ends).
func (w *world) rules(t testing.TB, mode intercept.Mode, f intercept.Family) {
	t.Helper()
	opts := intercept.IPTablesOptions{
		Mode: mode, OutboundPort: outboundPort, InboundPort: inboundPort,
		ExcludeUIDs: []uint32{1337}, Mark: upstreamMark, TProxyMark: tproxyMark, RouteTable: 133,
		IncludeAllOutbound: true, IncludeAllInbound: true,
	}
	w.a.Must(t, func() error { return intercept.ApplyIPTables(context.Background(), opts, f) })
	t.Cleanup(func() {
		if err := w.a.Do(func() error { return intercept.RemoveIPTables(context.Background(), opts, f) }); err != nil {
			t.Error(err)
		}
	})
}

// running is a Server serving in a.
type running struct {
	srv  *Server
	reg  *prometheus.Registry
	lns  []*Listener
	stop func() error // cancels Serve's ctx and returns what it returned
}

// serve starts a Server in a; it is stopped when the test ends.
func (w *world) serve(t testing.TB, opts Options, s Settings) *running {
	t.Helper()
	r := &running{reg: prometheus.NewRegistry()}
	opts.Registerer = r.reg
	if opts.Mark == 0 {
		opts.Mark = upstreamMark
	}
	d, err := decide.New(s, decide.NewDecisionLog(opts.Logger, decide.DecisionLogOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(opts, decide.NewCurrent(d))
	if err != nil {
		t.Fatal(err)
	}
	srv.dialOn = w.dialOn
	r.srv = srv
	w.a.Must(t, func() error {
		var err error
		r.lns, err = srv.Bind(context.Background())
		return err
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeListeners(ctx, r.lns) }()
	var once sync.Once
	var result error
	r.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(30 * time.Second):
				result = fmt.Errorf("ServeListeners did not return")
			}
		})
		return result
	}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Error(err)
		}
	})
	for srv.Ready(ctx) != nil {
		time.Sleep(time.Millisecond)
	}
	return r
}

// metric returns the value of a counter or gauge of r's registry, summed
// over its series with the given label value (if any).
func (r *running) metric(t testing.TB, name, label string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "realipd_origdst_"+name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetValue() == label }) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

// waitMetric waits until a metric has the wanted value.
func (r *running) waitMetric(t testing.TB, name, label string, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := r.metric(t, name, label)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("realipd_origdst_%s{%s} = %v, want %v", name, label, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// upstream is a test server: to each connection it sends a greeting
// ("hi <its local address>"), reads until EOF, then answers "got <what it
// read>" and closes: a client that half-closes still gets the answer.
type upstream struct {
	ln       net.Listener
	accepted atomic.Int32
	mu       sync.Mutex
	peers    []netip.AddrPort
	got      []string
	hold     chan struct{} // when not nil, the answer waits for it to close
}

func (w *world) upstream(t testing.TB, ns *netnstest.Netns, addr netip.AddrPort) *upstream {
	t.Helper()
	u := &upstream{}
	ns.Must(t, func() error {
		var err error
		u.ln, err = net.Listen("tcp", addr.String())
		return err
	})
	t.Cleanup(func() { u.ln.Close() })
	go func() {
		for {
			c, err := u.ln.Accept()
			if err != nil {
				return
			}
			u.accepted.Add(1)
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				fmt.Fprintf(c, "hi %s\n", c.LocalAddr())
				b, _ := io.ReadAll(c)
				u.mu.Lock()
				u.peers = append(u.peers, addrPortOf(c.RemoteAddr()))
				u.got = append(u.got, string(b))
				hold := u.hold
				u.mu.Unlock()
				if hold != nil {
					<-hold
				}
				fmt.Fprintf(c, "got %s\n", b)
			}()
		}
	}()
	return u
}

func (u *upstream) received() (peers []netip.AddrPort, got []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.peers), slices.Clone(u.got)
}

// dial connects from ns to addr.
func dial(t testing.TB, ns *netnstest.Netns, addr netip.AddrPort) *net.TCPConn {
	t.Helper()
	var c net.Conn
	ns.Must(t, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr.String(), 5*time.Second)
		return err
	})
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c.(*net.TCPConn)
}

// exchange reads the greeting, sends payload, half-closes and reads the
// rest: what an upstream's client sees.
func exchange(c *net.TCPConn, payload string) (greeting, rest string, err error) {
	br := bufio.NewReader(c)
	if greeting, err = br.ReadString('\n'); err != nil {
		return greeting, "", fmt.Errorf("greeting: %w", err)
	}
	if _, err = io.WriteString(c, payload); err != nil {
		return greeting, "", err
	}
	if err = c.CloseWrite(); err != nil {
		return greeting, "", err
	}
	b, err := io.ReadAll(br)
	return strings.TrimSpace(greeting), string(b), err
}

// refusedAtOnce connects from ns to addr and checks that the connection
// is closed without a byte. The reset may come so fast that the connect
// itself reports it.
func refusedAtOnce(t testing.TB, ns *netnstest.Netns, addr netip.AddrPort) {
	t.Helper()
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr.String(), 5*time.Second)
		return err
	})
	if errors.Is(err, syscall.ECONNRESET) {
		return
	}
	if err != nil {
		t.Fatalf("connecting to %v: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	b, err := io.ReadAll(c)
	if len(b) > 0 {
		t.Errorf("a refused connection sent %q (%v)", b, err)
	}
}

// refusedAfter checks that c, which wrote something, is closed without a
// byte.
func refusedAfter(t testing.TB, c *net.TCPConn) {
	t.Helper()
	b, err := io.ReadAll(c)
	if len(b) > 0 {
		t.Errorf("a refused connection sent %q (%v)", b, err)
	}
}

// recorder is a policy that records what it is asked and denies the
// client IPs in deny.
type recorder struct {
	mu   sync.Mutex
	reqs []plugins.Request
	deny map[netip.Addr]bool
}

func (r *recorder) Decide(_ context.Context, req *plugins.Request) (plugins.Decision, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, *req)
	return plugins.Decision{Deny: r.deny[req.ClientIP]}, nil
}

func (r *recorder) last(t testing.TB) plugins.Request {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.reqs) == 0 {
		t.Fatal("the policy was never asked")
	}
	return r.reqs[len(r.reqs)-1]
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

func (r *recorder) chain(t testing.TB) *plugins.Chain {
	t.Helper()
	c, err := plugins.NewChain(plugins.ChainEntry{Name: "recorder", Policy: r})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func families() []intercept.Family { return []intercept.Family{intercept.IPv4, intercept.IPv6} }

func anyAddr(f intercept.Family, port uint16) netip.AddrPort {
	if f == intercept.IPv6 {
		return netip.AddrPortFrom(netip.IPv6Unspecified(), port)
	}
	return netip.AddrPortFrom(netip.IPv4Unspecified(), port)
}

func both(port uint16) []netip.AddrPort {
	return []netip.AddrPort{anyAddr(intercept.IPv4, port), anyAddr(intercept.IPv6, port)}
}

// TestRedirectNetns: a client in the pod connects to a server of the peer;
// the REDIRECT rule sends it to realipd, which reads the right original
// destination, lets the policy see the client and proxies both ways with
// half-close. realipd's own upstream connection carries the mark and is
// not captured again: the server sees one connection, realipd accepted
// one.
func TestRedirectNetns(t *testing.T) {
	for _, f := range families() {
		t.Run(f.String(), func(t *testing.T) {
			w := newWorld(t)
			w.rules(t, intercept.ModeRedirect, f)
			rec := &recorder{}
			r := w.serve(t, Options{Mode: ModeRedirect, Listen: both(outboundPort)}, Settings{Chain: rec.chain(t)})
			target := netip.AddrPortFrom(w.bIP[f], 80)
			up := w.upstream(t, w.b, target)

			for i := range 3 {
				c := dial(t, w.a, target)
				greeting, rest, err := exchange(c, fmt.Sprintf("ping %d", i))
				if err != nil || greeting != "hi "+target.String() || rest != fmt.Sprintf("got ping %d\n", i) {
					t.Fatalf("connection %d: greeting %q, then %q, %v", i, greeting, rest, err)
				}
				req := rec.last(t)
				if req.OriginalDst != target || req.ClientIP != w.aIP[f] || req.Resolution.Source.String() != "peer" || !strings.HasPrefix(req.Peer, w.aIP[f].String()) && !strings.HasPrefix(req.Peer, "["+w.aIP[f].String()) {
					t.Errorf("the policy saw %+v", req)
				}
			}
			if n := up.accepted.Load(); n != 3 {
				t.Errorf("the upstream accepted %d connections, want 3", n)
			}
			peers, _ := up.received()
			for _, p := range peers {
				if p.Addr() != w.aIP[f] {
					t.Errorf("the upstream saw the peer %v, want the pod's address", p)
				}
			}
			r.waitMetric(t, "connections_accepted_total", "", 3)
			r.waitMetric(t, "bytes_total", "upstream", float64(3*len("ping 0")))
			r.waitMetric(t, "active_connections", "", 0)
			if n := r.metric(t, "connection_setup_seconds", ""); n != 3 {
				t.Errorf("setup latency observed %v times, want 3", n)
			}
			if n := r.metric(t, "listeners", ""); n != 2 {
				t.Errorf("listeners = %v, want 2", n)
			}

			// A connection made to the capture port directly was not
			// redirected: reset at once, counted, and no loop.
			refusedAtOnce(t, w.a, netip.AddrPortFrom(w.aIP[f], outboundPort))
			r.waitMetric(t, "connections_refused_total", "not_redirected", 1)
			r.waitMetric(t, "connections_accepted_total", "", 4)
			if n := up.accepted.Load(); n != 3 {
				t.Errorf("a direct connection reached the upstream (%d connections)", n)
			}
		})
	}
}

// TestRedirectDualStackNetns: with [::]:P alone, the socket takes the
// IPv4 connections too, as IPv4-mapped peers, and SO_ORIGINAL_DST is read
// at SOL_IP. With 0.0.0.0:P and [::]:P both listed, the IPv6 socket is
// IPv6-only.
func TestRedirectDualStackNetns(t *testing.T) {
	w := newWorld(t)
	w.rules(t, intercept.ModeRedirect, intercept.IPv4)
	rec := &recorder{}
	r := w.serve(t, Options{Mode: ModeRedirect, Listen: []netip.AddrPort{anyAddr(intercept.IPv6, outboundPort)}}, Settings{Chain: rec.chain(t)})
	if v6only(t, r.lns[0]) {
		t.Error("[::]:P listed alone is IPv6-only")
	}
	target := netip.AddrPortFrom(w.bIP[intercept.IPv4], 81)
	w.upstream(t, w.b, target)
	greeting, rest, err := exchange(dial(t, w.a, target), "mapped")
	if err != nil || greeting != "hi "+target.String() || rest != "got mapped\n" {
		t.Fatalf("greeting %q, then %q, %v", greeting, rest, err)
	}
	if req := rec.last(t); req.OriginalDst != target || !req.ClientIP.Is4() {
		t.Errorf("the policy saw %+v, want an IPv4 client and original destination", req)
	}
	r.stop()

	r = w.serve(t, Options{Mode: ModeRedirect, Listen: both(outboundPort)}, Settings{})
	if !v6only(t, r.lns[1]) {
		t.Error("[::]:P listed with 0.0.0.0:P is not IPv6-only")
	}
}

func v6only(t testing.TB, l *Listener) bool {
	t.Helper()
	rc, err := l.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY) })
	if serr != nil {
		t.Fatal(serr)
	}
	return v == 1
}

// TestTProxyNetns: a client of the peer connects to the pod's
// application; the TPROXY rule hands the connection to realipd's
// transparent socket, whose local address is the original destination;
// the policy sees the real client; realipd reaches the application from
// the pod's own address with the mark, and the answer comes back.
func TestTProxyNetns(t *testing.T) {
	for _, f := range families() {
		for _, originalSource := range []bool{false, true} {
			name := f.String()
			if originalSource {
				name += "/original source"
			}
			t.Run(name, func(t *testing.T) {
				w := newWorld(t)
				w.rules(t, intercept.ModeTProxy, f)
				rec := &recorder{}
				w.serve(t, Options{Mode: ModeTProxy, Listen: both(inboundPort), OriginalSource: originalSource, TProxyMark: tproxyMark}, Settings{Chain: rec.chain(t)})
				app := netip.AddrPortFrom(w.aIP[f], 8080)
				up := w.upstream(t, w.a, app)
				for i := range 3 {
					greeting, rest, err := exchange(dial(t, w.b, app), fmt.Sprintf("in %d", i))
					if err != nil || greeting != "hi "+app.String() || rest != fmt.Sprintf("got in %d\n", i) {
						t.Fatalf("connection %d: greeting %q, then %q, %v", i, greeting, rest, err)
					}
					if req := rec.last(t); req.OriginalDst != app || req.ClientIP != w.bIP[f] {
						t.Errorf("the policy saw %+v, want the client %v going to %v", req, w.bIP[f], app)
					}
				}
				// realipd dials from the host's address, or, with
				// OriginalSource, from the client's, whose answers the
				// TPROXY rules route back to realipd.
				want := w.aIP[f]
				if originalSource {
					want = w.bIP[f]
				}
				peers, _ := up.received()
				if len(peers) != 3 || peers[0].Addr() != want {
					t.Errorf("the application saw the peers %v, want three from %v", peers, want)
				}
			})
		}
	}
}

// TestRefusalsNetns: direct connections to the capture port, denies,
// PROXY headers and the connection limit are refused, each with its
// counter, and none of them reaches the upstream with a byte.
func TestRefusalsNetns(t *testing.T) {
	w := newWorld(t)
	f := intercept.IPv4
	w.rules(t, intercept.ModeRedirect, f)
	denied := netip.MustParseAddr("203.0.113.66")
	rec := &recorder{deny: map[netip.Addr]bool{denied: true}}
	chain := rec.chain(t)
	trusted := Settings{Chain: chain, TrustedCIDRs: []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24")}}
	untrusted := Settings{Chain: chain, TrustedCIDRs: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}
	r := w.serve(t, Options{Mode: ModeRedirect, Listen: both(outboundPort), ProxyProtocol: true, MaxConnections: 3}, trusted)
	target := netip.AddrPortFrom(w.bIP[f], 80)
	up := w.upstream(t, w.b, target)
	accepted := 0.0
	refused := func(reason string, n float64) {
		t.Helper()
		r.waitMetric(t, "connections_refused_total", reason, n)
		r.waitMetric(t, "active_connections", "", 0)
	}
	update := func(s Settings) {
		t.Helper()
		if err := update(r.srv, s); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("direct", func(t *testing.T) {
		for i, addr := range []netip.AddrPort{
			netip.AddrPortFrom(w.aIP[f], outboundPort), // the pod's address
			netip.MustParseAddrPort("127.0.0.1:15001"),
		} {
			before := rec.count()
			refusedAtOnce(t, w.a, addr)
			refused("not_redirected", float64(i+1))
			if rec.count() != before {
				t.Errorf("the policy was asked about a direct connection to %v", addr)
			}
		}
		// IPv6 has no rule in this namespace, so conntrack does not
		// track it: no original destination at all.
		refusedAtOnce(t, w.a, netip.AddrPortFrom(w.aIP[intercept.IPv6], outboundPort))
		refused("lookup_error", 1)
		if n := r.metric(t, "original_dst_lookup_errors_total", "no_conntrack"); n != 1 {
			t.Errorf("lookup errors (no_conntrack) = %v, want 1", n)
		}
		accepted += 3
		if n := up.accepted.Load(); n != 0 {
			t.Errorf("direct connections reached the upstream %d times", n)
		}
	})

	t.Run("trusted PROXY v1 and v2", func(t *testing.T) {
		for _, v := range []byte{1, 2} {
			c := dial(t, w.a, target)
			if _, err := c.Write(proxyHeader(t, v, netip.MustParseAddrPort("198.51.100.7:4444"), target)); err != nil {
				t.Fatal(err)
			}
			greeting, rest, err := exchange(c, "after the header")
			if err != nil || greeting != "hi "+target.String() || rest != "got after the header\n" {
				t.Fatalf("v%d: greeting %q, then %q, %v", v, greeting, rest, err)
			}
			req := rec.last(t)
			if req.ClientIP != netip.MustParseAddr("198.51.100.7") || req.Resolution.Source.String() != "header" || !strings.HasPrefix(req.Peer, "10.77.0.1:") {
				t.Errorf("v%d: the policy saw %+v, want the PROXY source as the client and the pod as the peer", v, req)
			}
		}
		accepted += 2
	})

	t.Run("deny", func(t *testing.T) {
		before := up.accepted.Load()
		c := dial(t, w.a, target)
		if _, err := c.Write(proxyHeader(t, 2, netip.AddrPortFrom(denied, 1), target)); err != nil {
			t.Fatal(err)
		}
		refusedAfter(t, c)
		refused("policy_deny", 1)
		// An allowed connection after it: the upstream saw that one only.
		c = dial(t, w.a, target)
		c.Write(proxyHeader(t, 1, netip.MustParseAddrPort("198.51.100.8:1"), target))
		if _, rest, err := exchange(c, "allowed"); err != nil || rest != "got allowed\n" {
			t.Fatalf("allowed after the deny: %q, %v", rest, err)
		}
		if n := up.accepted.Load() - before; n != 1 {
			t.Errorf("the upstream accepted %d connections for a deny and an allow, want 1", n)
		}
		accepted += 2
	})

	t.Run("no PROXY source: the peer is the client", func(t *testing.T) {
		// HAProxy's health checks (v2 LOCAL), v1 UNKNOWN and v2 PROXY of
		// family AF_UNSPEC name no source: the real endpoints are used
		// (the PROXY protocol's rule), as without a header, and the
		// policies decide.
		for name, h := range map[string][]byte{
			"v2 LOCAL":           haproxyLocal,
			"v1 UNKNOWN":         []byte("PROXY UNKNOWN\r\n"),
			"v2 PROXY AF_UNSPEC": append([]byte(string(proxyproto.SIGV2)), 0x21, 0x00, 0x00, 0x00),
		} {
			before := rec.count()
			c := dial(t, w.a, target)
			c.Write(h)
			if _, rest, err := exchange(c, "health"); err != nil || rest != "got health\n" {
				t.Fatalf("%s: %q, %v", name, rest, err)
			}
			req := rec.last(t)
			if rec.count() != before+1 || req.ClientIP != w.aIP[f] || req.Resolution.Source.String() != "peer" || !strings.HasPrefix(req.Peer, "10.77.0.1:") {
				t.Errorf("%s: the policy saw %+v, want the peer %v as the client", name, req, w.aIP[f])
			}
		}
		accepted += 3
	})

	t.Run("unresolved", func(t *testing.T) {
		// An AF_UNIX source names a client that is not an IP: denied by
		// trust.on_unresolved: deny ...
		before := up.accepted.Load()
		unix, err := (&proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.UnixStream,
			SourceAddr: &net.UnixAddr{Net: "unix", Name: "/run/client"}, DestinationAddr: &net.UnixAddr{Net: "unix", Name: "/run/app"}}).Format()
		if err != nil {
			t.Fatal(err)
		}
		c := dial(t, w.a, target)
		c.Write(unix)
		refusedAfter(t, c)
		refused("policy_deny", 2)
		if up.accepted.Load() != before {
			t.Error("an unresolved client reached the upstream")
		}
		// ... and passed, without a client IP, with pass.
		s := trusted
		s.PassUnresolved = true
		update(s)
		c = dial(t, w.a, target)
		c.Write(unix)
		if _, rest, err := exchange(c, "unix"); err != nil || rest != "got unix\n" {
			t.Fatalf("AF_UNIX with on_unresolved pass: %q, %v", rest, err)
		}
		if req := rec.last(t); req.ClientIP.IsValid() || req.Resolution.OK() {
			t.Errorf("the policy saw %+v, want no client IP", req)
		}
		update(trusted)
		accepted += 2
	})

	t.Run("trusted peer without header", func(t *testing.T) {
		before := rec.count()
		c := dial(t, w.a, target)
		io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
		refusedAfter(t, c)
		refused("proxy_header", 1)
		if rec.count() != before {
			t.Error("the policies were asked about a trusted peer's connection without PROXY header")
		}
		accepted++
	})

	t.Run("untrusted PROXY header", func(t *testing.T) {
		update(untrusted)
		_, gotBefore := up.received()
		c := dial(t, w.a, target)
		br := bufio.NewReader(c)
		br.ReadString('\n') // the upstream speaks first: that is relayed before any client byte is read
		c.Write(append(proxyHeader(t, 1, netip.MustParseAddrPort("198.51.100.7:4444"), target), "smuggled"...))
		if rest, _ := io.ReadAll(br); strings.Contains(string(rest), "got") {
			t.Errorf("the upstream answered a connection with an untrusted PROXY header: %q", rest)
		}
		refused("proxy_header", 2)
		if req := rec.last(t); req.ClientIP != w.aIP[f] {
			t.Errorf("with an untrusted peer the policy saw the client %v, want the peer %v", req.ClientIP, w.aIP[f])
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, got := up.received(); len(got) > len(gotBefore) {
				if g := got[len(got)-1]; g != "" {
					t.Errorf("the upstream received %q from a connection with an untrusted PROXY header", g)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the upstream connection was not closed")
			}
			time.Sleep(5 * time.Millisecond)
		}
		// Without a header the same peer is proxied, as the client.
		if _, rest, err := exchange(dial(t, w.a, target), "plain"); err != nil || rest != "got plain\n" {
			t.Errorf("untrusted peer without header: %q, %v", rest, err)
		}
		accepted += 2
	})

	t.Run("limit", func(t *testing.T) {
		update(untrusted) // no header needed
		// The connections of the subtests before are over (their client
		// may see the end before realipd has counted it).
		r.waitMetric(t, "active_connections", "", 0)
		for range 3 {
			c := dial(t, w.a, target)
			if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
		r.waitMetric(t, "active_connections", "", 3)
		refusedAtOnce(t, w.a, target)
		r.waitMetric(t, "connections_refused_total", "limit", 1)
		accepted += 4
	})
	r.waitMetric(t, "active_connections", "", 0)
	if _, rest, err := exchange(dial(t, w.a, target), "below the limit"); err != nil || rest != "got below the limit\n" {
		t.Errorf("after the limit: %q, %v", rest, err)
	}
	accepted++
	r.waitMetric(t, "connections_accepted_total", "", accepted)
}

// TestSlowProxySignatureNetns: an untrusted peer whose first bytes are a
// part of a PROXY signature when the header timeout ends is refused, in
// plain TCP and in the HTTP mode: what it sends later could complete the
// header, and nothing of it may reach the upstream.
func TestSlowProxySignatureNetns(t *testing.T) {
	w := newWorld(t)
	f := intercept.IPv4
	w.rules(t, intercept.ModeRedirect, f)
	untrusted := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	settings := Settings{TrustedCIDRs: untrusted, Resolver: resolver(t, clientip.Config{Strategy: clientip.RightmostTrustedRange, TrustedCIDRs: untrusted})}
	// The timeout is short, but long enough for a byte sent at once after
	// the connect to be there before it ends.
	r := w.serve(t, Options{Mode: ModeRedirect, Listen: both(outboundPort), ProxyProtocol: true, ProxyHeaderTimeout: 500 * time.Millisecond, HTTPPorts: []uint16{8080}}, settings)
	rest := "ROXY TCP4 6.6.6.6 10.77.0.2 1 80\r\n"

	t.Run("plain TCP", func(t *testing.T) {
		target := netip.AddrPortFrom(w.bIP[f], 80)
		up := w.upstream(t, w.b, target)
		c := dial(t, w.a, target)
		io.WriteString(c, "P")
		r.waitMetric(t, "connections_refused_total", "proxy_header", 1)
		io.WriteString(c, rest+"smuggled\n")
		if b, _ := io.ReadAll(c); strings.Contains(string(b), "got") {
			t.Errorf("the upstream answered: %q", b)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, got := up.received(); len(got) > 0 {
				if got[0] != "" {
					t.Errorf("the upstream received %q", got[0])
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the upstream connection was not closed")
			}
			time.Sleep(5 * time.Millisecond)
		}
	})

	t.Run("HTTP", func(t *testing.T) {
		target := netip.AddrPortFrom(w.bIP[f], 8080)
		w.httpApp(t, target)
		c := dial(t, w.a, target)
		io.WriteString(c, "P")
		r.waitMetric(t, "connections_refused_total", "proxy_header", 2)
		io.WriteString(c, rest+"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
		refusedAfter(t, c)
		if n := r.metric(t, "http_requests_total", "allow"); n != 0 {
			t.Errorf("%v requests forwarded", n)
		}
		// A client that sends its request at once is served.
		c = dial(t, w.a, target)
		if resp, body := roundTrip(t, c, bufio.NewReader(c), "POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n"); resp.StatusCode != 200 {
			t.Errorf("POST: %d %q", resp.StatusCode, body)
		}
	})
}

// proxyHeader is a PROXY protocol header of the given version.
func proxyHeader(t testing.TB, version byte, src, dst netip.AddrPort) []byte {
	t.Helper()
	tp := proxyproto.TCPv4
	if src.Addr().Is6() {
		tp = proxyproto.TCPv6
	}
	h := &proxyproto.Header{Version: version, Command: proxyproto.PROXY, TransportProtocol: tp,
		SourceAddr: net.TCPAddrFromAddrPort(src), DestinationAddr: net.TCPAddrFromAddrPort(dst)}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDrainNetns: once Serve's ctx ends, new connections are refused and
// the ones in flight may finish within drain_timeout; those still open
// after it are cut.
func TestDrainNetns(t *testing.T) {
	w := newWorld(t)
	w.rules(t, intercept.ModeRedirect, intercept.IPv4)
	target := netip.AddrPortFrom(w.bIP[intercept.IPv4], 80)
	w.upstream(t, w.b, target)

	t.Run("finish", func(t *testing.T) {
		r := w.serve(t, Options{Mode: ModeRedirect, Listen: both(outboundPort), DrainTimeout: 20 * time.Second}, Settings{})
		c := dial(t, w.a, target)
		br := bufio.NewReader(c)
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		stopped := make(chan error, 1)
		go func() { stopped <- r.stop() }()
		for r.srv.Ready(context.Background()) == nil {
			time.Sleep(time.Millisecond)
		}
		if err := r.srv.Ready(context.Background()); !strings.Contains(fmt.Sprint(err), "draining") {
			t.Errorf("Ready while draining = %v", err)
		}
		for r.metric(t, "listeners", "") != 0 {
			time.Sleep(time.Millisecond)
		}
		err := w.a.Do(func() error {
			c, err := net.DialTimeout("tcp", target.String(), 5*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("a new connection while draining: %v, want connection refused", err)
		}
		select {
		case err := <-stopped:
			t.Fatalf("Serve returned before the connection in flight finished: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		io.WriteString(c, "late")
		c.CloseWrite()
		if rest, err := io.ReadAll(br); err != nil || string(rest) != "got late\n" {
			t.Errorf("the connection in flight: %q, %v", rest, err)
		}
		select {
		case err := <-stopped:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return after the last connection finished")
		}
		if n := r.metric(t, "connections_cut_total", "drain"); n != 0 {
			t.Errorf("%v connections cut", n)
		}
	})

	t.Run("cut", func(t *testing.T) {
		const drain = 300 * time.Millisecond
		r := w.serve(t, Options{Mode: ModeRedirect, Listen: both(outboundPort), DrainTimeout: drain}, Settings{})
		c := dial(t, w.a, target)
		br := bufio.NewReader(c)
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := r.stop(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < drain || d > drain+5*time.Second {
			t.Errorf("Serve returned %v after its ctx ended, want about %v", d, drain)
		}
		if b, err := io.ReadAll(br); err == nil || len(b) > 0 {
			t.Errorf("a connection cut at the end of the drain read %q, %v; want a reset", b, err)
		}
		if n := r.metric(t, "connections_cut_total", "drain"); n != 1 {
			t.Errorf("cut (drain) = %v, want 1", n)
		}
	})
}

// TestIdleTimeoutNetns: a connection that moves no byte for idle_timeout
// is cut; one that keeps sending is not.
func TestIdleTimeoutNetns(t *testing.T) {
	w := newWorld(t)
	w.rules(t, intercept.ModeRedirect, intercept.IPv4)
	target := netip.AddrPortFrom(w.bIP[intercept.IPv4], 80)
	w.upstream(t, w.b, target)
	const idle = 400 * time.Millisecond
	r := w.serve(t, Options{Mode: ModeRedirect, Listen: both(outboundPort), IdleTimeout: idle}, Settings{})

	start := time.Now() // the greetings come after it
	quiet, busy := dial(t, w.a, target), dial(t, w.a, target)
	qr, br := bufio.NewReader(quiet), bufio.NewReader(busy)
	for _, r := range []*bufio.Reader{qr, br} {
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	cut := make(chan time.Duration, 1)
	go func() {
		io.ReadAll(qr)
		cut <- time.Since(start)
	}()
	for range 12 {
		time.Sleep(idle / 4)
		if _, err := io.WriteString(busy, "."); err != nil {
			t.Fatalf("the busy connection: %v", err)
		}
	}
	busy.CloseWrite()
	if rest, err := io.ReadAll(br); err != nil || string(rest) != "got ............\n" {
		t.Errorf("the busy connection, kept past idle_timeout: %q, %v", rest, err)
	}
	select {
	case d := <-cut:
		if d < idle-10*time.Millisecond || d > 4*idle { // TCP_INFO counts in jiffies
			t.Errorf("the quiet connection was cut after %v, want a bit over %v", d, idle)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the quiet connection was not cut")
	}
	if n := r.metric(t, "connections_cut_total", "idle_timeout"); n != 1 {
		t.Errorf("cut (idle_timeout) = %v, want 1", n)
	}
}

// TestCheckMarkNetns: as root the mark can be set.
func TestCheckMarkNetns(t *testing.T) {
	netnstest.Require(t)
	srv, err := New(Options{Mode: ModeRedirect, Listen: both(outboundPort), Mark: upstreamMark}, current(t, Settings{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.CheckMark(); err != nil {
		t.Error(err)
	}
}
