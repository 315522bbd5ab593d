//go:build linux

package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/intercept"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/netnstest"
	"github.com/realipd/realipd/internal/policies"
	"github.com/realipd/realipd/origdst"
	"github.com/realipd/realipd/plugins"
)

// TestHTTPModeAgreesWithExtProc runs one table of requests through the
// ext_proc server (over a real gRPC connection, with the X-Forwarded-For
// entry Envoy appends and source.address as Envoy sends them) and through
// the native listener's HTTP mode (a real HTTP client in a namespace whose
// inbound traffic real iptables REDIRECT rules send to realipd, which
// forwards to the app in the pod's namespace). For the same settings, peer
// and header lines both give the same decision, deny status and body, the
// same client IP header (or none), and the same policy header. The
// requests of one peer share one keep-alive connection, each resolved on
// its own; the upstream gets X-Forwarded-For with the peer appended, as
// Envoy sends it.
func TestHTTPModeAgreesWithExtProc(t *testing.T) {
	cases := agreementCases()
	const untV4, trV4, untV6, trV6 = caseUntV4, caseTrV4, caseUntV6, caseTrV6

	// The pod (a) holds realipd and the app; the clients are in b.
	a, b := netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, a, b, []string{"10.77.0.1/24", "fd77::1/64"}, []string{untV4 + "/24", trV4 + "/24", untV6 + "/64", trV6 + "/64"})
	ipt := intercept.IPTablesOptions{
		Mode: intercept.ModeRedirect, OutboundPort: 15001, InboundPort: 15006,
		ExcludeUIDs: []uint32{1337}, Mark: 1338, RouteTable: 133, IncludeAllOutbound: true, IncludeAllInbound: true,
	}
	for _, f := range []intercept.Family{intercept.IPv4, intercept.IPv6} {
		a.Must(t, func() error { return intercept.ApplyIPTables(context.Background(), ipt, f) })
	}

	// The app: answers with the headers it got.
	var appLn net.Listener
	a.Must(t, func() error {
		var err error
		appLn, err = net.Listen("tcp", "[::]:8080")
		return err
	})
	t.Cleanup(func() { appLn.Close() })
	go http.Serve(appLn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(r.Header)
	}))

	// The native listener, configured from the first case; every case
	// updates its settings, as a reload does.
	base, err := config.Parse([]byte("origdst: {enabled: true, listen: ['0.0.0.0:15006', '[::]:15006'], http_ports: [8080]}\n" + cases[0].config))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	opts, err := origdstOptions(base, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	opts.RunDial = a.Pool(t, 4) // the upstream dials are made in the pod
	// One Current for both doors, as serve has.
	cur := decide.NewCurrent(testDecider(t, base, nil))
	srv, err := origdst.New(opts, cur)
	if err != nil {
		t.Fatal(err)
	}
	var lns []*origdst.Listener
	a.Must(t, func() error {
		var err error
		lns, err = srv.Bind(context.Background())
		return err
	})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.ServeListeners(ctx, lns) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	})

	// One keep-alive HTTP client per peer address, dialling from b.
	inB := b.Pool(t, 4)
	clients := map[string]*http.Client{}
	client := func(peer string) *http.Client {
		if c, ok := clients[peer]; ok {
			return c
		}
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(peer)}}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			Proxy: nil, MaxConnsPerHost: 1, DisableCompression: true,
			DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
				inB(func() { c, err = d.DialContext(ctx, network, addr) })
				return c, err
			},
		}}
		clients[peer] = c
		return c
	}
	appAddr := func(peer string) string {
		if strings.Contains(peer, ":") {
			return "[fd77::1]:8080"
		}
		return "10.77.0.1:8080"
	}

	ep := newExtProcHarnessOn(t, cur)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
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
			ep.set(t, cfg, chain) // both doors: one store
			ipHeader := cfg.ExtProc.ClientIPHeader

			viaExtProc, envoyXFF := askExtProcCase(t, ep, tc, i, appAddr(tc.peer), ipHeader)

			// The native listener: a real request from the peer.
			req, err := http.NewRequest("GET", "http://"+appAddr(tc.peer)+"/case", nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range tc.headers {
				req.Header.Add(h[0], h[1])
			}
			resp, err := client(tc.peer).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			viaNative := nativeAnswer(t, resp.StatusCode, body, resp.Header, ipHeader, envoyXFF)
			checkAgreement(t, tc, viaNative, viaExtProc)
		})
	}

	// Keep-alive: one connection per peer address served every request
	// of that peer, each resolved on its own.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counter := func(name string) (v float64) {
		for _, mf := range mfs {
			if mf.GetName() == name {
				for _, m := range mf.GetMetric() {
					v += counterValue(m)
				}
			}
		}
		return v
	}
	if got, want := counter("realipd_origdst_connections_accepted_total"), float64(len(clients)); got != want {
		t.Errorf("%v connections accepted for %d peers: keep-alive not kept", got, len(clients))
	}
	if got, want := counter("realipd_origdst_http_requests_total"), float64(len(cases)); got != want {
		t.Errorf("realipd_origdst_http_requests_total = %v, want %v", got, want)
	}
}

func counterValue(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}
