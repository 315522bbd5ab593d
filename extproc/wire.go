package extproc

import (
	"errors"
	"fmt"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
)

// This file reads and writes the few parts of envoy.service.ext_proc.v3
// messages realipd needs directly in protobuf wire format. The generated Go
// types cost dozens of allocations per request headers message (one per
// header, per string, per map entry); reading in place costs none. The
// decoder follows protobuf's merge rules exactly (last oneof member wins,
// repeated message fields merge, a later map entry replaces an earlier one
// with the same key), which a differential fuzz test checks against
// proto.Unmarshal.

// phase is the ProcessingRequest oneof member, numbered as its field.
type phase uint8

// Phases (ProcessingRequest field numbers of the request oneof).
const (
	phaseNone             phase = 0
	phaseRequestHeaders   phase = 2
	phaseResponseHeaders  phase = 3
	phaseRequestBody      phase = 4
	phaseResponseBody     phase = 5
	phaseRequestTrailers  phase = 6
	phaseResponseTrailers phase = 7
)

var phaseNames = [...]string{
	phaseNone:             "none",
	phaseRequestHeaders:   "request_headers",
	phaseResponseHeaders:  "response_headers",
	phaseRequestBody:      "request_body",
	phaseResponseBody:     "response_body",
	phaseRequestTrailers:  "request_trailers",
	phaseResponseTrailers: "response_trailers",
}

func (p phase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", uint8(p))
}

// Field numbers used by the decoder.
const (
	fieldReqAttributes    = 9  // ProcessingRequest.attributes
	fieldReqObservability = 10 // ProcessingRequest.observability_mode
	fieldHTTPHeaders      = 1  // HttpHeaders.headers (HeaderMap)
	fieldHeaderMapHeaders = 1  // HeaderMap.headers (HeaderValue)
	fieldHVKey            = 1  // HeaderValue.key
	fieldHVValue          = 2  // HeaderValue.value
	fieldHVRawValue       = 3  // HeaderValue.raw_value
	fieldMapKey           = 1  // map entry key
	fieldMapValue         = 2  // map entry value
	fieldStructFields     = 1  // google.protobuf.Struct.fields
	fieldValueString      = 3  // google.protobuf.Value.string_value
	valueKindMin          = 1  // google.protobuf.Value kind oneof: fields 1..6
	valueKindMax          = 6
)

// attributesKey is the ProcessingRequest.attributes key Envoy's ext_proc
// filter files request attributes under.
const attributesKey = "envoy.filters.http.ext_proc"

// The request attributes realipd asks for: the downstream peer, and the
// address it connected to.
const (
	sourceAddressAttr      = "source.address"
	destinationAddressAttr = "destination.address"
)

var errMalformed = errors.New("malformed protobuf")

// request is what realipd reads from a ProcessingRequest. Its strings point
// into the message buffer, which must stay unmodified while they are used.
type request struct {
	phase         phase
	observability bool
	hasPeer       bool   // the source.address attribute was present as a string
	peer          string // source.address
	destination   string // destination.address ("" when absent)
	lines         []string
	headers       []rawHeader // the request headers selected for the policies
}

// rawHeader is one request header line as the decoder found it. name is
// either a lower-case name from a selection or, for a selection of every
// header, the name as sent (Envoy sends lower-case names; others are
// lower-cased when copied for a policy).
type rawHeader struct {
	name, value string
}

// selection says which request headers the decoder collects: the lines of
// the resolver's header into request.lines, and the headers the policies
// read into request.headers.
type selection struct {
	want   string   // the resolver's header, lower-case; "" for none
	policy []string // headers the policies read, lower-case
	all    bool     // the policies read every header
}

// forPolicies reports whether the policies read any header.
func (s *selection) forPolicies() bool { return s.all || len(s.policy) > 0 }

// policyName returns the selected name key matches, if any.
func (s *selection) policyName(key []byte) (string, bool) {
	if s.all {
		return bytesString(key), true
	}
	for _, name := range s.policy {
		if equalFoldASCII(key, name) {
			return name, true
		}
	}
	return "", false
}

