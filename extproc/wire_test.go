package extproc

import (
	"net/netip"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/plugins/host"
	policypb "github.com/realipd/realipd/plugins/proto"
)

// reference extracts with the generated types what parseRequest reads.
func reference(m *extprocv3.ProcessingRequest, sel *selection) request {
	var r request
	switch m.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		r.phase = phaseRequestHeaders
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		r.phase = phaseResponseHeaders
	case *extprocv3.ProcessingRequest_RequestBody:
		r.phase = phaseRequestBody
	case *extprocv3.ProcessingRequest_ResponseBody:
		r.phase = phaseResponseBody
	case *extprocv3.ProcessingRequest_RequestTrailers:
		r.phase = phaseRequestTrailers
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		r.phase = phaseResponseTrailers
	}
	r.observability = m.GetObservabilityMode()
	if st, ok := m.GetAttributes()[attributesKey]; ok {
		if sv, ok := st.GetFields()[sourceAddressAttr].GetKind().(*structpb.Value_StringValue); ok {
			r.peer, r.hasPeer = sv.StringValue, true
		}
		if sv, ok := st.GetFields()[destinationAddressAttr].GetKind().(*structpb.Value_StringValue); ok {
			r.destination = sv.StringValue
		}
	}
	for _, h := range m.GetRequestHeaders().GetHeaders().GetHeaders() {
		v := h.GetValue()
		if len(h.GetRawValue()) > 0 {
			v = string(h.GetRawValue())
		}
		key := asciiLower(h.GetKey())
		if sel.want != "" && key == sel.want {
			r.lines = append(r.lines, v)
		}
		switch {
		case sel.all:
			r.headers = append(r.headers, rawHeader{h.GetKey(), v})
		case slices.Contains(sel.policy, key):
			r.headers = append(r.headers, rawHeader{key, v})
		}
	}
	return r
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func sameRequest(a, b request) bool {
	return a.phase == b.phase && a.observability == b.observability && a.hasPeer == b.hasPeer &&
		a.peer == b.peer && a.destination == b.destination && slices.Equal(a.lines, b.lines) && slices.Equal(a.headers, b.headers)
}

// testSelections are what the decoder is checked with: the resolver's
// header alone, policy headers with and without it (one also read by the
// resolver, a pseudo-header, one sent in upper case by a seed), and every
// header.
var testSelections = []selection{
	{want: "x-forwarded-for"},
	{want: "x-real-ip"},
	{},
	{want: "x-forwarded-for", policy: []string{":authority", "x-forwarded-for", "x-real-ip", "x-tenant"}},
	{policy: []string{"x-real-ip"}},
	{want: "x-forwarded-for", all: true},
	{all: true},
}

