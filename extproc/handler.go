package extproc

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/plugins"
)

// Defaults of the settings fields left empty (decide.Settings).
const (
	DefaultClientIPHeader    = decide.DefaultClientIPHeader
	DefaultMetadataNamespace = decide.DefaultMetadataNamespace
	DefaultDenyStatus        = decide.DefaultDenyStatus
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

// handle answers one serialized ProcessingRequest msg by filling out; it
// reports false when the message gets no answer (observability mode, or a
// message carrying no phase, which only flow-control updates do and realipd
// never enables flow control). An error means msg could not be decoded.
// Nothing handle returns refers to msg.
func (s *Server) handle(ctx context.Context, in *inFrame, out *outFrame) (bool, error) {
	start := time.Now()
	d, held := s.cur.Acquire()
	if held {
		defer d.Release()
	}
	sel := selection{want: d.Resolver().Header()}
	if d.ReadsHeaders() {
		// Whether any policy reads request headers is fixed for a
		// chain; which ones can change (a plugin restarted with other
		// inputs), so the chain is asked, allocation-free, per request.
		sel.policy, sel.all = d.Chain().RequestHeaders()
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
	out.b, out.pooled = nil, s.requestHeaders(ctx, d, &req)
	s.m.messageBy[phaseRequestHeaders].Inc()
	s.m.latency.Observe(time.Since(start).Seconds())
	return true, nil
}

// requestHeaders resolves, decides (decide.Decider.Decide) and encodes the
// answer.
func (s *Server) requestHeaders(ctx context.Context, d *decide.Decider, req *request) *[]byte {
	peer := req.peer
	lines := req.lines
	var res clientip.Result
	if !req.hasPeer {
		// Without the peer nothing can be verified: unresolved.
		peer = ""
		s.m.noPeer.Inc()
		if s.warnNoPeer.Allow() {
			s.log.Warn("extproc: request without the source.address attribute: its client IP is unresolved (trust.on_unresolved applies); add source.address and destination.address to the ext_proc filter's request_attributes")
		}
		res = clientip.Result{Reason: clientip.ReasonNoPeer}
	} else {
		if d.TrimsEnvoyEntry() {
			lines = s.removeEnvoyEntry(lines, req)
		}
		res = d.Resolver().Client(peer, lines)
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.explain(ctx, d, req, peer, lines)
	}
	if !res.OK() {
		s.m.unresolved(res.Reason)
	}
	o := d.Decide(ctx, &s.door, &decide.Input{Peer: peer, Resolution: res}, func() *plugins.Request {
		return newPolicyRequest(res.IP, peer, res, d.Resolver().Strategy(), req.destination, req.headers)
	})

	var ipBuf [64]byte
	ipText := ""
	if res.IP.IsValid() {
		ipText = bytesString(res.IP.AppendTo(ipBuf[:0]))
	}
	// Filled by index, not append, so that nothing here escapes to the heap.
	var fieldsBuf [6]metaField
	fieldsBuf[0] = metaField{"client_ip", ipText}
	fieldsBuf[1] = metaField{"peer", peer}
	fieldsBuf[2] = metaField{"strategy", d.StrategyName()}
	fieldsBuf[3] = metaField{"resolved_from", o.ResolvedFrom}
	// The policies' metadata fields; realipd's own fields win (metadata.reserved).
	md := metadata{namespace: d.MetadataNamespace(), extra: o.Metadata}
	var setBuf [1]header
	mut := mutation{decider: d, deny: o.Deny, policy: o.Headers}

	if o.Deny {
		s.denied(d, o.Policy).Inc()
		fieldsBuf[4] = metaField{"decision", "deny"}
		fieldsBuf[5] = metaField{"policy", o.Policy}
		md.fields = fieldsBuf[:6]
		setBuf[0] = header{"content-type", "text/plain; charset=utf-8"}
		mut.set = setBuf[:1]
		return encodeImmediateResponse(answerPool, o.Status, &mut, o.Body, o.Details, &md)
	}
	s.countersOf(d).allow.Inc()
	fieldsBuf[4] = metaField{"decision", "allow"}
	md.fields = fieldsBuf[:5]
	var removeBuf [1]string
	if ipText != "" {
		setBuf[0] = header{d.ClientIPHeader(), ipText}
		mut.set = setBuf[:1]
	} else {
		removeBuf[0] = d.ClientIPHeader()
		mut.remove = removeBuf[:1]
	}
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
func newPolicyRequest(ip netip.Addr, peer string, res clientip.Result, strategy clientip.Strategy, destination string, hdrs []rawHeader) *plugins.Request {
	pr := &policyRequest{req: plugins.Request{ClientIP: ip, Resolution: res, Strategy: strategy}}
	if dst, ok := destinationAddr(destination); ok {
		pr.req.OriginalDst = dst
	}
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
	if s.warnMismatch.Allow() {
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
func (s *Server) explain(ctx context.Context, d *decide.Decider, req *request, peer string, lines []string) {
	_, ex := d.Resolver().Explain(peer, lines)
	detail := ex.Detail
	if !req.hasPeer {
		ex.Reason, ex.ClientIP, ex.ResolvedFrom, ex.Entries = clientip.ReasonNoPeer.String(), "", "none", nil
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

// destinationAddr parses the destination.address attribute ("ip:port" or
// "[v6]:port"; unmapped), which policies see as the original destination;
// false for anything else (a pipe). It does not allocate.
func destinationAddr(s string) (netip.AddrPort, bool) {
	if s == "" || s[0] == '/' || s[0] == '@' {
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || !ap.Addr().IsValid() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}
