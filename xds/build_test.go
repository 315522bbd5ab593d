package xds

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	originalsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	directresponsev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/direct_response/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// unpack returns the message in a, failing the test if it is not a T.
func unpack[T proto.Message](t *testing.T, a *anypb.Any, m T) T {
	t.Helper()
	if a == nil {
		t.Fatalf("no typed_config, want %T", m)
	}
	if err := a.UnmarshalTo(m); err != nil {
		t.Fatalf("typed_config %s: want %T: %v", a.GetTypeUrl(), m, err)
	}
	return m
}

func clusterByName(r *Resources, name string) *clusterv3.Cluster {
	for _, c := range r.Clusters {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

func listenerByName(r *Resources, name string) *listenerv3.Listener {
	for _, l := range r.Listeners {
		if l.GetName() == name {
			return l
		}
	}
	return nil
}

// listenOn returns "ip:port" for a listener's address and each additional
// address, in order.
func listenOn(l *listenerv3.Listener) []string {
	s := func(a *corev3.Address) string {
		sa := a.GetSocketAddress()
		if sa.GetProtocol() != corev3.SocketAddress_TCP {
			return "not TCP: " + sa.String()
		}
		return netip.AddrPortFrom(netip.MustParseAddr(sa.GetAddress()), uint16(sa.GetPortValue())).String()
	}
	out := []string{s(l.GetAddress())}
	for _, a := range l.GetAdditionalAddresses() {
		out = append(out, s(a.GetAddress()))
	}
	return out
}

// wantListen is where a listener on port listens in cfg's families.
func wantListen(cfg Config, port uint32) []string {
	var out []string
	if cfg.IPv4 {
		out = append(out, fmt.Sprintf("0.0.0.0:%d", port))
	}
	if cfg.IPv6 {
		out = append(out, fmt.Sprintf("[::]:%d", port))
	}
	return out
}

// checkTCPProxyChain asserts a filter chain of one tcp_proxy to cluster.
func checkTCPProxyChain(t *testing.T, fc *listenerv3.FilterChain, cluster string) {
	t.Helper()
	if fc == nil {
		t.Fatalf("no filter chain, want tcp_proxy to %s", cluster)
	}
	if n := len(fc.GetFilters()); n != 1 {
		t.Fatalf("filter chain %q: %d filters, want 1 tcp_proxy", fc.GetName(), n)
	}
	f := fc.GetFilters()[0]
	tp := unpack(t, f.GetTypedConfig(), &tcpproxyv3.TcpProxy{})
	if f.GetName() != "envoy.filters.network.tcp_proxy" || tp.GetCluster() != cluster || tp.GetStatPrefix() == "" {
		t.Errorf("filter chain %q: %s to %q (stat_prefix %q), want envoy.filters.network.tcp_proxy to %q", fc.GetName(), f.GetName(), tp.GetCluster(), tp.GetStatPrefix(), cluster)
	}
}

// checkOriginalDstCluster asserts the shape of a passthrough cluster.
func checkOriginalDstCluster(t *testing.T, c *clusterv3.Cluster, name string) {
	t.Helper()
	if c == nil {
		t.Fatalf("no cluster %q", name)
	}
	if c.GetType() != clusterv3.Cluster_ORIGINAL_DST || c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
		t.Errorf("cluster %q: type %v lb_policy %v, want ORIGINAL_DST CLUSTER_PROVIDED", name, c.GetType(), c.GetLbPolicy())
	}
	if c.GetLoadAssignment() != nil {
		t.Errorf("cluster %q: has a load_assignment", name)
	}
	if c.GetConnectTimeout().AsDuration() <= 0 {
		t.Errorf("cluster %q: connect_timeout %v, want it set", name, c.GetConnectTimeout().AsDuration())
	}
}

// TestContract asserts, for every golden configuration, what operators and
// the other roles rely on: names, ports, families, filter order, the
// ext_proc settings, the bind addresses per mode and family, the cluster
// types.
func TestContract(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			r, err := Build(cfg)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, c := range r.Clusters {
				names = append(names, c.GetName())
			}
			if want := []string{"passthrough", "inbound_passthrough", "realipd_extproc"}; !slices.Equal(names, want) {
				t.Errorf("clusters %q, want %q", names, want)
			}
			names = nil
			for _, l := range r.Listeners {
				names = append(names, l.GetName())
			}
			if want := []string{"virtual_outbound", "virtual_inbound"}; !slices.Equal(names, want) {
				t.Errorf("listeners %q, want %q", names, want)
			}
			byType := r.ByType()
			if len(byType) != 2 || len(byType[resource.ClusterType]) != 3 || len(byType[resource.ListenerType]) != 2 ||
				byType[resource.ClusterType][2] != r.Clusters[2] || byType[resource.ListenerType][1] != r.Listeners[1] {
				t.Errorf("ByType: %v", byType)
			}
			checkOutbound(t, cfg, listenerByName(r, VirtualOutbound))
			checkInbound(t, cfg, listenerByName(r, VirtualInbound))
			checkClusters(t, cfg, r)
		})
	}
}

