package xds

import (
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// ExtProcFilterName is the HTTP filter name of ext_proc (not in
// go-control-plane's wellknown).
const ExtProcFilterName = "envoy.filters.http.ext_proc"

// ExtProcConnectTimeout is the connect_timeout of the realipd_extproc
// cluster: realipd runs next to Envoy.
const ExtProcConnectTimeout = 250 * time.Millisecond

// extProcMaxRequests lifts the realipd_extproc cluster's circuit breakers:
// every HTTP request is one ext_proc stream, one request on the cluster,
// and Envoy's default of 1,024 would turn a burst into ext_proc failures.
const extProcMaxRequests = 65536

// extProcFilter asks realipd about every request: the request headers only
// (every other phase off, SKIP rather than DEFAULT, since DEFAULT for
// response headers means send), with the TCP peer and the address it
// connected to, accepting realipd's dynamic metadata in its namespace.
func extProcFilter(cfg Config) *hcmv3.HttpFilter {
	timeout := cfg.MessageTimeout
	if timeout == 0 {
		timeout = DefaultMessageTimeout
	}
	ep := &extprocv3.ExternalProcessor{
		GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: ExtProcCluster},
			},
		},
		ProcessingMode: &extprocv3.ProcessingMode{
			RequestHeaderMode:   extprocv3.ProcessingMode_SEND,
			ResponseHeaderMode:  extprocv3.ProcessingMode_SKIP,
			RequestBodyMode:     extprocv3.ProcessingMode_NONE,
			ResponseBodyMode:    extprocv3.ProcessingMode_NONE,
			RequestTrailerMode:  extprocv3.ProcessingMode_SKIP,
			ResponseTrailerMode: extprocv3.ProcessingMode_SKIP,
		},
		RequestAttributes: []string{"source.address", "destination.address"},
		MetadataOptions: &extprocv3.MetadataOptions{
			ReceivingNamespaces: &extprocv3.MetadataOptions_MetadataNamespaces{
				Untyped: []string{cfg.MetadataNamespace},
			},
		},
		MessageTimeout:   durationpb.New(timeout),
		FailureModeAllow: cfg.FailureModeAllow,
	}
	return &hcmv3.HttpFilter{
		Name:       ExtProcFilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(ep)},
	}
}

// extProcCluster is realipd_extproc: gRPC, so HTTP/2, to the ext_proc
// server at target. An IP address or a unix socket is a STATIC cluster; a
// host name is a STRICT_DNS cluster that Envoy re-resolves, preferring IPv4
// unless the host is IPv6 only (realipd's default listens on 127.0.0.1).
func extProcCluster(cfg Config, target extProcTarget) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:           ExtProcCluster,
		ConnectTimeout: durationpb.New(ExtProcConnectTimeout),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			httpProtocolOptionsKey: mustAny(&upstreamhttpv3.HttpProtocolOptions{
				UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
					ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
						ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
							Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
						},
					},
				},
			}),
		},
		CircuitBreakers: &clusterv3.CircuitBreakers{
			Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				Priority:           corev3.RoutingPriority_DEFAULT,
				MaxRequests:        wrapperspb.UInt32(extProcMaxRequests),
				MaxPendingRequests: wrapperspb.UInt32(extProcMaxRequests),
			}},
		},
	}
	var addr *corev3.Address
	switch target.kind {
	case addrPipe:
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
		addr = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: target.path}}}
	case addrDNS:
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
		c.DnsLookupFamily = clusterv3.Cluster_V4_PREFERRED
		if !cfg.IPv4 {
			c.DnsLookupFamily = clusterv3.Cluster_AUTO // IPv6 first, IPv4 if there is none
		}
		addr = &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Protocol:      corev3.SocketAddress_TCP,
			Address:       target.host,
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: target.port},
		}}}
	default:
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
		addr = address(target.ip, target.port)
	}
	c.LoadAssignment = &endpointv3.ClusterLoadAssignment{
		ClusterName: ExtProcCluster,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr}},
			}},
		}},
	}
	return c
}
