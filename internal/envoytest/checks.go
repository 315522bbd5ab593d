package envoytest

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// The names and values the shipped files promise (docs/design.md, ext_proc and xDS
// contracts).
const (
	extProcCluster   = "realipd_extproc"
	xdsCluster       = "realipd_xds"
	MetadataNS       = "realipd" // the dynamic metadata namespace the files receive
	clientIPLogField = "%DYNAMIC_METADATA(realipd:client_ip)%"
	http2OptionsKey  = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// Endpoint is where a cluster must point: a TCP address or a unix socket path.
type Endpoint struct {
	Addr netip.AddrPort
	Pipe string
}

// String is the address, or unix:// and the path.
func (e Endpoint) String() string {
	if e.Pipe != "" {
		return "unix://" + e.Pipe
	}
	return e.Addr.String()
}

// checker collects every broken expectation of one file instead of stopping
// at the first, so one run shows them all.
type checker struct{ errs []error }

func (c *checker) errorf(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

func (c *checker) err() error { return errors.Join(c.errs...) }

// CheckStatic asserts the settings realipd relies on in a static ext_proc
// bootstrap: exactly one HTTP connection manager with use_remote_address true
// and xff_num_trusted_hops 0, an access log printing the client IP, the ext_proc
// filter configured as docs/design.md says, the router last, every routed cluster
// defined, the ext_proc cluster on HTTP/2 at extProcAt, and a loopback admin.
func CheckStatic(l *Loaded, extProcAt Endpoint) error {
	c := &checker{}
	b := l.Bootstrap
	checkLoopbackAdmin(c, l)

	type found struct {
		hcm  *hcmv3.HttpConnectionManager
		path []any // in the raw JSON, down to the HCM's typed_config
	}
	var hcms []found
	for i, lis := range b.GetStaticResources().GetListeners() {
		for j, fc := range lis.GetFilterChains() {
			for k, f := range fc.GetFilters() {
				h := &hcmv3.HttpConnectionManager{}
				if f.GetTypedConfig().MessageIs(h) {
					if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
						c.errorf("listener %q: unpack HCM: %v", lis.GetName(), err)
						continue
					}
					hcms = append(hcms, found{h, []any{"static_resources", "listeners", i, "filter_chains", j, "filters", k, "typed_config"}})
				}
			}
		}
	}
	if len(hcms) != 1 {
		c.errorf("want exactly 1 http_connection_manager, found %d", len(hcms))
		return c.err()
	}
	h, hcmPath := hcms[0].hcm, hcms[0].path

	if !h.GetUseRemoteAddress().GetValue() {
		c.errorf("HCM: use_remote_address must be true")
	}
	if h.GetXffNumTrustedHops() != 0 {
		c.errorf("HCM: xff_num_trusted_hops must be 0, is %d", h.GetXffNumTrustedHops())
	}
	if h.GetSkipXffAppend() {
		c.errorf("HCM: skip_xff_append must be false (realipd expects Envoy to append the peer)")
	}
	requireKeys(c, l.Raw, hcmPath, "HCM", "use_remote_address", "xff_num_trusted_hops")

	logsClientIP := false
	for _, al := range h.GetAccessLog() {
		js, err := protojson.Marshal(al.GetTypedConfig())
		if err != nil {
			c.errorf("HCM access_log %q: %v", al.GetName(), err)
			continue
		}
		if strings.Contains(string(js), clientIPLogField) {
			logsClientIP = true
		}
	}
	if !logsClientIP {
		c.errorf("HCM: no access_log prints %s", clientIPLogField)
	}

	filters := h.GetHttpFilters()
	if n := len(filters); n == 0 || filters[n-1].GetName() != "envoy.filters.http.router" ||
		!filters[n-1].GetTypedConfig().MessageIs(&routerv3.Router{}) {
		c.errorf("HCM: the last http_filter must be envoy.filters.http.router")
	}
	var extProcs []int
	for i, f := range filters {
		if f.GetTypedConfig().MessageIs(&extprocv3.ExternalProcessor{}) {
			extProcs = append(extProcs, i)
		}
	}
	if len(extProcs) != 1 {
		c.errorf("HCM: want exactly 1 ext_proc filter, found %d", len(extProcs))
	} else {
		i := extProcs[0]
		if filters[i].GetName() != "envoy.filters.http.ext_proc" {
			c.errorf("HCM: ext_proc filter named %q, want envoy.filters.http.ext_proc", filters[i].GetName())
		}
		ep := &extprocv3.ExternalProcessor{}
		if err := filters[i].GetTypedConfig().UnmarshalTo(ep); err != nil {
			c.errorf("ext_proc: unpack: %v", err)
		} else {
			raw := append(slices.Clone(hcmPath), "http_filters", i, "typed_config")
			checkExtProc(c, l, ep, raw)
		}
	}

	clusters := map[string]*clusterv3.Cluster{}
	for _, cl := range b.GetStaticResources().GetClusters() {
		clusters[cl.GetName()] = cl
	}
	for _, vh := range h.GetRouteConfig().GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			if name := r.GetRoute().GetCluster(); name != "" && clusters[name] == nil {
				c.errorf("route in virtual host %q: cluster %q is not defined", vh.GetName(), name)
			}
		}
	}
	if h.GetRouteConfig() == nil {
		c.errorf("HCM: no route_config")
	}
	checkGRPCCluster(c, clusters[extProcCluster], extProcCluster, extProcAt)
	return c.err()
}

// checkExtProc asserts the ext_proc filter's settings; raw is the path to its
// typed_config in the plain JSON, to check that modes are written out.
func checkExtProc(c *checker, l *Loaded, ep *extprocv3.ExternalProcessor, raw []any) {
	if got := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != extProcCluster {
		c.errorf("ext_proc: grpc_service.envoy_grpc.cluster_name is %q, want %q", got, extProcCluster)
	}
	pm := ep.GetProcessingMode()
	want := []struct {
		field string
		got   fmt.Stringer
		want  fmt.Stringer
	}{
		{"request_header_mode", pm.GetRequestHeaderMode(), extprocv3.ProcessingMode_SEND},
		{"response_header_mode", pm.GetResponseHeaderMode(), extprocv3.ProcessingMode_SKIP},
		{"request_body_mode", pm.GetRequestBodyMode(), extprocv3.ProcessingMode_NONE},
		{"response_body_mode", pm.GetResponseBodyMode(), extprocv3.ProcessingMode_NONE},
		{"request_trailer_mode", pm.GetRequestTrailerMode(), extprocv3.ProcessingMode_SKIP},
		{"response_trailer_mode", pm.GetResponseTrailerMode(), extprocv3.ProcessingMode_SKIP},
	}
	var keys []string
	for _, w := range want {
		keys = append(keys, w.field)
		if w.got.String() != w.want.String() {
			c.errorf("ext_proc: processing_mode.%s is %v, want %v", w.field, w.got, w.want)
		}
	}
	requireKeys(c, l.Raw, append(slices.Clone(raw), "processing_mode"), "ext_proc processing_mode", keys...)
	requireKeys(c, l.Raw, raw, "ext_proc", "failure_mode_allow", "message_timeout")

	if got := ep.GetRequestAttributes(); !slices.Equal(got, []string{"source.address", "destination.address"}) {
		c.errorf("ext_proc: request_attributes is %q, want [source.address, destination.address]", got)
	}
	if got := ep.GetMetadataOptions().GetReceivingNamespaces().GetUntyped(); !slices.Contains(got, MetadataNS) {
		c.errorf("ext_proc: metadata_options.receiving_namespaces.untyped is %q, want it to hold %q", got, MetadataNS)
	}
	if mt := ep.GetMessageTimeout(); mt == nil || mt.AsDuration() <= 0 || mt.AsDuration() > time.Second {
		c.errorf("ext_proc: message_timeout is %v, want an explicit value in (0, 1s]", mt.AsDuration())
	}
	if ep.GetObservabilityMode() {
		c.errorf("ext_proc: observability_mode must be off (Envoy would ignore realipd's answers)")
	}
	if ep.GetDisableImmediateResponse() {
		c.errorf("ext_proc: disable_immediate_response must be off (deny policies answer with an ImmediateResponse)")
	}
}

// CheckADS asserts an ADS bootstrap: node id and cluster set, ADS over gRPC
// (API v3) to the realipd_xds cluster on HTTP/2 at xdsAt, listeners and clusters
// from ADS, and a loopback admin.
func CheckADS(l *Loaded, xdsAt Endpoint) error {
	c := &checker{}
	b := l.Bootstrap
	checkLoopbackAdmin(c, l)
	if b.GetNode().GetId() == "" || b.GetNode().GetCluster() == "" {
		c.errorf("node: id and cluster must be set (%q, %q)", b.GetNode().GetId(), b.GetNode().GetCluster())
	}
	dr := b.GetDynamicResources()
	ads := dr.GetAdsConfig()
	if ads.GetApiType() != corev3.ApiConfigSource_GRPC {
		c.errorf("ads_config: api_type is %v, want GRPC", ads.GetApiType())
	}
	if ads.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		c.errorf("ads_config: transport_api_version is %v, want V3", ads.GetTransportApiVersion())
	}
	if gs := ads.GetGrpcServices(); len(gs) != 1 || gs[0].GetEnvoyGrpc().GetClusterName() != xdsCluster {
		c.errorf("ads_config: want one grpc_service with envoy_grpc.cluster_name %q", xdsCluster)
	}
	for name, cs := range map[string]*corev3.ConfigSource{"lds_config": dr.GetLdsConfig(), "cds_config": dr.GetCdsConfig()} {
		if cs.GetAds() == nil {
			c.errorf("%s: must come from ads", name)
		}
		if cs.GetResourceApiVersion() != corev3.ApiVersion_V3 {
			c.errorf("%s: resource_api_version is %v, want V3", name, cs.GetResourceApiVersion())
		}
	}
	var xds *clusterv3.Cluster
	for _, cl := range b.GetStaticResources().GetClusters() {
		if cl.GetName() == xdsCluster {
			xds = cl
		}
	}
	checkGRPCCluster(c, xds, xdsCluster, xdsAt)
	return c.err()
}

// checkGRPCCluster asserts that cl exists, speaks HTTP/2 upstream (gRPC needs
// it) and has exactly one Endpoint, at want.
func checkGRPCCluster(c *checker, cl *clusterv3.Cluster, name string, want Endpoint) {
	if cl == nil {
		c.errorf("cluster %q is not defined", name)
		return
	}
	opts := &upstreamhttpv3.HttpProtocolOptions{}
	packed := cl.GetTypedExtensionProtocolOptions()[http2OptionsKey]
	if packed == nil {
		c.errorf("cluster %q: no typed_extension_protocol_options[%s]", name, http2OptionsKey)
	} else if err := anypb.UnmarshalTo(packed, opts, proto.UnmarshalOptions{}); err != nil {
		c.errorf("cluster %q: unpack %s: %v", name, http2OptionsKey, err)
	} else if opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		c.errorf("cluster %q: must use HTTP/2 (explicit_http_config.http2_protocol_options)", name)
	}
	var got []Endpoint
	for _, lle := range cl.GetLoadAssignment().GetEndpoints() {
		for _, lb := range lle.GetLbEndpoints() {
			got = append(got, EndpointOf(lb.GetEndpoint().GetAddress()))
		}
	}
	if len(got) != 1 || got[0] != want {
		c.errorf("cluster %q: endpoints %v, want [%v]", name, got, want)
	}
}

// checkLoopbackAdmin asserts that Envoy's admin interface, which can stop
// Envoy, is bound to a loopback address.
func checkLoopbackAdmin(c *checker, l *Loaded) {
	e := EndpointOf(l.Bootstrap.GetAdmin().GetAddress())
	if !e.Addr.Addr().IsLoopback() {
		c.errorf("admin: address %v, want a loopback address", e)
	}
}

// EndpointOf is the Endpoint of an Envoy address (the zero Endpoint for one that
// is neither an IP socket address nor a pipe).
func EndpointOf(a *corev3.Address) Endpoint {
	if p := a.GetPipe(); p != nil {
		return Endpoint{Pipe: p.GetPath()}
	}
	sa := a.GetSocketAddress()
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return Endpoint{}
	}
	return Endpoint{Addr: netip.AddrPortFrom(ip, uint16(sa.GetPortValue()))}
}

// requireKeys reports each key missing from the JSON object at path: proto3
// cannot tell a zero value written out (request_body_mode: NONE,
// failure_mode_allow: false) from one left out, the file can.
func requireKeys(c *checker, raw any, path []any, what string, keys ...string) {
	v, ok := RawAt(raw, path...)
	m, isMap := v.(map[string]any)
	if !ok || !isMap {
		c.errorf("%s: not found in the file at %v", what, path)
		return
	}
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			c.errorf("%s: %s is not set explicitly", what, k)
		}
	}
}
