package xds

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// editHCM unpacks the HCM of virtual_inbound's first HTTP chain (http_8080),
// lets edit change it and packs it back.
func editHCM(t *testing.T, r *Resources, edit func(*hcmv3.HttpConnectionManager)) {
	t.Helper()
	f := listenerByName(r, VirtualInbound).GetFilterChains()[0].GetFilters()[0]
	h := unpack(t, f.GetTypedConfig(), &hcmv3.HttpConnectionManager{})
	edit(h)
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(h)}
}

// editExtProc edits the ext_proc filter inside that HCM: two Anys deep.
func editExtProc(t *testing.T, r *Resources, edit func(*extprocv3.ExternalProcessor)) {
	t.Helper()
	editHCM(t, r, func(h *hcmv3.HttpConnectionManager) {
		f := h.GetHttpFilters()[0]
		ep := unpack(t, f.GetTypedConfig(), &extprocv3.ExternalProcessor{})
		edit(ep)
		f.ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(ep)}
	})
}

// editHTTPOptions edits realipd_extproc's HttpProtocolOptions.
func editHTTPOptions(t *testing.T, r *Resources, edit func(*upstreamhttpv3.HttpProtocolOptions)) {
	t.Helper()
	c := clusterByName(r, ExtProcCluster)
	opts := unpack(t, c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsKey], &upstreamhttpv3.HttpProtocolOptions{})
	edit(opts)
	c.TypedExtensionProtocolOptions[httpProtocolOptionsKey] = mustAny(opts)
}

