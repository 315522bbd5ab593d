package plugins

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// ErrorAction says what a Chain does when a policy's Decide returns an error.
type ErrorAction uint8

// Error actions. The zero value fails closed.
const (
	ErrorDeny  ErrorAction = iota // deny the request (fail closed)
	ErrorAllow                    // treat the policy as having allowed the request (fail open)
)

// String returns the configuration spelling ("deny" or "allow").
func (a ErrorAction) String() string {
	if a == ErrorAllow {
		return "allow"
	}
	return "deny"
}

// ParseErrorAction parses an on_error value: "allow", "deny", or "" (the
// default, deny).
func ParseErrorAction(s string) (ErrorAction, error) {
	switch s {
	case "", "deny":
		return ErrorDeny, nil
	case "allow":
		return ErrorAllow, nil
	}
	return ErrorDeny, fmt.Errorf("plugins: on_error %q: want allow or deny", s)
}

// ChainEntry is one named policy of a Chain.
type ChainEntry struct {
	Name    string
	Policy  Policy
	OnError ErrorAction
}

// Verdict is the outcome of a Chain. On allow its embedded Decision merges
// every policy's effects: Headers in policy order, Metadata with a later
// policy's key overriding an earlier one's. On deny it is the deciding
// policy's decision (status, body and Headers, which go on the deny
// response), except for Metadata: the fields of the policies that allowed
// before the deny are kept, the deciding policy's own fields overriding
// them, so that what earlier policies learnt about the request (tags,
// labels) shows next to the deny. Headers of the earlier policies were meant
// for the upstream request and are dropped.
type Verdict struct {
	Decision
	// Policy names the policy that denied the request; "" when allowed.
	Policy string
	// Err is the first error a policy returned (its on_error action was
	// applied), with the policy's name; nil when every policy answered.
	Err error
	// ErrPolicy names the policy that returned Err.
	ErrPolicy string
}

// Chain evaluates named policies in order; the first deny wins. Its
// policies are fixed at NewChain, and it is safe for concurrent use. A nil or
// empty Chain allows every request.
//
// The Chain does not impose deadlines of its own: every policy receives the
// caller's ctx and must honour it. In-process policies (such as CIDR) never
// block; the out-of-process plugin host enforces its own per-call deadline
// (the policy's configured timeout) and returns an error when it passes, which
// the Chain then handles with the entry's ErrorAction. When ctx is already
// done before a policy is asked, the Chain treats that policy as failed
// without calling it.
//
// RequestHeaders tells which request headers the policies read (see
// HeaderInputs).
//
// A Chain that is replaced while serving (a configuration reload) must not
// be closed under requests still deciding on it: callers bracket each
// request with Acquire and Release, and the owner retires the replaced
// chain with Retire, which closes it when its last holder is done. Close
// closes at once.
type Chain struct {
	entries []ChainEntry
	// headerPolicies are the entries' policies that implement HeaderInputs,
	// in order; headers is the union of their last answers.
	headerPolicies []HeaderInputs
	headers        atomic.Pointer[headerUnion]
	// immediate: every policy implements Immediate.
	immediate bool

	// refs counts the holders (Acquire) and carries retiredBit (see
	// retire.go).
	refs      atomic.Int64
	closing   atomic.Bool // closing has started (closePolicies runs or ran)
	closeOnce sync.Once
	mu        sync.Mutex // guards the fields below
	done      chan struct{}
	closed    bool
	closeErr  error
}

// headerUnion is the union of the headerPolicies' answers; immutable.
type headerUnion struct {
	seen  []headerDecl // each headerPolicies entry's answer the union was built from
	names []string     // lower-case, sorted, unique
	all   bool
}

// headerDecl is one HeaderInputs answer.
type headerDecl struct {
	names []string
	all   bool
}

// NewChain builds a Chain. Names must be non-empty and unique and every entry
// needs a Policy.
func NewChain(entries ...ChainEntry) (*Chain, error) {
	seen := make(map[string]bool, len(entries))
	for i, e := range entries {
		if e.Name == "" {
			return nil, fmt.Errorf("plugins: chain entry %d: empty name", i)
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("plugins: chain entry %d: duplicate name %q", i, e.Name)
		}
		seen[e.Name] = true
		if e.Policy == nil {
			return nil, fmt.Errorf("plugins: chain entry %q: nil policy", e.Name)
		}
		if e.OnError != ErrorDeny && e.OnError != ErrorAllow {
			return nil, fmt.Errorf("plugins: chain entry %q: invalid on_error %d", e.Name, e.OnError)
		}
	}
	c := &Chain{entries: append([]ChainEntry(nil), entries...), immediate: true}
	for _, e := range c.entries {
		if _, ok := e.Policy.(Immediate); !ok {
			c.immediate = false
		}
		if hi, ok := e.Policy.(HeaderInputs); ok {
			c.headerPolicies = append(c.headerPolicies, hi)
		}
	}
	if len(c.headerPolicies) > 0 {
		c.rebuildHeaders()
	}
	return c, nil
}

// ReadsHeaders reports whether some policy implements HeaderInputs, that is
// whether RequestHeaders can ever return a header. It is fixed for a Chain.
func (c *Chain) ReadsHeaders() bool {
	return c != nil && len(c.headerPolicies) > 0
}

