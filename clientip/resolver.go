package clientip

import (
	"fmt"
	"net/netip"
	"strings"
)

// MaxEntries bounds the work on hostile input: a strategy examines at most
// this many entries of the header, counted from where it starts reading (the
// right for the rightmost strategies, the left for leftmost_non_private).
// A walk that would go further fails closed (ReasonBound, no result). The
// bound never applies to the header as a whole, so nothing a client writes
// beyond the entries a strategy examines (to the left of the decisive entry,
// for the rightmost strategies) can change the answer. Splitting entries
// never allocates, and the work stays linear in the part of the header
// that is read.
const MaxEntries = 64

// envoyMaxXFFEntries is Envoy's limit in the xff_trusted_cidrs walk.
const envoyMaxXFFEntries = 20

// Resolver resolves client IPs with one fixed Config. It is immutable and safe
// for concurrent use.
type Resolver struct {
	cfg     Config
	header  string // lower-case header name
	kind    listKind
	trusted PrefixSet
}

// ConfigError lists every problem New found in a Config, by field.
type ConfigError struct {
	Fields []FieldError
}

// FieldError is one problem with one Config field. Field is the
// configuration key: strategy, header, trusted_cidrs, trusted_hops or
// use_remote_address.
type FieldError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString("clientip: invalid config: ")
	for i, f := range e.Fields {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(f.Field)
		b.WriteString(": ")
		b.WriteString(f.Reason)
	}
	return b.String()
}

// New checks cfg and builds a Resolver. Settings a strategy does not use are
// errors rather than silently ignored, since an operator who sets
// trusted_cidrs believes they protect something; zero values (no CIDRs, 0
// hops, use_remote_address false) are "not set". It is the one place these
// rules live: the configuration file's checks report New's errors under
// their key paths.
func New(cfg Config) (*Resolver, error) {
	var errs []FieldError
	add := func(field, format string, args ...any) {
		errs = append(errs, FieldError{field, fmt.Sprintf(format, args...)})
	}
	s := cfg.Strategy
	if s < RemoteAddr || s > EnvoyXFF {
		add("strategy", "unknown strategy %d (one of %s)", s, strings.Join(StrategyNames(), ", "))
		return nil, &ConfigError{errs}
	}
	r := &Resolver{cfg: cfg}
	if s == RemoteAddr {
		r.cfg.Header = "" // remote_addr reads no header
	} else {
		if cfg.Header == "" {
			cfg.Header = "X-Forwarded-For"
			r.cfg.Header = cfg.Header
		}
		if !isToken(cfg.Header) {
			add("header", "%q is not a valid header name", cfg.Header)
		}
		r.header = strings.ToLower(cfg.Header)
		if r.header == "forwarded" {
			r.kind = kindForwarded
		}
	}
	usesCIDRs := s == RightmostTrustedRange || s == EnvoyXFF
	usesHops := s == RightmostTrustedCount || s == EnvoyXFF
	if len(cfg.TrustedCIDRs) > 0 && !usesCIDRs {
		add("trusted_cidrs", "not used by %s (only by rightmost_trusted_range and envoy_xff)", s)
	}
	if cfg.TrustedHops != 0 && !usesHops {
		add("trusted_hops", "not used by %s (only by rightmost_trusted_count and envoy_xff)", s)
	}
	if cfg.UseRemoteAddress && s != EnvoyXFF {
		add("use_remote_address", "not used by %s (only by envoy_xff)", s)
	}
	for i, p := range cfg.TrustedCIDRs {
		if !p.IsValid() {
			add("trusted_cidrs", "entry %d is not a valid CIDR", i)
		}
	}
	switch s {
	case SingleHeader:
		if r.header == "x-forwarded-for" || r.header == "forwarded" {
			add("header", "single_header cannot read %s, a list of hops; name a header that a trusted proxy overwrites with one IP (X-Real-IP, True-Client-IP, CF-Connecting-IP...) or use a list strategy", cfg.Header)
		}
	case RightmostTrustedCount:
		switch {
		case cfg.TrustedHops < 1:
			add("trusted_hops", "%d is not valid for rightmost_trusted_count (need >= 1)", cfg.TrustedHops)
		case cfg.TrustedHops > MaxEntries:
			add("trusted_hops", "%d is more than the %d entries a strategy examines", cfg.TrustedHops, MaxEntries)
		}
	case EnvoyXFF:
		if r.header != "x-forwarded-for" {
			add("header", "envoy_xff reads X-Forwarded-For only, as Envoy does, not %s", cfg.Header)
		}
		switch {
		case cfg.TrustedHops < 0:
			add("trusted_hops", "%d is not valid for envoy_xff (need >= 0)", cfg.TrustedHops)
		case cfg.TrustedHops > MaxEntries:
			add("trusted_hops", "%d is more than the %d entries a strategy examines", cfg.TrustedHops, MaxEntries)
		}
		if len(cfg.TrustedCIDRs) > 0 && (cfg.UseRemoteAddress || cfg.TrustedHops != 0) {
			add("trusted_cidrs", "cannot be combined with trusted_hops or use_remote_address: envoy_xff emulates either Envoy's xff extension (trusted_cidrs) or use_remote_address with xff_num_trusted_hops (0 and false mean not set, as in Envoy)")
		}
	}
	if len(errs) > 0 {
		return nil, &ConfigError{errs}
	}
	r.trusted = NewPrefixSet(cfg.TrustedCIDRs)
	return r, nil
}

