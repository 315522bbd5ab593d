package plugins

import (
	"context"
	"net/netip"

	"github.com/realipd/realipd/clientip"
)

// CIDR is the built-in "cidr" policy: it decides on the resolved client IP
// with a deny list and an optional allow list.
//
//   - A client IP inside a deny prefix is denied.
//   - When the allow list is non-empty, it lists the only client IPs that may
//     pass: an IP outside every allow prefix is denied.
//   - A request without a client IP (nothing resolved and no usable peer) is
//     denied when an allow list exists (it cannot prove it is allowed) and
//     allowed otherwise (no deny prefix can match it).
//
// IPv4-mapped IPv6 addresses match IPv4 prefixes; zones are ignored. A CIDR is
// immutable, safe for concurrent use, never blocks and never returns an error.
type CIDR struct {
	allow clientip.PrefixSet
	deny  clientip.PrefixSet
}

// NewCIDR builds a CIDR policy from allow and deny prefixes; either may be
// empty. Callers parse configuration strings once, at load.
func NewCIDR(allow, deny []netip.Prefix) *CIDR {
	return &CIDR{allow: clientip.NewPrefixSet(allow), deny: clientip.NewPrefixSet(deny)}
}

// Decide implements Policy.
func (p *CIDR) Decide(_ context.Context, req *Request) (Decision, error) {
	ip := req.ClientIP
	if !ip.IsValid() {
		return Decision{Deny: p.allow.Len() > 0}, nil
	}
	if p.deny.Contains(ip) {
		return Decision{Deny: true}, nil
	}
	if p.allow.Len() > 0 && !p.allow.Contains(ip) {
		return Decision{Deny: true}, nil
	}
	return Decision{}, nil
}

// DecidesImmediately implements Immediate: a CIDR answers from memory.
func (*CIDR) DecidesImmediately() {}

var _ Immediate = (*CIDR)(nil)
