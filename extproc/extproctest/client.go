// Package extproctest is an ext_proc client that behaves like Envoy's
// ext_proc HTTP filter, for tests and benchmarks of ext_proc servers.
//
// Like Envoy, it opens one Process stream per HTTP request, sends the
// request attributes (source.address under "envoy.filters.http.ext_proc")
// and protocol_config with the first message, waits at most MessageTimeout
// (Envoy's default 200 ms) for each answer, stops at an ImmediateResponse,
// and half-closes the stream after the last answer it needs; it then expects
// the server to end the stream with status OK. In observability mode it
// sends every message without waiting and expects no answer at all.
//
// Every answer is checked as Envoy would reject it: ValidateAll must pass,
// the oneof must match the message (or be an immediate_response), header
// mutations must carry their value in raw_value only with an explicit append
// setting, and an ImmediateResponse must carry an explicit status. A
// violation is returned as an error wrapping ErrProtocol.
//
// A Client is safe for concurrent use.
package extproctest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
)

// DefaultMessageTimeout is Envoy's default ext_proc message_timeout.
const DefaultMessageTimeout = 200 * time.Millisecond

// AttributesKey is the ProcessingRequest.attributes key Envoy uses.
const AttributesKey = "envoy.filters.http.ext_proc"

// ErrProtocol marks an answer Envoy would reject.
var ErrProtocol = errors.New("extproctest: protocol violation")

// ErrTimeout marks an answer that did not arrive within MessageTimeout.
var ErrTimeout = errors.New("extproctest: message timeout")

// Phase is one ext_proc message kind.
type Phase int

// Phases, in the order Envoy sends them.
const (
	RequestHeaders Phase = iota
	RequestBody
	RequestTrailers
	ResponseHeaders
	ResponseBody
	ResponseTrailers
)

var phaseNames = [...]string{"request_headers", "request_body", "request_trailers", "response_headers", "response_body", "response_trailers"}

func (p Phase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", int(p))
}

// Header is one header line. Envoy sends lower-case names.
type Header struct{ Name, Value string }

// Request is one HTTP request as Envoy's ext_proc filter streams it.
type Request struct {
	// Headers are the request headers, pseudo-headers included; when empty,
	// a GET of / for host example.com is sent.
	Headers []Header
	// SourceAddress is the source.address attribute ("ip:port"); "" omits
	// the attribute, as Envoy does when request_attributes lacks it.
	SourceAddress string
	// DestinationAddress is the destination.address attribute (the address
	// the downstream connected to); "" omits it.
	DestinationAddress string
	// Phases lists the messages to send, in order; empty means
	// RequestHeaders only (realipd's shipped configuration).
	Phases []Phase
	// ObservabilityMode marks every message observability_mode.
	ObservabilityMode bool
	// UseValue sends header values in HeaderValue.value instead of
	// raw_value (Envoy before send_header_raw_value).
	UseValue bool
}

// Result is what the server answered.
type Result struct {
	// Responses holds the answers in order, one per message answered.
	Responses []*extprocv3.ProcessingResponse
	// Immediate is set when the server answered with an ImmediateResponse.
	Immediate *extprocv3.ImmediateResponse
}

// Client talks to one ext_proc server over one gRPC connection, like one
// Envoy worker.
type Client struct {
	conn *grpc.ClientConn
	pc   extprocv3.ExternalProcessorClient
	// MessageTimeout bounds the wait for each answer (and for the end of
	// the stream); default DefaultMessageTimeout.
	MessageTimeout time.Duration
}

// Dial connects to target: "host:port" (loopback) or "unix:///path".
func Dial(target string, opts ...grpc.DialOption) (*Client, error) {
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	if !strings.HasPrefix(target, "unix:") {
		target = "passthrough:///" + target
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("extproctest: dial %s: %w", target, err)
	}
	return &Client{conn: conn, pc: extprocv3.NewExternalProcessorClient(conn), MessageTimeout: DefaultMessageTimeout}, nil
}