// Strategy returns the configured strategy.
func (r *Resolver) Strategy() Strategy { return r.cfg.Strategy }

// Config returns the configuration the resolver was built with (with the
// default header filled in).
func (r *Resolver) Config() Config { return r.cfg }

// Header returns the lower-case name of the header the resolver reads, or ""
// for remote_addr. Callers collect that header's lines (in order) for Resolve.
func (r *Resolver) Header() string { return r.header }

// Resolve returns what the strategy alone makes of a request that arrived
// from peer ("ip:port", "[v6]:port", a bare IP, or anything else — "" or a
// unix socket path — for a non-IP peer) with lines being every line of
// Header(), in the order received. It does not allocate for common inputs.
// Servers use Client, which adds the rule for when the peer stands in.
func (r *Resolver) Resolve(peer string, lines []string) Result {
	return r.resolve(peer, lines, nil)
}

// Client is the client IP realipd acts on: Resolve's answer, or the peer
// standing in when the strategy found no entry to pick for a reason that
// still identifies the client — the request carries no forwarding header
// at all (the trusted peer sent it itself: ReasonNoHeader) or every entry
// is trusted (ReasonAllTrusted). Any other failure — an invalid decisive
// entry, a bound exceeded, no usable peer, too few entries, no public entry
// — is unresolved: a Result without IP, never the peer, since the peer is
// then a trusted proxy and judging it would judge the proxy. Resolve's
// reason is kept either way. It does not allocate for common inputs.
func (r *Resolver) Client(peer string, lines []string) Result {
	return standIn(r.resolve(peer, lines, nil), peer)
}

// PeerStandsIn reports whether, for a resolution that ended with reason,
// Client takes the peer as the client.
func PeerStandsIn(reason Reason) bool {
	return reason == ReasonNoHeader || reason == ReasonAllTrusted
}

// standIn applies Client's rule to a strategy's result. envoy_xff falls back
// to the peer as Envoy does; when it does so for any reason but an
// untrusted peer, no header or every entry trusted, the peer is a trusted
// proxy, and the result is unresolved instead (Envoy would judge the proxy).
func standIn(res Result, peer string) Result {
	if res.OK() {
		if res.Source == SourcePeer && res.Reason != ReasonPeer && !PeerStandsIn(res.Reason) {
			return Result{Reason: res.Reason}
		}
		return res
	}
	if !PeerStandsIn(res.Reason) {
		return res
	}
	if ip, st := parsePeer(peer); st == peerIsIP {
		res.IP, res.Source, res.Position = ip, SourcePeer, 0
	}
	return res
}

