package xds

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"text/template"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	// The typed_extension_protocol_options of the xDS cluster.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// Bootstrap defaults: the node Envoy announces and its admin listener.
const (
	DefaultNodeID       = "realipd-sidecar"
	DefaultNodeCluster  = "realipd"
	DefaultAdminAddress = "127.0.0.1:9901"
)

// XDSCluster is the static cluster of the bootstrap through which Envoy
// reaches realipd's ADS server.
const XDSCluster = "realipd_xds"

// BootstrapOptions describe the Envoy ADS bootstrap for one control plane.
type BootstrapOptions struct {
	// XDSAddress is realipd's xds.listen: "host:port" or "unix:///path".
	// An unspecified host (0.0.0.0, [::]) is dialled on loopback.
	XDSAddress string
	// NodeID and NodeCluster name the Envoy node (defaults DefaultNodeID,
	// DefaultNodeCluster); every node gets the same resources.
	NodeID, NodeCluster string
	// AdminAddress is Envoy's own admin listener, "ip:port" on loopback by
	// default (DefaultAdminAddress).
	AdminAddress string
}

// bootstrapTemplate is the bootstrap realipd prints: commented YAML, so that
// an operator reading it sees why each setting is there. Bootstrap checks
// the result against Envoy's Bootstrap proto before returning it.
var bootstrapTemplate = template.Must(template.New("bootstrap").Parse(`# Envoy (v1.40 API) ADS bootstrap: Envoy takes all its listeners and clusters from
# realipd's xDS control plane (ADS over gRPC on {{.XDSShown}}).
# Printed by realipd bootstrap (run it again after changing xds.listen).
#
#   realipd serve                    # the xDS control plane on {{.XDSShown}}
#   envoy -c bootstrap.yaml
#
# realipd then sends the listeners virtual_outbound (xds.outbound_port) and
# virtual_inbound (xds.inbound_port, HCM -> ext_proc -> router on
# xds.http_ports) and the clusters passthrough, inbound_passthrough and
# realipd_extproc. Traffic reaches those listeners through iptables
# (realipd iptables --mode redirect --apply) or the eBPF capture.
node:
  id: {{.NodeID}}
  cluster: {{.NodeCluster}}

admin:
  address:
    socket_address: { address: {{.AdminHost}}, port_value: {{.AdminPort}} }

dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: { cluster_name: {{.Cluster}} }
  lds_config:
    ads: {}
    resource_api_version: V3
  cds_config:
    ads: {}
    resource_api_version: V3

static_resources:
  # realipd's xDS server: gRPC, so HTTP/2 is mandatory.
  clusters:
  - name: {{.Cluster}}
    type: {{.ClusterType}}
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
    load_assignment:
      cluster_name: {{.Cluster}}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
{{- if .Pipe}}
              pipe: { path: {{.Pipe}} }
{{- else}}
              socket_address: { address: {{.XDSHost}}, port_value: {{.XDSPort}} }
{{- end}}
`))