// Conn returns the client's connection (for health checks and the like).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Process streams req on a new stream and returns the answers. The Result
// is never nil: on error it holds the answers received before it.
func (c *Client) Process(ctx context.Context, req Request) (*Result, error) {
	timeout := c.MessageTimeout
	if timeout <= 0 {
		timeout = DefaultMessageTimeout
	}
	phases := req.Phases
	if len(phases) == 0 {
		phases = []Phase{RequestHeaders}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := &Result{}
	stream, err := c.pc.Process(ctx)
	if err != nil {
		return res, fmt.Errorf("extproctest: open stream: %w", err)
	}
	for i, ph := range phases {
		msg := Message(req, ph, i == 0)
		if err := stream.Send(msg); err != nil {
			// The real error is in the stream status.
			_, rerr := stream.Recv()
			return res, fmt.Errorf("extproctest: send %s: %w", ph, errors.Join(err, rerr))
		}
		if req.ObservabilityMode {
			continue
		}
		resp, err := recvWithin(stream, cancel, timeout)
		if err != nil {
			return res, fmt.Errorf("extproctest: answer to %s: %w", ph, err)
		}
		if err := CheckResponse(ph, resp); err != nil {
			return res, err
		}
		res.Responses = append(res.Responses, resp)
		if imm := resp.GetImmediateResponse(); imm != nil {
			res.Immediate = imm
			break
		}
	}
	if err := stream.CloseSend(); err != nil {
		return res, fmt.Errorf("extproctest: half-close: %w", err)
	}
	resp, err := recvWithin(stream, cancel, timeout)
	switch {
	case err == nil:
		return res, fmt.Errorf("%w: unexpected answer after the last message (observability_mode %v): %v", ErrProtocol, req.ObservabilityMode, resp)
	case errors.Is(err, io.EOF):
		return res, nil
	default:
		return res, fmt.Errorf("extproctest: end of stream: %w", err)
	}
}

// recvWithin receives one message or the end of the stream within timeout;
// past it, the stream is cancelled and ErrTimeout returned.
func recvWithin(stream extprocv3.ExternalProcessor_ProcessClient, cancel context.CancelFunc, timeout time.Duration) (*extprocv3.ProcessingResponse, error) {
	var fired atomic.Bool
	t := time.AfterFunc(timeout, func() {
		fired.Store(true)
		cancel()
	})
	resp, err := stream.Recv()
	t.Stop()
	if fired.Load() {
		return nil, fmt.Errorf("%w after %v", ErrTimeout, timeout)
	}
	return resp, err
}

// Message builds the ProcessingRequest Envoy sends for phase ph of req;
// first marks the stream's first message (protocol_config, and attributes
// with the request headers).
func Message(req Request, ph Phase, first bool) *extprocv3.ProcessingRequest {
	msg := &extprocv3.ProcessingRequest{ObservabilityMode: req.ObservabilityMode}
	if first {
		msg.ProtocolConfig = &extprocv3.ProtocolConfiguration{
			RequestBodyMode:  extprocfilterv3.ProcessingMode_NONE,
			ResponseBodyMode: extprocfilterv3.ProcessingMode_NONE,
		}
	}
	headers := req.Headers
	if len(headers) == 0 {
		headers = []Header{{":method", "GET"}, {":path", "/"}, {":authority", "example.com"}, {":scheme", "http"}}
	}
	switch ph {
	case RequestHeaders:
		msg.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers:     headerMap(headers, req.UseValue),
			EndOfStream: !contains(req.Phases, RequestBody),
		}}
		attrs := map[string]*structpb.Value{}
		if req.SourceAddress != "" {
			attrs["source.address"] = structpb.NewStringValue(req.SourceAddress)
		}
		if req.DestinationAddress != "" {
			attrs["destination.address"] = structpb.NewStringValue(req.DestinationAddress)
		}
		if len(attrs) > 0 {
			msg.Attributes = map[string]*structpb.Struct{AttributesKey: {Fields: attrs}}
		}
	case RequestBody:
		msg.Request = &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte("hello"), EndOfStream: true}}
	case RequestTrailers:
		msg.Request = &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{Trailers: headerMap([]Header{{"x-trailer", "1"}}, req.UseValue)}}
	case ResponseHeaders:
		msg.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
			Headers: headerMap([]Header{{":status", "200"}, {"content-type", "text/plain"}}, req.UseValue),
		}}
	case ResponseBody:
		msg.Request = &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: []byte("world"), EndOfStream: true}}
	case ResponseTrailers:
		msg.Request = &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{Trailers: headerMap([]Header{{"grpc-status", "0"}}, req.UseValue)}}
	}
	return msg
}

func contains(ps []Phase, p Phase) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

func headerMap(hs []Header, useValue bool) *corev3.HeaderMap {
	m := &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, len(hs))}
	for i, h := range hs {
		if useValue {
			m.Headers[i] = &corev3.HeaderValue{Key: h.Name, Value: h.Value}
		} else {
			m.Headers[i] = &corev3.HeaderValue{Key: h.Name, RawValue: []byte(h.Value)}
		}
	}
	return m
}