func checkOutbound(t *testing.T, cfg Config, l *listenerv3.Listener) {
	t.Helper()
	if got, want := listenOn(l), wantListen(cfg, cfg.OutboundPort); !slices.Equal(got, want) {
		t.Errorf("virtual_outbound listens on %q, want %q", got, want)
	}
	if !l.GetUseOriginalDst().GetValue() {
		t.Error("virtual_outbound: use_original_dst is not true")
	}
	if l.GetTransparent().GetValue() {
		t.Error("virtual_outbound: transparent (outbound traffic is redirected in both modes)")
	}
	lf := l.GetListenerFilters()
	if len(lf) != 1 || lf[0].GetName() != "envoy.filters.listener.original_dst" {
		t.Fatalf("virtual_outbound: listener filters %v, want [original_dst]", lf)
	}
	unpack(t, lf[0].GetTypedConfig(), &originaldstv3.OriginalDst{})
	if fcs := l.GetFilterChains(); len(fcs) != 1 {
		t.Errorf("virtual_outbound: %d filter chains, want the loop guard and the default one", len(fcs))
	} else {
		checkLoopGuard(t, fcs[0], cfg.OutboundPort)
	}
	checkTCPProxyChain(t, l.GetDefaultFilterChain(), PassthroughCluster)
}

// checkLoopGuard checks the chain that closes the connections made to the
// capture port itself: matched on that destination port, one
// direct_response filter with nothing to send.
func checkLoopGuard(t *testing.T, fc *listenerv3.FilterChain, port uint32) {
	t.Helper()
	if want := fmt.Sprintf("capture_%d", port); fc.GetName() != want || fc.GetFilterChainMatch().GetDestinationPort().GetValue() != port {
		t.Errorf("loop guard chain %q matching port %v, want %q matching %d", fc.GetName(), fc.GetFilterChainMatch().GetDestinationPort(), want, port)
	}
	if fs := fc.GetFilters(); len(fs) != 1 || fs[0].GetName() != directResponseFilter {
		t.Fatalf("loop guard filters %v, want one %s", fs, directResponseFilter)
	}
	dr := unpack(t, fc.GetFilters()[0].GetTypedConfig(), &directresponsev3.Config{})
	if dr.GetResponse() != nil {
		t.Errorf("the loop guard answers %v, want nothing", dr.GetResponse())
	}
}

