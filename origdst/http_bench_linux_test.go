//go:build linux

package origdst

import (
	"context"
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/plugins"
)

// rawUpstream answers every request head it reads on its connections with
// a fixed 200 carrying 3 bytes; it allocates nothing per request, so that
// a benchmark's allocations are realipd's.
func rawUpstream(tb testing.TB) netip.AddrPort {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				have := 0
				for {
					n, err := c.Read(buf[have:])
					if err != nil {
						return
					}
					have += n
					// Answer every whole head (requests without bodies).
					for {
						end := -1
						for i := 3; i < have; i++ {
							if buf[i-3] == '\r' && buf[i-2] == '\n' && buf[i-1] == '\r' && buf[i] == '\n' {
								end = i + 1
								break
							}
						}
						if end < 0 {
							break
						}
						if _, err := c.Write(resp); err != nil {
							return
						}
						have = copy(buf, buf[end:have])
					}
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// httpModeConn serves one loopback connection with the HTTP mode of a
// server deciding with s, forwarding to up; it returns the client's end.
func httpModeConn(tb testing.TB, s Settings, up netip.AddrPort) net.Conn {
	tb.Helper()
	srv, err := New(Options{Mode: ModeRedirect, Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}, HTTPPorts: []uint16{up.Port()}, Registerer: prometheus.NewRegistry()}, current(tb, s))
	if err != nil {
		tb.Fatal(err)
	}
	startSession(tb, srv)
	c, sc := tcpPair(tb)
	go srv.ServeConn(sc, up, "bench")
	return c
}

// startSession runs srv's ServeListeners (with no listener: connections
// come through ServeConn) until the test ends, and returns once it serves.
func startSession(tb testing.TB, srv *Server) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeListeners(ctx, nil) }()
	tb.Cleanup(func() { cancel(); <-done })
	for !srv.serving.Load() {
		runtime.Gosched() // the session begins on ServeListeners' goroutine
	}
}

// BenchmarkHTTPModeRequest: one keep-alive GET through the HTTP mode in
// process, on loopback (a raw client, realipd, a raw upstream that
// allocates nothing): X-Forwarded-For resolved past a trusted proxy, a
// cidr policy, x-real-ip written. The allocations are realipd's.
func BenchmarkHTTPModeRequest(b *testing.B) {
	up := rawUpstream(b)
	chain, err := plugins.NewChain(plugins.ChainEntry{Name: "block", Policy: plugins.NewCIDR(nil, []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")})})
	if err != nil {
		b.Fatal(err)
	}
	r := resolver(b, clientip.Config{Strategy: clientip.RightmostTrustedRange, TrustedCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}})
	c := httpModeConn(b, Settings{Chain: chain, Resolver: r}, up)
	req := []byte("GET /bench?q=1 HTTP/1.1\r\nHost: app\r\nUser-Agent: wrk\r\nAccept: */*\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.2\r\n\r\n")
	resp := make([]byte, len("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"))
	roundTrip := func() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			b.Fatal(err)
		}
	}
	roundTrip()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		roundTrip()
	}
}
