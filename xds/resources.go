package xds

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// The names of the resources Build produces. Operators see them in Envoy's
// config_dump and stats; the tests and the server rely on them.
const (
	// VirtualOutbound is the listener on Config.OutboundPort.
	VirtualOutbound = "virtual_outbound"
	// VirtualInbound is the listener on Config.InboundPort.
	VirtualInbound = "virtual_inbound"
	// PassthroughCluster forwards outbound connections to their original
	// destination.
	PassthroughCluster = "passthrough"
	// InboundPassthroughCluster forwards inbound connections and requests to
	// their original destination, the local application.
	InboundPassthroughCluster = "inbound_passthrough"
	// ExtProcCluster is realipd's ext_proc server.
	ExtProcCluster = "realipd_extproc"
)

// httpProtocolOptionsKey is where typed_extension_protocol_options holds
// the upstream HTTP options (the extension's name).
const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// Resources are the Envoy resources of one Config, in a fixed order:
// clusters passthrough, inbound_passthrough, realipd_extproc; listeners
// virtual_outbound, virtual_inbound.
type Resources struct {
	Clusters  []*clusterv3.Cluster
	Listeners []*listenerv3.Listener
}

// ByType returns the resources keyed by their xDS type URL
// (resource.ClusterType, resource.ListenerType), in the order of r, ready
// for cache.NewSnapshot.
func (r *Resources) ByType() map[resource.Type][]types.Resource {
	clusters := make([]types.Resource, 0, len(r.Clusters))
	for _, c := range r.Clusters {
		clusters = append(clusters, c)
	}
	listeners := make([]types.Resource, 0, len(r.Listeners))
	for _, l := range r.Listeners {
		listeners = append(listeners, l)
	}
	return map[resource.Type][]types.Resource{
		resource.ClusterType:  clusters,
		resource.ListenerType: listeners,
	}
}