func checkInbound(t *testing.T, cfg Config, l *listenerv3.Listener) {
	t.Helper()
	if got, want := listenOn(l), wantListen(cfg, cfg.InboundPort); !slices.Equal(got, want) {
		t.Errorf("virtual_inbound listens on %q, want %q", got, want)
	}
	if l.GetUseOriginalDst().GetValue() {
		t.Error("virtual_inbound: use_original_dst is set")
	}
	tproxy := cfg.Mode == ModeTProxy
	if got := l.GetTransparent().GetValue(); got != tproxy {
		t.Errorf("virtual_inbound: transparent %v in mode %s", got, cfg.Mode)
	}
	var lfNames []string
	for _, f := range l.GetListenerFilters() {
		lfNames = append(lfNames, f.GetName())
	}
	want := []string{"envoy.filters.listener.original_dst"}
	if tproxy {
		want = append(want, "envoy.filters.listener.original_src")
	}
	if !slices.Equal(lfNames, want) {
		t.Fatalf("virtual_inbound: listener filters %q, want %q", lfNames, want)
	}
	unpack(t, l.GetListenerFilters()[0].GetTypedConfig(), &originaldstv3.OriginalDst{})
	if tproxy {
		src := unpack(t, l.GetListenerFilters()[1].GetTypedConfig(), &originalsrcv3.OriginalSrc{})
		if src.GetMark() != cfg.OriginalSrcMark || src.GetBindPort() {
			t.Errorf("original_src: mark %d bind_port %v, want mark %d", src.GetMark(), src.GetBindPort(), cfg.OriginalSrcMark)
		}
	}

	chains := l.GetFilterChains()
	if len(chains) != len(cfg.HTTPPorts)+1 {
		t.Fatalf("virtual_inbound: %d filter chains, want one per HTTP port %v and the loop guard", len(chains), cfg.HTTPPorts)
	}
	checkLoopGuard(t, chains[len(chains)-1], cfg.InboundPort)
	for i, port := range cfg.HTTPPorts {
		fc := chains[i]
		if want := fmt.Sprintf("http_%d", port); fc.GetName() != want {
			t.Errorf("filter chain %d: name %q, want %q", i, fc.GetName(), want)
		}
		m := fc.GetFilterChainMatch()
		if m.GetDestinationPort().GetValue() != port || !proto.Equal(m, &listenerv3.FilterChainMatch{DestinationPort: m.GetDestinationPort()}) {
			t.Errorf("filter chain %q: match %v, want destination_port %d only", fc.GetName(), m, port)
		}
		checkHTTPChain(t, cfg, fc)
	}
	checkTCPProxyChain(t, l.GetDefaultFilterChain(), InboundPassthroughCluster)
}

