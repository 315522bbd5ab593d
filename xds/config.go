package xds

import (
	"fmt"
	"net"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Mode is how intercepted traffic reaches the capture listeners.
type Mode string

// Interception modes.
const (
	// ModeRedirect: iptables REDIRECT (or the eBPF capture); the original
	// destination is read with SO_ORIGINAL_DST.
	ModeRedirect Mode = "redirect"
	// ModeTProxy: iptables TPROXY on the inbound side; virtual_inbound is
	// transparent and the inbound passthrough keeps the client's source
	// address. The outbound side is the same as in ModeRedirect.
	ModeTProxy Mode = "tproxy"
)

// Config is what the translator needs from realipd's configuration. The zero
// value is not valid; cmd/realipd fills it from the xds, extproc and trust
// sections after validation.
type Config struct {
	Mode         Mode
	OutboundPort uint32 // virtual_outbound (use_original_dst)
	InboundPort  uint32 // virtual_inbound (original_dst listener filter)
	IPv4, IPv6   bool   // listen and bind in these families (both: dual stack)
	// HTTPPorts are the inbound destination ports handled as HTTP (HCM →
	// ext_proc → router); every other inbound port is passed through as
	// TCP. Empty: no HTTP filter chain.
	HTTPPorts []uint32
	// ExtProcAddress is where Envoy reaches realipd's ext_proc server:
	// "host:port" (an IP literal or a name resolved by Envoy) or
	// "unix:///path" (a pipe).
	ExtProcAddress string
	// MetadataNamespace is the dynamic metadata namespace the ext_proc
	// filter accepts from realipd (extproc.metadata_namespace).
	MetadataNamespace string
	// MessageTimeout bounds Envoy's wait for one ext_proc answer; 0 means
	// DefaultMessageTimeout. At most MaxMessageTimeout.
	MessageTimeout time.Duration
	// FailureModeAllow lets requests through when realipd cannot be
	// reached; false (the default) fails closed.
	FailureModeAllow bool
	// OriginalSrcMark is the SO_MARK the original_src listener filter puts
	// on the upstream sockets of virtual_inbound in ModeTProxy, so that the
	// interception rules can route the application's answers (addressed to
	// the client's IP) back to Envoy. 0 (the default) sets no mark. Ignored
	// in ModeRedirect.
	OriginalSrcMark uint32
}

// DefaultMessageTimeout is the ext_proc filter's message_timeout when
// Config.MessageTimeout is 0 (Envoy's own default, written out).
const DefaultMessageTimeout = 200 * time.Millisecond

// MaxMessageTimeout is the largest message_timeout Envoy accepts.
const MaxMessageTimeout = time.Hour

// ConfigError is one problem with a Config, named by the key of realipd's
// configuration it comes from (Path, such as "xds.http_ports[1]"), so that
// cmd/realipd can log key=Path reason=Reason. Build returns a *ConfigError,
// or several joined with errors.Join.
type ConfigError struct {
	Path   string
	Reason string
}

func (e *ConfigError) Error() string { return e.Path + ": " + e.Reason }

// The keys of realipd's configuration that the Config fields come from.
const (
	keyMode              = "xds.mode"
	keyOutboundPort      = "xds.outbound_port"
	keyInboundPort       = "xds.inbound_port"
	keyIPFamilies        = "xds.ip_families"
	keyHTTPPorts         = "xds.http_ports"
	keyExtProcAddress    = "xds.extproc_address"
	keyMetadataNamespace = "extproc.metadata_namespace"
	keyMessageTimeout    = "xds.message_timeout"
)

// addrKind is what an ExtProcAddress names.
type addrKind int

const (
	addrIP   addrKind = iota // an IP literal and a port: a STATIC cluster
	addrDNS                  // a host name and a port: resolved by Envoy
	addrPipe                 // a unix socket path
)

// extProcTarget is a parsed Config.ExtProcAddress.
type extProcTarget struct {
	kind addrKind
	ip   netip.Addr // addrIP
	host string     // addrDNS
	port uint32     // addrIP, addrDNS
	path string     // addrPipe
}

// check returns every problem with c, each a *ConfigError, and the parsed
// ext_proc address.
func (c Config) check() (extProcTarget, []error) {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, &ConfigError{Path: path, Reason: fmt.Sprintf(format, args...)})
	}
	switch c.Mode {
	case ModeRedirect, ModeTProxy:
	default:
		add(keyMode, "%q is not one of %s, %s", string(c.Mode), ModeRedirect, ModeTProxy)
	}
	portOK := func(path string, p uint32) bool {
		if p == 0 || p > 65535 {
			add(path, "%d is not a port between 1 and 65535", p)
			return false
		}
		return true
	}
	outOK := portOK(keyOutboundPort, c.OutboundPort)
	inOK := portOK(keyInboundPort, c.InboundPort)
	if outOK && inOK && c.InboundPort == c.OutboundPort {
		add(keyInboundPort, "%d is also the outbound_port", c.InboundPort)
	}
	if !c.IPv4 && !c.IPv6 {
		add(keyIPFamilies, "must list ipv4, ipv6 or both")
	}
	for i, p := range c.HTTPPorts {
		key := fmt.Sprintf("%s[%d]", keyHTTPPorts, i)
		switch {
		case !portOK(key, p):
		case slices.Index(c.HTTPPorts, p) < i:
			add(key, "%d is listed twice", p)
		case p == c.InboundPort:
			add(key, "%d is the inbound_port, where Envoy captures; it cannot also be an application port", p)
		case p == c.OutboundPort:
			add(key, "%d is the outbound_port, where Envoy captures; it cannot also be an application port", p)
		}
	}
	target, err := parseExtProcAddress(c.ExtProcAddress)
	if err != nil {
		add(keyExtProcAddress, "%s", err)
	}
	if c.MetadataNamespace == "" || strings.ContainsFunc(c.MetadataNamespace, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		add(keyMetadataNamespace, "%q is not a valid namespace (non-empty, no spaces)", c.MetadataNamespace)
	}
	if c.MessageTimeout < 0 || c.MessageTimeout > MaxMessageTimeout {
		add(keyMessageTimeout, "%v is not between 0 (the default, %v) and %v", c.MessageTimeout, DefaultMessageTimeout, MaxMessageTimeout)
	}
	return target, errs
}

