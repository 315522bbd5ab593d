package xds

import "time"

// Mode is how intercepted traffic reaches the capture listeners.
type Mode string

// Interception modes.
const (
	// ModeRedirect: iptables REDIRECT (or the eBPF capture); the original
	// destination is read with SO_ORIGINAL_DST.
	ModeRedirect Mode = "redirect"
	// ModeTProxy: iptables TPROXY; the listeners are transparent and the
	// inbound passthrough keeps the client's source address.
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
	HTTPPorts    []uint32
	// ExtProcAddress is where Envoy reaches realipd's ext_proc server:
	// "host:port" (an IP literal or a name resolved by Envoy) or
	// "unix:///path" (a pipe).
	ExtProcAddress string
	// MetadataNamespace is the dynamic metadata namespace the ext_proc
	// filter accepts from realipd (extproc.metadata_namespace).
	MetadataNamespace string
	// MessageTimeout bounds Envoy's wait for one ext_proc answer; 0 means
	// DefaultMessageTimeout.
	MessageTimeout time.Duration
	// FailureModeAllow lets requests through when realipd cannot be
	// reached; false (the default) fails closed.
	FailureModeAllow bool
}

// DefaultMessageTimeout is the ext_proc filter's message_timeout when
// Config.MessageTimeout is 0 (Envoy's own default, written out).
const DefaultMessageTimeout = 200 * time.Millisecond