// bytesString returns a string sharing b's memory. The caller guarantees b
// is never modified afterwards.
func bytesString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// parseRequest decodes msg, a serialized ProcessingRequest. It collects into
// lines (appending, in order) the values of every request header named
// sel.want, and into hdrs (appending, in order) the request headers
// sel selects for the policies; names are compared ASCII case-insensitively
// and values read from raw_value or, when that is empty, value. Both come
// from the same walk over the headers. It does not allocate unless lines or
// hdrs must grow.
func parseRequest(msg []byte, sel *selection, lines []string, hdrs []rawHeader) (request, error) {
	r := request{lines: lines, headers: hdrs}
	hdrFrom := 0    // request_headers occurrences before this offset were discarded by a later oneof member
	var attr []byte // the last attributes entry with our key
	off := 0
	for off < len(msg) {
		b := msg[off:]
		num, typ, n := consumeTag(b)
		if n < 0 {
			return r, errMalformed
		}
		switch {
		case num >= protowire.Number(phaseRequestHeaders) && num <= protowire.Number(phaseResponseTrailers) && typ == protowire.BytesType:
			_, m := consumeBytes(b[n:])
			if m < 0 {
				return r, errMalformed
			}
			if phase(num) != phaseRequestHeaders || r.phase != phaseRequestHeaders {
				// A different member replaces the oneof; a request_headers
				// member after another member starts afresh.
				hdrFrom = off
			}
			r.phase = phase(num)
			n += m
		case num == fieldReqAttributes && typ == protowire.BytesType:
			entry, m := consumeBytes(b[n:])
			if m < 0 {
				return r, errMalformed
			}
			key, err := mapEntryKey(entry)
			if err != nil {
				return r, err
			}
			if key == attributesKey {
				attr = entry
			}
			n += m
		case num == fieldReqObservability && typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(b[n:])
			if m < 0 {
				return r, errMalformed
			}
			r.observability = v != 0
			n += m
		default:
			m := protowire.ConsumeFieldValue(num, typ, b[n:])
			if m < 0 {
				return r, errMalformed
			}
			n += m
		}
		off += n
	}
	if attr != nil {
		var err error
		r.peer, r.hasPeer, r.destination, err = addressAttributes(attr)
		if err != nil {
			return r, err
		}
	}
	if r.phase == phaseRequestHeaders && (sel.want != "" || sel.forPolicies()) {
		if err := collectHeaders(msg[hdrFrom:], sel, &r); err != nil {
			return r, err
		}
	}
	return r, nil
}

// collectHeaders walks every request_headers member in msg (already checked
// well-formed at the top level) and appends what sel selects to r.
func collectHeaders(msg []byte, sel *selection, r *request) error {
	for len(msg) > 0 {
		num, typ, n := consumeTag(msg)
		msg = msg[n:]
		if num == protowire.Number(phaseRequestHeaders) && typ == protowire.BytesType {
			hh, m := consumeBytes(msg)
			msg = msg[m:]
			if err := collectHTTPHeaders(hh, sel, r); err != nil {
				return err
			}
			continue
		}
		msg = msg[protowire.ConsumeFieldValue(num, typ, msg):]
	}
	return nil
}

// collectHTTPHeaders reads an HttpHeaders message.
func collectHTTPHeaders(b []byte, sel *selection, r *request) error {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return errMalformed
		}
		b = b[n:]
		if num == fieldHTTPHeaders && typ == protowire.BytesType {
			hm, m := consumeBytes(b)
			if m < 0 {
				return errMalformed
			}
			b = b[m:]
			var err error
			if sel.forPolicies() {
				r.lines, r.headers, err = collectHeaderMapSelected(hm, sel, r.lines, r.headers)
			} else {
				r.lines, err = collectHeaderMap(hm, sel.want, r.lines)
			}
			if err != nil {
				return err
			}
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return errMalformed
		}
		b = b[m:]
	}
	return nil
}

// collectHeaderMap reads a config.core.v3.HeaderMap message. This loop
// runs once per request header, so one-byte tags and lengths (every header
// shorter than 128 bytes) are decoded inline.
func collectHeaderMap(b []byte, want string, lines []string) ([]string, error) {
	for len(b) > 0 {
		var hv []byte
		if len(b) > 1 && b[0] == 0x0a && b[1] < 0x80 && int(b[1])+2 <= len(b) {
			// field 1 (headers), length-delimited, short
			hv, b = b[2:2+int(b[1])], b[2+int(b[1]):]
		} else {
			num, typ, n := consumeTag(b)
			if n < 0 {
				return lines, errMalformed
			}
			b = b[n:]
			if num != fieldHeaderMapHeaders || typ != protowire.BytesType {
				m := protowire.ConsumeFieldValue(num, typ, b)
				if m < 0 {
					return lines, errMalformed
				}
				b = b[m:]
				continue
			}
			var m int
			if hv, m = consumeBytes(b); m < 0 {
				return lines, errMalformed
			}
			b = b[m:]
		}
		key, value, raw, err := parseHeaderValue(hv)
		if err != nil {
			return lines, err
		}
		if equalFoldASCII(key, want) {
			if len(raw) > 0 {
				lines = append(lines, bytesString(raw))
			} else {
				lines = append(lines, bytesString(value))
			}
		}
	}
	return lines, nil
}

