package clientip

import "net/netip"

// Strategy names one way of picking the client IP. Its String form is the
// contract used in configuration, the CLI and metadata.
type Strategy uint8

// The strategies; docs/strategies.md gives their exact semantics.
const (
	RemoteAddr Strategy = iota + 1
	SingleHeader
	LeftmostNonPrivate
	RightmostNonPrivate
	RightmostTrustedCount
	RightmostTrustedRange
	EnvoyXFF
)

// Config selects a strategy and its parameters.
type Config struct {
	Strategy         Strategy
	Header           string         // header to read; ignored by RemoteAddr; default X-Forwarded-For
	TrustedCIDRs     []netip.Prefix // RightmostTrustedRange; EnvoyXFF: xff_trusted_cidrs
	TrustedHops      int            // RightmostTrustedCount (>= 1); EnvoyXFF: xff_num_trusted_hops
	UseRemoteAddress bool           // EnvoyXFF only
}

// Source says where a result came from.
type Source uint8

// Sources of a result.
const (
	SourceNone   Source = iota // no result
	SourceHeader               // an entry of the configured header
	SourcePeer                 // the peer address
)

// Reason says why a resolution ended the way it did. Its String form is
// stable and appears in explanations, logs and metrics labels.
type Reason uint8

// Reasons.
const (
	ReasonNone          Reason = iota
	ReasonPicked               // a header entry was chosen
	ReasonPeer                 // the peer itself is the answer (remote_addr, untrusted peer, envoy_xff fallback)
	ReasonNoPeer               // the peer is not a usable IP (or, in ext_proc, there is no source.address)
	ReasonNoHeader             // the header is absent or has no entries (Client: the peer stands in)
	ReasonInvalidEntry         // the entry in the deciding slot is not a valid client IP
	ReasonAllTrusted           // every entry is trusted (Client: the peer stands in; envoy_xff: the leftmost entry)
	ReasonTooFewEntries        // fewer entries than trusted hops
	ReasonNoPublicEntry        // no valid non-private entry
	ReasonBound                // the walk would examine more than MaxEntries entries: fail closed
)

// Result is the outcome of Resolve or Client. The zero Result is "no
// result"; a Result without IP from Client is "unresolved".
type Result struct {
	IP       netip.Addr // invalid when there is no result
	Source   Source
	Reason   Reason
	Position int // for SourceHeader: 1-based position of the picked entry counted from the right
}

// OK reports whether a client IP was found.
func (r Result) OK() bool { return r.IP.IsValid() }

// Explanation is a resolution recorded step by step, for --json output,
// debug logs and audit metadata.
type Explanation struct {
	Strategy     string         `json:"strategy"`
	Header       string         `json:"header,omitempty"`
	Peer         string         `json:"peer"`
	PeerTrusted  *bool          `json:"peer_trusted,omitempty"`
	Entries      []EntryVerdict `json:"entries"` // in the order they were read (right to left, or left to right for leftmost_non_private)
	ClientIP     string         `json:"client_ip"`
	ResolvedFrom string         `json:"resolved_from"` // "header", "peer" or "none" (unresolved)
	Reason       string         `json:"reason"`
	Detail       string         `json:"detail"` // one human sentence
}

// EntryVerdict is what the walk concluded about one header entry.
type EntryVerdict struct {
	Position int    `json:"position"` // 1-based, counted from the right
	Raw      string `json:"raw"`
	IP       string `json:"ip,omitempty"`
	Verdict  string `json:"verdict"` // "trusted", "untrusted", "private", "invalid", "picked", "skipped"
}
