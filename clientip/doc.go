// Package clientip resolves the real client IP of a request from the address
// of the hop that connected (the peer) and the forwarding headers that hop
// sent (X-Forwarded-For, RFC 7239 Forwarded, or a single-IP header such as
// X-Real-IP).
//
// A Resolver is built once from a Config with New and is then immutable and
// safe for concurrent use. Resolve gives the strategy's answer; Client, the
// hot path of the servers, adds the rule for when the peer stands in for the
// client (no forwarding header at all, or every entry trusted) and leaves
// every other failure unresolved. Both parse from where the strategy starts
// reading (the right, for all but leftmost_non_private), stop as soon as the
// answer is known, never allocate for common headers, and fail closed ("no
// result") when a walk would examine more than MaxEntries entries; the bound
// never applies to the header as a whole. Explain runs the same walk as
// Client and records every step as data.
//
// The package depends on the standard library only (net/netip); it knows
// nothing of gRPC, Envoy or configuration files.
package clientip
