package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/policies"
	"github.com/realipd/realipd/origdst"
	"github.com/realipd/realipd/plugins"
)

// TestDoorsAgree runs the agreement table (agreementCases) through every
// door in process, without root: the ext_proc server over a real gRPC
// stream, and the native listener's HTTP mode and TCP proxy over real
// loopback connections handed to origdst.Server.ServeConn, each opening
// with a PROXY v2 header that names the case's peer (as a trusted load
// balancer would; ext_proc gets that peer as source.address, as Envoy's
// proxy_protocol listener filter gives it). One decide.Current serves the
// three doors, as in serve. For each case the HTTP mode and ext_proc give
// the same decision, deny status and body, client-IP header, and policy
// headers; the TCP proxy, which has no forwarding header, decides as
// ext_proc does on the same peer without one.
func TestDoorsAgree(t *testing.T) {
	// The app: answers with the headers it got.
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { appLn.Close() })
	go http.Serve(appLn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(r.Header)
	}))
	app := appLn.Addr().(*net.TCPAddr).AddrPort()
	// The TCP upstream: greets and closes.
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcpLn.Close() })
	go func() {
		for {
			c, err := tcpLn.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hi\n")
			c.Close()
		}
	}()
	echo := tcpLn.Addr().(*net.TCPAddr).AddrPort()

	cases := agreementCases()
	cur := decide.NewCurrent(doorsDecider(t, cases[0], nil))
	reg := prometheus.NewRegistry()
	srv, err := origdst.New(origdst.Options{
		Mode: origdst.ModeRedirect, Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")},
		HTTPPorts: []uint16{app.Port()}, ProxyProtocol: true, Registerer: reg,
	}, cur)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.ServeListeners(ctx, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	ep := newExtProcHarnessOn(t, cur)

	// door opens a connection to the native listener as a trusted proxy
	// for peer, whose original destination is dst.
	door := func(t *testing.T, peer netip.AddrPort, dst netip.AddrPort) net.Conn {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		go srv.ServeConn(s.(*net.TCPConn), dst, "doors")
		h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(peer), net.TCPAddrFromAddrPort(dst))
		if _, err := h.WriteTo(c); err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}

	if len(cases) < 30 {
		t.Fatalf("the table has %d cases, want at least 30", len(cases))
	}
	secondAllowed := 0 // second requests the app answered
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, chain := doorsConfig(t, tc)
			cur.Store(doorsDecider(t, tc, chain))
			ipHeader := cfg.ExtProc.ClientIPHeader
			peer := netip.AddrPortFrom(netip.MustParseAddr(tc.peer), 40000+uint16(i))

			viaExtProc, envoyXFF := askExtProcCase(t, ep, tc, i, app.String(), ipHeader)

			// The HTTP mode, twice on one connection: the first request
			// is served by the connection's goroutine, which dials the
			// app; the second, when the first was allowed, by an event
			// loop (origdst/httploop_linux.go).
			c := door(t, peer, app)
			var req strings.Builder
			fmt.Fprintf(&req, "GET /case HTTP/1.1\r\nHost: %s\r\n", app)
			for _, h := range tc.headers {
				fmt.Fprintf(&req, "%s: %s\r\n", h[0], h[1])
			}
			req.WriteString("\r\n")
			br := bufio.NewReader(c)
			for round := range 2 {
				if _, err := io.WriteString(c, req.String()); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("request %d: %v", round+1, err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				checkAgreement(t, tc, nativeAnswer(t, resp.StatusCode, body, resp.Header, ipHeader, envoyXFF), viaExtProc)
				if round == 1 && resp.StatusCode == http.StatusOK {
					secondAllowed++
				}
				if resp.Close {
					break
				}
			}

			// The TCP proxy, against ext_proc on the same peer without
			// a forwarding header.
			bare := tc
			bare.headers = nil
			bareExtProc, _ := askExtProcCase(t, ep, bare, i, echo.String(), ipHeader)
			got, _ := io.ReadAll(door(t, peer, echo))
			viaTCP := "deny"
			if string(got) == "hi\n" {
				viaTCP = "allow"
			}
			if want, _, _ := strings.Cut(bareExtProc.decision, " "); viaTCP != want {
				t.Errorf("TCP proxy: %s (%q), ext_proc without a forwarding header: %s", viaTCP, got, bareExtProc.decision)
			}
		})
	}
	// The event loops served second requests (not those of a chain with
	// a plugin policy, which may wait: their goroutines did).
	byLoop := gatheredCounter(t, reg, "realipd_origdst_http_event_loop_requests_total")
	t.Logf("event loops served %v of %d second requests allowed", byLoop, secondAllowed)
	if byLoop == 0 || byLoop > float64(secondAllowed) {
		t.Errorf("event loops served %v requests; want between 1 and %d (the second requests allowed)", byLoop, secondAllowed)
	}
}

// gatheredCounter is the value of the counter name (without labels) in reg.
func gatheredCounter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s", name)
	return 0
}

// doorsConfig parses tc's configuration and builds its chain (tc.policy
// alone when set); the chain closes when the test ends.
func doorsConfig(t *testing.T, tc httpCase) (*config.Config, *plugins.Chain) {
	t.Helper()
	cfg, err := config.Parse([]byte(tc.config))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := policies.Build(cfg.Policies)
	if tc.policy != nil {
		chain, err = plugins.NewChain(plugins.ChainEntry{Name: "custom", Policy: tc.policy})
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { chain.Close() })
	return cfg, chain
}

// doorsDecider is the Decider of tc's configuration with chain, whose
// PROXY headers are honoured from loopback (the test's connections).
func doorsDecider(t *testing.T, tc httpCase, chain *plugins.Chain) *decide.Decider {
	t.Helper()
	cfg, err := config.Parse([]byte(tc.config))
	if err != nil {
		t.Fatal(err)
	}
	s, err := decisionSettings(cfg, chain, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.TrustedCIDRs = append(s.TrustedCIDRs, netip.MustParsePrefix("127.0.0.0/8"))
	d, err := decide.New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
