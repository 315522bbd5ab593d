package extproctest

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func headersAnswer(opts ...*corev3.HeaderValueOption) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
		Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: opts}},
	}}}
}

func TestCheckResponse(t *testing.T) {
	good := &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-real-ip", RawValue: []byte("192.0.2.1")}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
	tests := []struct {
		name string
		ph   Phase
		resp *extprocv3.ProcessingResponse
		ok   bool
	}{
		{"good", RequestHeaders, headersAnswer(good), true},
		//lint:ignore SA1019 realipd writes append explicitly (false) as its contract says; Envoy still reads it
		{"explicit append false", RequestHeaders, headersAnswer(&corev3.HeaderValueOption{Header: good.Header, Append: wrapperspb.Bool(false)}), true},
		//lint:ignore SA1019 realipd writes append explicitly (false) as its contract says; Envoy still reads it
		{"append and append_action both set", RequestHeaders, headersAnswer(&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x", RawValue: []byte("v")}, Append: wrapperspb.Bool(false), AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}), false},
		//lint:ignore SA1019 realipd writes append explicitly (false) as its contract says; Envoy still reads it
		{"explicit append false", RequestHeaders, headersAnswer(&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x", RawValue: []byte("v")}, Append: wrapperspb.Bool(false)}), true},
		{"value instead of raw_value", RequestHeaders, headersAnswer(&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x", Value: "v"}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}), false},
		{"implicit append", RequestHeaders, headersAnswer(&corev3.HeaderValueOption{Header: good.Header}), false},
		{"fails validation", RequestHeaders, headersAnswer(&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: ""}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}), false},
		{"wrong oneof", ResponseHeaders, headersAnswer(good), false},
		{"no oneof", RequestHeaders, &extprocv3.ProcessingResponse{}, false},
		{"immediate with status", RequestBody, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: 403}}}}, true},
		{"immediate without status", RequestHeaders, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{}}}, false},
		{"trailers", ResponseTrailers, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}, true},
	}
	for _, tt := range tests {
		err := CheckResponse(tt.ph, tt.resp)
		if (err == nil) != tt.ok {
			t.Errorf("%s: CheckResponse = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: error %v does not wrap ErrProtocol", tt.name, err)
		}
	}
}

// scripted is an ext_proc server whose answer to each message is decided by
// a function (nil: no answer).
type scripted struct {
	extprocv3.UnimplementedExternalProcessorServer
	answer func(*extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse
}

func (s scripted) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, r := range s.answer(req) {
			if err := stream.Send(r); err != nil {
				return err
			}
		}
	}
}

func serve(t *testing.T, s scripted) *Client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, s)
	go gs.Serve(ln)
	c, err := Dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		gs.Stop()
	})
	return c
}

func TestProcessAgainstMisbehavingServers(t *testing.T) {
	ok := headersAnswer(&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-real-ip", RawValue: []byte("192.0.2.1")}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
	tests := []struct {
		name    string
		req     Request
		answer  func(*extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse
		wantErr error // nil: success
	}{
		{"well-behaved", Request{SourceAddress: "192.0.2.1:1"}, func(*extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse {
			return []*extprocv3.ProcessingResponse{ok}
		}, nil},
		{"silent", Request{}, func(*extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse { return nil }, ErrTimeout},
		{"answers twice", Request{}, func(*extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse {
			return []*extprocv3.ProcessingResponse{ok, ok}
		}, ErrProtocol},
		{"answers observability messages", Request{ObservabilityMode: true}, func(*extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse {
			return []*extprocv3.ProcessingResponse{ok}
		}, ErrProtocol},
		{"wrong oneof", Request{}, func(*extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse {
			return []*extprocv3.ProcessingResponse{{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}}
		}, ErrProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := serve(t, scripted{answer: tt.answer})
			begin := time.Now()
			_, err := c.Process(context.Background(), tt.req)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Process = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == ErrTimeout && time.Since(begin) > 5*time.Second {
				t.Errorf("timeout took %v, want about %v", time.Since(begin), DefaultMessageTimeout)
			}
		})
	}
}

func TestMessageLikeEnvoy(t *testing.T) {
	req := Request{Headers: []Header{{Name: "x-forwarded-for", Value: "192.0.2.9"}}, SourceAddress: "[2001:db8::1]:443"}
	first := Message(req, RequestHeaders, true)
	if err := first.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	addr := first.GetAttributes()[AttributesKey].GetFields()["source.address"]
	if sv, ok := addr.GetKind().(*structpb.Value_StringValue); !ok || sv.StringValue != "[2001:db8::1]:443" {
		t.Errorf("source.address attribute %v", addr)
	}
	if first.GetProtocolConfig() == nil {
		t.Error("first message lacks protocol_config")
	}
	h := first.GetRequestHeaders().GetHeaders().GetHeaders()[0]
	if string(h.GetRawValue()) != "192.0.2.9" || h.GetValue() != "" {
		t.Errorf("header %v: want raw_value only", h)
	}
	later := Message(req, ResponseHeaders, false)
	if later.GetProtocolConfig() != nil || later.GetAttributes() != nil {
		t.Error("a later message repeats protocol_config or attributes")
	}
	if m := Message(Request{}, RequestHeaders, true); m.GetAttributes() != nil {
		t.Error("attributes sent without a source address")
	}
}
