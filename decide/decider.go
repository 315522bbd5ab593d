package decide

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/plugins"
)

// What a deny answers when the deciding policy says nothing.
const (
	// DenyBody is the body of a deny by a policy that gives none.
	DenyBody = "access denied\n"
	// UnresolvedBody is the body of a deny by trust.on_unresolved.
	UnresolvedBody = "client IP unresolved\n"
	// DenyDetails and UnresolvedDetails are what Envoy logs as
	// %RESPONSE_CODE_DETAILS% for a deny (no whitespace allowed there).
	DenyDetails       = "realipd_policy_denied"
	UnresolvedDetails = "realipd_client_ip_unresolved"
)

// Decider is one immutable set of Settings, checked, with the shared
// decision log: what a door needs to decide on a request. Build one with
// New; Current holds the one in force.
type Decider struct {
	resolver       *clientip.Resolver
	strategyName   string
	chain          *plugins.Chain
	holdChain      bool // the chain has policies: requests acquire it
	readsHeaders   bool // some policy reads request headers
	passUnresolved bool
	clientIPHeader string
	namespace      string
	denyStatus     int
	trimXFF        bool
	trusted        clientip.PrefixSet
	log            *DecisionLog
	locals         sync.Map // *LocalKey -> any: what each door keeps per Decider
}

// New checks s and builds its Decider; decisions are logged to log (nil:
// nowhere). The Decider does not own s.Chain: whoever swaps it out
// retires it (Runtime does).
func New(s Settings, log *DecisionLog) (*Decider, error) {
	if s.Resolver == nil {
		// The peer is the client: no forwarding header is read.
		r, err := clientip.New(clientip.Config{Strategy: clientip.RemoteAddr})
		if err != nil {
			return nil, fmt.Errorf("decide: settings: %w", err)
		}
		s.Resolver = r
	}
	d := &Decider{
		resolver:       s.Resolver,
		strategyName:   s.Resolver.Strategy().String(),
		chain:          s.Chain,
		holdChain:      s.Chain.Len() > 0,
		readsHeaders:   s.Chain.ReadsHeaders(),
		passUnresolved: s.PassUnresolved,
		namespace:      s.MetadataNamespace,
		denyStatus:     s.DenyStatus,
		trimXFF:        s.TrimsEnvoyEntry(),
		trusted:        clientip.NewPrefixSet(s.TrustedCIDRs),
		log:            log,
	}
	header := s.ClientIPHeader
	if header == "" {
		header = DefaultClientIPHeader
	}
	var err error
	if d.clientIPHeader, err = CheckClientIPHeader(header); err != nil {
		return nil, fmt.Errorf("decide: settings: client_ip_header: %w", err)
	}
	if d.namespace == "" {
		d.namespace = DefaultMetadataNamespace
	}
	if d.denyStatus == 0 {
		d.denyStatus = DefaultDenyStatus
	}
	if err := CheckDenyStatus(d.denyStatus); err != nil {
		return nil, fmt.Errorf("decide: settings: deny_status: %w", err)
	}
	return d, nil
}

// Resolver returns the resolver.
func (d *Decider) Resolver() *clientip.Resolver { return d.resolver }

// StrategyName returns the resolver's strategy as the configuration spells it.
func (d *Decider) StrategyName() string { return d.strategyName }

// Chain returns the policy chain (possibly nil: no policy).
func (d *Decider) Chain() *plugins.Chain { return d.chain }

// ReadsHeaders reports whether some policy reads request headers
// (plugins.HeaderInputs): a door collects them only then.
func (d *Decider) ReadsHeaders() bool { return d.readsHeaders }

// ClientIPHeader returns the lower-case name of the client-IP header.
func (d *Decider) ClientIPHeader() string { return d.clientIPHeader }

// MetadataNamespace returns the ext_proc dynamic metadata namespace.
func (d *Decider) MetadataNamespace() string { return d.namespace }

// TrimsEnvoyEntry reports whether the ext_proc door removes Envoy's entry
// from X-Forwarded-For before resolving (Settings.TrimsEnvoyEntry).
func (d *Decider) TrimsEnvoyEntry() bool { return d.trimXFF }