// CheckResponse reports, wrapping ErrProtocol, why Envoy would reject resp
// as the answer to a message of phase ph.
func CheckResponse(ph Phase, resp *extprocv3.ProcessingResponse) error {
	if err := resp.ValidateAll(); err != nil {
		return fmt.Errorf("%w: answer to %s fails validation: %v", ErrProtocol, ph, err)
	}
	var mutations []*extprocv3.HeaderMutation
	ok := false
	switch r := resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		ok = ph == RequestHeaders
		mutations = append(mutations, r.RequestHeaders.GetResponse().GetHeaderMutation())
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		ok = ph == ResponseHeaders
		mutations = append(mutations, r.ResponseHeaders.GetResponse().GetHeaderMutation())
	case *extprocv3.ProcessingResponse_RequestBody:
		ok = ph == RequestBody
		mutations = append(mutations, r.RequestBody.GetResponse().GetHeaderMutation())
	case *extprocv3.ProcessingResponse_ResponseBody:
		ok = ph == ResponseBody
		mutations = append(mutations, r.ResponseBody.GetResponse().GetHeaderMutation())
	case *extprocv3.ProcessingResponse_RequestTrailers:
		ok = ph == RequestTrailers
		mutations = append(mutations, r.RequestTrailers.GetHeaderMutation())
	case *extprocv3.ProcessingResponse_ResponseTrailers:
		ok = ph == ResponseTrailers
		mutations = append(mutations, r.ResponseTrailers.GetHeaderMutation())
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		ok = true
		if r.ImmediateResponse.GetStatus().GetCode() == 0 {
			return fmt.Errorf("%w: immediate response without an explicit status", ErrProtocol)
		}
		mutations = append(mutations, r.ImmediateResponse.GetHeaders())
	case nil:
		return fmt.Errorf("%w: answer to %s has no response oneof set", ErrProtocol, ph)
	default:
		return fmt.Errorf("%w: answer to %s is %T", ErrProtocol, ph, r)
	}
	if !ok {
		return fmt.Errorf("%w: answer to %s is %T", ErrProtocol, ph, resp.GetResponse())
	}
	for _, m := range mutations {
		for _, o := range m.GetSetHeaders() {
			h := o.GetHeader()
			if h.GetValue() != "" {
				return fmt.Errorf("%w: header %q written in value, not raw_value", ErrProtocol, h.GetKey())
			}
			//nolint:staticcheck // Append is deprecated; an explicit setting of either field is what counts.
			//lint:ignore SA1019 realipd writes append explicitly (false) as its contract says; Envoy still reads it
			if o.GetAppend() == nil && o.GetAppendAction() == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
				return fmt.Errorf("%w: header %q without an explicit append setting", ErrProtocol, h.GetKey())
			}
			//nolint:staticcheck // as above
			//lint:ignore SA1019 realipd writes append explicitly (false) as its contract says; Envoy still reads it
			if o.GetAppend() != nil && o.GetAppendAction() != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
				return fmt.Errorf("%w: header %q sets both append and append_action, which Envoy refuses", ErrProtocol, h.GetKey())
			}
		}
	}
	return nil
}

// Overwrites reports whether Envoy applies o by replacing every existing
// value of the header (append false, or append_action
// OVERWRITE_IF_EXISTS_OR_ADD).
func Overwrites(o *corev3.HeaderValueOption) bool {
	//nolint:staticcheck // Append is deprecated but still read by Envoy.
	//lint:ignore SA1019 realipd writes append explicitly (false) as its contract says; Envoy still reads it
	if a := o.GetAppend(); a != nil {
		return !a.GetValue() && o.GetAppendAction() == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
	}
	return o.GetAppendAction() == corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
}

// SetHeader returns the value the answers set for header name (the last
// one), and whether any did.
func (r *Result) SetHeader(name string) (string, bool) {
	var (
		v  string
		ok bool
	)
	for _, m := range r.mutations() {
		for _, o := range m.GetSetHeaders() {
			if o.GetHeader().GetKey() == name {
				v, ok = string(o.GetHeader().GetRawValue()), true
			}
		}
	}
	return v, ok
}

// SetHeaderOption returns the HeaderValueOption that set header name.
func (r *Result) SetHeaderOption(name string) *corev3.HeaderValueOption {
	var opt *corev3.HeaderValueOption
	for _, m := range r.mutations() {
		for _, o := range m.GetSetHeaders() {
			if o.GetHeader().GetKey() == name {
				opt = o
			}
		}
	}
	return opt
}

// Removed reports whether an answer removes header name.
func (r *Result) Removed(name string) bool {
	for _, m := range r.mutations() {
		for _, h := range m.GetRemoveHeaders() {
			if h == name {
				return true
			}
		}
	}
	return false
}

func (r *Result) mutations() []*extprocv3.HeaderMutation {
	var out []*extprocv3.HeaderMutation
	for _, resp := range r.Responses {
		switch x := resp.GetResponse().(type) {
		case *extprocv3.ProcessingResponse_RequestHeaders:
			out = append(out, x.RequestHeaders.GetResponse().GetHeaderMutation())
		case *extprocv3.ProcessingResponse_ImmediateResponse:
			out = append(out, x.ImmediateResponse.GetHeaders())
		}
	}
	return out
}

// Metadata returns the string fields of dynamic metadata namespace ns,
// merged over all answers (nil when none carried it). A non-string field is
// reported as an error.
func (r *Result) Metadata(ns string) (map[string]string, error) {
	var out map[string]string
	for _, resp := range r.Responses {
		v, ok := resp.GetDynamicMetadata().GetFields()[ns]
		if !ok {
			continue
		}
		st := v.GetStructValue()
		if st == nil {
			return nil, fmt.Errorf("%w: metadata namespace %q is not a struct", ErrProtocol, ns)
		}
		if out == nil {
			out = make(map[string]string)
		}
		for k, f := range st.GetFields() {
			s, ok := f.GetKind().(*structpb.Value_StringValue)
			if !ok {
				return nil, fmt.Errorf("%w: metadata field %s.%s is %T, want a string", ErrProtocol, ns, k, f.GetKind())
			}
			out[k] = s.StringValue
		}
	}
	return out, nil
}