func seedMessages(t testing.TB) [][]byte {
	H := func(kv ...string) []extproctest.Header {
		var out []extproctest.Header
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, extproctest.Header{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	var msgs []proto.Message
	for _, req := range []extproctest.Request{
		{},
		{SourceAddress: "10.0.0.1:1234", Headers: H("x-forwarded-for", "1.2.3.4, 10.0.0.1", "X-Forwarded-For", "5.6.7.8", "x-real-ip", "9.9.9.9")},
		{SourceAddress: "[2001:db8::1]:443", Headers: H("x-forwarded-for", "", "x-forwarded-for", "2001:db8::2"), UseValue: true},
		{SourceAddress: "10.0.0.1:1", ObservabilityMode: true},
	} {
		for ph := extproctest.RequestHeaders; ph <= extproctest.ResponseTrailers; ph++ {
			msgs = append(msgs, extproctest.Message(req, ph, ph == extproctest.RequestHeaders))
		}
	}
	// Attributes of other filters, and a non-string source.address.
	msgs = append(msgs,
		&extprocv3.ProcessingRequest{Attributes: map[string]*structpb.Struct{
			"other":       {Fields: map[string]*structpb.Value{"source.address": structpb.NewStringValue("1.1.1.1:1")}},
			attributesKey: {Fields: map[string]*structpb.Value{"source.address": structpb.NewNumberValue(5), "x": structpb.NewBoolValue(true)}},
		}, Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{}}},
		&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "x-forwarded-for", Value: "v", RawValue: []byte("raw")}, {Key: "x-forwarded-for"}}},
		}}},
	)
	var out [][]byte
	for _, m := range msgs {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	// Non-canonical encodings protobuf accepts: a repeated oneof member
	// (merged), a oneof replaced and set again, duplicate map entries (the
	// last wins), and a second value in one map entry (merged).
	hdr := func(k, v string) []byte {
		hv := protowire.AppendTag(nil, 1, protowire.BytesType)
		hv = protowire.AppendString(hv, k)
		hv = protowire.AppendTag(hv, 3, protowire.BytesType)
		hv = protowire.AppendString(hv, v)
		hm := protowire.AppendTag(nil, 1, protowire.BytesType)
		hm = protowire.AppendBytes(hm, hv)
		hh := protowire.AppendTag(nil, 1, protowire.BytesType)
		return protowire.AppendBytes(hh, hm)
	}
	field := func(b []byte, num protowire.Number, v []byte) []byte {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		return protowire.AppendBytes(b, v)
	}
	attr := func(key, peer string) []byte {
		val := protowire.AppendTag(nil, 3, protowire.BytesType)
		val = protowire.AppendString(val, peer)
		fe := field(nil, 1, []byte("source.address"))
		fe = field(fe, 2, val)
		st := field(nil, 1, fe)
		e := field(nil, 1, []byte(key))
		return field(e, 2, st)
	}
	var nc []byte
	nc = field(nc, 2, hdr("x-forwarded-for", "1.1.1.1"))
	nc = field(nc, 4, nil) // request_body replaces request_headers
	nc = field(nc, 2, hdr("x-forwarded-for", "2.2.2.2"))
	nc = field(nc, 2, hdr("x-forwarded-for", "3.3.3.3"))
	nc = field(nc, 9, attr(attributesKey, "4.4.4.4:1"))
	nc = field(nc, 9, attr(attributesKey, "5.5.5.5:1"))
	nc = field(nc, 9, attr("other", "6.6.6.6:1"))
	out = append(out, nc)
	return out
}

func TestParseRequestMatchesProto(t *testing.T) {
	for i, msg := range seedMessages(t) {
		m := &extprocv3.ProcessingRequest{}
		if err := proto.Unmarshal(msg, m); err != nil {
			t.Fatalf("seed %d: %v", i, err)
		}
		for _, sel := range testSelections {
			got, err := parseRequest(msg, &sel, nil, nil)
			if err != nil {
				t.Fatalf("seed %d: %v", i, err)
			}
			if ref := reference(m, &sel); !sameRequest(got, ref) {
				t.Errorf("seed %d selection %+v:\n got %+v\nwant %+v", i, sel, got, ref)
			}
		}
	}
	// The non-canonical seed, spelled out.
	seeds := seedMessages(t)
	sel := selection{want: "x-forwarded-for", policy: []string{"x-forwarded-for"}}
	got, err := parseRequest(seeds[len(seeds)-1], &sel, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := request{phase: phaseRequestHeaders, hasPeer: true, peer: "5.5.5.5:1", lines: []string{"2.2.2.2", "3.3.3.3"},
		headers: []rawHeader{{"x-forwarded-for", "2.2.2.2"}, {"x-forwarded-for", "3.3.3.3"}}}
	if !sameRequest(got, want) {
		t.Errorf("non-canonical: got %+v, want %+v", got, want)
	}
}

func TestParseRequestPolicyHeaders(t *testing.T) {
	req := extproctest.Request{
		SourceAddress: "10.0.0.1:1",
		Headers: hdrs(":authority", "example.com", "X-Tenant", "acme", "x-forwarded-for", "1.2.3.4",
			"cookie", "a=b", "x-tenant", "", "x-forwarded-for", "5.6.7.8"),
	}
	msg, err := proto.Marshal(extproctest.Message(req, extproctest.RequestHeaders, true))
	if err != nil {
		t.Fatal(err)
	}
	valueOnly, err := proto.Marshal(extproctest.Message(extproctest.Request{Headers: req.Headers, UseValue: true}, extproctest.RequestHeaders, true))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		msg       []byte
		sel       selection
		wantLines []string
		want      []rawHeader
	}{
		{
			name:      "declared names, request order, repeated lines kept",
			msg:       msg,
			sel:       selection{want: "x-forwarded-for", policy: []string{"x-forwarded-for", "x-tenant"}},
			wantLines: []string{"1.2.3.4", "5.6.7.8"},
			want:      []rawHeader{{"x-tenant", "acme"}, {"x-forwarded-for", "1.2.3.4"}, {"x-tenant", ""}, {"x-forwarded-for", "5.6.7.8"}},
		},
		{
			name: "value field fallback, no resolver header",
			msg:  valueOnly,
			sel:  selection{policy: []string{"cookie", "x-absent"}},
			want: []rawHeader{{"cookie", "a=b"}},
		},
		{
			name:      "every header",
			msg:       msg,
			sel:       selection{want: "x-forwarded-for", all: true},
			wantLines: []string{"1.2.3.4", "5.6.7.8"},
			want: []rawHeader{{":authority", "example.com"}, {"X-Tenant", "acme"}, {"x-forwarded-for", "1.2.3.4"},
				{"cookie", "a=b"}, {"x-tenant", ""}, {"x-forwarded-for", "5.6.7.8"}},
		},
		{
			name:      "none",
			msg:       msg,
			sel:       selection{want: "x-forwarded-for"},
			wantLines: []string{"1.2.3.4", "5.6.7.8"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRequest(tt.msg, &tt.sel, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.lines, tt.wantLines) || !slices.Equal(got.headers, tt.want) {
				t.Errorf("lines %q headers %q\nwant lines %q headers %q", got.lines, got.headers, tt.wantLines, tt.want)
			}
		})
	}
}

