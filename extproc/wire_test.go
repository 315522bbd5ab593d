package extproc

import (
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/realipd/realipd/extproc/extproctest"
)

// reference extracts with the generated types what parseRequest reads.
func reference(m *extprocv3.ProcessingRequest, want string) request {
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
	}
	if want != "" {
		for _, h := range m.GetRequestHeaders().GetHeaders().GetHeaders() {
			if asciiLower(h.GetKey()) != want {
				continue
			}
			if len(h.GetRawValue()) > 0 {
				r.lines = append(r.lines, string(h.GetRawValue()))
			} else {
				r.lines = append(r.lines, h.GetValue())
			}
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
		a.peer == b.peer && slices.Equal(a.lines, b.lines)
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
		for _, want := range []string{"x-forwarded-for", "x-real-ip", ""} {
			got, err := parseRequest(msg, want, nil)
			if err != nil {
				t.Fatalf("seed %d: %v", i, err)
			}
			if ref := reference(m, want); !sameRequest(got, ref) {
				t.Errorf("seed %d want %q:\n got %+v\nwant %+v", i, want, got, ref)
			}
		}
	}
	// The non-canonical seed, spelled out.
	seeds := seedMessages(t)
	got, err := parseRequest(seeds[len(seeds)-1], "x-forwarded-for", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := request{phase: phaseRequestHeaders, hasPeer: true, peer: "5.5.5.5:1", lines: []string{"2.2.2.2", "3.3.3.3"}}
	if !sameRequest(got, want) {
		t.Errorf("non-canonical: got %+v, want %+v", got, want)
	}
}

func TestParseRequestMalformed(t *testing.T) {
	good := seedMessages(t)[1]
	for n := 1; n < len(good); n++ {
		m := &extprocv3.ProcessingRequest{}
		perr := proto.Unmarshal(good[:n], m)
		_, err := parseRequest(good[:n], "x-forwarded-for", nil)
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

// FuzzParseRequest checks the wire decoder against proto.Unmarshal: whenever
// protobuf accepts the bytes, parseRequest must accept them too and read the
// same phase, observability flag, source.address and header lines.
func FuzzParseRequest(f *testing.F) {
	for _, s := range seedMessages(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		got, err := parseRequest(msg, "x-forwarded-for", nil)
		m := &extprocv3.ProcessingRequest{}
		if perr := proto.Unmarshal(msg, m); perr != nil {
			return
		}
		if err != nil {
			t.Fatalf("protobuf accepts, parseRequest fails: %v", err)
		}
		if ref := reference(m, "x-forwarded-for"); !sameRequest(got, ref) {
			t.Fatalf("got %+v\nwant %+v", got, ref)
		}
	})
}

func BenchmarkParseRequest(b *testing.B) {
	msg := benchRequest(b)
	var lines [8]string
	b.ReportAllocs()
	for b.Loop() {
		r, err := parseRequest(msg, "x-forwarded-for", lines[:0])
		if err != nil || len(r.lines) != 1 {
			b.Fatal(err)
		}
	}
}
