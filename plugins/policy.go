// Package plugins holds realipd's IP policies: the Policy interface every
// policy implements, the Chain that evaluates configured policies in order
// (the first deny wins), and the built-in policies. Out-of-process policies
// loaded with hashicorp/go-plugin live in the host subpackage; plugin authors
// import the sdk subpackage.
//
// A Chain replaced while serving (a configuration reload) is retired rather
// than closed: each request holds the chain it runs on (Chain.Acquire and
// Chain.Release, one atomic add each), and Chain.Retire closes the chain's
// policies once the last holder is done, however long that takes.
package plugins

import (
	"context"
	"net/netip"
	"strings"
	"time"

	"github.com/realipd/realipd/clientip"
)

// Request is what a policy decides on. Policies must not modify it, nor
// keep it or references to its slices after Decide returns: a caller may
// reuse it for its next request (the native HTTP mode does).
type Request struct {
	ClientIP    netip.Addr      // the resolved client IP; invalid when none was found
	Peer        string          // the peer as received ("ip:port"), may be empty
	OriginalDst netip.AddrPort  // the intercepted connection's original destination, when known
	Resolution  clientip.Result // how ClientIP was found
	Strategy    clientip.Strategy
	// Headers are the request headers the Chain's policies declared through
	// HeaderInputs (the union over the Chain), in request order with repeated
	// lines kept, names lower-case; empty when no policy declared any.
	Headers  []Header
	Listener string // listener or route name, when known
	Route    string
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

// Immediate is implemented by policies whose Decide answers from memory:
// it never waits on anything (no I/O, no other process, no lock held
// across a wait). A caller that serves many connections on one thread
// (the native HTTP mode's event loops) runs such a chain in place and
// hands the request to a goroutine of its own otherwise. Out-of-process
// plugins do not implement it.
type Immediate interface {
	Policy
	DecidesImmediately()
}

// HeaderInputs is implemented by policies that read request headers
// (Request.Headers). Callers that build Requests, such as the ext_proc
// server, collect only the headers some policy of the Chain asks for, and
// none at all when no policy does: a policy that reads headers without
// implementing HeaderInputs sees an empty Request.Headers.
//
// RequestHeaders returns the lower-case names of the headers the policy reads
// and whether it reads every request header (all; names is then ignored).
// It is called on the request path: it must be cheap, must not allocate, and
// the returned slice must not be modified by anyone afterwards (return a new
// slice when the answer changes). The answer may change over time (a plugin
// restarted with other declared inputs).
type HeaderInputs interface {
	RequestHeaders() (names []string, all bool)
}

// envoyStatuses are the HTTP statuses of at least 200 that Envoy's
// type.v3.StatusCode enum defines: the ones an ext_proc ImmediateResponse
// can carry, and so the only ones a deny may have on either path (ext_proc
// or the native listener's HTTP mode), so that both answer alike.
var envoyStatuses = func() (set [600]bool) {
	for _, r := range [][2]int{
		{200, 208}, {226, 226}, {300, 308}, {400, 417}, {421, 424}, {426, 426},
		{428, 429}, {431, 431}, {500, 508}, {510, 511},
	} {
		for c := r[0]; c <= r[1]; c++ {
			if c != 306 { // unused, so not in the enum
				set[c] = true
			}
		}
	}
	return set
}()

// ValidDenyStatus reports whether code can be the HTTP status of a deny: a
// status of at least 200 that Envoy's type.v3.StatusCode defines.
func ValidDenyStatus(code int) bool {
	return code >= 0 && code < len(envoyStatuses) && envoyStatuses[code]
}

// DenyStatus is the HTTP status of deny decision d: d.Status when it is a
// valid one (ValidDenyStatus), otherwise configured.
func DenyStatus(d Decision, configured int) int {
	if d.Status != 0 && ValidDenyStatus(d.Status) {
		return d.Status
	}
	return configured
}

// ValidHeader reports whether h can be written to a request or a deny
// response, on either path (Envoy's header mutation rules, which the
// native listener's HTTP mode follows too): a lower-case token name
// (ValidHeaderName) and a value without NUL, CR or LF.
func ValidHeader(h Header) bool {
	return ValidHeaderName(h.Name) && !strings.ContainsAny(h.Value, "\x00\r\n")
}

// ValidHeaderName reports whether name is a lower-case HTTP token (Envoy
// rejects mutations of pseudo-headers and upper-case names in HTTP/2).
func ValidHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := range len(name) {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