func checkHTTPChain(t *testing.T, cfg Config, fc *listenerv3.FilterChain) {
	t.Helper()
	if len(fc.GetFilters()) != 1 || fc.GetFilters()[0].GetName() != "envoy.filters.network.http_connection_manager" {
		t.Fatalf("filter chain %q: filters %v, want one http_connection_manager", fc.GetName(), fc.GetFilters())
	}
	h := unpack(t, fc.GetFilters()[0].GetTypedConfig(), &hcmv3.HttpConnectionManager{})
	if !h.GetUseRemoteAddress().GetValue() || h.GetXffNumTrustedHops() != 0 || h.GetSkipXffAppend() || h.GetStatPrefix() == "" {
		t.Errorf("%s: HCM use_remote_address %v xff_num_trusted_hops %d skip_xff_append %v stat_prefix %q",
			fc.GetName(), h.GetUseRemoteAddress(), h.GetXffNumTrustedHops(), h.GetSkipXffAppend(), h.GetStatPrefix())
	}
	vhs := h.GetRouteConfig().GetVirtualHosts()
	if len(vhs) != 1 || !slices.Equal(vhs[0].GetDomains(), []string{"*"}) || len(vhs[0].GetRoutes()) != 1 {
		t.Fatalf("%s: route_config %v, want one virtual host for * with one route", fc.GetName(), h.GetRouteConfig())
	}
	route := vhs[0].GetRoutes()[0]
	if route.GetMatch().GetPrefix() != "/" || route.GetRoute().GetCluster() != InboundPassthroughCluster {
		t.Errorf("%s: route %v, want prefix / to %s", fc.GetName(), route, InboundPassthroughCluster)
	}

	filters := h.GetHttpFilters()
	var fnames []string
	for _, f := range filters {
		fnames = append(fnames, f.GetName())
	}
	if want := []string{"envoy.filters.http.ext_proc", "envoy.filters.http.router"}; !slices.Equal(fnames, want) {
		t.Fatalf("%s: http_filters %q, want %q", fc.GetName(), fnames, want)
	}
	unpack(t, filters[1].GetTypedConfig(), &routerv3.Router{})
	ep := unpack(t, filters[0].GetTypedConfig(), &extprocv3.ExternalProcessor{})
	if got := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != "realipd_extproc" {
		t.Errorf("ext_proc: envoy_grpc.cluster_name %q", got)
	}
	wantMode := &extprocv3.ProcessingMode{
		RequestHeaderMode:   extprocv3.ProcessingMode_SEND,
		ResponseHeaderMode:  extprocv3.ProcessingMode_SKIP,
		RequestBodyMode:     extprocv3.ProcessingMode_NONE,
		ResponseBodyMode:    extprocv3.ProcessingMode_NONE,
		RequestTrailerMode:  extprocv3.ProcessingMode_SKIP,
		ResponseTrailerMode: extprocv3.ProcessingMode_SKIP,
	}
	if !proto.Equal(ep.GetProcessingMode(), wantMode) {
		t.Errorf("ext_proc: processing_mode %v, want %v", ep.GetProcessingMode(), wantMode)
	}
	if got := ep.GetRequestAttributes(); !slices.Equal(got, []string{"source.address", "destination.address"}) {
		t.Errorf("ext_proc: request_attributes %q", got)
	}
	if got := ep.GetMetadataOptions().GetReceivingNamespaces().GetUntyped(); !slices.Equal(got, []string{cfg.MetadataNamespace}) {
		t.Errorf("ext_proc: receiving_namespaces.untyped %q, want [%s]", got, cfg.MetadataNamespace)
	}
	wantTimeout := cfg.MessageTimeout
	if wantTimeout == 0 {
		wantTimeout = 200 * time.Millisecond
	}
	if ep.GetMessageTimeout() == nil || ep.GetMessageTimeout().AsDuration() != wantTimeout {
		t.Errorf("ext_proc: message_timeout %v, want %v", ep.GetMessageTimeout(), wantTimeout)
	}
	if ep.GetFailureModeAllow() != cfg.FailureModeAllow {
		t.Errorf("ext_proc: failure_mode_allow %v, want %v", ep.GetFailureModeAllow(), cfg.FailureModeAllow)
	}
	if ep.GetObservabilityMode() || ep.GetDisableImmediateResponse() || ep.GetAllowModeOverride() {
		t.Error("ext_proc: observability_mode, disable_immediate_response or allow_mode_override set")
	}
}