// Explain resolves like Client and records every step.
func (r *Resolver) Explain(peer string, lines []string) (Result, Explanation) {
	t := &trace{}
	raw := r.resolve(peer, lines, t)
	res := standIn(raw, peer)
	e := Explanation{
		Strategy:     r.cfg.Strategy.String(),
		Header:       r.cfg.Header,
		Peer:         peer,
		PeerTrusted:  t.peerTrusted,
		Entries:      t.entries,
		ResolvedFrom: res.Source.String(),
		Reason:       res.Reason.String(),
	}
	if e.Entries == nil {
		e.Entries = []EntryVerdict{}
	}
	if res.OK() {
		e.ClientIP = res.IP.String()
	} else {
		e.ResolvedFrom = "none"
	}
	e.Detail = r.detail(raw, res, e)
	return res, e
}

// trace records the steps of a resolution for Explain.
type trace struct {
	entries     []EntryVerdict
	peerTrusted *bool
}

func (t *trace) entry(pos int, raw string, ip netip.Addr, verdict string) {
	v := EntryVerdict{Position: pos, Raw: trimOWS(raw), Verdict: verdict}
	if ip.IsValid() {
		v.IP = ip.String()
	}
	t.entries = append(t.entries, v)
}

func (t *trace) peer(trusted bool) { t.peerTrusted = &trusted }

// fromLeft turns the positions of entries recorded by a left-to-right walk
// (-k for the k-th entry from the left) into positions from the right, the
// header having total entries.
func (t *trace) fromLeft(total int) {
	for i := range t.entries {
		if p := t.entries[i].Position; p < 0 {
			t.entries[i].Position = total + p + 1
		}
	}
}

type peerState uint8

const (
	peerIsPipe     peerState = iota // "" or a unix socket path ("/path", "@abstract"): no IP, and no verdict on trust
	peerIsUnusable                  // 0.0.0.0, ::, or anything else that is not an IP address
	peerIsIP
)

// parsePeer parses the peer address ("ip:port", "[v6]:port" or a bare IP).
// Only "" and unix socket paths are pipes; anything else that is not an IP
// is unusable, so that a malformed peer never passes for a trusted one.
func parsePeer(peer string) (netip.Addr, peerState) {
	if ip, ok := parseNode(peer, false); ok {
		return ip, peerIsIP
	}
	if peer == "" || peer[0] == '/' || peer[0] == '@' {
		return netip.Addr{}, peerIsPipe
	}
	return netip.Addr{}, peerIsUnusable
}

// entryIP parses one raw entry of the configured header.
func (r *Resolver) entryIP(raw string, buf *[64]byte) (netip.Addr, bool) {
	switch {
	case r.cfg.Strategy == EnvoyXFF:
		return parseBareIP(raw)
	case r.kind == kindForwarded:
		node, ok := forwardedFor(raw, buf)
		if !ok {
			return netip.Addr{}, false
		}
		return forwardedNode(node)
	default:
		return parseNode(raw, false)
	}
}

// blank reports whether every line is empty or white space. It stops at the
// first line that is not, usually the first.
func blank(lines []string) bool {
	for _, l := range lines {
		if trimOWS(l) != "" {
			return false
		}
	}
	return true
}

func picked(ip netip.Addr, pos int) Result {
	return Result{IP: ip, Source: SourceHeader, Reason: ReasonPicked, Position: pos}
}

func noResult(reason Reason) Result { return Result{Reason: reason} }

func (r *Resolver) resolve(peer string, lines []string, t *trace) Result {
	if blank(lines) {
		lines = nil // a header with nothing in it is no header
	}
	switch r.cfg.Strategy {
	case RemoteAddr:
		ip, st := parsePeer(peer)
		if st != peerIsIP {
			return noResult(ReasonNoPeer)
		}
		return Result{IP: ip, Source: SourcePeer, Reason: ReasonPeer}
	case SingleHeader:
		return r.singleHeader(lines, t)
	case LeftmostNonPrivate:
		return r.leftmostNonPrivate(lines, t)
	case RightmostNonPrivate:
		return r.rightmostNonPrivate(lines, t)
	case RightmostTrustedCount:
		return r.rightmostTrustedCount(lines, t)
	case RightmostTrustedRange:
		return r.rightmostTrustedRange(peer, lines, t)
	case EnvoyXFF:
		if r.trusted.Len() > 0 {
			return r.envoyTrustedCIDRs(peer, lines, t)
		}
		return r.envoyTrustedHops(peer, lines, t)
	}
	return noResult(ReasonNone)
}