// TrustsProxyHeaderOf reports whether a PROXY protocol header from peer
// is honoured (Settings.TrustedCIDRs).
func (d *Decider) TrustsProxyHeaderOf(peer netip.Addr) bool { return d.trusted.Contains(peer) }

// HasTrustedCIDRs reports whether any peer's PROXY header is honoured.
func (d *Decider) HasTrustedCIDRs() bool { return d.trusted.Len() > 0 }

// Release releases the chain a request acquired (Current.Acquire).
func (d *Decider) Release() { d.chain.Release() }

// LocalKey names what a door keeps per Decider (Decider.Local).
type LocalKey struct{ name string }

// NewLocalKey returns a key for Decider.Local; name is for debugging.
func NewLocalKey(name string) *LocalKey { return &LocalKey{name: name} }

// Local returns what the door owning key keeps for this Decider (say, its
// counters by policy name), built by build on first use and kept for the
// Decider's life: a door's per-settings state swaps with the Decider, in
// one store, and costs a map load per request.
func (d *Decider) Local(key *LocalKey, build func(*Decider) any) any {
	if v, ok := d.locals.Load(key); ok {
		return v
	}
	v, _ := d.locals.LoadOrStore(key, build(d))
	return v
}

// PolicyNames returns the names a deny's policy can have with this
// Decider, for a door's counters: the chain's policies and, when
// unresolved clients are denied, PolicyUnresolved.
func (d *Decider) PolicyNames() []string {
	names := slices.Clip(d.chain.Names())
	if !d.passUnresolved {
		names = append(names, PolicyUnresolved)
	}
	return names
}

// Door is one front door as the decide step sees it: its name in the
// decision log, and how it hears of policy errors.
type Door struct {
	// Name is DoorExtProc, DoorTCP or DoorHTTP.
	Name string
	// PolicyError, when set, counts a policy error settled by the
	// policy's on_error (the policy's name).
	PolicyError func(policy string)
	// Logger receives the debug line of a policy error; nil: none.
	Logger *slog.Logger
}

// Input is what a door knows of one request, resolved.
type Input struct {
	// Peer is the peer as received ("ip:port"); PeerAddr the peer for a
	// door that has it as an address (Peer is then ""). For the log.
	Peer     string
	PeerAddr netip.AddrPort
	// Resolution is the client IP the door resolved with the Decider's
	// resolver (or its own rule: the TCP proxy's peer or PROXY source).
	Resolution clientip.Result
	// ResolvedFrom overrides where the log says the client IP came from
	// ("" derives it from Resolution).
	ResolvedFrom string
	// OriginalDst is the intercepted connection's original destination,
	// when known. For the log.
	OriginalDst netip.AddrPort
}

// Outcome is the decision on one request.
type Outcome struct {
	// Verdict is the chain's verdict (zero when no policy ran): Deny,
	// Policy, the policies' Headers and Metadata, Err.
	plugins.Verdict
	// ResolvedFrom is "header", "peer" or "none" (the ext_proc
	// resolved_from metadata field).
	ResolvedFrom string
	// On deny: Status is the HTTP status to answer, Body the body (never
	// empty), Details what Envoy logs as %RESPONSE_CODE_DETAILS%.
	Status  int
	Body    string
	Details string
}

