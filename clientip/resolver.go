package clientip

import (
	"fmt"
	"net/netip"
	"strings"
)

// Limits that bound the work on hostile input. When the header's lines add up
// to more than MaxHeaderBytes, there are more than MaxEntries lines, or a walk
// meets more than MaxEntries entries, resolution fails closed (ReasonTooLarge,
// no result); envoy_xff falls back to the peer instead, as it never gives "no
// result". MaxHeaderBytes is above Envoy's default 60 KiB request-header
// limit, so headers Envoy accepts are never cut short by it.
const (
	MaxHeaderBytes = 64 << 10
	MaxEntries     = 64
)

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
// trusted_cidrs believes they protect something.
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
	if s != RemoteAddr {
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
		add("trusted_cidrs", "not used by %s (only rightmost_trusted_range and envoy_xff)", s)
	}
	if cfg.TrustedHops != 0 && !usesHops {
		add("trusted_hops", "not used by %s (only rightmost_trusted_count and envoy_xff)", s)
	}
	if cfg.UseRemoteAddress && s != EnvoyXFF {
		add("use_remote_address", "not used by %s (only envoy_xff)", s)
	}
	for i, p := range cfg.TrustedCIDRs {
		if !p.IsValid() {
			add("trusted_cidrs", "entry %d is not a valid CIDR", i)
		}
	}
	switch s {
	case SingleHeader:
		if r.header == "x-forwarded-for" || r.header == "forwarded" {
			add("header", "%s is a list header; single_header needs a single-IP header such as X-Real-IP (use a rightmost_* strategy for lists)", cfg.Header)
		}
	case RightmostTrustedCount:
		if cfg.TrustedHops < 1 || cfg.TrustedHops > MaxEntries {
			add("trusted_hops", "%d is not valid for rightmost_trusted_count (need 1 to %d)", cfg.TrustedHops, MaxEntries)
		}
	case EnvoyXFF:
		if r.header != "x-forwarded-for" {
			add("header", "envoy_xff reads X-Forwarded-For only, not %s", cfg.Header)
		}
		if cfg.TrustedHops < 0 || cfg.TrustedHops > MaxEntries {
			add("trusted_hops", "%d is not valid for envoy_xff (need 0 to %d)", cfg.TrustedHops, MaxEntries)
		}
		if len(cfg.TrustedCIDRs) > 0 && (cfg.UseRemoteAddress || cfg.TrustedHops != 0) {
			add("trusted_cidrs", "cannot be combined with use_remote_address or trusted_hops (Envoy's xff extension takes either xff_trusted_cidrs or xff_num_trusted_hops)")
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

// Resolve returns the client IP for a request that arrived from peer
// ("ip:port", "[v6]:port", a bare IP, or anything else — "" or a unix socket
// path — for a non-IP peer) with lines being every line of Header(), in the
// order received. It does not allocate for common inputs.
func (r *Resolver) Resolve(peer string, lines []string) Result {
	return r.resolve(peer, lines, nil)
}

// Explain resolves like Resolve and records every step.
func (r *Resolver) Explain(peer string, lines []string) (Result, Explanation) {
	t := &trace{}
	res := r.resolve(peer, lines, t)
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
	}
	e.Detail = r.detail(res, e)
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

type peerState uint8

const (
	peerIsNotIP       peerState = iota // empty, a unix socket path, garbage
	peerIsUnspecified                  // 0.0.0.0 or ::
	peerIsIP
)

// parsePeer parses the peer address ("ip:port", "[v6]:port" or a bare IP).
func parsePeer(peer string) (netip.Addr, peerState) {
	ip, ok := parseNode(peer, false)
	if ok {
		return ip, peerIsIP
	}
	if peer != "" && (peer[0] == '[' || strings.Count(peer, ":") != 0 || strings.Count(peer, ".") == 3) {
		// Distinguish an unspecified peer from a non-IP one: parse without
		// the canonical check.
		host := peer
		if h, _, found := cutPort(peer); found {
			host = h
		}
		if a, err := netip.ParseAddr(host); err == nil && a.Unmap().IsUnspecified() {
			return netip.Addr{}, peerIsUnspecified
		}
	}
	return netip.Addr{}, peerIsNotIP
}

// cutPort splits "host:port" or "[v6]:port"; it is only used on the rare
// unspecified-peer path.
func cutPort(s string) (host, port string, ok bool) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", false
		}
		return s[1:end], strings.TrimPrefix(s[end+1:], ":"), true
	}
	if i := strings.LastIndexByte(s, ':'); i >= 0 && strings.IndexByte(s, ':') == i {
		return s[:i], s[i+1:], true
	}
	return s, "", false
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

// tooLarge reports whether the lines exceed the work limits.
func tooLarge(lines []string) bool {
	if len(lines) > MaxEntries {
		return true
	}
	n := 0
	for _, l := range lines {
		n += len(l)
	}
	return n > MaxHeaderBytes
}

func picked(ip netip.Addr, pos int) Result {
	return Result{IP: ip, Source: SourceHeader, Reason: ReasonPicked, Position: pos}
}

func noResult(reason Reason) Result { return Result{Reason: reason} }

