package xds

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	directresponsev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/direct_response/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// Validate checks r the way Envoy would before accepting it, as far as that
// can be done without Envoy: every resource passes its protoc-gen-validate
// rules (ValidateAll), and so does every message packed in a
// google.protobuf.Any at any depth (typed_config of listener, network and
// HTTP filters, typed_extension_protocol_options...), which the generated
// validators do not look into. Then the rules Envoy enforces in code:
//
//   - cluster names are unique; an ORIGINAL_DST cluster has lb_policy
//     CLUSTER_PROVIDED and no load_assignment, and only it has
//     CLUSTER_PROVIDED; STATIC endpoints are IP addresses or pipes, DNS
//     endpoints are socket addresses (LOGICAL_DNS: exactly one); bind
//     configs bind IP addresses, the extra source address of the other
//     family;
//   - listener names are unique and non-empty, and no two listen addresses
//     (address, port and protocol, additional_addresses included) are the
//     same; listen addresses are IP literals; a listener has a filter
//     chain; no two filter chains of a listener have the same match;
//   - the last network filter of every chain is a terminal one
//     (http_connection_manager, tcp_proxy) and no other is;
//   - every HTTP connection manager has its routes inline, and its router
//     is present, not disabled, and the last HTTP filter;
//   - every cluster a route, a tcp_proxy or an ext_proc filter's
//     envoy_grpc names exists, and a cluster serving gRPC speaks HTTP/2.
//
// Validate returns every problem, joined with errors.Join, each naming the
// resource and where in it the problem is; nil if there is none.
func Validate(r *Resources) error {
	if r == nil {
		return errors.New("xds: no resources")
	}
	v := &validation{clusters: map[string]*clusterv3.Cluster{}, grpc: map[string]string{}}
	for i, c := range r.Clusters {
		what := fmt.Sprintf("cluster %q", c.GetName())
		if c.GetName() == "" {
			what = fmt.Sprintf("clusters[%d]", i)
		}
		if c == nil {
			v.add("%s: nil", what)
			continue
		}
		v.deep(what, c)
		if _, dup := v.clusters[c.GetName()]; dup && c.GetName() != "" {
			v.add("%s: the name is used by another cluster too", what)
		} else {
			v.clusters[c.GetName()] = c
		}
		v.cluster(what, c)
	}
	names := map[string]bool{}
	addrs := map[string]string{} // listen address → listener
	for i, l := range r.Listeners {
		what := fmt.Sprintf("listener %q", l.GetName())
		if l.GetName() == "" {
			what = fmt.Sprintf("listeners[%d]", i)
		}
		if l == nil {
			v.add("%s: nil", what)
			continue
		}
		v.deep(what, l)
		switch {
		case l.GetName() == "":
			v.add("%s: no name", what)
		case names[l.GetName()]:
			v.add("%s: the name is used by another listener too", what)
		}
		names[l.GetName()] = true
		v.listenAddresses(what, l, addrs)
		v.listener(what, l)
	}
	// gRPC runs over HTTP/2 only: without it every call fails.
	for _, name := range sortedKeys(v.grpc) {
		c := v.clusters[name]
		if c != nil && !speaksHTTP2(c) {
			v.add("cluster %q: gRPC needs HTTP/2: typed_extension_protocol_options[%q] must set explicit_http_config.http2_protocol_options (the cluster serves %s)",
				name, httpProtocolOptionsKey, v.grpc[name])
		}
	}
	return errors.Join(v.errs...)
}

// validation collects the problems of one Validate call.
type validation struct {
	errs     []error
	clusters map[string]*clusterv3.Cluster
	grpc     map[string]string // cluster name → the first filter calling it over gRPC
}

func (v *validation) add(format string, args ...any) {
	v.errs = append(v.errs, fmt.Errorf(format, args...))
}

// validator is what protoc-gen-validate generates for every Envoy message.
type validator interface{ ValidateAll() error }

