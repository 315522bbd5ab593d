package extproc

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/plugins"
)

// Defaults of Settings fields left empty.
const (
	DefaultClientIPHeader    = "x-real-ip"
	DefaultMetadataNamespace = "realipd"
	DefaultDenyStatus        = 403
)

// denyBody is the ImmediateResponse body when the deciding policy gives none.
const denyBody = "access denied\n"

// denyDetails is ImmediateResponse.details (Envoy's %RESPONSE_CODE_DETAILS%);
// Envoy wants no whitespace there.
const denyDetails = "realipd_policy_denied"

// Values of the resolved_from metadata field.
const (
	resolvedHeader = "header"
	resolvedPeer   = "peer"
	resolvedNone   = "none"
)

// passThrough holds the serialized pass-through answer of each phase: the
// matching oneof member with an empty body, meaning "continue unchanged".
var passThrough = func() [phaseResponseTrailers + 1][]byte {
	var out [phaseResponseTrailers + 1][]byte
	msgs := map[phase]*extprocv3.ProcessingResponse{
		phaseRequestHeaders:   {Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}},
		phaseResponseHeaders:  {Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}},
		phaseRequestBody:      {Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}},
		phaseResponseBody:     {Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}},
		phaseRequestTrailers:  {Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}},
		phaseResponseTrailers: {Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}},
	}
	for p, m := range msgs {
		b, err := proto.Marshal(m)
		if err != nil {
			panic("extproc: marshal pass-through response: " + err.Error())
		}
		out[p] = b
	}
	return out
}()

// state is one immutable set of runtime settings; Update swaps it atomically.
type state struct {
	resolver       *clientip.Resolver
	strategy       clientip.Strategy
	strategyName   string
	header         string // lower-case header the resolver reads ("" for remote_addr)
	trimXFF        bool   // remove Envoy's appended X-Forwarded-For entry first
	passUnresolved bool   // trust.on_unresolved: pass (else deny)
	chain          *plugins.Chain
	holdChain      bool // chain has policies: messages acquire it (see acquire)
	policyHeaders  bool // some policy of chain reads request headers (plugins.HeaderInputs)
	clientIPHeader string
	namespace      string
	denyStatus     int
	allowCount     prometheus.Counter
	denyCount      map[string]prometheus.Counter // by deciding policy: the chain's and trust.on_unresolved
}

// denied returns the deny counter of policy.
func (s *Server) denied(st *state, policy string) prometheus.Counter {
	if c, ok := st.denyCount[policy]; ok {
		return c
	}
	// A Chain names only its own policies: this is not reached.
	return s.m.requests.WithLabelValues("deny", st.strategyName, policy)
}

// handle answers one serialized ProcessingRequest msg by filling out; it
// reports false when the message gets no answer (observability mode, or a
// message carrying no phase, which only flow-control updates do and realipd
// never enables flow control). An error means msg could not be decoded.
// Nothing handle returns refers to msg.
func (s *Server) handle(ctx context.Context, in *inFrame, out *outFrame) (bool, error) {
	start := time.Now()
	st, held := s.acquire()
	if held {
		defer st.chain.Release()
	}
	sel := selection{want: st.header}
	if st.policyHeaders {
		sel.policy, sel.all = st.chain.RequestHeaders()
	}
	req, err := parseRequest(in.b, &sel, in.lines[:0], in.headers[:0])
	// Keep grown buffers for the stream's next message.
	in.lines, in.headers = req.lines[:0], req.headers[:0]
	if err != nil {
		s.m.malformed.Inc()
		return false, err
	}
	if req.observability {
		s.m.observed.Inc()
		return false, nil
	}
	if req.phase != phaseRequestHeaders {
		s.m.messageBy[req.phase].Inc()
		if req.phase == phaseNone {
			return false, nil
		}
		out.b, out.pooled = passThrough[req.phase], nil
		return true, nil
	}
	out.b, out.pooled = nil, s.requestHeaders(ctx, st, &req)
	s.m.messageBy[phaseRequestHeaders].Inc()
	s.m.latency.Observe(time.Since(start).Seconds())
	return true, nil
}

