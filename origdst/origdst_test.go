package origdst

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
)

func aps(s ...string) []netip.AddrPort {
	out := make([]netip.AddrPort, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddrPort(a)
	}
	return out
}

func TestParseMode(t *testing.T) {
	for _, s := range []string{"redirect", "tproxy"} {
		if m, err := ParseMode(s); err != nil || string(m) != s {
			t.Errorf("ParseMode(%q) = %q, %v", s, m, err)
		}
	}
	if _, err := ParseMode("nat"); err == nil {
		t.Error("ParseMode(nat) succeeded")
	}
}

func TestNew(t *testing.T) {
	bad := []struct {
		name string
		opts Options
		want string
	}{
		{"mode", Options{Mode: "nat", Listen: aps("0.0.0.0:1")}, "want redirect or tproxy"},
		{"no listen", Options{Mode: ModeRedirect}, "no capture address"},
		{"twice", Options{Mode: ModeRedirect, Listen: aps("0.0.0.0:1", "0.0.0.0:1")}, "listen[1] 0.0.0.0:1: listed twice"},
		{"mapped twice", Options{Mode: ModeRedirect, Listen: aps("10.0.0.1:1", "[::ffff:10.0.0.1]:1")}, "listed twice"},
		{"zone", Options{Mode: ModeRedirect, Listen: aps("[fe80::1%eth0]:1")}, "without zone"},
		{"negative", Options{Mode: ModeRedirect, Listen: aps("0.0.0.0:1"), IdleTimeout: -1}, "negative timeout"},
		{"limit", Options{Mode: ModeRedirect, Listen: aps("0.0.0.0:1"), MaxConnections: -1}, "negative MaxConnections"},
		{"proxy protocol", Options{Mode: ModeRedirect, Listen: aps("0.0.0.0:1"), ProxyProtocol: true}, "needs trusted CIDRs"},
	}
	for _, tt := range bad {
		if _, err := New(tt.opts, current(t, Settings{})); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: New = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}

	srv, err := New(Options{Mode: ModeTProxy, Listen: aps("[::]:15001", "0.0.0.0:15001", "[::]:15002", "[::]:15003", "10.0.0.1:15003")}, current(t, Settings{}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(srv.v6only), "[true false false true false]"; got != want {
		t.Errorf("v6only = %s, want %s", got, want)
	}
	if srv.opts.DialTimeout != DefaultDialTimeout || srv.opts.MaxConnections != DefaultMaxConnections || srv.opts.ProxyHeaderTimeout != DefaultProxyHeaderTimeout {
		t.Errorf("defaults not applied: %+v", srv.opts)
	}
	if srv.opts.IdleTimeout != 0 || srv.opts.DrainTimeout != 0 {
		t.Errorf("zero idle and drain timeouts changed: %+v", srv.opts)
	}
	if err := srv.Ready(t.Context()); err == nil {
		t.Error("Ready before serving")
	}
	if err := srv.CheckMark(); err != nil {
		t.Errorf("CheckMark without a mark: %v", err)
	}

	// Metrics register once per registry.
	reg := prometheus.NewRegistry()
	if _, err := New(Options{Mode: ModeRedirect, Listen: aps("0.0.0.0:1"), Registerer: reg}, current(t, Settings{})); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{Mode: ModeRedirect, Listen: aps("0.0.0.0:1"), Registerer: reg}, current(t, Settings{})); err == nil {
		t.Error("a second server registered the same metrics")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{"connections_accepted_total", "connections_refused_total", "active_connections", "listeners",
		"dial_errors_total", "original_dst_lookup_errors_total", "connections_cut_total", "connection_setup_seconds"} {
		if !names["realipd_origdst_"+n] {
			t.Errorf("metric realipd_origdst_%s is not registered", n)
		}
	}
}

func TestErrorText(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{&LookupError{Err: syscall.ENOENT}, "conntrack has no entry"},
		{&LookupError{Err: syscall.ENOPROTOOPT}, "does not answer SO_ORIGINAL_DST"},
		{&LookupError{Err: syscall.EBADF}, "reading the original destination: bad file descriptor"},
		{&ListenError{Addr: netip.MustParseAddrPort("0.0.0.0:15006"), Transparent: true, Err: syscall.EPERM}, "listen 0.0.0.0:15006: mode tproxy needs CAP_NET_ADMIN"},
		{&ListenError{Addr: netip.MustParseAddrPort("0.0.0.0:1"), Err: &net.OpError{Op: "listen", Err: &net.AddrError{Err: "bad", Addr: "x"}}}, "listen 0.0.0.0:1: listen: address x: bad"},
		{&BindError{Index: 2, ListenError: &ListenError{Addr: netip.MustParseAddrPort("127.0.0.1:1"), Err: fmt.Errorf("bind: %w", syscall.EADDRINUSE)}},
			"origdst: listen[2] 127.0.0.1:1: the address is already in use"},
		{&ListenError{Addr: netip.MustParseAddrPort("192.0.2.1:1"), Err: syscall.EADDRNOTAVAIL}, "not one of this host's"},
	} {
		if got := tt.err.Error(); !strings.Contains(got, tt.want) {
			t.Errorf("%q does not contain %q", got, tt.want)
		}
	}
	var le *LookupError
	if !errors.As(error(&LookupError{Err: syscall.ENOENT}), &le) || !errors.Is(le, syscall.ENOENT) {
		t.Error("LookupError does not unwrap to its errno")
	}
	if got := lookupReason(&LookupError{Err: syscall.ENOENT}); got != "no_conntrack" {
		t.Errorf("lookupReason(ENOENT) = %q", got)
	}
	if got := dialReason(&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}); got != "refused" {
		t.Errorf("dialReason(ECONNREFUSED) = %q", got)
	}
}