// Decide is the decide step. An unresolved client IP is denied with
// UnresolvedBody under trust.on_unresolved: deny (PolicyUnresolved); else
// the chain runs on the request build returns (called only when there is a
// policy), a policy error is counted and logged at debug, and a deny gets
// its status, body and details. The decision goes to the decision log.
// The door holds the Decider's chain (Current.Acquire) around the call.
// Decide allocates nothing of its own.
func (d *Decider) Decide(ctx context.Context, door *Door, in *Input, build func() *plugins.Request) Outcome {
	res := in.Resolution
	var out Outcome
	switch {
	case !res.OK() && !d.passUnresolved:
		out.Verdict = plugins.Verdict{Decision: plugins.Decision{Deny: true}, Policy: PolicyUnresolved}
	case d.chain.Len() > 0:
		out.Verdict = d.chain.Decide(ctx, build())
		if out.Err != nil {
			if door.PolicyError != nil {
				door.PolicyError(out.ErrPolicy)
			}
			if door.Logger != nil {
				door.Logger.Debug(door.Name+": policy failed; on_error applied", "policy", out.ErrPolicy, "error", out.Err, "deny", out.Deny)
			}
		}
	}
	out.ResolvedFrom = ResolvedFrom(res)
	if out.Deny {
		out.Status = plugins.DenyStatus(out.Decision, d.denyStatus)
		out.Body, out.Details = out.Decision.Body, DenyDetails
		if out.Policy == PolicyUnresolved && !res.OK() {
			out.Details = UnresolvedDetails
			if out.Body == "" {
				out.Body = UnresolvedBody
			}
		}
		if out.Body == "" {
			out.Body = DenyBody
		}
	}
	from := in.ResolvedFrom
	if from == "" {
		from = out.ResolvedFrom
	}
	d.log.Log(ctx, Decided{Door: door.Name, Peer: in.Peer, PeerAddr: in.PeerAddr, Resolution: res, ResolvedFrom: from,
		OriginalDst: in.OriginalDst, Deny: out.Deny, Policy: out.Policy})
	return out
}

// Refuse records a door's own refusal of a request before any decision
// (the native HTTP mode refuses what Envoy's connection manager refuses,
// as policy PolicyHTTPRefused), in the decision log.
func (d *Decider) Refuse(ctx context.Context, door *Door, in *Input, policy string) {
	d.log.Log(ctx, Decided{Door: door.Name, Peer: in.Peer, PeerAddr: in.PeerAddr, Resolution: in.Resolution, ResolvedFrom: in.ResolvedFrom,
		OriginalDst: in.OriginalDst, Deny: true, Policy: policy})
}

// WritableHeader reports whether a header a policy's decision adds may be
// written: on an allowed request (deny false) or on the deny answer. Never
// one Envoy would reject (plugins.ValidHeader), one that frames, routes
// or is hop-by-hop (CheckClientIPHeader's list), nor one realipd writes
// itself: the client-IP header on an allowed request, content-type on a
// deny.
func (d *Decider) WritableHeader(h plugins.Header, deny bool) bool {
	switch {
	case !plugins.ValidHeader(h), slices.Contains(unwritableHeaders, h.Name):
		return false
	case deny:
		return h.Name != "content-type"
	}
	return h.Name != d.clientIPHeader
}

// PolicyHTTPRefused names the refusal, by the native HTTP mode, of what
// Envoy's HTTP connection manager refuses before any filter runs (CONNECT,
// an upgrade other than WebSocket), in the decision log and the deny
// counters.
const PolicyHTTPRefused = "http_refused"

// Current holds the Decider in force. Every door that decides with the
// same Current sees a new Decider at the same instant.
type Current struct {
	p atomic.Pointer[Decider]
}

// NewCurrent returns a Current holding d.
func NewCurrent(d *Decider) *Current {
	c := &Current{}
	c.p.Store(d)
	return c
}

// Load returns the Decider in force, without holding its chain: for what
// does not run the policies.
func (c *Current) Load() *Decider { return c.p.Load() }

// Store makes d the Decider in force. The chain of the one it replaces is
// not closed: its owner retires it once Store has returned (Runtime.Swap
// does both).
func (c *Current) Store(d *Decider) { c.p.Store(d) }

// Acquire returns the Decider in force with its chain acquired
// (plugins.Chain.Acquire) when held is true: the caller releases it
// (Decider.Release) once the request is decided, so that the chain, if a
// reload retires it meanwhile, stays open until then. A chain without
// policies is not held. When the chain was retired just after this request
// loaded the Decider, Store had already stored its replacement (the owner
// retires a chain only after that), so loading again finds it (see the
// plugins package's retire.go). If the Decider in force still has the
// retired chain, its owner is shutting down: the request goes on with that
// chain unheld, and policies it has closed fail (their on_error applies).
func (c *Current) Acquire() (d *Decider, held bool) {
	d = c.p.Load()
	if !d.holdChain {
		return d, false
	}
	for !d.chain.Acquire() {
		next := c.p.Load()
		if next == d {
			return d, false
		}
		d = next
		if !d.holdChain {
			return d, false
		}
	}
	return d, true
}
