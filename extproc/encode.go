package extproc

import (
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/plugins"
)

// Field numbers used by the encoder.
const (
	fieldRespRequestHeaders  = 1 // ProcessingResponse.request_headers
	fieldRespImmediate       = 7 // ProcessingResponse.immediate_response
	fieldRespDynamicMetadata = 8 // ProcessingResponse.dynamic_metadata
	fieldHeadersRespCommon   = 1 // HeadersResponse.response
	fieldCommonHeaderMut     = 2 // CommonResponse.header_mutation
	fieldMutSet              = 1 // HeaderMutation.set_headers
	fieldMutRemove           = 2 // HeaderMutation.remove_headers
	fieldHVOHeader           = 1 // HeaderValueOption.header
	fieldHVOAppend           = 2 // HeaderValueOption.append (google.protobuf.BoolValue)
	fieldImmStatus           = 1 // ImmediateResponse.status
	fieldImmHeaders          = 2 // ImmediateResponse.headers
	fieldImmBody             = 3 // ImmediateResponse.body
	fieldImmDetails          = 5 // ImmediateResponse.details
	fieldHTTPStatusCode      = 1 // type.v3.HttpStatus.code
	fieldValueStruct         = 5 // google.protobuf.Value.struct_value
)

// metaField is one string field of realipd's dynamic metadata.
type metaField struct {
	key, value string
}

// header is one header to set.
type header struct {
	name, value string
}

// sizeLen is the encoded size of a length-delimited field whose tag fits in
// one byte (field numbers below 16) with a payload of n bytes.
func sizeLen(n int) int {
	if n < 0x80 {
		return 2 + n
	}
	return 1 + protowire.SizeVarint(uint64(n)) + n
}

// appendLen appends the tag of length-delimited field num (below 16) and
// the length n.
func appendLen(b []byte, num protowire.Number, n int) []byte {
	if n < 0x80 {
		return append(b, byte(num)<<3|byte(protowire.BytesType), byte(n))
	}
	b = append(b, byte(num)<<3|byte(protowire.BytesType))
	return protowire.AppendVarint(b, uint64(n))
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = appendLen(b, num, len(s))
	return append(b, s...)
}

// sizeHVO is the payload size of a HeaderValueOption{header{key,
// raw_value}, append: {value: false}}: the value replaces every existing
// value of the header, or adds it. append is set explicitly (a BoolValue
// holding false encodes as an empty message) and append_action is left at
// its default, the one combination every Envoy version reads as overwrite:
// releases before append_action read only append, later ones read append
// when append_action is the default, and the router refuses both set.
func sizeHVO(h header) int {
	return sizeLen(sizeLen(len(h.name))+sizeLen(len(h.value))) + 2
}

func appendHVO(b []byte, h header) []byte {
	b = appendLen(b, fieldMutSet, sizeHVO(h))
	b = appendLen(b, fieldHVOHeader, sizeLen(len(h.name))+sizeLen(len(h.value)))
	b = appendString(b, fieldHVKey, h.name)
	b = appendString(b, fieldHVRawValue, h.value)
	return appendLen(b, fieldHVOAppend, 0)
}

// mutation describes a HeaderMutation: headers set (overwriting) and
// removed. policy holds the headers a policy decision adds; only those the
// decider lets a policy write (decide.Decider.WritableHeader: never one
// Envoy would reject, one that frames or routes the request, nor one
// realipd writes itself) go in.
type mutation struct {
	set     []header
	remove  []string
	policy  []plugins.Header
	decider *decide.Decider // nil: no policy headers
	deny    bool            // the mutation of a deny answer
}

// keepPolicyHeader reports whether policy header h goes into the mutation.
func (m *mutation) keepPolicyHeader(h plugins.Header) bool {
	return m.decider != nil && m.decider.WritableHeader(h, m.deny)
}

func (m *mutation) size() int {
	n := 0
	for _, h := range m.set {
		n += sizeLen(sizeHVO(h))
	}
	for _, h := range m.policy {
		if m.keepPolicyHeader(h) {
			n += sizeLen(sizeHVO(header{h.Name, h.Value}))
		}
	}
	for _, r := range m.remove {
		n += sizeLen(len(r))
	}
	return n
}

func (m *mutation) append(b []byte) []byte {
	for _, h := range m.set {
		b = appendHVO(b, h)
	}
	for _, h := range m.policy {
		if m.keepPolicyHeader(h) {
			b = appendHVO(b, header{h.Name, h.Value})
		}
	}
	for _, r := range m.remove {
		b = appendString(b, fieldMutRemove, r)
	}
	return b
}