// acquire returns the settings in force with their chain acquired
// (plugins.Chain.Acquire) when held is true; the caller then releases it
// once the message is answered, so that the chain, if a reload retires it
// meanwhile, stays open until then. A chain without policies is not held:
// handle never uses it. When the chain was retired just after this message
// loaded the settings, Update had already stored their replacement (the
// owner retires a chain only after that), so loading again finds it; see
// the plugins package's retire.go for why. If the settings in force are
// still those of the retired chain, their owner is shutting down: the
// message goes on with that chain unheld, and policies it has closed fail
// (their on_error applies).
func (s *Server) acquire() (st *state, held bool) {
	st = s.state.Load()
	if !st.holdChain {
		return st, false
	}
	for !st.chain.Acquire() {
		next := s.state.Load()
		if next == st {
			return st, false
		}
		st = next
		if !st.holdChain {
			return st, false
		}
	}
	return st, true
}

// policyUnresolved is the policy metadata field of a deny by
// trust.on_unresolved: deny.
const policyUnresolved = plugins.PolicyUnresolved

// unresolvedBody and unresolvedDetails answer a request denied because its
// client IP is unresolved.
const (
	unresolvedBody    = "client IP unresolved\n"
	unresolvedDetails = "realipd_client_ip_unresolved"
)

// requestHeaders resolves, runs the policies and encodes the answer.
func (s *Server) requestHeaders(ctx context.Context, st *state, req *request) *[]byte {
	peer := req.peer
	lines := req.lines
	var res clientip.Result
	if !req.hasPeer {
		// Without the peer nothing can be verified: unresolved.
		peer = ""
		s.m.noPeer.Inc()
		if s.warnNoPeer.allow() {
			s.log.Warn("extproc: request without the source.address attribute: its client IP is unresolved (trust.on_unresolved applies); add source.address and destination.address to the ext_proc filter's request_attributes")
		}
		res = clientip.Result{Reason: clientip.ReasonNoPeer}
	} else {
		if st.trimXFF {
			lines = s.removeEnvoyEntry(lines, req)
		}
		res = st.resolver.Client(peer, lines)
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.explain(ctx, st, req, peer, lines)
	}
	ip := res.IP
	var from string
	switch {
	case !res.OK():
		from = resolvedNone
		s.m.unresolved(res.Reason)
	case res.Source == clientip.SourcePeer:
		from = resolvedPeer
	default:
		from = resolvedHeader
	}

	var verdict plugins.Verdict
	switch {
	case !res.OK() && !st.passUnresolved:
		verdict = plugins.Verdict{Decision: plugins.Decision{Deny: true, Body: unresolvedBody}, Policy: policyUnresolved}
	case st.chain.Len() > 0:
		verdict = st.chain.Decide(ctx, newPolicyRequest(ip, peer, res, st.strategy, req.headers))
		if verdict.Err != nil {
			s.m.policyErrors.WithLabelValues(verdict.ErrPolicy).Inc()
			s.log.Debug("extproc: policy failed; on_error applied", "policy", verdict.ErrPolicy, "error", verdict.Err, "deny", verdict.Deny)
		}
	}

	var ipBuf [64]byte
	ipText := ""
	if ip.IsValid() {
		ipText = bytesString(ip.AppendTo(ipBuf[:0]))
	}
	// Filled by index, not append, so that nothing here escapes to the heap.
	var fieldsBuf [6]metaField
	fieldsBuf[0] = metaField{"client_ip", ipText}
	fieldsBuf[1] = metaField{"peer", peer}
	fieldsBuf[2] = metaField{"strategy", st.strategyName}
	fieldsBuf[3] = metaField{"resolved_from", from}
	// The policies' metadata fields; realipd's own fields win (metadata.reserved).
	md := metadata{namespace: st.namespace, extra: verdict.Metadata}
	var setBuf [1]header
	var mut mutation

	s.decisions.Log(ctx, plugins.Decided{Door: plugins.DoorExtProc, Peer: peer, Resolution: res, Deny: verdict.Deny, Policy: verdict.Policy})
	if verdict.Deny {
		s.denied(st, verdict.Policy).Inc()
		fieldsBuf[4] = metaField{"decision", "deny"}
		fieldsBuf[5] = metaField{"policy", verdict.Policy}
		md.fields = fieldsBuf[:6]
		status := plugins.DenyStatus(verdict.Decision, st.denyStatus)
		body := verdict.Body
		if body == "" {
			body = denyBody
		}
		details := denyDetails
		if verdict.Policy == policyUnresolved && !res.OK() {
			details = unresolvedDetails
		}
		setBuf[0] = header{"content-type", "text/plain; charset=utf-8"}
		mut.set = setBuf[:1]
		mut.policy = verdict.Headers
		return encodeImmediateResponse(answerPool, status, &mut, body, details, &md)
	}
	st.allowCount.Inc()
	fieldsBuf[4] = metaField{"decision", "allow"}
	md.fields = fieldsBuf[:5]
	var removeBuf [1]string
	if ipText != "" {
		setBuf[0] = header{st.clientIPHeader, ipText}
		mut.set = setBuf[:1]
	} else {
		removeBuf[0] = st.clientIPHeader
		mut.remove = removeBuf[:1]
	}
	mut.policy = verdict.Headers
	return encodeHeadersResponse(answerPool, &mut, &md)
}