// collectHeaderMapSelected is collectHeaderMap that also appends to hdrs the
// headers sel selects for the policies. It is a separate loop so that the
// common case, no policy reading headers, pays nothing for it.
func collectHeaderMapSelected(b []byte, sel *selection, lines []string, hdrs []rawHeader) ([]string, []rawHeader, error) {
	want := sel.want
	for len(b) > 0 {
		var hv []byte
		if len(b) > 1 && b[0] == 0x0a && b[1] < 0x80 && int(b[1])+2 <= len(b) {
			hv, b = b[2:2+int(b[1])], b[2+int(b[1]):]
		} else {
			var (
				ok  bool
				err error
			)
			if hv, b, ok, err = nextHeaderValue(b); err != nil || !ok {
				return lines, hdrs, err
			}
		}
		key, value, raw, err := parseHeaderValue(hv)
		if err != nil {
			return lines, hdrs, err
		}
		if len(raw) > 0 {
			value = raw
		}
		if want != "" && equalFoldASCII(key, want) {
			lines = append(lines, bytesString(value))
		}
		if name, ok := sel.policyName(key); ok {
			hdrs = append(hdrs, rawHeader{name, bytesString(value)})
		}
	}
	return lines, hdrs, nil
}

// nextHeaderValue splits the next HeaderValue (HeaderMap field 1) off b, the
// rest of a HeaderMap message, skipping other fields; ok is false when b
// holds no more. Callers inline the common one-byte tag and length first.
func nextHeaderValue(b []byte) (hv, rest []byte, ok bool, err error) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return nil, nil, false, errMalformed
		}
		b = b[n:]
		if num != fieldHeaderMapHeaders || typ != protowire.BytesType {
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return nil, nil, false, errMalformed
			}
			b = b[m:]
			continue
		}
		v, m := consumeBytes(b)
		if m < 0 {
			return nil, nil, false, errMalformed
		}
		return v, b[m:], true, nil
	}
	return nil, b, false, nil
}

// parseHeaderValue reads a config.core.v3.HeaderValue message; the last
// occurrence of each field wins.
func parseHeaderValue(b []byte) (key, value, raw []byte, err error) {
	for len(b) > 0 {
		c := b[0]
		if c < 0x80 && (c == 0x0a || c == 0x12 || c == 0x1a) && len(b) > 1 && b[1] < 0x80 && int(b[1])+2 <= len(b) {
			// key, value or raw_value with a short length
			v := b[2 : 2+int(b[1])]
			b = b[2+int(b[1]):]
			switch c {
			case 0x0a:
				key = v
			case 0x12:
				value = v
			default:
				raw = v
			}
			continue
		}
		num, typ, n := consumeTag(b)
		if n < 0 {
			return nil, nil, nil, errMalformed
		}
		b = b[n:]
		if typ == protowire.BytesType && num >= fieldHVKey && num <= fieldHVRawValue {
			v, m := consumeBytes(b)
			if m < 0 {
				return nil, nil, nil, errMalformed
			}
			b = b[m:]
			switch num {
			case fieldHVKey:
				key = v
			case fieldHVValue:
				value = v
			case fieldHVRawValue:
				raw = v
			}
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return nil, nil, nil, errMalformed
		}
		b = b[m:]
	}
	return key, value, raw, nil
}

