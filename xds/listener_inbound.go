package xds

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	originalsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// inboundListener is virtual_inbound: every connection to the host's
// application ports is steered here. The original_dst listener filter
// restores the destination; a connection to one of the HTTP ports goes
// through HCM → ext_proc → router to inbound_passthrough, any other through
// the default tcp_proxy chain to the same cluster.
//
// In ModeTProxy the listener is transparent (it accepts connections to
// addresses that are not its own) and the original_src listener filter
// makes the upstream connection to the application come from the client's
// address, so the application sees the real peer too.
func inboundListener(cfg Config) *listenerv3.Listener {
	addr, more := listenAddresses(cfg, cfg.InboundPort)
	l := &listenerv3.Listener{
		Name:                VirtualInbound,
		Address:             addr,
		AdditionalAddresses: more,
		TrafficDirection:    corev3.TrafficDirection_INBOUND,
		ListenerFilters:     []*listenerv3.ListenerFilter{originalDstFilter()},
		DefaultFilterChain:  tcpProxyChain(InboundPassthroughCluster, InboundPassthroughCluster),
	}
	if cfg.Mode == ModeTProxy {
		l.Transparent = wrapperspb.Bool(true)
		l.ListenerFilters = append(l.ListenerFilters, &listenerv3.ListenerFilter{
			Name: wellknown.OriginalSource,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{
				TypedConfig: mustAny(&originalsrcv3.OriginalSrc{Mark: cfg.OriginalSrcMark}),
			},
		})
	}
	for _, port := range cfg.HTTPPorts {
		l.FilterChains = append(l.FilterChains, httpChain(cfg, port))
	}
	l.FilterChains = append(l.FilterChains, loopGuardChain(cfg.InboundPort))
	return l
}

// httpChain is the filter chain "http_<port>" for inbound connections to
// port: the HTTP connection manager with realipd's ext_proc filter in front
// of the router, and one catch-all route to inbound_passthrough.
//
// The HCM settings are the ones realipd's ext_proc server relies on (see
// envoy/README.md): Envoy is the edge (use_remote_address, no trusted hop)
// and appends the TCP peer to x-forwarded-for, which realipd removes again
// before applying its own trust rules.
func httpChain(cfg Config, port uint32) *listenerv3.FilterChain {
	name := fmt.Sprintf("http_%d", port)
	statPrefix := fmt.Sprintf("inbound_http_%d", port)
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:        statPrefix,
		CodecType:         hcmv3.HttpConnectionManager_AUTO,
		UseRemoteAddress:  wrapperspb.Bool(true),
		XffNumTrustedHops: 0,
		SkipXffAppend:     false,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: statPrefix,
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    "inbound",
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Name:  "passthrough",
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: InboundPassthroughCluster},
						// The application decides how long a request may
						// take; Envoy's default of 15s would cut it short.
						Timeout: durationpb.New(0),
					}},
				}},
			}},
		}},
		// Connections that switch protocol keep going through ext_proc for
		// their upgrade request, then pass through.
		UpgradeConfigs: []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
		HttpFilters: []*hcmv3.HttpFilter{
			extProcFilter(cfg),
			{
				Name:       wellknown.Router,
				ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
			},
		},
	}
	return &listenerv3.FilterChain{
		Name:             name,
		FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port)},
		Filters: []*listenerv3.Filter{{
			Name:       wellknown.HTTPConnectionManager,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
		}},
	}
}
