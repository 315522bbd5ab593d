package extproc

import (
	"maps"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/extproc/extproctest"
)

// expectedMetadata builds with the generated types what the encoder writes.
func expectedMetadata(md *metadata) *structpb.Struct {
	fields := map[string]*structpb.Value{}
	for k, v := range md.extra {
		fields[k] = structpb.NewStringValue(v)
	}
	for _, f := range md.fields {
		fields[f.key] = structpb.NewStringValue(f.value)
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		md.namespace: structpb.NewStructValue(&structpb.Struct{Fields: fields}),
	}}
}

func expectedMutation(m *mutation) *extprocv3.HeaderMutation {
	out := &extprocv3.HeaderMutation{RemoveHeaders: m.remove}
	for _, h := range m.set {
		out.SetHeaders = append(out.SetHeaders, &corev3.HeaderValueOption{
			Header: &corev3.HeaderValue{Key: h.name, RawValue: []byte(h.value)},
			//lint:ignore SA1019 realipd writes append explicitly (false) as its contract says; Envoy still reads it
			Append: wrapperspb.Bool(false),
		})
	}
	return out
}

func checkEncoded(t *testing.T, got []byte, want *extprocv3.ProcessingResponse) {
	t.Helper()
	resp := &extprocv3.ProcessingResponse{}
	if err := proto.Unmarshal(got, resp); err != nil {
		t.Fatalf("encoded answer does not decode: %v", err)
	}
	if !proto.Equal(resp, want) {
		t.Fatalf("encoded answer\n got %v\nwant %v", resp, want)
	}
}

func encodeCases() []struct {
	name string
	mut  mutation
	md   metadata
} {
	long := strings.Repeat("v", 300)
	huge := strings.Repeat("h", 3000) // past the pooled buffer size
	return []struct {
		name string
		mut  mutation
		md   metadata
	}{
		{"typical", mutation{set: []header{{"x-real-ip", "203.0.113.7"}}},
			metadata{namespace: "realipd", fields: []metaField{{"client_ip", "203.0.113.7"}, {"peer", "10.0.0.1:1"}, {"decision", "allow"}}}},
		{"empty values and removal", mutation{set: []header{{"x-empty", ""}}, remove: []string{"x-real-ip"}},
			metadata{namespace: "n", fields: []metaField{{"client_ip", ""}, {"peer", ""}}}},
		{"multi-byte lengths", mutation{set: []header{{"x-long", long}, {"x-real-ip", "2001:db8::1"}}},
			metadata{namespace: "realipd", fields: []metaField{{"client_ip", long}}, extra: map[string]string{"geo": long, "client_ip": "ignored"}}},
		{"larger than a pooled buffer", mutation{set: []header{{"x-huge", huge}}},
			metadata{namespace: "realipd", fields: []metaField{{"policy", huge}}}},
		{"nothing to mutate", mutation{}, metadata{namespace: "realipd"}},
	}
}

func TestEncodeHeadersResponse(t *testing.T) {
	for _, tc := range encodeCases() {
		t.Run(tc.name, func(t *testing.T) {
			buf := encodeHeadersResponse(answerPool, &tc.mut, &tc.md)
			want := &extprocv3.ProcessingResponse{
				Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
					Response: &extprocv3.CommonResponse{HeaderMutation: expectedMutation(&tc.mut)},
				}},
				DynamicMetadata: expectedMetadata(&tc.md),
			}
			checkEncoded(t, *buf, want)
			answerPool.Put(buf)
		})
	}
}

func TestEncodeImmediateResponse(t *testing.T) {
	for _, tc := range encodeCases() {
		for _, status := range []int{403, 429, 503} {
			buf := encodeImmediateResponse(answerPool, status, &tc.mut, decide.DenyBody, decide.DenyDetails, &tc.md)
			want := &extprocv3.ProcessingResponse{
				Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
					Status:  &typev3.HttpStatus{Code: typev3.StatusCode(status)},
					Headers: expectedMutation(&tc.mut),
					Body:    []byte(decide.DenyBody),
					Details: decide.DenyDetails,
				}},
				DynamicMetadata: expectedMetadata(&tc.md),
			}
			checkEncoded(t, *buf, want)
			resp := &extprocv3.ProcessingResponse{}
			_ = proto.Unmarshal(*buf, resp)
			if err := extproctest.CheckResponse(extproctest.RequestHeaders, resp); err != nil {
				t.Error(err)
			}
		}
	}
}

func TestPassThroughAnswers(t *testing.T) {
	for p := phaseRequestHeaders; p <= phaseResponseTrailers; p++ {
		resp := &extprocv3.ProcessingResponse{}
		if err := proto.Unmarshal(passThrough[p], resp); err != nil {
			t.Fatal(err)
		}
		if err := extproctest.CheckResponse(extproctest.Phase([]int{0, 0, 0, 3, 1, 4, 2, 5}[p]), resp); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// FuzzEncode checks that answers built from arbitrary strings decode to
// exactly what was encoded.
func FuzzEncode(f *testing.F) {
	f.Add("x-real-ip", "203.0.113.7", "realipd", "client_ip", "peer", "geo", 403)
	f.Add("", "", "", "", "", "", 200)
	f.Add(strings.Repeat("k", 200), strings.Repeat("v", 5000), "ns", "a", "b", "c", 599)
	f.Fuzz(func(t *testing.T, name, value, ns, k1, v1, extra string, status int) {
		if status < 0 || status > 1<<20 {
			return
		}
		// Protobuf strings must be UTF-8 for the reference to decode.
		for _, s := range []string{name, value, ns, k1, v1, extra} {
			if !validUTF8(s) {
				return
			}
		}
		mut := mutation{set: []header{{name, value}}, remove: []string{name}}
		md := metadata{namespace: ns, fields: []metaField{{k1, v1}}, extra: map[string]string{extra: value}}
		want := expectedMetadata(&md)
		buf := encodeHeadersResponse(answerPool, &mut, &md)
		resp := &extprocv3.ProcessingResponse{}
		if err := proto.Unmarshal(*buf, resp); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(resp.GetDynamicMetadata(), want) {
			t.Fatalf("metadata %v, want %v", resp.GetDynamicMetadata(), want)
		}
		if !proto.Equal(resp.GetRequestHeaders().GetResponse().GetHeaderMutation(), expectedMutation(&mut)) {
			t.Fatalf("mutation %v", resp.GetRequestHeaders())
		}
		buf = encodeImmediateResponse(answerPool, status, &mut, value, extra, &md)
		if err := proto.Unmarshal(*buf, resp); err != nil {
			t.Fatal(err)
		}
		imm := resp.GetImmediateResponse()
		if int(imm.GetStatus().GetCode()) != status || string(imm.GetBody()) != value || imm.GetDetails() != extra {
			t.Fatalf("immediate %v", imm)
		}
		if got := resp.GetDynamicMetadata().GetFields()[ns].GetStructValue().GetFields(); len(got) != len(want.GetFields()[ns].GetStructValue().GetFields()) {
			t.Fatalf("metadata fields %v", slices.Collect(maps.Keys(got)))
		}
	})
}

func validUTF8(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }
