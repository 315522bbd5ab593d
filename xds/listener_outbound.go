package xds

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	directresponsev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/direct_response/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// outboundListener is virtual_outbound: every connection the application
// opens is redirected here (in both modes); use_original_dst hands it to a
// listener bound to its original destination if Envoy has one, and the
// default filter chain otherwise proxies the bytes to that destination
// through the passthrough cluster.
//
// Envoy adds an original_dst listener filter of its own when
// use_original_dst is set; the one listed here makes the listener read the
// same without knowing that (running it twice restores the same address).
func outboundListener(cfg Config) *listenerv3.Listener {
	addr, more := listenAddresses(cfg, cfg.OutboundPort)
	return &listenerv3.Listener{
		Name:                VirtualOutbound,
		Address:             addr,
		AdditionalAddresses: more,
		UseOriginalDst:      wrapperspb.Bool(true),
		TrafficDirection:    corev3.TrafficDirection_OUTBOUND,
		ListenerFilters:     []*listenerv3.ListenerFilter{originalDstFilter()},
		FilterChains:        []*listenerv3.FilterChain{loopGuardChain(cfg.OutboundPort)},
		DefaultFilterChain:  tcpProxyChain(PassthroughCluster, PassthroughCluster),
	}
}

// loopGuardChain closes, without a byte, the connections whose original
// destination port is the capture port port itself: those made to it
// directly (nothing redirected them, so the original destination is the
// listener's own address), which the passthrough cluster would otherwise
// dial again, each new connection to itself another one, until Envoy runs
// out of connections. Istio blackholes them too. Its name is
// "capture_<port>".
func loopGuardChain(port uint32) *listenerv3.FilterChain {
	return &listenerv3.FilterChain{
		Name:             fmt.Sprintf("capture_%d", port),
		FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port)},
		Filters: []*listenerv3.Filter{{
			Name:       directResponseFilter,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&directresponsev3.Config{})},
		}},
	}
}

// directResponseFilter is the network filter that answers a connection
// with a fixed response (none here) and closes it; go-control-plane's
// wellknown has no name for it.
const directResponseFilter = "envoy.filters.network.direct_response"

// originalDstFilter restores the destination the connection had before it
// was redirected (SO_ORIGINAL_DST; on a TPROXY socket the local address
// already is the original destination).
func originalDstFilter() *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{
		Name: wellknown.OriginalDestination,
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{
			TypedConfig: mustAny(&originaldstv3.OriginalDst{}),
		},
	}
}

// tcpProxyChain is a filter chain named name that proxies the bytes to
// cluster, with the cluster's name as stat prefix.
func tcpProxyChain(name, cluster string) *listenerv3.FilterChain {
	return &listenerv3.FilterChain{
		Name: name,
		Filters: []*listenerv3.Filter{{
			Name: wellknown.TCPProxy,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxyv3.TcpProxy{
				StatPrefix:       cluster,
				ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
			})},
		}},
	}
}
