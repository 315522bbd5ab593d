package config

import (
	"net/netip"
	"time"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/listsource"
)

// Config is the whole file. Field tags are the YAML keys (README.md,
// "Configure it") and whether `realipd serve` applies a change of the key
// while serving (see ReloadLive).
type Config struct {
	Trust     Trust     `json:"trust"`
	ExtProc   ExtProc   `json:"extproc"`
	XDS       XDS       `json:"xds"`
	OrigDst   OrigDst   `json:"origdst" reload:"restart"`
	Intercept Intercept `json:"intercept" reload:"restart"`
	Admin     Admin     `json:"admin" reload:"restart"`
	Policies  []Policy  `json:"policies"`
}

// Trust selects the client-IP resolution strategy.
type Trust struct {
	Strategy         string      `json:"strategy" reload:"live"`
	Header           string      `json:"header" reload:"live"`
	TrustedCIDRs     []ListEntry `json:"trusted_cidrs" reload:"live"`
	TrustedHops      *int        `json:"trusted_hops" reload:"live"`
	UseRemoteAddress *bool       `json:"use_remote_address" reload:"live"`
	OnUnresolved     string      `json:"on_unresolved" reload:"live"` // deny | pass
	// CacheDir keeps the last good list of every fetched list source,
	// read at start (a restart without network keeps its lists): it is
	// read once, so a change needs a restart.
	CacheDir string `json:"cache_dir" reload:"restart"`

	clientIP clientip.Config   // parsed by Validate
	trusted  []netip.Prefix    // the inline CIDRs of trusted_cidrs, parsed by Validate
	sources  []listsource.Spec // the sources of trusted_cidrs, checked by Validate
}

// ExtProc configures the ext_proc gRPC server.
type ExtProc struct {
	Enabled            bool     `json:"enabled" reload:"restart"`
	Listen             string   `json:"listen" reload:"restart"`
	SocketGroup        *int     `json:"socket_group" reload:"restart"` // unix listen: the group that may connect too (mode 0660); nil: the owner alone (0600)
	ClientIPHeader     string   `json:"client_ip_header" reload:"live"`
	MetadataNamespace  string   `json:"metadata_namespace" reload:"live"`
	XFFAppendedByEnvoy bool     `json:"xff_appended_by_envoy" reload:"live"`
	DenyStatus         int      `json:"deny_status" reload:"live"`
	DrainTimeout       Duration `json:"drain_timeout" reload:"restart"`
}

// XDS configures the xDS control plane.
type XDS struct {
	Enabled     bool   `json:"enabled" reload:"restart"`
	Listen      string `json:"listen" reload:"restart"`
	SocketGroup *int   `json:"socket_group" reload:"restart"` // as extproc.socket_group
	// The interception rules, installed once (an init container's realipd
	// iptables --apply, or the eBPF capture), steer to these ports in this
	// mode: Envoy moved elsewhere would lose the traffic.
	Mode           string   `json:"mode" reload:"restart"`
	OutboundPort   int      `json:"outbound_port" reload:"restart"`
	InboundPort    int      `json:"inbound_port" reload:"restart"`
	IPFamilies     []string `json:"ip_families" reload:"live"`
	HTTPPorts      []int    `json:"http_ports" reload:"live"`
	ExtProcAddress string   `json:"extproc_address" reload:"live"`
}

// OrigDst configures the native fallback listener.
type OrigDst struct {
	Enabled        bool     `json:"enabled"`
	Mode           string   `json:"mode"`
	Listen         []string `json:"listen"`
	Mark           int      `json:"mark"`
	TProxyMark     int      `json:"tproxy_mark"`
	Fallback       string   `json:"fallback"`
	FallbackGrace  Duration `json:"fallback_grace"` // fallback: auto: how long no Envoy may hold the capture ports before realipd binds them
	HTTPPorts      []int    `json:"http_ports"`
	HTTPEventLoops int      `json:"http_event_loops"` // the HTTP mode's event loops: 0 automatic, -1 none
	ProxyProtocol  bool     `json:"proxy_protocol"`
	OriginalSource bool     `json:"original_source"` // tproxy: dial the upstream from the client's address
	DialTimeout    Duration `json:"dial_timeout"`    // connecting to the original destination
	IdleTimeout    Duration `json:"idle_timeout"`    // a proxied connection with no byte either way for this long is closed; 0: never
	DrainTimeout   Duration `json:"drain_timeout"`   // on SIGTERM, how long proxied connections may finish
	MaxConnections int      `json:"max_connections"` // connections set up or proxied at once; more are refused

	listen []netip.AddrPort // parsed by Validate
}

// Admin configures the admin HTTP listener.
type Admin struct {
	Enabled      bool     `json:"enabled"`
	Listen       string   `json:"listen"`
	AllowedHosts []string `json:"allowed_hosts"`
}

// Policy is one entry of the policies list.
type Policy struct {
	Name     string         `json:"name" reload:"live"`
	Type     string         `json:"type" reload:"live"` // cidr | plugin
	Deny     []ListEntry    `json:"deny,omitempty" reload:"live"`
	Allow    []ListEntry    `json:"allow,omitempty" reload:"live"`
	Path     string         `json:"path,omitempty" reload:"live"`
	SHA256   string         `json:"sha256,omitempty" reload:"live"`
	Timeout  Duration       `json:"timeout,omitempty" reload:"live"`
	OnError  string         `json:"on_error,omitempty" reload:"live"` // allow | deny
	CacheTTL Duration       `json:"cache_ttl,omitempty" reload:"live"`
	Config   map[string]any `json:"config,omitempty" reload:"live"`

	deny, allow               []netip.Prefix    // the inline CIDRs, parsed by Validate
	denySources, allowSources []listsource.Spec // the sources, checked by Validate
	dir                       string            // the configuration file's directory (plugin policies loaded from a file)
}

// Dir is the directory a plugin policy's process runs in: the directory of
// the configuration file it was loaded from (absolute), so that relative
// paths in its config are relative to that file as policies[].path is; ""
// for a configuration that did not come from a file (the plugin then runs
// in realipd's working directory).
func (p Policy) Dir() string { return p.dir }

// Duration is a time.Duration written as a Go duration string ("20ms").
type Duration struct{ time.Duration }