func (r *Resolver) resolve(peer string, lines []string, t *trace) Result {
	switch r.cfg.Strategy {
	case RemoteAddr:
		ip, st := parsePeer(peer)
		if st != peerIsIP {
			return noResult(ReasonPeerNotIP)
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
	if len(raw) > MaxHeaderBytes {
		return noResult(ReasonTooLarge)
	}
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
	if tooLarge(lines) {
		return noResult(ReasonTooLarge)
	}
	var buf [64]byte
	it := newEntryIter(lines, r.kind)
	for raw, ok := it.next(); ok; raw, ok = it.next() {
		if it.pos > MaxEntries {
			return noResult(ReasonTooLarge)
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

func (r *Resolver) leftmostNonPrivate(lines []string, t *trace) Result {
	if tooLarge(lines) {
		return noResult(ReasonTooLarge)
	}
	// Collect the entries right to left, then walk them left to right.
	var raws [MaxEntries]string
	n := 0
	it := newEntryIter(lines, r.kind)
	for raw, ok := it.next(); ok; raw, ok = it.next() {
		if n == MaxEntries {
			return noResult(ReasonTooLarge)
		}
		raws[n] = raw
		n++
	}
	if n == 0 {
		return noResult(ReasonNoHeader)
	}
	var buf [64]byte
	for i := n - 1; i >= 0; i-- {
		if res, done := r.nonPrivateStep(raws[i], i+1, &buf, t); done {
			return res
		}
	}
	return noResult(ReasonNoPublicEntry)
}

// nonPrivateStep judges one entry for the *_non_private strategies: invalid
// and private entries are passed over.
func (r *Resolver) nonPrivateStep(raw string, pos int, buf *[64]byte, t *trace) (Result, bool) {
	ip, ok := r.entryIP(raw, buf)
	switch {
	case !ok:
		if t != nil {
			t.entry(pos, raw, netip.Addr{}, "invalid")
		}
		return Result{}, false
	case IsPrivate(ip):
		if t != nil {
			t.entry(pos, raw, ip, "private")
		}
		return Result{}, false
	}
	if t != nil {
		t.entry(pos, raw, ip, "picked")
	}
	return picked(ip, pos), true
}

func (r *Resolver) rightmostTrustedCount(lines []string, t *trace) Result {
	if tooLarge(lines) {
		return noResult(ReasonTooLarge)
	}
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
	case peerIsUnspecified:
		return noResult(ReasonPeerNotIP)
	case peerIsIP:
		trusted := r.trusted.Contains(peerIP)
		if t != nil {
			t.peer(trusted)
		}
		if !trusted {
			return Result{IP: peerIP, Source: SourcePeer, Reason: ReasonPeer}
		}
	}
	if tooLarge(lines) {
		return noResult(ReasonTooLarge)
	}
	w := r.walkTrusted(lines, r.kind, false, t)
	if w.reason == ReasonPicked {
		return picked(w.ip, w.pos)
	}
	return noResult(w.reason)
}

// trustedWalk is the outcome of walkTrusted.
type trustedWalk struct {
	reason   Reason     // ReasonPicked, ReasonInvalidEntry, ReasonAllTrusted, ReasonNoHeader or ReasonTooLarge
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
			w.reason = ReasonTooLarge
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
			return noResult(ReasonPeerNotIP)
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
	if len(lines) == 0 {
		return fallback(ReasonNoHeader)
	}
	if tooLarge(lines) {
		return fallback(ReasonTooLarge)
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
		return noResult(ReasonPeerNotIP)
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
	if tooLarge(lines) || countEntries(lines, kindXFF) > envoyMaxXFFEntries {
		return fallback(ReasonTooLarge)
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
func (r *Resolver) detail(res Result, e Explanation) string {
	hdr := r.cfg.Header
	switch res.Reason {
	case ReasonPicked:
		return fmt.Sprintf("picked %s, entry %d from the right of %s", e.ClientIP, res.Position, hdr)
	case ReasonPeer:
		if e.PeerTrusted != nil && !*e.PeerTrusted {
			return fmt.Sprintf("the peer %s is not a trusted proxy, so it is the client; %s is ignored", e.ClientIP, hdr)
		}
		return fmt.Sprintf("the peer %s is the client", e.ClientIP)
	case ReasonPeerNotIP:
		return fmt.Sprintf("the peer %q is not a usable IP address", e.Peer)
	case ReasonNoHeader:
		return withFallback(res, fmt.Sprintf("no %s header", hdr))
	case ReasonInvalidEntry:
		return withFallback(res, fmt.Sprintf("the deciding entry of %s is not a valid client IP", hdr))
	case ReasonAllTrusted:
		if res.OK() {
			return fmt.Sprintf("every entry of %s is trusted; Envoy takes the leftmost, %s", hdr, e.ClientIP)
		}
		return fmt.Sprintf("every entry of %s is trusted", hdr)
	case ReasonTooFewEntries:
		return withFallback(res, fmt.Sprintf("%s has fewer entries than trusted hops", hdr))
	case ReasonNoPublicEntry:
		return fmt.Sprintf("%s has no valid non-private entry", hdr)
	case ReasonTooLarge:
		return withFallback(res, fmt.Sprintf("%s exceeds the limits (%d bytes, %d entries%s): failing closed", hdr, MaxHeaderBytes, MaxEntries, envoyLimit(r)))
	}
	return "no result"
}

func envoyLimit(r *Resolver) string {
	if r.cfg.Strategy == EnvoyXFF && r.trusted.Len() > 0 {
		return fmt.Sprintf(", Envoy's %d for xff_trusted_cidrs", envoyMaxXFFEntries)
	}
	return ""
}

func withFallback(res Result, s string) string {
	if res.Source == SourcePeer {
		return s + "; falling back to the peer " + res.IP.String()
	}
	return s
}
