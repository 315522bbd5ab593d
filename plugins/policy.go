// Package plugins holds realipd's IP policies: the Policy interface every
// policy implements, the Chain that evaluates configured policies in order
// (the first deny wins), and the built-in policies. Out-of-process policies
// loaded with hashicorp/go-plugin live in the host subpackage; plugin authors
// import the sdk subpackage.
package plugins

import (
	"context"
	"net/netip"
	"time"

	"github.com/realipd/realipd/clientip"
)

// Request is what a policy decides on. Policies must not modify it or keep
// references to its slices after Decide returns.
type Request struct {
	ClientIP    netip.Addr      // the resolved client IP; invalid when none was found
	Peer        string          // the peer as received ("ip:port"), may be empty
	OriginalDst netip.AddrPort  // the intercepted connection's original destination, when known
	Resolution  clientip.Result // how ClientIP was found
	Strategy    clientip.Strategy
	Headers     []Header // selected request headers, lower-case names
	Listener    string   // listener or route name, when known
	Route       string
}

// Header is one header name and value.
type Header struct {
	Name  string
	Value string
}

// Decision is a policy's answer. The zero Decision allows with no effects.
type Decision struct {
	Deny     bool
	Status   int               // deny HTTP status; 0 means the configured default
	Body     string            // deny body; "" means a default text
	Headers  []Header          // headers to set on the request (allow) or the deny response
	Metadata map[string]string // extra dynamic metadata fields
	CacheTTL time.Duration     // how long this decision may be reused for the same inputs; 0: not cached
}

// Policy decides whether a request may pass. Implementations must be safe
// for concurrent use and must honour ctx's deadline.
type Policy interface {
	Decide(ctx context.Context, req *Request) (Decision, error)
}