func TestParseRequestMalformed(t *testing.T) {
	good := seedMessages(t)[1]
	for n := 1; n < len(good); n++ {
		m := &extprocv3.ProcessingRequest{}
		perr := proto.Unmarshal(good[:n], m)
		sel := selection{want: "x-forwarded-for", all: true}
		_, err := parseRequest(good[:n], &sel, nil, nil)
		if perr != nil && err == nil {
			// Accepting more than protobuf is fine only when protobuf
			// rejects for a reason the decoder does not check (UTF-8).
			t.Logf("prefix %d: protobuf rejects (%v), parseRequest accepts", n, perr)
		}
		if perr == nil && err != nil {
			t.Errorf("prefix %d: protobuf accepts, parseRequest fails: %v", n, err)
		}
	}
}

// checkPluginRequest checks that what got hands the policies converts into
// the plugin API's request as plugins/host builds it, that this marshals
// (a failure would fail every plugin call and apply its on_error), and that
// the header values arrive byte for byte.
func checkPluginRequest(t *testing.T, sel *selection, got request) {
	t.Helper()
	pr := host.DecideRequest(newPolicyRequest(netip.Addr{}, got.peer, clientip.Result{}, 0, got.destination, got.headers))
	b, err := proto.Marshal(pr)
	if err != nil {
		t.Fatalf("selection %+v: the plugin request for %+v does not marshal: %v", sel, got, err)
	}
	var back policypb.DecideRequest
	if err := proto.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	hs := back.GetHeaders()
	if len(hs) != len(got.headers) {
		t.Fatalf("selection %+v: %d headers for the plugin, want %d", sel, len(hs), len(got.headers))
	}
	for i, h := range hs {
		if string(h.GetValue()) != got.headers[i].value {
			t.Fatalf("selection %+v: header %d value %q reached the plugin as %q", sel, i, got.headers[i].value, h.GetValue())
		}
	}
}