// metadata describes ProcessingResponse.dynamic_metadata: one namespace
// holding a struct of string fields.
type metadata struct {
	namespace string
	fields    []metaField
	extra     map[string]string // more string fields (policies'); keys in fields win
}

func sizeStringEntry(k, v string) int {
	return sizeLen(len(k)) + sizeLen(sizeLen(len(v)))
}

func appendStringEntry(b []byte, k, v string) []byte {
	b = appendLen(b, fieldStructFields, sizeStringEntry(k, v))
	b = appendString(b, fieldMapKey, k)
	b = appendLen(b, fieldMapValue, sizeLen(len(v)))
	return appendString(b, fieldValueString, v)
}

// reserved reports whether key is one of realipd's own fields.
func (md *metadata) reserved(key string) bool {
	for _, f := range md.fields {
		if f.key == key {
			return true
		}
	}
	return false
}

// innerSize is the size of the namespace's Struct.
func (md *metadata) innerSize() int {
	n := 0
	for _, f := range md.fields {
		n += sizeLen(sizeStringEntry(f.key, f.value))
	}
	for k, v := range md.extra {
		if !md.reserved(k) {
			n += sizeLen(sizeStringEntry(k, v))
		}
	}
	return n
}

// size is the size of the top-level Struct.
func (md *metadata) size(inner int) int {
	return sizeLen(md.entrySize(inner))
}

// entrySize is the size of the top-level Struct's one entry.
func (md *metadata) entrySize(inner int) int {
	return sizeLen(len(md.namespace)) + sizeLen(sizeLen(inner))
}

func (md *metadata) append(b []byte, inner int) []byte {
	b = appendLen(b, fieldStructFields, md.entrySize(inner))
	b = appendString(b, fieldMapKey, md.namespace)
	b = appendLen(b, fieldMapValue, sizeLen(inner))
	b = appendLen(b, fieldValueStruct, inner)
	for _, f := range md.fields {
		b = appendStringEntry(b, f.key, f.value)
	}
	for k, v := range md.extra {
		if !md.reserved(k) {
			b = appendStringEntry(b, k, v)
		}
	}
	return b
}

// encodeHeadersResponse writes into a buffer from pool a ProcessingResponse
// answering request headers: request_headers{response{header_mutation}} and
// dynamic_metadata.
func encodeHeadersResponse(pool mem.BufferPool, mut *mutation, md *metadata) *[]byte {
	ms := mut.size()
	common := sizeLen(ms)
	hr := sizeLen(common)
	inner := md.innerSize()
	mdSize := md.size(inner)
	total := sizeLen(hr) + sizeLen(mdSize)
	buf := pool.Get(total)
	b := (*buf)[:0]
	b = appendLen(b, fieldRespRequestHeaders, hr)
	b = appendLen(b, fieldHeadersRespCommon, common)
	b = appendLen(b, fieldCommonHeaderMut, ms)
	b = mut.append(b)
	b = appendLen(b, fieldRespDynamicMetadata, mdSize)
	*buf = md.append(b, inner)
	return buf
}

// encodeImmediateResponse writes into a buffer from pool a
// ProcessingResponse with an ImmediateResponse (explicit status, headers,
// body, details) and dynamic_metadata.
func encodeImmediateResponse(pool mem.BufferPool, status int, mut *mutation, body, details string, md *metadata) *[]byte {
	statusSize := 1 + protowire.SizeVarint(uint64(status))
	ms := mut.size()
	imm := sizeLen(statusSize) + sizeLen(ms) + sizeLen(len(body))
	if details != "" {
		imm += sizeLen(len(details))
	}
	inner := md.innerSize()
	mdSize := md.size(inner)
	total := sizeLen(imm) + sizeLen(mdSize)
	buf := pool.Get(total)
	b := (*buf)[:0]
	b = appendLen(b, fieldRespImmediate, imm)
	b = appendLen(b, fieldImmStatus, statusSize)
	b = protowire.AppendTag(b, fieldHTTPStatusCode, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(status))
	b = appendLen(b, fieldImmHeaders, ms)
	b = mut.append(b)
	b = appendString(b, fieldImmBody, body)
	if details != "" {
		b = appendString(b, fieldImmDetails, details)
	}
	b = appendLen(b, fieldRespDynamicMetadata, mdSize)
	*buf = md.append(b, inner)
	return buf
}
