//go:build linux

package main

import (
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

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/intercept"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/netnstest"
	"github.com/realipd/realipd/internal/policies"
	"github.com/realipd/realipd/origdst"
	"github.com/realipd/realipd/plugins"
)

// uaPolicy reads request headers (HeaderInputs): it denies the user agent
// "evil" with its own status, body and header, and tags every other
// request with the path it saw.
type uaPolicy struct{}

func (uaPolicy) RequestHeaders() ([]string, bool) { return []string{":path", "user-agent"}, false }

func (uaPolicy) Decide(_ context.Context, req *plugins.Request) (plugins.Decision, error) {
	var path, ua string
	for _, h := range req.Headers {
		switch h.Name {
		case ":path":
			path = h.Value
		case "user-agent":
			ua = h.Value
		}
	}
	if ua == "evil" {
		return plugins.Decision{Deny: true, Status: 429, Body: "slow down\n", Headers: []plugins.Header{{Name: "retry-after", Value: "7"}}}, nil
	}
	return plugins.Decision{Headers: []plugins.Header{{Name: "x-policy-tag", Value: "path=" + path}}}, nil
}

// httpCase is one request of the shared table: a configuration, the peer
// (an address of the client namespace) and the header lines it sends.
type httpCase struct {
	name    string
	config  string // YAML: trust, extproc and policies sections
	policy  plugins.Policy
	peer    string
	headers [][2]string
	// want is the client IP header the upstream gets ("" for none), or,
	// for a deny, "deny <status>".
	want string
}