func TestProxyResult(t *testing.T) {
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	peer := clientip.Result{IP: netip.MustParseAddr("10.0.0.7"), Source: clientip.SourcePeer, Reason: clientip.ReasonPeer}
	unresolved := clientip.Result{Reason: clientip.ReasonInvalidEntry}
	for _, tt := range []struct {
		name string
		h    *proxyproto.Header
		want clientip.Result
	}{
		{"v1 tcp4", &proxyproto.Header{Version: 1, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv4, SourceAddr: tcp("203.0.113.9:5555"), DestinationAddr: tcp("10.0.0.1:80")},
			clientip.Result{IP: netip.MustParseAddr("203.0.113.9"), Source: clientip.SourceHeader, Reason: clientip.ReasonPicked, Position: 1}},
		{"v2 tcp6", &proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv6, SourceAddr: tcp("[2001:db8::9]:5555"), DestinationAddr: tcp("[2001:db8::1]:80")},
			clientip.Result{IP: netip.MustParseAddr("2001:db8::9"), Source: clientip.SourceHeader, Reason: clientip.ReasonPicked, Position: 1}},
		{"v2 mapped", &proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv6, SourceAddr: tcp("[::ffff:203.0.113.9]:5555"), DestinationAddr: tcp("[2001:db8::1]:80")},
			clientip.Result{IP: netip.MustParseAddr("203.0.113.9"), Source: clientip.SourceHeader, Reason: clientip.ReasonPicked, Position: 1}},
		// No source: the real endpoints, as without a header.
		{"v2 LOCAL", &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL}, peer},
		{"v2 LOCAL with addresses", &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.TCPv4, SourceAddr: tcp("203.0.113.9:5555"), DestinationAddr: tcp("10.0.0.1:80")}, peer},
		{"v1 UNKNOWN", &proxyproto.Header{Version: 1, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}, peer},
		{"v2 PROXY AF_UNSPEC", &proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.UNSPEC}, peer},
		// A client that is not a TCP one's: unresolved.
		{"v2 AF_UNIX", &proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.UnixStream, SourceAddr: &net.UnixAddr{Net: "unix", Name: "/run/client"}, DestinationAddr: &net.UnixAddr{Net: "unix", Name: "/run/app"}},
			unresolved},
		{"udp", &proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.UDPv4, SourceAddr: &net.UDPAddr{IP: net.IPv4(203, 0, 113, 9), Port: 1}},
			unresolved},
		{"unspecified source", &proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv4, SourceAddr: tcp("0.0.0.0:1"), DestinationAddr: tcp("10.0.0.1:80")},
			unresolved},
		{"none", nil, unresolved},
	} {
		if got := proxyResult(tt.h, peer); got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

// haproxyLocal is the header of HAProxy's health checks with send-proxy-v2:
// the v2 signature, LOCAL, AF_UNSPEC, no address block.
var haproxyLocal = []byte("\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")

// TestParseProxyHeader: what the native listener makes of a peer's first
// bytes, given all at once then EOF. A header is read to its end; bytes
// that are no signature are "no header", left unread; bytes that begin a
// header but stop short of its end are never "no header" (an untrusted
// peer's would otherwise be forwarded, and complete the header upstream).
func TestParseProxyHeader(t *testing.T) {
	v2 := func(cmd, fam byte, block ...byte) string {
		return string(append(append([]byte(string(proxyproto.SIGV2)), cmd, fam, byte(len(block)>>8), byte(len(block))), block...))
	}
	unix := make([]byte, 216)
	copy(unix, "/run/client")
	copy(unix[108:], "/run/app")
	const (
		header = iota
		none
		incomplete
		invalid
	)
	for _, tt := range []struct {
		name, in string
		want     int
		cmd      proxyproto.ProtocolVersionAndCommand
		fam      proxyproto.AddressFamilyAndProtocol
		rest     string
	}{
		{"v1 TCP4", "PROXY TCP4 203.0.113.9 10.0.0.1 5555 80\r\nhello", header, proxyproto.PROXY, proxyproto.TCPv4, "hello"},
		{"v1 UNKNOWN", "PROXY UNKNOWN\r\nGET /", header, proxyproto.LOCAL, proxyproto.UNSPEC, "GET /"},
		{"v1 UNKNOWN with addresses", "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nx", header, proxyproto.LOCAL, proxyproto.UNSPEC, "x"},
		{"HAProxy's v2 LOCAL", string(haproxyLocal) + "GET /health", header, proxyproto.LOCAL, proxyproto.UNSPEC, "GET /health"},
		{"v2 LOCAL with TCPv4 addresses", v2(0x20, 0x11, 203, 0, 113, 9, 10, 0, 0, 1, 0x15, 0xb3, 0, 80) + "x", header, proxyproto.LOCAL, proxyproto.TCPv4, "x"},
		{"v2 PROXY AF_UNSPEC", v2(0x21, 0x00) + "x", header, proxyproto.PROXY, proxyproto.UNSPEC, "x"},
		{"v2 PROXY AF_UNSPEC with a TLV", v2(0x21, 0x00, 0x04, 0, 1, 'a') + "x", header, proxyproto.PROXY, proxyproto.UNSPEC, "x"},
		{"v2 PROXY AF_UNIX", v2(0x21, 0x31, unix...) + "x", header, proxyproto.PROXY, proxyproto.UnixStream, "x"},
		{"v2 PROXY TCPv4", v2(0x21, 0x11, 203, 0, 113, 9, 10, 0, 0, 1, 0x15, 0xb3, 0, 80) + "x", header, proxyproto.PROXY, proxyproto.TCPv4, "x"},

		{"nothing", "", none, 0, 0, ""},
		{"HTTP", "GET / HTTP/1.1\r\n", none, 0, 0, "GET / HTTP/1.1\r\n"},
		{"PING", "PING\r\n", none, 0, 0, "PING\r\n"},
		{"POST", "POST", none, 0, 0, "POST"},

		{"P", "P", incomplete, 0, 0, ""},
		{"PROX", "PROX", incomplete, 0, 0, ""},
		{"part of the v2 signature", "\r\n\r\n", incomplete, 0, 0, ""},
		// go-proxyproto refuses a v1 line not read whole at once.
		{"v1 without its end", "PROXY TCP4 203.0.113.9 10.0.0.1 5555 80", invalid, 0, 0, ""},
		{"v2 without its fixed part", string(proxyproto.SIGV2) + "\x21", incomplete, 0, 0, ""},
		{"v2 PROXY AF_UNSPEC without its block", v2(0x21, 0x00, 1, 2, 3)[:18], incomplete, 0, 0, ""},

		{"v1 garbage", "PROXY garbage\r\n", invalid, 0, 0, ""},
		{"v2 unknown command", v2(0x22, 0x11), invalid, 0, 0, ""},
		{"v2 undefined family", v2(0x21, 0x13, make([]byte, 12)...), invalid, 0, 0, ""},
		{"v2 PROXY AF_UNSPEC too long", v2(0x21, 0x00, make([]byte, 4097)...), invalid, 0, 0, ""},
	} {
		br := bufio.NewReaderSize(strings.NewReader(tt.in), 256)
		h, err := parseProxyHeader(br)
		got := header
		switch {
		case err == nil && h == nil:
			t.Errorf("%s: neither a header nor an error", tt.name)
			continue
		case err == nil:
		case noHeader(err):
			got = none
		case errors.Is(err, errIncompleteHeader):
			got = incomplete
		default:
			got = invalid
		}
		if got != tt.want {
			t.Errorf("%s: %v, %v; want kind %d", tt.name, h, err, tt.want)
			continue
		}
		if got == header && (h.Command != tt.cmd || h.TransportProtocol != tt.fam) {
			t.Errorf("%s: command %#x, family %#x; want %#x, %#x", tt.name, h.Command, h.TransportProtocol, tt.cmd, tt.fam)
		}
		if got == header || got == none {
			if rest, _ := io.ReadAll(br); string(rest) != tt.rest {
				t.Errorf("%s: left %q, want %q", tt.name, rest, tt.rest)
			}
		}
	}
}

// FuzzParseProxyHeader: whatever a peer sends first, the native listener
// never takes bytes that begin a PROXY header for "no header" (which an
// untrusted peer's are forwarded as), never gives a client that is not a
// valid IP from the header, and reads go-proxyproto's headers as it does.
func FuzzParseProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 203.0.113.9 10.0.0.1 5555 80\r\nhello"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add([]byte("PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"))
	f.Add(append(haproxyLocal, "GET /health HTTP/1.1\r\n"...))
	f.Add(append([]byte(string(proxyproto.SIGV2)), 0x21, 0x00, 0x00, 0x03, 1, 2, 3))
	f.Add(append([]byte(string(proxyproto.SIGV2)), 0x21, 0x11, 0x00, 0x0c, 203, 0, 113, 9, 10, 0, 0, 1, 0x15, 0xb3, 0, 80))
	f.Add([]byte("P"))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	peer := clientip.Result{IP: netip.MustParseAddr("10.0.0.7"), Source: clientip.SourcePeer, Reason: clientip.ReasonPeer}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 256)
		h, err := parseProxyHeader(br)
		if err != nil && noHeader(err) && len(in) > 0 {
			n := min(len(in), len(proxyproto.SIGV2))
			if bytes.HasPrefix(proxyproto.SIGV1, in[:min(len(in), len(proxyproto.SIGV1))]) || bytes.HasPrefix(proxyproto.SIGV2, in[:n]) {
				t.Fatalf("%q: taken for no header (%v)", in, err)
			}
		}
		if h != nil {
			if err != nil {
				t.Fatalf("%q: a header and an error (%v)", in, err)
			}
			res := proxyResult(h, peer)
			if res.Source == clientip.SourceHeader && (!res.IP.IsValid() || res.IP.IsUnspecified() || res.IP.Is4In6()) {
				t.Fatalf("%q: client %v from the header", in, res.IP)
			}
		}
		want, werr := proxyproto.Read(bufio.NewReaderSize(bytes.NewReader(in), 256))
		if werr == nil && (err != nil || h.Command != want.Command || h.TransportProtocol != want.TransportProtocol ||
			fmt.Sprint(h.SourceAddr) != fmt.Sprint(want.SourceAddr)) {
			t.Fatalf("%q: read %+v, %v; go-proxyproto reads %+v", in, h, err, want)
		}
	})
}