func checkClusters(t *testing.T, cfg Config, r *Resources) {
	t.Helper()
	out := clusterByName(r, PassthroughCluster)
	checkOriginalDstCluster(t, out, PassthroughCluster)
	if out.GetUpstreamBindConfig() != nil {
		t.Errorf("passthrough binds %v; outbound connections keep the application's source", out.GetUpstreamBindConfig())
	}

	in := clusterByName(r, InboundPassthroughCluster)
	checkOriginalDstCluster(t, in, InboundPassthroughCluster)
	b := in.GetUpstreamBindConfig()
	var bound []string
	if b != nil {
		bound = append(bound, b.GetSourceAddress().GetAddress())
		for _, e := range b.GetExtraSourceAddresses() {
			bound = append(bound, e.GetAddress().GetAddress())
		}
	}
	var wantBound []string
	if cfg.Mode == ModeRedirect {
		if cfg.IPv4 {
			wantBound = append(wantBound, "127.0.0.6")
		}
		if cfg.IPv6 {
			wantBound = append(wantBound, "::6")
		}
	}
	if !slices.Equal(bound, wantBound) {
		t.Errorf("inbound_passthrough binds %q in mode %s, want %q", bound, cfg.Mode, wantBound)
	}

	ep := clusterByName(r, ExtProcCluster)
	if ep == nil {
		t.Fatal("no realipd_extproc cluster")
	}
	opts := unpack(t, ep.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"], &upstreamhttpv3.HttpProtocolOptions{})
	if opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Error("realipd_extproc: not HTTP/2")
	}
	lbs := ep.GetLoadAssignment().GetEndpoints()
	if len(lbs) != 1 || len(lbs[0].GetLbEndpoints()) != 1 {
		t.Fatalf("realipd_extproc: load_assignment %v, want one endpoint", ep.GetLoadAssignment())
	}
	addr := lbs[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
	var gotType clusterv3.Cluster_DiscoveryType
	var got string
	if p := addr.GetPipe(); p != nil {
		gotType, got = ep.GetType(), "unix://"+p.GetPath()
	} else {
		sa := addr.GetSocketAddress()
		gotType, got = ep.GetType(), fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
		if strings.Contains(sa.GetAddress(), ":") {
			got = fmt.Sprintf("[%s]:%d", sa.GetAddress(), sa.GetPortValue())
		}
	}
	wantType := clusterv3.Cluster_STATIC
	if strings.Contains(cfg.ExtProcAddress, ".svc.") {
		wantType = clusterv3.Cluster_STRICT_DNS
	}
	if got != cfg.ExtProcAddress || gotType != wantType {
		t.Errorf("realipd_extproc: %v at %s, want %v at %s", gotType, got, wantType, cfg.ExtProcAddress)
	}
}

// TestBuildDefaults: the zero MessageTimeout is the default, written out;
// fail closed by default; original_src sets no mark unless told.
func TestBuildDefaults(t *testing.T) {
	cfg := testConfig(ModeTProxy, true, false)
	cfg.OriginalSrcMark = 0
	r, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := listenerByName(r, VirtualInbound)
	h := unpack(t, l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig(), &hcmv3.HttpConnectionManager{})
	ep := unpack(t, h.GetHttpFilters()[0].GetTypedConfig(), &extprocv3.ExternalProcessor{})
	if ep.GetMessageTimeout().AsDuration() != DefaultMessageTimeout || ep.GetFailureModeAllow() {
		t.Errorf("message_timeout %v failure_mode_allow %v, want %v false", ep.GetMessageTimeout().AsDuration(), ep.GetFailureModeAllow(), DefaultMessageTimeout)
	}
	src := unpack(t, l.GetListenerFilters()[1].GetTypedConfig(), &originalsrcv3.OriginalSrc{})
	if src.GetMark() != 0 {
		t.Errorf("original_src mark %d, want 0", src.GetMark())
	}

	// No HTTP ports: virtual_inbound passes everything through (but what
	// is made to the capture port itself).
	cfg.HTTPPorts = nil
	if r, err = Build(cfg); err != nil {
		t.Fatal(err)
	}
	if l := listenerByName(r, VirtualInbound); len(l.GetFilterChains()) != 1 || l.GetDefaultFilterChain() == nil {
		t.Errorf("without HTTP ports: %d filter chains, default %v", len(l.GetFilterChains()), l.GetDefaultFilterChain())
	}
}

// TestBuildExtProcAddress covers the address forms of the ext_proc server.
func TestBuildExtProcAddress(t *testing.T) {
	for _, tc := range []struct {
		addr     string
		typ      clusterv3.Cluster_DiscoveryType
		host     string
		port     uint32
		pipe     string
		v6only   bool
		dnsOrder clusterv3.Cluster_DnsLookupFamily
	}{
		{addr: "127.0.0.1:9001", typ: clusterv3.Cluster_STATIC, host: "127.0.0.1", port: 9001},
		{addr: "[::1]:9001", typ: clusterv3.Cluster_STATIC, host: "::1", port: 9001},
		{addr: "[::ffff:127.0.0.1]:9001", typ: clusterv3.Cluster_STATIC, host: "127.0.0.1", port: 9001},
		{addr: "localhost:9001", typ: clusterv3.Cluster_STRICT_DNS, host: "localhost", port: 9001, dnsOrder: clusterv3.Cluster_V4_PREFERRED},
		{addr: "realipd.svc.:9001", typ: clusterv3.Cluster_STRICT_DNS, host: "realipd.svc.", port: 9001, v6only: true, dnsOrder: clusterv3.Cluster_AUTO},
		{addr: "unix:///run/realipd/extproc.sock", typ: clusterv3.Cluster_STATIC, pipe: "/run/realipd/extproc.sock"},
		{addr: "unix:///run/realipd/../realipd/x.sock", typ: clusterv3.Cluster_STATIC, pipe: "/run/realipd/x.sock"},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			cfg := testConfig(ModeRedirect, !tc.v6only, true)
			cfg.ExtProcAddress = tc.addr
			r, err := Build(cfg)
			if err != nil {
				t.Fatal(err)
			}
			c := clusterByName(r, ExtProcCluster)
			a := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
			if c.GetType() != tc.typ || a.GetPipe().GetPath() != tc.pipe ||
				a.GetSocketAddress().GetAddress() != tc.host || a.GetSocketAddress().GetPortValue() != tc.port ||
				c.GetDnsLookupFamily() != tc.dnsOrder {
				t.Errorf("got %v %v dns_lookup_family %v", c.GetType(), a, c.GetDnsLookupFamily())
			}
		})
	}
}