// answer is what a request came to, on either path.
type answer struct {
	decision string // "allow" or "deny <status> <body>"
	clientIP string // the client IP header the upstream gets; "" removed
	tag      string // the header the policy adds
}

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
	const (
		range77 = "trust: {strategy: rightmost_trusted_range, trusted_cidrs: [10.77.0.128/25, 10.1.0.0/16, 'fd77::100/120']}\n"
		untV4   = "10.77.0.2"
		trV4    = "10.77.0.200"
		untV6   = "fd77::2"
		trV6    = "fd77::105"
	)
	xff := func(v string) [2]string { return [2]string{"X-Forwarded-For", v} }
	cases := []httpCase{
		{name: "untrusted peer, spoofed XFF and x-real-ip", config: range77, peer: untV4,
			headers: [][2]string{xff("6.6.6.6"), {"X-Real-IP", "6.6.6.6"}}, want: untV4},
		{name: "trusted peer, forwarded client", config: range77, peer: trV4, headers: [][2]string{xff("198.51.100.9, 10.1.2.3")}, want: "198.51.100.9"},
		{name: "trusted peer, two XFF lines", config: range77, peer: trV4, headers: [][2]string{xff("203.0.113.1"), xff("198.51.100.9, 10.1.2.3")}, want: "198.51.100.9"},
		{name: "trusted peer, an empty XFF line (Envoy skips it)", config: range77, peer: trV4, headers: [][2]string{xff("198.51.100.9"), xff("")}, want: "198.51.100.9"},
		{name: "trusted peer, a client-sent x-real-ip is replaced", config: range77, peer: trV4,
			headers: [][2]string{{"X-Real-IP", "1.2.3.4"}, xff("198.51.100.9")}, want: "198.51.100.9"},
		{name: "trusted peer, no header: the peer", config: range77, peer: trV4, want: trV4},
		{name: "trusted peer, all trusted: the peer", config: range77, peer: trV4, headers: [][2]string{xff("10.1.2.3, 10.77.0.130")}, want: trV4},
		{name: "invalid decisive entry: unresolved, denied", config: range77, peer: trV4, headers: [][2]string{xff("8.8.8.8, bogus")}, want: "deny 403"},
		{name: "unresolved, on_unresolved pass: the header removed", config: "trust: {strategy: rightmost_trusted_range, trusted_cidrs: [10.77.0.128/25], on_unresolved: pass}\n",
			peer: trV4, headers: [][2]string{xff("8.8.8.8, bogus"), {"X-Real-IP", "1.2.3.4"}}, want: ""},
		{name: "cidr deny of the resolved client, deny_status", config: range77 + "extproc: {deny_status: 429}\npolicies: [{name: block, type: cidr, deny: [198.51.100.0/24]}]\n",
			peer: trV4, headers: [][2]string{xff("198.51.100.9")}, want: "deny 429"},
		{name: "cidr allow list passes the client", config: range77 + "policies: [{name: only, type: cidr, allow: [198.51.100.0/24]}]\n",
			peer: trV4, headers: [][2]string{xff("198.51.100.9")}, want: "198.51.100.9"},
		{name: "cidr allow list: the peer itself is not in it", config: range77 + "policies: [{name: only, type: cidr, allow: [198.51.100.0/24]}]\n",
			peer: untV4, headers: [][2]string{xff("198.51.100.9")}, want: "deny 403"},
		{name: "custom client IP header", config: range77 + "extproc: {client_ip_header: x-client-ip}\n", peer: trV4,
			headers: [][2]string{xff("198.51.100.9"), {"X-Client-IP", "6.6.6.6"}}, want: "198.51.100.9"},
		{name: "Forwarded header", config: "trust: {strategy: rightmost_trusted_range, header: Forwarded, trusted_cidrs: [10.77.0.128/25]}\n", peer: trV4,
			headers: [][2]string{{"Forwarded", `for=192.0.2.60;proto=http, for="[2001:db8::7]:443"`}}, want: "2001:db8::7"},
		{name: "single_header CF-Connecting-IP", config: "trust: {strategy: single_header, header: CF-Connecting-IP}\n", peer: trV4,
			headers: [][2]string{{"CF-Connecting-IP", "198.51.100.7"}, {"CF-Connecting-IP", "198.51.100.8"}}, want: "198.51.100.8"},
		{name: "trusted count 2", config: "trust: {strategy: rightmost_trusted_count, trusted_hops: 2}\n", peer: untV4,
			headers: [][2]string{xff("6.6.6.6, 198.51.100.3, 10.9.9.9")}, want: "198.51.100.3"},
		{name: "trusted count, too few entries", config: "trust: {strategy: rightmost_trusted_count, trusted_hops: 3}\n", peer: untV4,
			headers: [][2]string{xff("198.51.100.3")}, want: "deny 403"},
		{name: "envoy_xff cidrs", config: "trust: {strategy: envoy_xff, trusted_cidrs: [10.77.0.128/25, 10.1.0.0/16]}\n", peer: trV4,
			headers: [][2]string{xff("198.51.100.4, 10.1.1.1")}, want: "198.51.100.4"},
		{name: "leftmost_non_private", config: "trust: {strategy: leftmost_non_private}\n", peer: untV4,
			headers: [][2]string{xff("10.0.0.1, 198.51.100.200, 8.8.8.8")}, want: "8.8.8.8"},
		{name: "remote_addr ignores the headers", config: "trust: {strategy: remote_addr}\n", peer: untV4, headers: [][2]string{xff("8.8.8.8")}, want: untV4},
		{name: "IPv6 untrusted peer", config: range77, peer: untV6, headers: [][2]string{xff("6.6.6.6")}, want: untV6},
		{name: "IPv6 trusted peer", config: range77, peer: trV6, headers: [][2]string{xff("2001:db8::9, fd77::1ff")}, want: "2001:db8::9"},
		{name: "IPv6 trusted peer, all trusted", config: range77, peer: trV6, headers: [][2]string{xff("fd77::1ff")}, want: trV6},
		{name: "header policy allows and tags", config: range77, policy: uaPolicy{}, peer: trV4,
			headers: [][2]string{xff("198.51.100.9"), {"User-Agent", "curl"}}, want: "198.51.100.9"},
		{name: "header policy denies with its status", config: range77, policy: uaPolicy{}, peer: trV4,
			headers: [][2]string{xff("198.51.100.9"), {"User-Agent", "evil"}}, want: "deny 429"},
	}

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

			// ext_proc: the headers as Envoy forwards them, its
			// X-Forwarded-For entry appended, source.address the peer.
			peerAddr := netip.AddrPortFrom(netip.MustParseAddr(tc.peer), 40000+uint16(i))
			var sent []extproctest.Header
			var xffLines []string
			for _, h := range tc.headers {
				if strings.EqualFold(h[0], "X-Forwarded-For") {
					if strings.TrimSpace(h[1]) != "" { // Envoy joins the lines, skipping empty ones
						xffLines = append(xffLines, h[1])
					}
					continue
				}
				sent = append(sent, extproctest.Header{Name: strings.ToLower(h[0]), Value: h[1]})
			}
			envoyXFF := strings.Join(append(xffLines, tc.peer), ", ")
			sent = append(sent, extproctest.Header{Name: "x-forwarded-for", Value: envoyXFF},
				extproctest.Header{Name: ":path", Value: "/case"}, extproctest.Header{Name: ":authority", Value: appAddr(tc.peer)})
			res, err := ep.client.Process(context.Background(), extproctest.Request{Headers: sent, SourceAddress: peerAddr.String(), DestinationAddress: appAddr(tc.peer)})
			if err != nil {
				t.Fatal(err)
			}
			var viaExtProc answer
			if im := res.Immediate; im != nil {
				viaExtProc.decision = fmt.Sprintf("deny %d %s", im.GetStatus().GetCode(), im.GetBody())
			} else {
				viaExtProc.decision = "allow"
				viaExtProc.clientIP, _ = res.SetHeader(ipHeader)
				if !res.Removed(ipHeader) && viaExtProc.clientIP == "" {
					t.Errorf("ext_proc neither set nor removed %s", ipHeader)
				}
				viaExtProc.tag, _ = res.SetHeader("x-policy-tag")
			}

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
			var viaNative answer
			if resp.StatusCode != http.StatusOK {
				viaNative.decision = fmt.Sprintf("deny %d %s", resp.StatusCode, body)
			} else {
				viaNative.decision = "allow"
				var got http.Header
				if err := json.Unmarshal(body, &got); err != nil {
					t.Fatalf("the app's answer %q: %v", body, err)
				}
				if vs := got.Values(ipHeader); len(vs) > 1 {
					t.Errorf("the upstream got %s %q", ipHeader, vs)
				}
				viaNative.clientIP = got.Get(ipHeader)
				viaNative.tag = got.Get("x-policy-tag")
				// What Envoy would forward: the client's lines joined, the peer appended.
				if x := got.Values("X-Forwarded-For"); len(x) != 1 || x[0] != envoyXFF {
					t.Errorf("the upstream got X-Forwarded-For %q, want %q", x, envoyXFF)
				}
			}

			if viaNative != viaExtProc {
				t.Errorf("native %+v, ext_proc %+v", viaNative, viaExtProc)
			}
			switch {
			case strings.HasPrefix(tc.want, "deny "):
				if !strings.HasPrefix(viaNative.decision, tc.want+" ") {
					t.Errorf("decision %q, want %s", viaNative.decision, tc.want)
				}
			case viaNative.decision != "allow" || viaNative.clientIP != tc.want:
				t.Errorf("%+v, want allowed with client IP %q", viaNative, tc.want)
			}
			if tc.policy != nil && viaNative.decision == "allow" && viaNative.tag != "path=/case" {
				t.Errorf("the policy's header %q, want path=/case", viaNative.tag)
			}
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
