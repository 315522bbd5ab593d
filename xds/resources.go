package xds

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
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

// Build translates cfg into Envoy resources and validates them (Validate).
// A problem with cfg is a *ConfigError naming the key of realipd's
// configuration (several are joined with errors.Join); resources that fail
// validation, which is a bug of the translator, are reported wrapped.
func Build(cfg Config) (*Resources, error) {
	target, errs := cfg.check()
	if len(errs) == 1 {
		return nil, errs[0]
	}
	if len(errs) > 1 {
		return nil, errors.Join(errs...)
	}
	r := &Resources{
		Clusters: []*clusterv3.Cluster{
			passthroughCluster(),
			inboundPassthroughCluster(cfg),
			extProcCluster(cfg, target),
		},
		Listeners: []*listenerv3.Listener{
			outboundListener(cfg),
			inboundListener(cfg),
		},
	}
	if err := Validate(r); err != nil {
		return nil, fmt.Errorf("xds: the resources built from the configuration are invalid: %w", err)
	}
	return r, nil
}

// mustAny packs m deterministically (map entries in a fixed order, so that
// equal resources have equal bytes). Packing a well-formed message built
// here cannot fail.
func mustAny(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(fmt.Sprintf("xds: pack %T: %v", m, err))
	}
	return a
}

// Any-address listen addresses of each family.
var (
	anyIPv4 = netip.IPv4Unspecified()
	anyIPv6 = netip.IPv6Unspecified()
)

// socketAddress is a TCP address.
func socketAddress(ip netip.Addr, port uint32) *corev3.SocketAddress {
	return &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       ip.String(),
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}
}

func address(ip netip.Addr, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: socketAddress(ip, port)}}
}

// listenAddresses returns a listener's address and additional_addresses on
// port: 0.0.0.0 (IPv4), :: (IPv6), or 0.0.0.0 plus :: (dual stack; Envoy
// sets IPV6_V6ONLY on the :: socket, so the two do not collide).
func listenAddresses(cfg Config, port uint32) (*corev3.Address, []*listenerv3.AdditionalAddress) {
	if !cfg.IPv4 {
		return address(anyIPv6, port), nil
	}
	var more []*listenerv3.AdditionalAddress
	if cfg.IPv6 {
		more = append(more, &listenerv3.AdditionalAddress{Address: address(anyIPv6, port)})
	}
	return address(anyIPv4, port), more
}

// Version names the content of r: the first 12 hex digits of the SHA-256
// of every resource in deterministic wire form, in order. The same
// resources always get the same version, so publishing an unchanged
// configuration again changes nothing for Envoy.
func (r *Resources) Version() string {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	var buf []byte
	add := func(m proto.Message) {
		var err error
		buf, err = opts.MarshalAppend(buf[:0], m)
		if err != nil {
			panic("xds: marshal a resource that Validate accepted: " + err.Error())
		}
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(buf)))
		h.Write(n[:])
		h.Write(buf)
	}
	for _, c := range r.Clusters {
		add(c)
	}
	for _, l := range r.Listeners {
		add(l)
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}