// parseExtProcAddress reads "unix:///abs/path", "ip:port", "[ipv6]:port"
// or "host.name:port" as Envoy must dial it.
func parseExtProcAddress(s string) (extProcTarget, error) {
	if s == "" {
		return extProcTarget{}, fmt.Errorf("required (host:port or unix:///absolute/path)")
	}
	if p, ok := strings.CutPrefix(s, "unix://"); ok {
		if !path.IsAbs(p) || path.Clean(p) == "/" || strings.ContainsRune(p, 0) {
			return extProcTarget{}, fmt.Errorf("%q: a unix socket address is unix:// followed by an absolute path", s)
		}
		return extProcTarget{kind: addrPipe, path: path.Clean(p)}, nil
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return extProcTarget{}, fmt.Errorf("%q is not host:port or unix:///absolute/path", s)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return extProcTarget{}, fmt.Errorf("%q: port %q is not between 1 and 65535", s, portStr)
	}
	if host == "" {
		return extProcTarget{}, fmt.Errorf("%q has no host: Envoy needs an address to dial", s)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		switch {
		case ip.Zone() != "":
			return extProcTarget{}, fmt.Errorf("%q: zones are not supported", s)
		case ip.IsUnspecified():
			return extProcTarget{}, fmt.Errorf("%q: %s is a listen address, not one Envoy can dial; give a concrete IP", s, ip)
		}
		return extProcTarget{kind: addrIP, ip: ip.Unmap(), port: uint32(port)}, nil
	}
	if !isHostName(host) {
		return extProcTarget{}, fmt.Errorf("%q: %q is not an IP address or a host name", s, host)
	}
	return extProcTarget{kind: addrDNS, host: host, port: uint32(port)}, nil
}

// isHostName reports whether s is a DNS name: dot-separated labels of
// letters, digits, hyphens and underscores, 1 to 63 bytes each, none
// starting or ending with a hyphen; one trailing dot allowed.
func isHostName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := range len(label) {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	// An all-numeric name would be read as an IPv4 address by resolvers.
	return strings.ContainsFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
}
