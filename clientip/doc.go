// Package clientip resolves the real client IP of a request from the address
// of the hop that connected (the peer) and the forwarding headers that hop
// sent (X-Forwarded-For, RFC 7239 Forwarded, or a single-IP header such as
// X-Real-IP).
//
// A Resolver is built once from a Config with New and is then immutable and
// safe for concurrent use. Resolve is the hot path: it parses from the right,
// stops as soon as the answer is known, never allocates for common headers,
// and fails closed ("no result") on input that exceeds MaxHeaderBytes or
// MaxEntries. Explain runs the same walk and records every step as data.
//
// The package depends on the standard library only (net/netip); it knows
// nothing of gRPC, Envoy or configuration files.
package clientip