// TestBuildConfigErrors: each invalid Config is refused with a *ConfigError
// naming its key.
func TestBuildConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   map[string]string // path → part of the reason
	}{
		{"unknown mode", func(c *Config) { c.Mode = "nat" }, map[string]string{"xds.mode": `"nat" is not one of redirect, tproxy`}},
		{"no mode", func(c *Config) { c.Mode = "" }, map[string]string{"xds.mode": `"" is not one of`}},
		{"outbound port 0", func(c *Config) { c.OutboundPort = 0 }, map[string]string{"xds.outbound_port": "0 is not a port"}},
		{"inbound port too big", func(c *Config) { c.InboundPort = 65536 }, map[string]string{"xds.inbound_port": "65536 is not a port"}},
		{"inbound is outbound", func(c *Config) { c.InboundPort = c.OutboundPort }, map[string]string{"xds.inbound_port": "also the outbound_port"}},
		{"no family", func(c *Config) { c.IPv4, c.IPv6 = false, false }, map[string]string{"xds.ip_families": "must list ipv4, ipv6 or both"}},
		{"http port 0", func(c *Config) { c.HTTPPorts = []uint32{8080, 0} }, map[string]string{"xds.http_ports[1]": "0 is not a port"}},
		{"http port too big", func(c *Config) { c.HTTPPorts = []uint32{70000} }, map[string]string{"xds.http_ports[0]": "70000 is not a port"}},
		{"http port twice", func(c *Config) { c.HTTPPorts = []uint32{8080, 9090, 8080} }, map[string]string{"xds.http_ports[2]": "8080 is listed twice"}},
		{"http port is inbound", func(c *Config) { c.HTTPPorts = []uint32{15006} }, map[string]string{"xds.http_ports[0]": "is the inbound_port"}},
		{"http port is outbound", func(c *Config) { c.HTTPPorts = []uint32{8080, 15001} }, map[string]string{"xds.http_ports[1]": "is the outbound_port"}},
		{"no extproc address", func(c *Config) { c.ExtProcAddress = "" }, map[string]string{"xds.extproc_address": "required"}},
		{"extproc no port", func(c *Config) { c.ExtProcAddress = "127.0.0.1" }, map[string]string{"xds.extproc_address": "is not host:port"}},
		{"extproc port 0", func(c *Config) { c.ExtProcAddress = "127.0.0.1:0" }, map[string]string{"xds.extproc_address": `port "0" is not between 1 and 65535`}},
		{"extproc port junk", func(c *Config) { c.ExtProcAddress = "127.0.0.1:http" }, map[string]string{"xds.extproc_address": `port "http"`}},
		{"extproc no host", func(c *Config) { c.ExtProcAddress = ":9001" }, map[string]string{"xds.extproc_address": "has no host"}},
		{"extproc unspecified", func(c *Config) { c.ExtProcAddress = "0.0.0.0:9001" }, map[string]string{"xds.extproc_address": "is a listen address"}},
		{"extproc zone", func(c *Config) { c.ExtProcAddress = "[fe80::1%eth0]:9001" }, map[string]string{"xds.extproc_address": "zones are not supported"}},
		{"extproc bad host", func(c *Config) { c.ExtProcAddress = "real ipd:9001" }, map[string]string{"xds.extproc_address": "is not an IP address or a host name"}},
		{"extproc bad label", func(c *Config) { c.ExtProcAddress = "-realipd.svc:9001" }, map[string]string{"xds.extproc_address": "is not an IP address or a host name"}},
		{"extproc numeric name", func(c *Config) { c.ExtProcAddress = "10.1:9001" }, map[string]string{"xds.extproc_address": "is not an IP address or a host name"}},
		{"extproc relative unix", func(c *Config) { c.ExtProcAddress = "unix://run/x.sock" }, map[string]string{"xds.extproc_address": "absolute path"}},
		{"extproc unix root", func(c *Config) { c.ExtProcAddress = "unix:///" }, map[string]string{"xds.extproc_address": "absolute path"}},
		{"no namespace", func(c *Config) { c.MetadataNamespace = "" }, map[string]string{"extproc.metadata_namespace": "not a valid namespace"}},
		{"namespace with space", func(c *Config) { c.MetadataNamespace = "real ipd" }, map[string]string{"extproc.metadata_namespace": "not a valid namespace"}},
		{"negative timeout", func(c *Config) { c.MessageTimeout = -time.Second }, map[string]string{"xds.message_timeout": "is not between 0"}},
		{"timeout too long", func(c *Config) { c.MessageTimeout = 2 * time.Hour }, map[string]string{"xds.message_timeout": "is not between 0"}},
		{"several", func(c *Config) { *c = Config{} }, map[string]string{
			"xds.mode": "not one of", "xds.outbound_port": "0 is not a port", "xds.inbound_port": "0 is not a port",
			"xds.ip_families": "must list", "xds.extproc_address": "required", "extproc.metadata_namespace": "not a valid namespace",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(ModeRedirect, true, true)
			tc.mutate(&cfg)
			r, err := Build(cfg)
			if err == nil {
				t.Fatalf("Build succeeded: %v", r)
			}
			var errs []error
			if j, ok := err.(interface{ Unwrap() []error }); ok {
				errs = j.Unwrap()
			} else {
				errs = []error{err}
			}
			got := map[string]string{}
			for _, e := range errs {
				var ce *ConfigError
				if !errors.As(e, &ce) {
					t.Fatalf("%v is not a *ConfigError", e)
				}
				if e.Error() != ce.Path+": "+ce.Reason {
					t.Errorf("Error() = %q", e.Error())
				}
				if _, dup := got[ce.Path]; dup {
					t.Errorf("two errors for %s", ce.Path)
				}
				got[ce.Path] = ce.Reason
			}
			for path, part := range tc.want {
				if !strings.Contains(got[path], part) {
					t.Errorf("%s: reason %q, want it to contain %q", path, got[path], part)
				}
			}
			for path, reason := range got {
				if _, ok := tc.want[path]; !ok {
					t.Errorf("unexpected error %s: %s", path, reason)
				}
			}
		})
	}
}

// BenchmarkBuild measures translation and validation of a typical
// configuration (dual stack, two HTTP ports): the reload path, not the
// request path.
func BenchmarkBuild(b *testing.B) {
	cfg := testConfig(ModeRedirect, true, true)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Build(cfg); err != nil {
			b.Fatal(err)
		}
	}
}