// policyRequest is a plugins.Request allocated together with room for a
// copy of the peer: the peer string and the headers handle receives view the
// stream's receive buffer, which the next message overwrites, while a policy
// may keep what it is given.
type policyRequest struct {
	req     plugins.Request
	peerBuf [48]byte
}

// newPolicyRequest builds the Request the chain decides on, with copies of
// peer and of the selected headers (names lower-cased). Headers cost two
// more allocations, one for the slice and one for all their bytes; without
// headers there is one allocation in all.
func newPolicyRequest(ip netip.Addr, peer string, res clientip.Result, strategy clientip.Strategy, hdrs []rawHeader) *plugins.Request {
	pr := &policyRequest{req: plugins.Request{ClientIP: ip, Resolution: res, Strategy: strategy}}
	if len(peer) <= len(pr.peerBuf) {
		n := copy(pr.peerBuf[:], peer)
		pr.req.Peer = bytesString(pr.peerBuf[:n])
	} else {
		pr.req.Peer = strings.Clone(peer)
	}
	if len(hdrs) > 0 {
		pr.req.Headers = copyHeaders(hdrs)
	}
	return &pr.req
}

// copyHeaders copies hdrs into policy headers backed by one byte buffer,
// lower-casing the names.
func copyHeaders(hdrs []rawHeader) []plugins.Header {
	n := 0
	for _, h := range hdrs {
		n += len(h.name) + len(h.value)
	}
	buf := make([]byte, 0, n)
	out := make([]plugins.Header, len(hdrs))
	for i, h := range hdrs {
		start := len(buf)
		for j := range len(h.name) {
			c := h.name[j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			buf = append(buf, c)
		}
		mid := len(buf)
		buf = append(buf, h.value...)
		// buf never grows past its capacity, so earlier views stay valid.
		out[i] = plugins.Header{Name: bytesString(buf[start:mid]), Value: bytesString(buf[mid:])}
	}
	return out
}

// peerAddr parses an "ip:port", "[v6]:port" or bare IP, unmapped and without
// port; 0.0.0.0, :: and non-IPs are not usable. It does not allocate.
func peerAddr(s string) (netip.Addr, bool) {
	if s == "" {
		return netip.Addr{}, false
	}
	var a netip.Addr
	if s[0] == '[' || strings.Count(s, ":") == 1 {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.Addr{}, false
		}
		a = ap.Addr()
	} else {
		var err error
		if a, err = netip.ParseAddr(s); err != nil {
			return netip.Addr{}, false
		}
	}
	a = a.Unmap()
	if a.IsUnspecified() {
		return netip.Addr{}, false
	}
	return a, true
}

// removeEnvoyEntry removes the last X-Forwarded-For entry when it is the
// one Envoy appended (TrimEnvoyEntry). Anything else was not written by
// Envoy and stays: it is counted and warned about, since Envoy then
// probably does not append.
func (s *Server) removeEnvoyEntry(lines []string, req *request) []string {
	lines, found := TrimEnvoyEntry(lines, req.peer, req.destination, s.local.contains)
	if found != EnvoyEntryMismatch {
		return lines
	}
	s.m.mismatch.Inc()
	if s.warnMismatch.allow() {
		s.log.Warn("extproc: the last X-Forwarded-For entry is not the address Envoy appends (source.address), so nothing was removed before resolving: Envoy is probably not running with use_remote_address: true (or has skip_xff_append set); if that is intended, set extproc.xff_appended_by_envoy: false",
			"source_address", req.peer, "last_entry", clientip.LastEntry(lines))
	}
	return lines
}

// EnvoyEntry is what TrimEnvoyEntry found at the end of X-Forwarded-For.
type EnvoyEntry uint8