// deep runs ValidateAll on m and on every message packed in an Any inside
// it, at any depth, reporting each failure under what and the field path.
func (v *validation) deep(what string, m proto.Message) {
	if val, ok := m.(validator); ok {
		if err := val.ValidateAll(); err != nil {
			v.add("%s: %v", what, err)
		}
	}
	v.walk(what, m.ProtoReflect(), "")
}

// walk visits the set message fields of m (singular, repeated and map
// values) in field-number order, map entries by key, and hands Anys to
// unpack. path names m's place in the resource.
func (v *validation) walk(what string, m protoreflect.Message, path string) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		name := string(fd.Name())
		if path != "" {
			name = path + "." + name
		}
		val := m.Get(fd)
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				continue
			}
			mp := val.Map()
			var keys []protoreflect.MapKey
			mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k)
				return true
			})
			slices.SortFunc(keys, func(a, b protoreflect.MapKey) int { return strings.Compare(a.String(), b.String()) })
			for _, k := range keys {
				v.visit(what, mp.Get(k).Message(), fmt.Sprintf("%s[%q]", name, k.String()))
			}
		case fd.IsList():
			if fd.Message() == nil {
				continue
			}
			list := val.List()
			for j := range list.Len() {
				elem := list.Get(j).Message()
				v.visit(what, elem, name+"["+strconv.Itoa(j)+"]"+nameSuffix(elem))
			}
		case fd.Message() != nil:
			v.visit(what, val.Message(), name)
		}
	}
}

// nameSuffix is "(name)" for a list element with a non-empty name field
// (filter chains, filters, routes...), to make paths readable.
func nameSuffix(m protoreflect.Message) string {
	fd := m.Descriptor().Fields().ByName("name")
	if fd == nil || fd.Kind() != protoreflect.StringKind || fd.IsList() {
		return ""
	}
	if s := m.Get(fd).String(); s != "" {
		return "(" + s + ")"
	}
	return ""
}

// visit unpacks m if it is an Any, validates what it holds and walks into
// it; any other message is walked as it is.
func (v *validation) visit(what string, m protoreflect.Message, path string) {
	if m.Descriptor().FullName() != "google.protobuf.Any" {
		v.walk(what, m, path)
		return
	}
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		v.add("%s: %s: Any of unexpected Go type %T", what, path, m.Interface())
		return
	}
	inner, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
	if err != nil {
		v.add("%s: %s: unpack %s: %v", what, path, a.GetTypeUrl(), err)
		return
	}
	name := inner.ProtoReflect().Descriptor().FullName()
	val, ok := inner.(validator)
	switch {
	case ok:
		if err := val.ValidateAll(); err != nil {
			v.add("%s: %s<%s>: %v", what, path, name, err)
		}
	case strings.HasPrefix(string(name), "envoy."):
		v.add("%s: %s<%s>: the message has no validator", what, path, name)
	}
	v.walk(what, inner.ProtoReflect(), path+"<"+string(name)+">")
}

// cluster checks the rules of a cluster's type that protoc-gen-validate
// does not express.
func (v *validation) cluster(what string, c *clusterv3.Cluster) {
	typ, typed := c.GetClusterDiscoveryType().(*clusterv3.Cluster_Type)
	switch {
	case typed && typ.Type == clusterv3.Cluster_ORIGINAL_DST:
		if c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
			v.add("%s: type ORIGINAL_DST needs lb_policy CLUSTER_PROVIDED, found %v", what, c.GetLbPolicy())
		}
		if c.GetLoadAssignment() != nil {
			v.add("%s: type ORIGINAL_DST takes its hosts from the connections: load_assignment must not be set", what)
		}
	case c.GetLbPolicy() == clusterv3.Cluster_CLUSTER_PROVIDED && typed:
		v.add("%s: lb_policy CLUSTER_PROVIDED is only valid with type ORIGINAL_DST, found %v", what, typ.Type)
	case typed && (typ.Type == clusterv3.Cluster_STATIC || typ.Type == clusterv3.Cluster_STRICT_DNS || typ.Type == clusterv3.Cluster_LOGICAL_DNS):
		v.endpoints(what, typ.Type, c)
	}
	if b := c.GetUpstreamBindConfig(); b != nil {
		v.bindConfig(what+": upstream_bind_config", b)
	}
	for _, k := range sortedKeys(c.GetTypedExtensionProtocolOptions()) {
		a := c.GetTypedExtensionProtocolOptions()[k]
		if a.MessageIs(&upstreamhttpv3.HttpProtocolOptions{}) && k != httpProtocolOptionsKey {
			v.add("%s: typed_extension_protocol_options[%q]: HttpProtocolOptions must be under the key %q, or Envoy ignores them", what, k, httpProtocolOptionsKey)
		}
	}
}