// Bootstrap renders the Envoy ADS bootstrap for o as YAML and checks it:
// it must load into Envoy's Bootstrap proto and pass its validation.
func Bootstrap(o BootstrapOptions) ([]byte, error) {
	data := struct {
		NodeID, NodeCluster, Cluster, ClusterType string
		AdminHost                                 string
		AdminPort                                 uint16
		XDSHost, Pipe, XDSShown                   string
		XDSPort                                   uint16
	}{NodeID: o.NodeID, NodeCluster: o.NodeCluster, Cluster: XDSCluster, ClusterType: "STATIC"}
	if data.NodeID == "" {
		data.NodeID = DefaultNodeID
	}
	if data.NodeCluster == "" {
		data.NodeCluster = DefaultNodeCluster
	}
	for _, s := range []struct{ key, v string }{{"--node-id", data.NodeID}, {"--node-cluster", data.NodeCluster}} {
		if !plainScalar(s.v) {
			return nil, fmt.Errorf("xds: bootstrap: %s %q: use letters, digits and . _ - only", s.key, s.v)
		}
	}
	admin := o.AdminAddress
	if admin == "" {
		admin = DefaultAdminAddress
	}
	ap, err := netip.ParseAddrPort(admin)
	if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
		return nil, fmt.Errorf("xds: bootstrap: admin address %q: want ip:port", admin)
	}
	data.AdminHost, data.AdminPort = ap.Addr().String(), ap.Port()

	if path, ok := strings.CutPrefix(o.XDSAddress, "unix://"); ok {
		if !strings.HasPrefix(path, "/") || !plainScalar(strings.ReplaceAll(path, "/", "")) {
			return nil, fmt.Errorf("xds: bootstrap: xds.listen %q: want unix:///absolute/path (letters, digits and . _ - / only)", o.XDSAddress)
		}
		data.Pipe, data.XDSShown = path, o.XDSAddress
	} else {
		host, port, err := net.SplitHostPort(o.XDSAddress)
		n, perr := strconv.ParseUint(port, 10, 16)
		if err != nil || perr != nil || n == 0 {
			return nil, fmt.Errorf("xds: bootstrap: xds.listen %q: want host:port with a port Envoy can dial, or unix:///path", o.XDSAddress)
		}
		data.XDSPort = uint16(n)
		switch a, err := netip.ParseAddr(host); {
		case host == "" || (err == nil && a.Is4() && a.IsUnspecified()):
			data.XDSHost = "127.0.0.1" // listening on every address: dial loopback
		case err == nil && a.IsUnspecified():
			data.XDSHost = "::1"
		case err == nil:
			if a.Zone() != "" {
				return nil, fmt.Errorf("xds: bootstrap: xds.listen %q: zones are not supported", o.XDSAddress)
			}
			data.XDSHost = a.String()
		default:
			if !plainScalar(host) {
				return nil, fmt.Errorf("xds: bootstrap: xds.listen %q: %q is not a host name", o.XDSAddress, host)
			}
			data.XDSHost, data.ClusterType = host, "STRICT_DNS"
		}
		if strings.Contains(data.XDSHost, ":") {
			data.XDSHost = `"` + data.XDSHost + `"` // an IPv6 literal is not a plain YAML scalar in a flow mapping
		}
		data.XDSShown = net.JoinHostPort(strings.Trim(data.XDSHost, `"`), port)
	}
	if strings.Contains(data.AdminHost, ":") {
		data.AdminHost = `"` + data.AdminHost + `"`
	}

	var buf bytes.Buffer
	if err := bootstrapTemplate.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("xds: bootstrap: %w", err)
	}
	if _, err := ParseBootstrap(buf.Bytes()); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ParseBootstrap loads a YAML bootstrap into Envoy's Bootstrap proto (unknown
// fields are errors) and validates it, including its packed typed_configs.
func ParseBootstrap(y []byte) (*bootstrapv3.Bootstrap, error) {
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		return nil, fmt.Errorf("xds: bootstrap: YAML: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(j, b); err != nil {
		return nil, fmt.Errorf("xds: bootstrap: %w", err)
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("xds: bootstrap: %w", err)
	}
	for _, c := range b.GetStaticResources().GetClusters() {
		for name, a := range c.GetTypedExtensionProtocolOptions() {
			m, err := a.UnmarshalNew()
			if err != nil {
				return nil, fmt.Errorf("xds: bootstrap: cluster %q: %s: %w", c.GetName(), name, err)
			}
			if v, ok := m.(interface{ ValidateAll() error }); ok {
				if err := v.ValidateAll(); err != nil {
					return nil, fmt.Errorf("xds: bootstrap: cluster %q: %s: %w", c.GetName(), name, err)
				}
			}
		}
	}
	return b, nil
}

// plainScalar reports whether s can be written in the YAML template as it
// is: non-empty, letters, digits and . _ - only.
func plainScalar(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