// What TrimEnvoyEntry found.
const (
	// EnvoyEntryRemoved: the last entry is the one Envoy appends, and was
	// removed.
	EnvoyEntryRemoved EnvoyEntry = iota + 1
	// EnvoyEntryNotAppended: the peer is not an IP (a pipe), so Envoy
	// appended nothing and nothing was removed.
	EnvoyEntryNotAppended
	// EnvoyEntryMismatch: the last entry (or its absence) is not what
	// Envoy appends, so nothing was removed: Envoy probably does not
	// append (use_remote_address: false, skip_xff_append).
	EnvoyEntryMismatch
)

// String returns removed, not_appended or mismatch.
func (e EnvoyEntry) String() string {
	switch e {
	case EnvoyEntryRemoved:
		return "removed"
	case EnvoyEntryNotAppended:
		return "not_appended"
	case EnvoyEntryMismatch:
		return "mismatch"
	}
	return "unknown"
}

// TrimEnvoyEntry is the server's step before resolving X-Forwarded-For with
// extproc.xff_appended_by_envoy: given the lines of the header as Envoy
// forwarded them and the source.address and destination.address
// attributes, it removes the last entry when it is the one Envoy appended
// with use_remote_address: true — the IP of source, or for a loopback
// source Envoy's own address (destination, or an address of this host for
// which isLocal is true: Envoy appends its node's local address, and
// realipd runs beside it). A source that is not an IP (a pipe) gets
// nothing appended, so nothing is removed. The lines are trimmed in place
// (clientip.TrimLastEntry). A nil isLocal lists the host's interface
// addresses when it is needed. It does not allocate (with a non-nil
// isLocal that does not).
func TrimEnvoyEntry(lines []string, source, destination string, isLocal func(netip.Addr) bool) ([]string, EnvoyEntry) {
	last := clientip.LastEntry(lines)
	if h := peerHost(source); h != "" && last == h {
		// The common case, compared as text: Envoy writes source.address and
		// the entry it appends from the same address.
		return clientip.TrimLastEntry(lines), EnvoyEntryRemoved
	}
	src, ok := peerAddr(source)
	if !ok {
		return lines, EnvoyEntryNotAppended // a pipe peer: Envoy appended nothing
	}
	if a, ok := bareAddr(last); ok {
		if a == src.WithZone("") {
			return clientip.TrimLastEntry(lines), EnvoyEntryRemoved
		}
		if src.IsLoopback() {
			if isLocal == nil {
				isLocal = hostAddr
			}
			if dst, ok := peerAddr(destination); (ok && a == dst) || isLocal(a) {
				return clientip.TrimLastEntry(lines), EnvoyEntryRemoved
			}
		}
	}
	return lines, EnvoyEntryMismatch
}

// peerHost returns the IP text of an "ip:port" or "[v6]:port" peer, or ""
// for anything else (a pipe path, a bare address): the cheap form of
// peerAddr for comparing with an X-Forwarded-For entry as text.
func peerHost(peer string) string {
	switch {
	case peer == "":
		return ""
	case peer[0] == '[':
		if end := strings.IndexByte(peer, ']'); end > 1 {
			return peer[1:end]
		}
		return ""
	case peer[0] < '0' || peer[0] > '9':
		return "" // a pipe ("/path", "@abstract") or garbage
	}
	if i := strings.IndexByte(peer, ':'); i > 0 && strings.IndexByte(peer[i+1:], ':') < 0 {
		return peer[:i]
	}
	return ""
}

// bareAddr parses an X-Forwarded-For entry as Envoy appends it: a bare IP,
// unmapped, without zone.
func bareAddr(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap().WithZone(""), true
}

// explain logs the resolution step by step at debug level.
func (s *Server) explain(ctx context.Context, st *state, req *request, peer string, lines []string) {
	_, ex := st.resolver.Explain(peer, lines)
	detail := ex.Detail
	if !req.hasPeer {
		ex.Reason, ex.ClientIP, ex.ResolvedFrom, ex.Entries = clientip.ReasonNoPeer.String(), "", resolvedNone, nil
		detail = "no source.address attribute: unresolved"
	}
	s.log.LogAttrs(ctx, slog.LevelDebug, "extproc: resolved",
		slog.String("strategy", ex.Strategy),
		slog.String("peer", ex.Peer),
		slog.String("client_ip", ex.ClientIP),
		slog.String("resolved_from", ex.ResolvedFrom),
		slog.String("reason", ex.Reason),
		slog.Any("entries", ex.Entries),
		slog.String("detail", detail),
	)
}