// endpoints checks the hosts of a STATIC or DNS cluster: STATIC hosts are
// IP addresses or pipes (Envoy does not resolve them), DNS hosts are
// socket addresses, LOGICAL_DNS has exactly one.
func (v *validation) endpoints(what string, typ clusterv3.Cluster_DiscoveryType, c *clusterv3.Cluster) {
	n := 0
	for i, lle := range c.GetLoadAssignment().GetEndpoints() {
		for j, lb := range lle.GetLbEndpoints() {
			n++
			at := fmt.Sprintf("%s: load_assignment.endpoints[%d].lb_endpoints[%d]", what, i, j)
			ep := lb.GetEndpoint()
			if ep == nil {
				v.add("%s: a named endpoint (endpoint_name) needs EDS, which realipd does not serve", at)
				continue
			}
			switch a := ep.GetAddress(); {
			case a.GetPipe() != nil:
				if typ != clusterv3.Cluster_STATIC {
					v.add("%s: a %v cluster resolves host names; a pipe address needs type STATIC", at, typ)
				}
			case a.GetSocketAddress() != nil:
				if _, err := netip.ParseAddr(a.GetSocketAddress().GetAddress()); err != nil && typ == clusterv3.Cluster_STATIC {
					v.add("%s: %q is not an IP address; a STATIC cluster does not resolve names (use STRICT_DNS)", at, a.GetSocketAddress().GetAddress())
				}
			default:
				v.add("%s: the address must be a socket_address or a pipe", at)
			}
		}
	}
	switch {
	case n == 0:
		v.add("%s: type %v with no endpoints in load_assignment", what, typ)
	case typ == clusterv3.Cluster_LOGICAL_DNS && n != 1:
		v.add("%s: type LOGICAL_DNS takes exactly one endpoint, found %d", what, n)
	}
}

// bindConfig checks that a bind config binds IP addresses and that the
// extra source address (Envoy's default selector takes at most one) is of
// the other IP family, since Envoy picks the source by the destination's
// family.
func (v *validation) bindConfig(what string, b *corev3.BindConfig) {
	src, err := netip.ParseAddr(b.GetSourceAddress().GetAddress())
	if err != nil {
		v.add("%s: source_address %q is not an IP address", what, b.GetSourceAddress().GetAddress())
		return
	}
	extra := b.GetExtraSourceAddresses()
	if len(extra) > 1 {
		v.add("%s: extra_source_addresses holds %d addresses; Envoy takes one, of the other IP family", what, len(extra))
	}
	for i, e := range extra {
		ip, err := netip.ParseAddr(e.GetAddress().GetAddress())
		switch {
		case err != nil:
			v.add("%s: extra_source_addresses[%d]: %q is not an IP address", what, i, e.GetAddress().GetAddress())
		case ip.Is4() == src.Is4():
			v.add("%s: extra_source_addresses[%d]: %s is of the same IP family as source_address %s; it must be of the other", what, i, ip, src)
		}
	}
}