// TestValidateRejects starts from a good Build result, breaks one thing and
// requires Validate to name it.
func TestValidateRejects(t *testing.T) {
	for _, tc := range []struct {
		name    string
		breakIt func(*testing.T, *Resources)
		want    []string // each must appear in one error
	}{
		{
			name: "router first",
			breakIt: func(t *testing.T, r *Resources) {
				editHCM(t, r, func(h *hcmv3.HttpConnectionManager) {
					f := h.HttpFilters
					f[0], f[1] = f[1], f[0]
				})
			},
			want: []string{`listener "virtual_inbound": filter chain "http_8080": http_filters: the router must be last, found envoy.filters.http.ext_proc`},
		},
		{
			name: "router missing",
			breakIt: func(t *testing.T, r *Resources) {
				editHCM(t, r, func(h *hcmv3.HttpConnectionManager) { h.HttpFilters = h.HttpFilters[:1] })
			},
			want: []string{`listener "virtual_inbound": filter chain "http_8080": http_filters: no router (envoy.filters.http.router)`},
		},
		{
			name: "two routers",
			breakIt: func(t *testing.T, r *Resources) {
				editHCM(t, r, func(h *hcmv3.HttpConnectionManager) {
					h.HttpFilters = []*hcmv3.HttpFilter{h.HttpFilters[1], h.HttpFilters[0], h.HttpFilters[1]}
				})
			},
			want: []string{`filter chain "http_8080": http_filters: 2 routers`},
		},
		{
			name: "router disabled",
			breakIt: func(t *testing.T, r *Resources) {
				editHCM(t, r, func(h *hcmv3.HttpConnectionManager) { h.HttpFilters[1].Disabled = true })
			},
			want: []string{`filter chain "http_8080": http_filters: the router "envoy.filters.http.router" is disabled`},
		},
		{
			name: "ROUND_ROBIN on ORIGINAL_DST",
			breakIt: func(t *testing.T, r *Resources) {
				clusterByName(r, PassthroughCluster).LbPolicy = clusterv3.Cluster_ROUND_ROBIN
			},
			want: []string{`cluster "passthrough": type ORIGINAL_DST needs lb_policy CLUSTER_PROVIDED, found ROUND_ROBIN`},
		},
		{
			name: "load_assignment on ORIGINAL_DST",
			breakIt: func(t *testing.T, r *Resources) {
				clusterByName(r, InboundPassthroughCluster).LoadAssignment = &endpointv3.ClusterLoadAssignment{ClusterName: InboundPassthroughCluster}
			},
			want: []string{`cluster "inbound_passthrough": type ORIGINAL_DST takes its hosts from the connections: load_assignment must not be set`},
		},
		{
			name: "CLUSTER_PROVIDED on STATIC",
			breakIt: func(t *testing.T, r *Resources) {
				clusterByName(r, ExtProcCluster).LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
			},
			want: []string{`cluster "realipd_extproc": lb_policy CLUSTER_PROVIDED is only valid with type ORIGINAL_DST, found STATIC`},
		},
		{
			name: "ext_proc cluster on HTTP/1",
			breakIt: func(t *testing.T, r *Resources) {
				editHTTPOptions(t, r, func(o *upstreamhttpv3.HttpProtocolOptions) {
					o.UpstreamProtocolOptions = &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
						ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
							ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
						},
					}
				})
			},
			want: []string{`cluster "realipd_extproc": gRPC needs HTTP/2: typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"] must set explicit_http_config.http2_protocol_options (the cluster serves listener "virtual_inbound": filter chain "http_8080": http filter "envoy.filters.http.ext_proc")`},
		},
		{
			name: "ext_proc cluster without protocol options",
			breakIt: func(t *testing.T, r *Resources) {
				clusterByName(r, ExtProcCluster).TypedExtensionProtocolOptions = nil
			},
			want: []string{`cluster "realipd_extproc": gRPC needs HTTP/2`},
		},
		{
			name: "HTTP options under the wrong key",
			breakIt: func(t *testing.T, r *Resources) {
				c := clusterByName(r, ExtProcCluster)
				c.TypedExtensionProtocolOptions["envoy.upstreams.http.http_protocol_options"] = c.TypedExtensionProtocolOptions[httpProtocolOptionsKey]
				delete(c.TypedExtensionProtocolOptions, httpProtocolOptionsKey)
			},
			want: []string{
				`cluster "realipd_extproc": typed_extension_protocol_options["envoy.upstreams.http.http_protocol_options"]: HttpProtocolOptions must be under the key "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"`,
				`cluster "realipd_extproc": gRPC needs HTTP/2`,
			},
		},
		{
			name: "dangling ext_proc cluster",
			breakIt: func(t *testing.T, r *Resources) {
				editExtProc(t, r, func(ep *extprocv3.ExternalProcessor) {
					ep.GetGrpcService().GetEnvoyGrpc().ClusterName = "realipd_ext_proc"
				})
			},
			want: []string{`listener "virtual_inbound": filter chain "http_8080": http filter "envoy.filters.http.ext_proc": grpc_service.envoy_grpc.cluster_name "realipd_ext_proc" is not a cluster`},
		},
		{
			name: "dangling route cluster",
			breakIt: func(t *testing.T, r *Resources) {
				editHCM(t, r, func(h *hcmv3.HttpConnectionManager) {
					h.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0].GetRoute().ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: "inbound"}
				})
			},
			want: []string{`listener "virtual_inbound": filter chain "http_8080": virtual host "inbound": route "passthrough": cluster "inbound" is not defined`},
		},
		{
			name: "dangling tcp_proxy cluster",
			breakIt: func(t *testing.T, r *Resources) {
				f := listenerByName(r, VirtualOutbound).GetDefaultFilterChain().GetFilters()[0]
				tp := unpack(t, f.GetTypedConfig(), &tcpproxyv3.TcpProxy{})
				tp.ClusterSpecifier = &tcpproxyv3.TcpProxy_Cluster{Cluster: "outbound_passthrough"}
				f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(tp)}
			},
			want: []string{`listener "virtual_outbound": default filter chain "passthrough": tcp_proxy: cluster "outbound_passthrough" is not defined`},
		},
		{
			name: "negative message_timeout two Anys deep",
			breakIt: func(t *testing.T, r *Resources) {
				editExtProc(t, r, func(ep *extprocv3.ExternalProcessor) { ep.MessageTimeout = durationpb.New(-1) })
			},
			want: []string{`listener "virtual_inbound": filter_chains[0](http_8080).filters[0](envoy.filters.network.http_connection_manager).typed_config<envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager>.http_filters[0](envoy.filters.http.ext_proc).typed_config<envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor>: invalid ExternalProcessor.MessageTimeout: value must be inside range [0s, 1h0m0s]`},
		},
		{
			name: "invalid field inside HttpProtocolOptions",
			breakIt: func(t *testing.T, r *Resources) {
				editHTTPOptions(t, r, func(o *upstreamhttpv3.HttpProtocolOptions) {
					o.GetExplicitHttpConfig().GetHttp2ProtocolOptions().MaxConcurrentStreams = wrapperspb.UInt32(0)
				})
			},
			want: []string{`cluster "realipd_extproc": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]<envoy.extensions.upstreams.http.v3.HttpProtocolOptions>: invalid HttpProtocolOptions.ExplicitHttpConfig: embedded message failed validation`, "MaxConcurrentStreams: value must be inside range [1, 2147483647]"},
		},
		{
			name: "invalid field at the top",
			breakIt: func(t *testing.T, r *Resources) {
				clusterByName(r, PassthroughCluster).ConnectTimeout = durationpb.New(-1)
			},
			want: []string{`cluster "passthrough": invalid Cluster.ConnectTimeout: value must be greater than 0s`},
		},
		{
			name: "unregistered type",
			breakIt: func(t *testing.T, r *Resources) {
				listenerByName(r, VirtualInbound).GetListenerFilters()[0].GetTypedConfig().TypeUrl = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v9.OriginalDst"
			},
			want: []string{`listener "virtual_inbound": listener_filters[0](envoy.filters.listener.original_dst).typed_config: unpack type.googleapis.com/envoy.extensions.filters.listener.original_dst.v9.OriginalDst:`},
		},
		{
			name: "duplicate listener address",
			breakIt: func(t *testing.T, r *Resources) {
				listenerByName(r, VirtualInbound).GetAddress().GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: 15001}
			},
			want: []string{`listener "virtual_inbound": address: TCP 0.0.0.0:15001 is also the address of listener "virtual_outbound"`},
		},
		{
			name: "duplicate additional address",
			breakIt: func(t *testing.T, r *Resources) {
				l := listenerByName(r, VirtualInbound)
				l.AdditionalAddresses = append(l.AdditionalAddresses, &listenerv3.AdditionalAddress{Address: address(anyIPv6, 15001)})
			},
			want: []string{`listener "virtual_inbound": additional_addresses[1]: TCP [::]:15001 is also the address of listener "virtual_outbound"`},
		},
		{
			name: "listen address not an IP",
			breakIt: func(t *testing.T, r *Resources) {
				listenerByName(r, VirtualInbound).GetAddress().GetSocketAddress().Address = "localhost"
			},
			want: []string{`listener "virtual_inbound": address: "localhost" is not an IP address`},
		},
		{
			name: "duplicate listener name",
			breakIt: func(t *testing.T, r *Resources) {
				listenerByName(r, VirtualInbound).Name = VirtualOutbound
			},
			want: []string{`listener "virtual_outbound": the name is used by another listener too`},
		},
		{
			name: "duplicate cluster name",
			breakIt: func(t *testing.T, r *Resources) {
				c := proto.Clone(clusterByName(r, ExtProcCluster)).(*clusterv3.Cluster)
				r.Clusters = append(r.Clusters, c)
			},
			want: []string{`cluster "realipd_extproc": the name is used by another cluster too`},
		},
		{
			name: "duplicate filter chain match",
			breakIt: func(t *testing.T, r *Resources) {
				l := listenerByName(r, VirtualInbound)
				l.FilterChains[1].FilterChainMatch.DestinationPort = wrapperspb.UInt32(8080)
			},
			want: []string{`listener "virtual_inbound": filter chain "http_9090": the same filter_chain_match as filter chain "http_8080"`},
		},
		{
			name: "terminal filter not last",
			breakIt: func(t *testing.T, r *Resources) {
				fc := listenerByName(r, VirtualOutbound).GetDefaultFilterChain()
				fc.Filters = append(fc.Filters, proto.Clone(fc.Filters[0]).(*listenerv3.Filter))
			},
			want: []string{`listener "virtual_outbound": default filter chain "passthrough": network filter "envoy.filters.network.tcp_proxy" is terminal and must be the last, but 1 follow`},
		},
		{
			name: "no terminal filter",
			breakIt: func(t *testing.T, r *Resources) {
				fc := listenerByName(r, VirtualOutbound).GetDefaultFilterChain()
				fc.Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&extprocv3.ExternalProcessor{})}
			},
			want: []string{`listener "virtual_outbound": default filter chain "passthrough": the last network filter must be terminal (http_connection_manager, tcp_proxy or direct_response), found "envoy.filters.network.tcp_proxy"`},
		},
		{
			name: "no filter chain",
			breakIt: func(t *testing.T, r *Resources) {
				l := listenerByName(r, VirtualOutbound)
				l.DefaultFilterChain, l.FilterChains = nil, nil
			},
			want: []string{`listener "virtual_outbound": no filter chains and no default_filter_chain`},
		},
		{
			name: "routes over RDS",
			breakIt: func(t *testing.T, r *Resources) {
				editHCM(t, r, func(h *hcmv3.HttpConnectionManager) {
					h.RouteSpecifier = &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
						ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
						RouteConfigName: "inbound",
					}}
				})
			},
			want: []string{`listener "virtual_inbound": filter chain "http_8080": http_connection_manager: the routes must be inline (route_config); realipd serves no RDS`},
		},
		{
			name: "STATIC endpoint by name",
			breakIt: func(t *testing.T, r *Resources) {
				c := clusterByName(r, ExtProcCluster)
				c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().Address = "realipd.local"
			},
			want: []string{`cluster "realipd_extproc": load_assignment.endpoints[0].lb_endpoints[0]: "realipd.local" is not an IP address; a STATIC cluster does not resolve names (use STRICT_DNS)`},
		},
		{
			name: "STATIC without endpoints",
			breakIt: func(t *testing.T, r *Resources) {
				clusterByName(r, ExtProcCluster).GetLoadAssignment().Endpoints = nil
			},
			want: []string{`cluster "realipd_extproc": type STATIC with no endpoints in load_assignment`},
		},
		{
			name: "extra source address of the same family",
			breakIt: func(t *testing.T, r *Resources) {
				b := clusterByName(r, InboundPassthroughCluster).GetUpstreamBindConfig()
				b.ExtraSourceAddresses[0].Address = socketAddress(InboundBindIPv4.Next(), 0)
			},
			want: []string{`cluster "inbound_passthrough": upstream_bind_config: extra_source_addresses[0]: 127.0.0.7 is of the same IP family as source_address 127.0.0.6`},
		},
		{
			name: "nil cluster",
			breakIt: func(t *testing.T, r *Resources) {
				r.Clusters = append(r.Clusters, nil)
			},
			want: []string{`clusters[3]: nil`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Build(testConfig(ModeRedirect, true, true))
			if err != nil {
				t.Fatal(err)
			}
			tc.breakIt(t, r)
			err = Validate(r)
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("no error contains\n  %s\ngot:\n  %s", w, strings.ReplaceAll(err.Error(), "\n", "\n  "))
				}
			}
		})
	}
}

func TestValidateNil(t *testing.T) {
	if err := Validate(nil); err == nil {
		t.Error("Validate(nil) = nil")
	}
	if err := Validate(&Resources{}); err != nil {
		t.Errorf("Validate(empty) = %v", err)
	}
}