// equalFoldASCII compares a header name with a lower-case name. Envoy sends
// lower-case names; upper-case ASCII letters are folded anyway.
func equalFoldASCII(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// mapEntryKey returns the (last) string key of a map entry message.
func mapEntryKey(entry []byte) (string, error) {
	var key []byte
	for len(entry) > 0 {
		num, typ, n := consumeTag(entry)
		if n < 0 {
			return "", errMalformed
		}
		entry = entry[n:]
		if num == fieldMapKey && typ == protowire.BytesType {
			v, m := consumeBytes(entry)
			if m < 0 {
				return "", errMalformed
			}
			key = v
			entry = entry[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, entry)
		if m < 0 {
			return "", errMalformed
		}
		entry = entry[m:]
	}
	return bytesString(key), nil
}

// addressAttributes reads source.address and destination.address from the
// Struct value of a map<string, Struct> entry (every value occurrence of the
// entry merges; the last field of a name wins), reporting each when its kind
// is a string.
func addressAttributes(entry []byte) (source string, hasSource bool, destination string, err error) {
	var src, dst []byte // last Struct.fields entry for each name
	for len(entry) > 0 {
		num, typ, n := consumeTag(entry)
		if n < 0 {
			return "", false, "", errMalformed
		}
		entry = entry[n:]
		if num == fieldMapValue && typ == protowire.BytesType {
			st, m := consumeBytes(entry)
			if m < 0 {
				return "", false, "", errMalformed
			}
			entry = entry[m:]
			// Walk the Struct's fields entries.
			for len(st) > 0 {
				fnum, ftyp, k := consumeTag(st)
				if k < 0 {
					return "", false, "", errMalformed
				}
				st = st[k:]
				if fnum == fieldStructFields && ftyp == protowire.BytesType {
					fe, j := consumeBytes(st)
					if j < 0 {
						return "", false, "", errMalformed
					}
					st = st[j:]
					key, err := mapEntryKey(fe)
					if err != nil {
						return "", false, "", err
					}
					switch key {
					case sourceAddressAttr:
						src = fe
					case destinationAddressAttr:
						dst = fe
					}
					continue
				}
				j := protowire.ConsumeFieldValue(fnum, ftyp, st)
				if j < 0 {
					return "", false, "", errMalformed
				}
				st = st[j:]
			}
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, entry)
		if m < 0 {
			return "", false, "", errMalformed
		}
		entry = entry[m:]
	}
	if src != nil {
		if source, hasSource, err = valueEntryString(src); err != nil {
			return "", false, "", err
		}
	}
	if dst != nil {
		if destination, _, err = valueEntryString(dst); err != nil {
			return "", false, "", err
		}
	}
	return source, hasSource, destination, nil
}

// valueEntryString reads the google.protobuf.Value of a Struct.fields entry
// (its value occurrences merge: the last kind set wins) and returns its
// string_value if that is the kind.
func valueEntryString(fe []byte) (string, bool, error) {
	var (
		kind protowire.Number
		str  []byte
	)
	for len(fe) > 0 {
		num, typ, n := consumeTag(fe)
		if n < 0 {
			return "", false, errMalformed
		}
		fe = fe[n:]
		if num == fieldMapValue && typ == protowire.BytesType {
			v, m := consumeBytes(fe)
			if m < 0 {
				return "", false, errMalformed
			}
			fe = fe[m:]
			for len(v) > 0 {
				vnum, vtyp, k := consumeTag(v)
				if k < 0 {
					return "", false, errMalformed
				}
				v = v[k:]
				j := protowire.ConsumeFieldValue(vnum, vtyp, v)
				if j < 0 {
					return "", false, errMalformed
				}
				if vnum >= valueKindMin && vnum <= valueKindMax && wireTypeOfValueKind(vnum) == vtyp {
					kind = vnum
					if vnum == fieldValueString {
						s, _ := consumeBytes(v)
						str = s
					}
				}
				v = v[j:]
			}
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, fe)
		if m < 0 {
			return "", false, errMalformed
		}
		fe = fe[m:]
	}
	if kind != fieldValueString {
		return "", false, nil
	}
	return bytesString(str), true, nil
}

// wireTypeOfValueKind returns the wire type of google.protobuf.Value's kind
// fields: null_value (enum), number_value (double), string_value,
// bool_value, struct_value, list_value.
func wireTypeOfValueKind(n protowire.Number) protowire.Type {
	switch n {
	case 1, 4:
		return protowire.VarintType
	case 2:
		return protowire.Fixed64Type
	}
	return protowire.BytesType
}

// consumeTag is protowire.ConsumeTag with an inlined fast path for one-byte
// tags (field numbers below 16), which is every field realipd reads.
func consumeTag(b []byte) (protowire.Number, protowire.Type, int) {
	if len(b) > 0 && b[0] < 0x80 && b[0] >= 8 {
		return protowire.Number(b[0] >> 3), protowire.Type(b[0] & 7), 1
	}
	return consumeTagSlow(b)
}

//go:noinline
func consumeTagSlow(b []byte) (protowire.Number, protowire.Type, int) {
	return protowire.ConsumeTag(b)
}

// consumeBytes is protowire.ConsumeBytes with an inlined fast path for
// lengths below 128.
func consumeBytes(b []byte) ([]byte, int) {
	if len(b) > 0 && b[0] < 0x80 && int(b[0]) < len(b) {
		return b[1 : 1+int(b[0])], 1 + int(b[0])
	}
	return consumeBytesSlow(b)
}

//go:noinline
func consumeBytesSlow(b []byte) ([]byte, int) {
	return protowire.ConsumeBytes(b)
}