// listenAddresses checks that the listener's addresses are IP literals or
// pipes and that none is already taken, by this listener or another one.
func (v *validation) listenAddresses(what string, l *listenerv3.Listener, taken map[string]string) {
	check := func(at string, a *corev3.Address) {
		var key string
		switch {
		case a.GetPipe() != nil:
			key = "pipe " + a.GetPipe().GetPath()
		case a.GetSocketAddress() != nil:
			sa := a.GetSocketAddress()
			ip, err := netip.ParseAddr(sa.GetAddress())
			if err != nil {
				v.add("%s: %s: %q is not an IP address; Envoy listens on IP literals only", what, at, sa.GetAddress())
				return
			}
			key = fmt.Sprintf("%v %s", sa.GetProtocol(), netip.AddrPortFrom(ip, uint16(sa.GetPortValue())))
		default:
			return // internal listeners and missing addresses: ValidateAll's and Envoy's business
		}
		if other, dup := taken[key]; dup {
			v.add("%s: %s: %s is also the address of %s", what, at, key, other)
			return
		}
		taken[key] = what
	}
	check("address", l.GetAddress())
	for i, a := range l.GetAdditionalAddresses() {
		check(fmt.Sprintf("additional_addresses[%d]", i), a.GetAddress())
	}
}

// listener checks the filter chains of a listener.
func (v *validation) listener(what string, l *listenerv3.Listener) {
	if len(l.GetFilterChains()) == 0 && l.GetDefaultFilterChain() == nil {
		v.add("%s: no filter chains and no default_filter_chain", what)
	}
	var matches []*listenerv3.FilterChainMatch
	for i, fc := range l.GetFilterChains() {
		at := chainName("filter chain", i, fc)
		if l.GetFilterChainMatcher() == nil {
			m := fc.GetFilterChainMatch()
			if m == nil {
				m = &listenerv3.FilterChainMatch{}
			}
			for j, prev := range matches {
				if proto.Equal(m, prev) {
					v.add("%s: %s: the same filter_chain_match as %s", what, at, chainName("filter chain", j, l.GetFilterChains()[j]))
					break
				}
			}
			matches = append(matches, m)
		}
		v.chain(what+": "+at, fc)
	}
	if fc := l.GetDefaultFilterChain(); fc != nil {
		v.chain(what+": "+chainName("default filter chain", -1, fc), fc)
	}
}

func chainName(kind string, i int, fc *listenerv3.FilterChain) string {
	if fc.GetName() != "" {
		return fmt.Sprintf("%s %q", kind, fc.GetName())
	}
	if i < 0 {
		return kind
	}
	return fmt.Sprintf("%s #%d", kind, i)
}

// chain checks a filter chain's network filters: the terminal filter is
// last and alone, and the clusters and routes of the known filters.
func (v *validation) chain(what string, fc *listenerv3.FilterChain) {
	filters := fc.GetFilters()
	if len(filters) == 0 {
		v.add("%s: no network filters", what)
		return
	}
	for i, f := range filters {
		last := i == len(filters)-1
		a := f.GetTypedConfig()
		if a == nil {
			v.add("%s: network filter %q: no typed_config (config_discovery needs ECDS, which realipd does not serve)", what, f.GetName())
			continue
		}
		hcm, tcp := &hcmv3.HttpConnectionManager{}, &tcpproxyv3.TcpProxy{}
		terminal := true
		switch {
		case a.MessageIs(hcm):
			if a.UnmarshalTo(hcm) == nil {
				v.hcm(what, hcm)
			}
		case a.MessageIs(tcp):
			if a.UnmarshalTo(tcp) == nil {
				v.tcpProxy(what, tcp)
			}
		case a.MessageIs(&directresponsev3.Config{}):
			// Terminal: it answers and closes.
		default:
			terminal = false
		}
		switch {
		case terminal && !last:
			v.add("%s: network filter %q is terminal and must be the last, but %d follow", what, f.GetName(), len(filters)-1-i)
		case !terminal && last:
			v.add("%s: the last network filter must be terminal (http_connection_manager, tcp_proxy or direct_response), found %q", what, f.GetName())
		}
	}
}