// FuzzParseRequest checks the wire decoder against proto.Unmarshal: whenever
// protobuf accepts the bytes, parseRequest must accept them too and read the
// same phase, observability flag, source.address, header lines and policy
// headers, for each of testSelections. Whenever parseRequest accepts bytes,
// protobuf or not, what it collects for the policies must convert into a
// plugin request (checkPluginRequest).
func FuzzParseRequest(f *testing.F) {
	for _, s := range seedMessages(f) {
		f.Add(s)
	}
	// Bytes that are not UTF-8: in raw_value (protobuf accepts them), and in
	// a key, a value and source.address (only the decoder does).
	utf8Seed, err := proto.Marshal(extproctest.Message(extproctest.Request{SourceAddress: "10.0.0.1:1",
		Headers: hdrs("x-tenant", "evil\xff", "x-real-ip", "\xc3", "user-agent", "a\x80b")}, extproctest.RequestHeaders, true))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(utf8Seed)
	hv := protowire.AppendString(protowire.AppendTag(nil, fieldHVKey, protowire.BytesType), "x-t\xff")
	hv = protowire.AppendString(protowire.AppendTag(hv, fieldHVValue, protowire.BytesType), "v\xff")
	hm := protowire.AppendBytes(protowire.AppendTag(nil, fieldHeaderMapHeaders, protowire.BytesType), hv)
	hh := protowire.AppendBytes(protowire.AppendTag(nil, fieldHTTPHeaders, protowire.BytesType), hm)
	bad := protowire.AppendBytes(protowire.AppendTag(nil, protowire.Number(phaseRequestHeaders), protowire.BytesType), hh)
	val := protowire.AppendString(protowire.AppendTag(nil, fieldValueString, protowire.BytesType), "1.2.3.4:5\xff")
	fe := protowire.AppendString(protowire.AppendTag(nil, fieldMapKey, protowire.BytesType), sourceAddressAttr)
	fe = protowire.AppendBytes(protowire.AppendTag(fe, fieldMapValue, protowire.BytesType), val)
	st := protowire.AppendBytes(protowire.AppendTag(nil, fieldStructFields, protowire.BytesType), fe)
	entry := protowire.AppendString(protowire.AppendTag(nil, fieldMapKey, protowire.BytesType), attributesKey)
	entry = protowire.AppendBytes(protowire.AppendTag(entry, fieldMapValue, protowire.BytesType), st)
	bad = protowire.AppendBytes(protowire.AppendTag(bad, fieldReqAttributes, protowire.BytesType), entry)
	f.Add(bad)
	f.Fuzz(func(t *testing.T, msg []byte) {
		m := &extprocv3.ProcessingRequest{}
		perr := proto.Unmarshal(msg, m)
		for _, sel := range testSelections {
			got, err := parseRequest(msg, &sel, nil, nil)
			if err == nil {
				checkPluginRequest(t, &sel, got)
			}
			if perr != nil {
				continue
			}
			if err != nil {
				t.Fatalf("selection %+v: protobuf accepts, parseRequest fails: %v", sel, err)
			}
			if ref := reference(m, &sel); !sameRequest(got, ref) {
				t.Fatalf("selection %+v:\n got %+v\nwant %+v", sel, got, ref)
			}
		}
	})
}

func BenchmarkParseRequest(b *testing.B) {
	msg := benchRequest(b)
	var lines [8]string
	sel := selection{want: "x-forwarded-for"}
	b.ReportAllocs()
	for b.Loop() {
		r, err := parseRequest(msg, &sel, lines[:0], nil)
		if err != nil || len(r.lines) != 1 {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseRequestPolicyHeaders is BenchmarkParseRequest with headers
// collected for policies: two declared names, or every header.
func BenchmarkParseRequestPolicyHeaders(b *testing.B) {
	msg := benchRequest(b)
	for _, bc := range []struct {
		name string
		sel  selection
		want int
	}{
		{"declared", selection{want: "x-forwarded-for", policy: []string{"user-agent", "x-request-id"}}, 2},
		{"all", selection{want: "x-forwarded-for", all: true}, 13},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var lines [8]string
			var hdrs [16]rawHeader
			b.ReportAllocs()
			for b.Loop() {
				r, err := parseRequest(msg, &bc.sel, lines[:0], hdrs[:0])
				if err != nil || len(r.lines) != 1 || len(r.headers) != bc.want {
					b.Fatal(err, len(r.headers))
				}
			}
		})
	}
}
