package config

import (
	"net/netip"
	"time"

	"github.com/realipd/realipd/clientip"
)

// Config is the whole file. Field tags are the YAML keys (README.md, "Configure it").
type Config struct {
	Trust     Trust     `json:"trust"`
	ExtProc   ExtProc   `json:"extproc"`
	XDS       XDS       `json:"xds"`
	OrigDst   OrigDst   `json:"origdst"`
	Intercept Intercept `json:"intercept"`
	Admin     Admin     `json:"admin"`
	Policies  []Policy  `json:"policies"`
}

// Trust selects the client-IP resolution strategy.
type Trust struct {
	Strategy         string   `json:"strategy"`
	Header           string   `json:"header"`
	TrustedCIDRs     []string `json:"trusted_cidrs"`
	TrustedHops      *int     `json:"trusted_hops"`
	UseRemoteAddress *bool    `json:"use_remote_address"`
	OnUnresolved     string   `json:"on_unresolved"` // deny | pass

	clientIP clientip.Config // parsed by Validate
}

// ExtProc configures the ext_proc gRPC server.
type ExtProc struct {
	Enabled            bool     `json:"enabled"`
	Listen             string   `json:"listen"`
	ClientIPHeader     string   `json:"client_ip_header"`
	MetadataNamespace  string   `json:"metadata_namespace"`
	XFFAppendedByEnvoy bool     `json:"xff_appended_by_envoy"`
	DenyStatus         int      `json:"deny_status"`
	DrainTimeout       Duration `json:"drain_timeout"`
}

// XDS configures the xDS control plane.
type XDS struct {
	Enabled        bool     `json:"enabled"`
	Listen         string   `json:"listen"`
	Mode           string   `json:"mode"`
	OutboundPort   int      `json:"outbound_port"`
	InboundPort    int      `json:"inbound_port"`
	IPFamilies     []string `json:"ip_families"`
	HTTPPorts      []int    `json:"http_ports"`
	ExtProcAddress string   `json:"extproc_address"`
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
	Name     string         `json:"name"`
	Type     string         `json:"type"` // cidr | plugin
	Deny     []string       `json:"deny,omitempty"`
	Allow    []string       `json:"allow,omitempty"`
	Path     string         `json:"path,omitempty"`
	SHA256   string         `json:"sha256,omitempty"`
	Timeout  Duration       `json:"timeout,omitempty"`
	OnError  string         `json:"on_error,omitempty"` // allow | deny
	CacheTTL Duration       `json:"cache_ttl,omitempty"`
	Config   map[string]any `json:"config,omitempty"`

	deny, allow []netip.Prefix // parsed by Validate
}

// Duration is a time.Duration written as a Go duration string ("20ms").
type Duration struct{ time.Duration }