func (v *validation) tcpProxy(what string, t *tcpproxyv3.TcpProxy) {
	if name := t.GetCluster(); name != "" {
		v.clusterRef(what+": tcp_proxy", name)
	}
	for i, w := range t.GetWeightedClusters().GetClusters() {
		v.clusterRef(fmt.Sprintf("%s: tcp_proxy weighted_clusters[%d]", what, i), w.GetName())
	}
}

// clusterRef reports a cluster name that names no cluster.
func (v *validation) clusterRef(what, name string) {
	if _, ok := v.clusters[name]; !ok {
		v.add("%s: cluster %q is not defined", what, name)
	}
}

// hcm checks an HTTP connection manager: inline routes to defined
// clusters, the router last, the ext_proc filters' gRPC clusters.
func (v *validation) hcm(what string, h *hcmv3.HttpConnectionManager) {
	rc := h.GetRouteConfig()
	if rc == nil {
		v.add("%s: http_connection_manager: the routes must be inline (route_config); realipd serves no RDS", what)
	}
	for _, vh := range rc.GetVirtualHosts() {
		for j, r := range vh.GetRoutes() {
			at := fmt.Sprintf("%s: virtual host %q: route #%d", what, vh.GetName(), j)
			if r.GetName() != "" {
				at = fmt.Sprintf("%s: virtual host %q: route %q", what, vh.GetName(), r.GetName())
			}
			v.routeClusters(at, r.GetRoute())
		}
	}

	filters := h.GetHttpFilters()
	last := len(filters) - 1
	routers := 0
	for i, f := range filters {
		a := f.GetTypedConfig()
		if a == nil {
			v.add("%s: http_filters[%d] %q: no typed_config (config_discovery needs ECDS, which realipd does not serve)", what, i, f.GetName())
			continue
		}
		ep := &extprocv3.ExternalProcessor{}
		switch {
		case a.MessageIs(&routerv3.Router{}):
			routers++
			if f.GetDisabled() {
				v.add("%s: http_filters: the router %q is disabled", what, f.GetName())
			}
		case a.MessageIs(ep):
			if a.UnmarshalTo(ep) == nil {
				v.extProc(fmt.Sprintf("%s: http filter %q", what, f.GetName()), ep)
			}
		}
	}
	switch {
	case routers == 0:
		v.add("%s: http_filters: no router (%s); it must be the last HTTP filter", what, wellknown.Router)
	case !filters[last].GetTypedConfig().MessageIs(&routerv3.Router{}):
		v.add("%s: http_filters: the router must be last, found %s", what, filters[last].GetName())
	case routers > 1:
		v.add("%s: http_filters: %d routers; the first one ends the chain, so the filters after it never run", what, routers)
	}
}

func (v *validation) routeClusters(what string, ra *routev3.RouteAction) {
	if name := ra.GetCluster(); name != "" {
		v.clusterRef(what, name)
	}
	for i, w := range ra.GetWeightedClusters().GetClusters() {
		v.clusterRef(fmt.Sprintf("%s: weighted_clusters[%d]", what, i), w.GetName())
	}
}

// extProc checks that the ext_proc filter's gRPC cluster exists and
// remembers it for the HTTP/2 check.
func (v *validation) extProc(what string, ep *extprocv3.ExternalProcessor) {
	eg := ep.GetGrpcService().GetEnvoyGrpc()
	if eg == nil {
		return // google_grpc dials by itself
	}
	name := eg.GetClusterName()
	if _, ok := v.clusters[name]; !ok {
		v.add("%s: grpc_service.envoy_grpc.cluster_name %q is not a cluster", what, name)
		return
	}
	if _, seen := v.grpc[name]; !seen {
		v.grpc[name] = what
	}
}

// speaksHTTP2 reports whether c's upstream protocol is explicitly HTTP/2.
func speaksHTTP2(c *clusterv3.Cluster) bool {
	a := c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsKey]
	opts := &upstreamhttpv3.HttpProtocolOptions{}
	if a == nil || a.UnmarshalTo(opts) != nil {
		return false
	}
	return opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