func (r *Resolver) singleHeader(lines []string, t *trace) Result {
	if len(lines) == 0 {
		return noResult(ReasonNoHeader)
	}
	raw := lines[len(lines)-1]
	ip, ok := parseNode(raw, false)
	if !ok {
		if t != nil {
			t.entry(1, raw, netip.Addr{}, "invalid")
		}
		return noResult(ReasonInvalidEntry)
	}
	if t != nil {
		t.entry(1, raw, ip, "picked")
	}
	return picked(ip, 1)
}

func (r *Resolver) rightmostNonPrivate(lines []string, t *trace) Result {
	var buf [64]byte
	it := newEntryIter(lines, r.kind)
	for raw, ok := it.next(); ok; raw, ok = it.next() {
		if it.pos > MaxEntries {
			return noResult(ReasonBound)
		}
		if res, done := r.nonPrivateStep(raw, it.pos, &buf, t); done {
			return res
		}
	}
	if it.pos == 0 {
		return noResult(ReasonNoHeader)
	}
	return noResult(ReasonNoPublicEntry)
}

// leftmostNonPrivate walks the entries left to right. Its bound counts from
// the left, where it starts reading; the picked entry's Position is still
// counted from the right, so the rest of the header is counted (without
// being parsed) once an entry is picked.
func (r *Resolver) leftmostNonPrivate(lines []string, t *trace) Result {
	var buf [64]byte
	it := newLeftIter(lines, r.kind)
	for raw, ok := it.next(); ok; raw, ok = it.next() {
		if it.pos > MaxEntries {
			if t != nil {
				t.fromLeft(it.count())
			}
			return noResult(ReasonBound)
		}
		ip, ok := r.nonPrivateIP(raw, &buf)
		if !ok {
			if t != nil {
				t.entry(-it.pos, raw, ip, verdictOf(ip))
			}
			continue
		}
		left := it.pos
		total := it.count()
		if t != nil {
			t.entry(-left, raw, ip, "picked")
			t.fromLeft(total)
		}
		return picked(ip, total-left+1)
	}
	if t != nil {
		t.fromLeft(it.pos)
	}
	if it.pos == 0 {
		return noResult(ReasonNoHeader)
	}
	return noResult(ReasonNoPublicEntry)
}

// nonPrivateIP parses one entry for the *_non_private strategies: ok is
// false for an invalid entry (ip invalid) and for a private one (ip valid).
func (r *Resolver) nonPrivateIP(raw string, buf *[64]byte) (netip.Addr, bool) {
	ip, ok := r.entryIP(raw, buf)
	if !ok {
		return netip.Addr{}, false
	}
	return ip, !IsPrivate(ip)
}

// verdictOf names why nonPrivateIP passed over an entry.
func verdictOf(ip netip.Addr) string {
	if ip.IsValid() {
		return "private"
	}
	return "invalid"
}

// nonPrivateStep judges one entry for rightmost_non_private: invalid and
// private entries are passed over.
func (r *Resolver) nonPrivateStep(raw string, pos int, buf *[64]byte, t *trace) (Result, bool) {
	ip, ok := r.nonPrivateIP(raw, buf)
	if !ok {
		if t != nil {
			t.entry(pos, raw, ip, verdictOf(ip))
		}
		return Result{}, false
	}
	if t != nil {
		t.entry(pos, raw, ip, "picked")
	}
	return picked(ip, pos), true
}

// rightmostTrustedCount examines at most TrustedHops (<= MaxEntries)
// entries, so it needs no further bound.
func (r *Resolver) rightmostTrustedCount(lines []string, t *trace) Result {
	n := r.cfg.TrustedHops
	it := newEntryIter(lines, r.kind)
	for raw, ok := it.next(); ok; raw, ok = it.next() {
		if it.pos < n {
			if t != nil {
				t.entry(it.pos, raw, netip.Addr{}, "skipped")
			}
			continue
		}
		var buf [64]byte
		ip, valid := r.entryIP(raw, &buf)
		if !valid {
			if t != nil {
				t.entry(it.pos, raw, netip.Addr{}, "invalid")
			}
			return noResult(ReasonInvalidEntry)
		}
		if t != nil {
			t.entry(it.pos, raw, ip, "picked")
		}
		return picked(ip, it.pos)
	}
	if it.pos == 0 {
		return noResult(ReasonNoHeader)
	}
	return noResult(ReasonTooFewEntries)
}