func TestIsCapture(t *testing.T) {
	l := &Listener{mode: ModeRedirect, captures: aps("0.0.0.0:15001", "10.0.0.1:15006")}
	for dst, want := range map[string]bool{
		"127.0.0.1:15001":    true, // a wildcard capture port on loopback
		"[::1]:15001":        true,
		"10.0.0.1:15006":     true,
		"10.0.0.2:15006":     false,
		"192.0.2.1:15001":    false, // another host's port 15001: redirected
		"127.0.0.1:80":       false,
		"[2001:db8::]:15006": false,
	} {
		if got := l.isCapture(netip.MustParseAddrPort(dst)); got != want {
			t.Errorf("redirect: isCapture(%s) = %v, want %v", dst, got, want)
		}
	}
	l.mode = ModeTProxy
	if !l.isCapture(netip.MustParseAddrPort("192.0.2.1:15001")) {
		t.Error("tproxy: a local address on a wildcard capture port is not a capture address")
	}
}

func TestSignature(t *testing.T) {
	v2, err := (&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL}).Format()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		first string
		want  bool
	}{
		{"PING\r\n", false}, // shorter than a v2 signature: answered without waiting for more
		{"POST", false},
		{"GET / HTTP/1.1\r\n", false},
		{"\r\n", false}, // could still be v2: waits, then EOF
		{"PROXY TCP4 ", true},
		{"PROXY", true},
		{string(v2), true},
	} {
		// The reader gives the first bytes, then blocks until the test ends:
		// signature must not need more than it has to.
		pr, pw := io.Pipe()
		go pw.Write([]byte(tt.first))
		br := bufio.NewReaderSize(pr, 256)
		type result struct {
			ok  bool
			err error
		}
		done := make(chan result, 1)
		go func() { ok, err := signature(br); done <- result{ok, err} }()
		select {
		case r := <-done:
			if r.err != nil || r.ok != tt.want {
				t.Errorf("signature(%q) = %v, %v; want %v", tt.first, r.ok, r.err, tt.want)
			}
		case <-time.After(100 * time.Millisecond):
			pw.Close()
			r := <-done
			if tt.first != "\r\n" {
				t.Errorf("signature(%q) waited for more bytes (then %v, %v)", tt.first, r.ok, r.err)
			}
		}
		pw.Close()
	}
}

// Settings are the settings of the decisions the server makes.
type Settings = decide.Settings

// current returns a Current holding the Decider of s.
func current(t testing.TB, s Settings) *decide.Current {
	t.Helper()
	d, err := decide.New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	return decide.NewCurrent(d)
}

// update makes s the settings of srv's decisions, as a reload does.
func update(srv *Server, s Settings) error {
	d, err := decide.New(s, nil)
	if err != nil {
		return err
	}
	srv.cur.Store(d)
	return nil
}
