package xds

import (
	"math"
	"net/netip"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// PassthroughConnectTimeout is the connect_timeout of the passthrough
// clusters.
const PassthroughConnectTimeout = 10 * time.Second

// The source addresses inbound_passthrough binds in ModeRedirect, so that
// the interception rules can tell Envoy's connections to the application
// from the application's own (and do not capture them again). The IPv6 one
// must be configured on the host (as on lo) for the bind to succeed.
var (
	InboundBindIPv4 = netip.MustParseAddr("127.0.0.6")
	InboundBindIPv6 = netip.MustParseAddr("::6")
)

// passthroughCluster forwards outbound connections to the destination they
// had before the redirect.
func passthroughCluster() *clusterv3.Cluster {
	return originalDstCluster(PassthroughCluster)
}

// inboundPassthroughCluster forwards inbound connections (TCP, and the
// requests of the HTTP filter chains) to the application at their original
// destination. In ModeRedirect it binds its source to 127.0.0.6 / ::6; in
// ModeTProxy it binds nothing, since the original_src listener filter of
// virtual_inbound keeps the client's address as the source. Upstream HTTP
// follows the downstream protocol, so HTTP/2 (gRPC) reaches the application
// as HTTP/2.
func inboundPassthroughCluster(cfg Config) *clusterv3.Cluster {
	c := originalDstCluster(InboundPassthroughCluster)
	if cfg.Mode != ModeTProxy {
		c.UpstreamBindConfig = inboundBindConfig(cfg)
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{
		httpProtocolOptionsKey: mustAny(&upstreamhttpv3.HttpProtocolOptions{
			UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
				UseDownstreamProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
					HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		}),
	}
	return c
}

// inboundBindConfig binds 127.0.0.6 (IPv4), ::6 (IPv6), or 127.0.0.6 with
// ::6 as the extra source address (dual stack: Envoy picks the one of the
// destination's family).
func inboundBindConfig(cfg Config) *corev3.BindConfig {
	if !cfg.IPv4 {
		return &corev3.BindConfig{SourceAddress: socketAddress(InboundBindIPv6, 0)}
	}
	b := &corev3.BindConfig{SourceAddress: socketAddress(InboundBindIPv4, 0)}
	if cfg.IPv6 {
		b.ExtraSourceAddresses = []*corev3.ExtraSourceAddress{{Address: socketAddress(InboundBindIPv6, 0)}}
	}
	return b
}

// originalDstCluster is an ORIGINAL_DST cluster: its hosts are the
// original destinations of the downstream connections. Envoy requires
// lb_policy CLUSTER_PROVIDED and no load_assignment. The circuit breakers
// are lifted: all of the host's traffic goes through these two clusters,
// and Envoy's defaults (1,024 connections and requests) would throttle it.
func originalDstCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(PassthroughConnectTimeout),
		CircuitBreakers: &clusterv3.CircuitBreakers{
			Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				Priority:           corev3.RoutingPriority_DEFAULT,
				MaxConnections:     wrapperspb.UInt32(math.MaxUint32),
				MaxPendingRequests: wrapperspb.UInt32(math.MaxUint32),
				MaxRequests:        wrapperspb.UInt32(math.MaxUint32),
				MaxRetries:         wrapperspb.UInt32(math.MaxUint32),
			}},
		},
	}
}