func (r *Resolver) rightmostTrustedRange(peer string, lines []string, t *trace) Result {
	peerIP, st := parsePeer(peer)
	switch st {
	case peerIsUnusable:
		return noResult(ReasonNoPeer)
	case peerIsIP:
		trusted := r.trusted.Contains(peerIP)
		if t != nil {
			t.peer(trusted)
		}
		if !trusted {
			return Result{IP: peerIP, Source: SourcePeer, Reason: ReasonPeer}
		}
	}
	w := r.walkTrusted(lines, r.kind, false, t)
	if w.reason == ReasonPicked {
		return picked(w.ip, w.pos)
	}
	return noResult(w.reason)
}

// trustedWalk is the outcome of walkTrusted.
type trustedWalk struct {
	reason   Reason     // ReasonPicked, ReasonInvalidEntry, ReasonAllTrusted, ReasonNoHeader or ReasonBound
	ip       netip.Addr // ReasonPicked: the first untrusted entry
	pos      int
	leftmost netip.Addr // ReasonAllTrusted: the leftmost (trusted) entry
	leftPos  int
}

// walkTrusted walks the entries right to left past those inside the trusted
// CIDRs. It stops at the first untrusted entry (picked), at an invalid one
// (which keeps its slot: nothing left of it is read), or at the left end.
// With bare, entries are parsed as Envoy does (no ports, no brackets).
func (r *Resolver) walkTrusted(lines []string, kind listKind, bare bool, t *trace) trustedWalk {
	var w trustedWalk
	var buf [64]byte
	it := newEntryIter(lines, kind)
	for raw, ok := it.next(); ok; raw, ok = it.next() {
		if it.pos > MaxEntries {
			w.reason = ReasonBound
			return w
		}
		var ip netip.Addr
		var valid bool
		if bare {
			ip, valid = parseBareIP(raw)
		} else {
			ip, valid = r.entryIP(raw, &buf)
		}
		if !valid {
			if t != nil {
				t.entry(it.pos, raw, netip.Addr{}, "invalid")
			}
			w.reason = ReasonInvalidEntry
			return w
		}
		if r.trusted.Contains(ip) {
			if t != nil {
				t.entry(it.pos, raw, ip, "trusted")
			}
			w.leftmost, w.leftPos = ip, it.pos
			continue
		}
		if t != nil {
			t.entry(it.pos, raw, ip, "picked")
		}
		w.reason, w.ip, w.pos = ReasonPicked, ip, it.pos
		return w
	}
	if it.pos == 0 {
		w.reason = ReasonNoHeader
	} else {
		w.reason = ReasonAllTrusted
	}
	return w
}

// envoyTrustedHops reproduces the HTTP connection manager's
// use_remote_address + xff_num_trusted_hops computation: positional, bare
// IPs, falling back to the peer.
func (r *Resolver) envoyTrustedHops(peer string, lines []string, t *trace) Result {
	peerIP, st := parsePeer(peer)
	fallback := func(reason Reason) Result {
		if st != peerIsIP {
			return noResult(ReasonNoPeer)
		}
		return Result{IP: peerIP, Source: SourcePeer, Reason: reason}
	}
	n := r.cfg.TrustedHops
	if r.cfg.UseRemoteAddress {
		if n == 0 {
			return fallback(ReasonPeer)
		}
		n-- // the n-th entry from the right of the XFF the peer sent
	}
	// n entries are skipped; the (n+1)-th from the right is the client.
	// At most n+1 <= MaxEntries+1 entries are examined.
	if len(lines) == 0 {
		return fallback(ReasonNoHeader)
	}
	it := newEntryIter(lines, kindXFF)
	for raw, ok := it.next(); ok; raw, ok = it.next() {
		if it.pos <= n {
			if t != nil {
				t.entry(it.pos, raw, netip.Addr{}, "skipped")
			}
			continue
		}
		ip, valid := parseBareIP(raw)
		if !valid {
			if t != nil {
				t.entry(it.pos, raw, netip.Addr{}, "invalid")
			}
			return fallback(ReasonInvalidEntry)
		}
		if t != nil {
			t.entry(it.pos, raw, ip, "picked")
		}
		return picked(ip, it.pos)
	}
	return fallback(ReasonTooFewEntries)
}

// envoyTrustedCIDRs reproduces Envoy's xff original-IP-detection extension
// with xff_trusted_cidrs.
func (r *Resolver) envoyTrustedCIDRs(peer string, lines []string, t *trace) Result {
	peerIP, st := parsePeer(peer)
	if st != peerIsIP {
		return noResult(ReasonNoPeer)
	}
	fallback := func(reason Reason) Result {
		return Result{IP: peerIP, Source: SourcePeer, Reason: reason}
	}
	trusted := r.trusted.Contains(peerIP)
	if t != nil {
		t.peer(trusted)
	}
	if !trusted {
		return fallback(ReasonPeer)
	}
	if len(lines) == 0 {
		return fallback(ReasonNoHeader)
	}
	// Envoy's own bound, on the whole header (unlike realipd's): more than
	// 20 entries and it falls back to the peer. Counting is linear and
	// allocation-free.
	if countEntries(lines, kindXFF) > envoyMaxXFFEntries {
		return fallback(ReasonBound)
	}
	w := r.walkTrusted(lines, kindXFF, true, t)
	switch w.reason {
	case ReasonPicked:
		return picked(w.ip, w.pos)
	case ReasonAllTrusted:
		// Every entry is trusted: Envoy takes the leftmost.
		if t != nil && len(t.entries) > 0 {
			t.entries[len(t.entries)-1].Verdict = "picked"
		}
		return Result{IP: w.leftmost, Source: SourceHeader, Reason: ReasonAllTrusted, Position: w.leftPos}
	}
	return fallback(w.reason)
}

// detail is the one-sentence summary of an explanation.
func (r *Resolver) detail(raw, res Result, e Explanation) string {
	hdr := r.cfg.Header
	var d string
	switch res.Reason {
	case ReasonPicked:
		return fmt.Sprintf("picked %s, entry %d from the right of %s", e.ClientIP, res.Position, hdr)
	case ReasonPeer:
		if e.PeerTrusted != nil && !*e.PeerTrusted {
			return fmt.Sprintf("the peer %s is not a trusted proxy, so it is the client; %s is ignored", e.ClientIP, hdr)
		}
		return fmt.Sprintf("the peer %s is the client", e.ClientIP)
	case ReasonNoPeer:
		d = fmt.Sprintf("the peer %q is not a usable IP address", e.Peer)
	case ReasonNoHeader:
		d = fmt.Sprintf("no %s header", hdr)
		if res.Source == SourcePeer {
			return d + "; the peer " + res.IP.String() + " sent the request itself and is the client"
		}
	case ReasonInvalidEntry:
		d = fmt.Sprintf("the deciding entry of %s is not a valid client IP", hdr)
	case ReasonAllTrusted:
		switch {
		case res.Source == SourceHeader:
			return fmt.Sprintf("every entry of %s is trusted; Envoy takes the leftmost, %s", hdr, e.ClientIP)
		case res.Source == SourcePeer:
			return fmt.Sprintf("every entry of %s is trusted; the peer %s stands in as the client", hdr, e.ClientIP)
		}
		d = fmt.Sprintf("every entry of %s is trusted", hdr)
	case ReasonTooFewEntries:
		d = fmt.Sprintf("%s has fewer entries than trusted hops", hdr)
	case ReasonNoPublicEntry:
		d = fmt.Sprintf("%s has no valid non-private entry", hdr)
	case ReasonBound:
		if r.cfg.Strategy == EnvoyXFF {
			d = fmt.Sprintf("%s has more than the %d entries Envoy's xff_trusted_cidrs walk accepts", hdr, envoyMaxXFFEntries)
		} else {
			d = fmt.Sprintf("the walk over %s would examine more than %d entries", hdr, MaxEntries)
		}
	default:
		d = "no result"
	}
	if raw.Source == SourcePeer {
		return d + "; Envoy would fall back to the peer " + raw.IP.String() + ", a trusted proxy, so the client IP is unresolved"
	}
	return d + "; the client IP is unresolved"
}