// RequestHeaders returns the union of the request headers the policies read
// (HeaderInputs; lower-case, sorted, unique) and whether some policy reads
// them all. The answer follows the policies' current answers: a plugin
// restarted with other declared inputs is honoured from its next request on.
// It does not allocate unless a policy's answer changed since the last call.
// The returned slice must not be modified.
func (c *Chain) RequestHeaders() (names []string, all bool) {
	if c == nil || len(c.headerPolicies) == 0 {
		return nil, false
	}
	u := c.headers.Load()
	for i, p := range c.headerPolicies {
		n, a := p.RequestHeaders()
		if a != u.seen[i].all || !slices.Equal(n, u.seen[i].names) {
			u = c.rebuildHeaders()
			break
		}
	}
	return u.names, u.all
}

// rebuildHeaders asks every HeaderInputs policy again and publishes the
// union. Concurrent rebuilds are harmless: each publishes a union of answers
// it saw.
func (c *Chain) rebuildHeaders() *headerUnion {
	u := &headerUnion{seen: make([]headerDecl, len(c.headerPolicies))}
	for i, p := range c.headerPolicies {
		n, a := p.RequestHeaders()
		u.seen[i] = headerDecl{names: n, all: a}
		u.all = u.all || a
		for _, name := range n {
			if name = strings.ToLower(name); name != "" {
				u.names = append(u.names, name)
			}
		}
	}
	slices.Sort(u.names)
	u.names = slices.Compact(u.names)
	c.headers.Store(u)
	return u
}

// Immediate reports whether every policy of the chain answers from memory
// (Immediate), so that Decide never waits; an empty (nil) chain does.
func (c *Chain) Immediate() bool {
	return c == nil || c.immediate
}

// Len returns the number of policies.
func (c *Chain) Len() int {
	if c == nil {
		return 0
	}
	return len(c.entries)
}

// Names returns the policy names in evaluation order.
func (c *Chain) Names() []string {
	if c == nil {
		return nil
	}
	names := make([]string, len(c.entries))
	for i, e := range c.entries {
		names[i] = e.Name
	}
	return names
}

// errCanceled wraps a done context so it reads as a policy error.
var errCanceled = errors.New("plugins: not asked: context done")

// Decide runs the policies in order. The first deny ends the walk and becomes
// the verdict (Policy names it), keeping the Metadata of the policies that
// allowed before it (see Verdict). When every policy allows, the verdict
// allows and carries the merged Headers (in policy order) and Metadata (a
// later policy's key overrides an earlier one's). A policy error applies the
// entry's OnError: deny ends the walk as a deny by that policy (with no
// status, body or headers, so the caller's defaults apply); allow continues.
// Decide never modifies a Decision's Headers or Metadata (a cached decision
// may share them) and does not allocate when every policy allows without
// effects.
func (c *Chain) Decide(ctx context.Context, req *Request) Verdict {
	var v Verdict
	if c == nil {
		return v
	}
	var ownHeaders, ownMeta bool // whether v's slices/maps are ours to append to
	for i := range c.entries {
		e := &c.entries[i]
		var (
			d   Decision
			err error
		)
		if ctx.Err() != nil {
			err = errCanceled
		} else {
			d, err = e.Policy.Decide(ctx, req)
		}
		if err != nil {
			if v.Err == nil {
				v.Err = fmt.Errorf("plugins: policy %q: %w", e.Name, err)
				v.ErrPolicy = e.Name
			}
			if e.OnError == ErrorAllow {
				continue
			}
			return Verdict{Decision: Decision{Deny: true, Metadata: v.Metadata}, Policy: e.Name, Err: v.Err, ErrPolicy: v.ErrPolicy}
		}
		if d.Deny {
			d.Metadata = mergeMetadata(v.Metadata, d.Metadata)
			return Verdict{Decision: d, Policy: e.Name, Err: v.Err, ErrPolicy: v.ErrPolicy}
		}
		if len(d.Headers) > 0 {
			switch {
			case len(v.Headers) == 0:
				v.Headers = d.Headers
			case !ownHeaders:
				v.Headers = append(append(make([]Header, 0, len(v.Headers)+len(d.Headers)), v.Headers...), d.Headers...)
				ownHeaders = true
			default:
				v.Headers = append(v.Headers, d.Headers...)
			}
		}
		if len(d.Metadata) > 0 {
			switch {
			case len(v.Metadata) == 0:
				v.Metadata = d.Metadata
			case !ownMeta:
				m := make(map[string]string, len(v.Metadata)+len(d.Metadata))
				maps.Copy(m, v.Metadata)
				maps.Copy(m, d.Metadata)
				v.Metadata = m
				ownMeta = true
			default:
				maps.Copy(v.Metadata, d.Metadata)
			}
		}
	}
	return v
}

// mergeMetadata returns earlier's fields overridden by later's, reusing
// either map when the other is empty; it modifies neither.
func mergeMetadata(earlier, later map[string]string) map[string]string {
	switch {
	case len(earlier) == 0:
		return later
	case len(later) == 0:
		return earlier
	}
	m := make(map[string]string, len(earlier)+len(later))
	maps.Copy(m, earlier)
	maps.Copy(m, later)
	return m
}
