package decide

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/plugins"
)

// Defaults of the Settings fields left empty.
const (
	DefaultClientIPHeader    = "x-real-ip"
	DefaultMetadataNamespace = "realipd"
	DefaultDenyStatus        = 403
)

// Settings are what a decision needs. New checks them once; the hot path
// never parses them again.
type Settings struct {
	// Resolver resolves the client IP; nil is remote_addr (the peer is the
	// client; no forwarding header is read).
	Resolver *clientip.Resolver
	// Chain holds the policies run after resolution; nil allows every
	// request. A request holds it while it decides (Current.Acquire).
	Chain *plugins.Chain
	// PassUnresolved lets a request whose client IP is unresolved go on to
	// the policies without an IP (trust.on_unresolved: pass). False, the
	// default, denies it.
	PassUnresolved bool
	// ClientIPHeader is the request header set to the client IP
	// (extproc.client_ip_header; default DefaultClientIPHeader); see
	// CheckClientIPHeader.
	ClientIPHeader string
	// MetadataNamespace is the ext_proc dynamic metadata namespace
	// (default DefaultMetadataNamespace).
	MetadataNamespace string
	// DenyStatus is the HTTP status of a deny (default DefaultDenyStatus);
	// a policy's own status wins when it is valid (plugins.DenyStatus).
	DenyStatus int
	// XFFAppendedByEnvoy says that the X-Forwarded-For the ext_proc door
	// receives ends with the entry Envoy appended
	// (extproc.xff_appended_by_envoy): the door removes it before
	// resolving, when it is the one Envoy appends.
	XFFAppendedByEnvoy bool
	// TrustedCIDRs are the peers whose PROXY protocol header the native
	// listener honours (trust.trusted_cidrs).
	TrustedCIDRs []netip.Prefix
}

// TrimsEnvoyEntry reports whether the ext_proc door removes the entry
// Envoy appended to X-Forwarded-For before resolving: with
// XFFAppendedByEnvoy, when the Resolver reads X-Forwarded-For.
func (s Settings) TrimsEnvoyEntry() bool {
	return s.XFFAppendedByEnvoy && s.Resolver != nil && s.Resolver.Header() == "x-forwarded-for"
}

// unwritableHeaders are headers realipd must never write the client IP to:
// the request's framing and routing (content-length, transfer-encoding,
// host, te) and the hop-by-hop headers a proxy consumes (connection,
// upgrade, keep-alive, proxy-connection, trailer). Overwriting one would
// change how the request is framed or where it goes.
var unwritableHeaders = []string{
	"content-length", "transfer-encoding", "host", "te", "connection",
	"upgrade", "keep-alive", "proxy-connection", "trailer",
}

// CheckClientIPHeader checks the name of the client-IP header
// (extproc.client_ip_header), as both doors write it: a header name (any
// case; it is written lower-case), not a pseudo-header, not one of the
// framing or hop-by-hop headers, and nothing plugins.ValidHeaderName
// refuses. It returns the name lower-cased.
func CheckClientIPHeader(name string) (string, error) {
	h := strings.ToLower(name)
	switch {
	case h == "":
		return "", errors.New("the client-IP header name is empty")
	case strings.HasPrefix(h, ":"):
		return "", fmt.Errorf("%q is a pseudo-header, which realipd must not write", name)
	case !plugins.ValidHeaderName(h):
		return "", fmt.Errorf("%q is not a valid header name", name)
	case slices.Contains(unwritableHeaders, h):
		return "", fmt.Errorf("%q frames or routes the request (or is hop-by-hop): realipd must not overwrite it", name)
	case h == "x-forwarded-for":
		return "", fmt.Errorf("%q is the forwarding header realipd appends the peer to (the native HTTP mode writes it): the client IP needs a header of its own", name)
	}
	return h, nil
}

// CheckDenyStatus checks a configured deny status: one Envoy can send
// (plugins.ValidDenyStatus).
func CheckDenyStatus(code int) error {
	switch {
	case code < 200 || code > 599:
		return fmt.Errorf("%d is not an HTTP status between 200 and 599", code)
	case !plugins.ValidDenyStatus(code):
		// Envoy's ImmediateResponse takes a type.v3.StatusCode enum value.
		return fmt.Errorf("%d is not a status Envoy's ext_proc ImmediateResponse accepts (envoy.type.v3.StatusCode)", code)
	}
	return nil
}
