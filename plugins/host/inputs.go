package host

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/plugins"
	policypb "github.com/realipd/realipd/plugins/proto"
)

// inputs is what a plugin said its decisions depend on (policypb.Inputs),
// besides the client IP. The host sends only these fields and keys the cache
// on exactly them, so a cached decision is never reused for a request the
// plugin could have told apart.
type inputs struct {
	all         bool
	peer        bool
	originalDst bool
	resolution  bool
	listener    bool
	route       bool
	headers     []string // lower-case
	ipOnly      bool
}

func inputsFromProto(p *policypb.Inputs) *inputs {
	if p == nil || p.GetAll() {
		return &inputs{all: true}
	}
	in := &inputs{
		peer:        p.GetPeer(),
		originalDst: p.GetOriginalDst(),
		resolution:  p.GetResolution(),
		listener:    p.GetListener(),
		route:       p.GetRoute(),
	}
	for _, h := range p.GetHeaders() {
		h = strings.ToLower(h)
		if !slices.Contains(in.headers, h) {
			in.headers = append(in.headers, h)
		}
	}
	slices.Sort(in.headers)
	in.ipOnly = !in.peer && !in.originalDst && !in.resolution && !in.listener && !in.route && len(in.headers) == 0
	return in
}

func (in *inputs) equal(o *inputs) bool {
	return in.all == o.all && in.peer == o.peer && in.originalDst == o.originalDst &&
		in.resolution == o.resolution && in.listener == o.listener && in.route == o.route &&
		slices.Equal(in.headers, o.headers)
}

func (in *inputs) String() string {
	if in.all {
		return "all"
	}
	var parts []string
	parts = append(parts, "client_ip")
	for _, f := range []struct {
		on   bool
		name string
	}{{in.peer, "peer"}, {in.originalDst, "original_dst"}, {in.resolution, "resolution"}, {in.listener, "listener"}, {in.route, "route"}} {
		if f.on {
			parts = append(parts, f.name)
		}
	}
	for _, h := range in.headers {
		parts = append(parts, "header:"+h)
	}
	return strings.Join(parts, ",")
}

// wantHeader reports whether the request header named name is an input.
func (in *inputs) wantHeader(name string) bool {
	if in.all {
		return true
	}
	for _, h := range in.headers {
		if strings.EqualFold(h, name) {
			return true
		}
	}
	return false
}

// key returns the cache key of req. It allocates only when the plugin reads
// more than the client IP, and then once.
func (in *inputs) key(req *plugins.Request) cacheKey {
	k := cacheKey{ip: req.ClientIP}
	if in.ipOnly {
		return k
	}
	var buf [256]byte
	b := buf[:0]
	if in.all || in.peer {
		b = appendField(b, 'p', req.Peer)
	}
	if in.all || in.originalDst {
		b = append(b, 'o')
		b, _ = req.OriginalDst.AppendBinary(b)
	}
	if in.all || in.resolution {
		b = append(b, 'r', byte(req.Strategy), byte(req.Resolution.Source), byte(req.Resolution.Reason))
		b = binary.AppendVarint(b, int64(req.Resolution.Position))
	}
	if in.all || in.listener {
		b = appendField(b, 'l', req.Listener)
	}
	if in.all || in.route {
		b = appendField(b, 't', req.Route)
	}
	for _, h := range req.Headers {
		if in.wantHeader(h.Name) {
			b = append(b, 'h')
			b = binary.AppendUvarint(b, uint64(len(h.Name)))
			for i := 0; i < len(h.Name); i++ { // lower-cased, as the plugin sees it
				c := h.Name[i]
				if 'A' <= c && c <= 'Z' {
					c += 'a' - 'A'
				}
				b = append(b, c)
			}
			b = appendField(b, 'v', h.Value)
		}
	}
	k.rest = string(b)
	return k
}

// appendField appends a tag, the length of s and s: an unambiguous encoding
// of a sequence of strings.
func appendField(b []byte, tag byte, s string) []byte {
	b = append(b, tag)
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// everything is the inputs of a plugin that reads every field.
var everything = &inputs{all: true}

// DecideRequest returns the message a plugin that reads every input is sent
// for req. Its marshalling never fails, whatever bytes req holds: header
// values go as bytes, and invalid UTF-8 in the string fields (which Envoy
// does not send there) is replaced by U+FFFD. It is exported for tests of
// code that builds plugins.Requests from the wire.
func DecideRequest(req *plugins.Request) *policypb.DecideRequest {
	return everything.request(req)
}

// request builds the message for the plugin: the client IP and the declared
// inputs only. A message that failed to marshal would fail the call and
// hand a client who can choose the bytes the policy's on_error, so header
// values are sent as bytes and every string is made valid UTF-8.
func (in *inputs) request(req *plugins.Request) *policypb.DecideRequest {
	pr := &policypb.DecideRequest{}
	if req.ClientIP.IsValid() {
		pr.ClientIp = req.ClientIP.String()
	}
	if in.all || in.peer {
		pr.Peer = validUTF8(req.Peer)
	}
	if (in.all || in.originalDst) && req.OriginalDst.IsValid() {
		pr.OriginalDst = req.OriginalDst.String()
	}
	if in.all || in.resolution {
		pr.Resolution = &policypb.Resolution{
			Strategy:     name(req.Strategy),
			ResolvedFrom: sourceName(req.Resolution.Source),
			Reason:       name(req.Resolution.Reason),
			Position:     int32(req.Resolution.Position),
		}
	}
	if in.all || in.listener {
		pr.Listener = validUTF8(req.Listener)
	}
	if in.all || in.route {
		pr.Route = validUTF8(req.Route)
	}
	if !in.ipOnly {
		for _, h := range req.Headers {
			if in.wantHeader(h.Name) {
				pr.Headers = append(pr.Headers, &policypb.Header{Name: validUTF8(strings.ToLower(h.Name)), Value: []byte(h.Value)})
			}
		}
	}
	return pr
}

// validUTF8 returns s with each run of invalid UTF-8 replaced by U+FFFD, as
// a proto3 string field requires; s itself when it is valid. The cache key
// keeps the original bytes, so two requests that differ only there are
// still told apart.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// name returns the contract name of a clientip enum through its String
// method, "" for the zero value.
func name[T ~uint8](v T) string {
	if v == 0 {
		return ""
	}
	if s, ok := any(v).(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprint(uint8(v))
}

func sourceName(s clientip.Source) string {
	switch s {
	case clientip.SourceHeader:
		return "header"
	case clientip.SourcePeer:
		return "peer"
	default:
		return ""
	}
}
