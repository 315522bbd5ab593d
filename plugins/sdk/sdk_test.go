package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	policypb "github.com/realipd/realipd/plugins/proto"
)

func TestConfigDecode(t *testing.T) {
	type target struct {
		List string   `json:"list"`
		TTL  Duration `json:"ttl"`
	}
	tests := []struct {
		name    string
		m       map[string]any
		want    target
		empty   bool
		wantErr string
	}{
		{name: "nil", empty: true},
		{name: "values", m: map[string]any{"list": "a.txt", "ttl": "1m30s"}, want: target{List: "a.txt", TTL: Duration{90 * time.Second}}},
		{name: "unknown key", m: map[string]any{"lst": "a.txt"}, wantErr: `unknown field "lst"`},
		{name: "bad duration", m: map[string]any{"ttl": 30}, wantErr: "duration must be a string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewConfig("p", tt.m)
			if err != nil {
				t.Fatal(err)
			}
			if c.Empty() != tt.empty || c.PolicyName() != "p" {
				t.Errorf("Empty() = %v, PolicyName() = %q", c.Empty(), c.PolicyName())
			}
			var got target
			err = c.Decode(&got)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("Decode = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	if !(Config{}).Empty() || string((Config{}).JSON()) != "{}" {
		t.Error("zero Config is not empty {}")
	}
}

// TestLoggerFormat checks the JSON lines go-plugin's host side expects from
// hclog: @level, @message and @timestamp in hclog's layout.
func TestLoggerFormat(t *testing.T) {
	var buf bytes.Buffer
	l := NewLogger(&buf, slog.LevelInfo)
	l.Debug("dropped")
	l.Warn("hello", "n", 42, slog.Group("g", "k", "v"))
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("one JSON line expected, got %q: %v", buf.String(), err)
	}
	if m["@level"] != "warn" || m["@message"] != "hello" || m["n"] != float64(42) {
		t.Errorf("record = %v", m)
	}
	ts, _ := m["@timestamp"].(string)
	if _, err := time.Parse("2006-01-02T15:04:05.000000Z07:00", ts); err != nil {
		t.Errorf("@timestamp %q not in hclog's layout: %v", ts, err)
	}
	if g, _ := m["g"].(map[string]any); g["k"] != "v" {
		t.Errorf("group = %v", m["g"])
	}
	for _, tt := range []struct {
		l    slog.Level
		want string
	}{{levelTrace, "trace"}, {slog.LevelDebug, "debug"}, {slog.LevelInfo, "info"}, {slog.LevelError, "error"}, {slog.LevelError + 4, "error"}} {
		if got := levelName(tt.l); got != tt.want {
			t.Errorf("levelName(%v) = %q, want %q", tt.l, got, tt.want)
		}
		if tt.l <= slog.LevelError && levelFromName(tt.want) != tt.l {
			t.Errorf("levelFromName(%q) = %v, want %v", tt.want, levelFromName(tt.want), tt.l)
		}
	}
}

type fakePolicy struct {
	configured Config
	inputs     *Inputs
	got        *Request
	d          Decision
	err        error
}

func (f *fakePolicy) Configure(_ context.Context, c Config) error {
	f.configured = c
	if strings.Contains(string(c.JSON()), "bad") {
		return errors.New("bad config")
	}
	return nil
}

func (f *fakePolicy) Decide(_ context.Context, r *Request) (Decision, error) {
	f.got = r
	return f.d, f.err
}

type withInputs struct {
	*fakePolicy
}

func (w withInputs) Inputs() Inputs { return *w.inputs }

type bare struct{}

func (bare) Decide(context.Context, *Request) (Decision, error) { return Decision{}, nil }

func TestServerConfigure(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name       string
		impl       Policy
		config     string
		wantCode   codes.Code
		wantInputs *policypb.Inputs
	}{
		{name: "no inputs declared", impl: &fakePolicy{}, config: `{"a":1}`, wantInputs: &policypb.Inputs{All: true}},
		{name: "declared", impl: withInputs{&fakePolicy{inputs: &Inputs{Peer: true, Headers: []string{"X-Tenant"}}}}, config: `{}`,
			wantInputs: &policypb.Inputs{Peer: true, Headers: []string{"x-tenant"}}},
		{name: "rejected", impl: &fakePolicy{}, config: `{"bad":true}`, wantCode: codes.InvalidArgument},
		{name: "no Configure, empty config", impl: bare{}, config: `{}`, wantInputs: &policypb.Inputs{All: true}},
		{name: "no Configure, config given", impl: bare{}, config: `{"x":1}`, wantCode: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &server{impl: tt.impl}
			resp, err := s.Configure(ctx, &policypb.ConfigureRequest{PolicyName: "p", ConfigJson: []byte(tt.config)})
			if code := status.Code(err); code != tt.wantCode {
				t.Fatalf("code = %v (%v), want %v", code, err, tt.wantCode)
			}
			if err != nil {
				return
			}
			got, want := resp.GetInputs(), tt.wantInputs
			if got.GetAll() != want.GetAll() || got.GetPeer() != want.GetPeer() || strings.Join(got.GetHeaders(), ",") != strings.Join(want.GetHeaders(), ",") {
				t.Errorf("inputs = %v, want %v", got, want)
			}
		})
	}
}

func TestServerDecide(t *testing.T) {
	f := &fakePolicy{d: Decision{
		Deny: true, Status: 451, Body: "b",
		Headers:  []Header{{"x-a", "1"}},
		Metadata: map[string]string{"k": "v"},
		CacheTTL: 3 * time.Second,
	}}
	s := &server{impl: f}
	resp, err := s.Decide(context.Background(), &policypb.DecideRequest{
		ClientIp: "2001:db8::1", Peer: "10.0.0.1:80", OriginalDst: "[2001:db8::2]:443",
		Resolution: &policypb.Resolution{Strategy: "remote_addr", ResolvedFrom: "peer", Reason: "peer", Position: 0},
		Headers:    []*policypb.Header{{Name: "x-b", Value: []byte("2")}},
		Listener:   "l", Route: "r",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Request{
		ClientIP: netip.MustParseAddr("2001:db8::1"), Peer: "10.0.0.1:80", OriginalDst: netip.MustParseAddrPort("[2001:db8::2]:443"),
		Strategy: "remote_addr", ResolvedFrom: "peer", Reason: "peer", Listener: "l", Route: "r",
	}
	got := *f.got
	if v, _ := got.Header("x-b"); v != "2" {
		t.Errorf("header x-b = %q", v)
	}
	got.Headers = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("request = %+v, want %+v", got, want)
	}
	if !resp.GetDeny() || resp.GetStatus() != 451 || resp.GetBody() != "b" || resp.GetHeaders()[0].GetName() != "x-a" ||
		resp.GetMetadata()["k"] != "v" || resp.GetCacheTtl().AsDuration() != 3*time.Second {
		t.Errorf("response = %v", resp)
	}

	f.err = errors.New("boom")
	if _, err := s.Decide(context.Background(), &policypb.DecideRequest{}); status.Code(err) != codes.Unknown || !strings.Contains(err.Error(), "boom") {
		t.Errorf("policy error: %v", err)
	}
	f.err = status.Error(codes.ResourceExhausted, "slow down")
	if _, err := s.Decide(context.Background(), &policypb.DecideRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("status error not kept: %v", err)
	}
	if _, err := s.Decide(context.Background(), &policypb.DecideRequest{ClientIp: "nope"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad client_ip: %v", err)
	}
}

// TestServerDecideNotUTF8: header values that are not valid UTF-8 reach the
// policy byte for byte and leave it the same way; a decision that copies
// them into its strings still answers (with U+FFFD there) instead of failing
// to marshal.
func TestServerDecideNotUTF8(t *testing.T) {
	const v = "evil\xff\xc3"
	f := &fakePolicy{d: Decision{
		Deny: true, Body: "no " + v,
		Headers:  []Header{{"x-echo", v}, {"x-bad\xff", "1"}},
		Metadata: map[string]string{"ua": v, "k\xff": "ok"},
	}}
	s := &server{impl: f}
	resp, err := s.Decide(context.Background(), &policypb.DecideRequest{
		Headers: []*policypb.Header{{Name: "user-agent", Value: []byte(v)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := f.got.Header("user-agent"); got != v {
		t.Errorf("policy saw %q, want %q", got, v)
	}
	b, err := proto.Marshal(resp)
	if err != nil {
		t.Fatalf("response does not marshal: %v", err)
	}
	var back policypb.DecideResponse
	if err := proto.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	hs := back.GetHeaders()
	if len(hs) != 2 || string(hs[0].GetValue()) != v || hs[1].GetName() != "x-bad\uFFFD" {
		t.Errorf("headers = %v", hs)
	}
	if back.GetBody() != "no evil\uFFFD" || back.GetMetadata()["ua"] != "evil\uFFFD" || back.GetMetadata()["k\uFFFD"] != "ok" {
		t.Errorf("body %q, metadata %q", back.GetBody(), back.GetMetadata())
	}
	if m := map[string]string{"a": "b"}; reflect.ValueOf(validUTF8Map(m)).UnsafePointer() != reflect.ValueOf(m).UnsafePointer() {
		t.Error("a valid metadata map was copied")
	}
}

// FuzzDecisionToProto: whatever strings a policy puts in its decision, the
// response marshals, and header values are kept byte for byte.
func FuzzDecisionToProto(f *testing.F) {
	f.Add("denied", "x-a", "v", "k", "v")
	f.Add("\xff", "x-\xc3", "evil\xff", "\x80", "\xed\xa0\x80")
	f.Fuzz(func(t *testing.T, body, hname, hvalue, mkey, mvalue string) {
		resp := decisionToProto(Decision{Deny: true, Body: body,
			Headers: []Header{{hname, hvalue}}, Metadata: map[string]string{mkey: mvalue}})
		b, err := proto.Marshal(resp)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		var back policypb.DecideResponse
		if err := proto.Unmarshal(b, &back); err != nil {
			t.Fatalf("unmarshal: %v", err)
		}
		if got := string(back.GetHeaders()[0].GetValue()); got != hvalue {
			t.Fatalf("header value %q came back as %q", hvalue, got)
		}
		if utf8.ValidString(body) && back.GetBody() != body {
			t.Fatalf("valid body %q changed to %q", body, back.GetBody())
		}
	})
}

func FuzzRequestFromProto(f *testing.F) {
	f.Add("192.0.2.1", "[2001:db8::1]:443")
	f.Add("fe80::1%eth0", "1.2.3.4:0")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, ip, dst string) {
		r, err := requestFromProto(&policypb.DecideRequest{ClientIp: ip, OriginalDst: dst})
		if err != nil {
			return
		}
		if ip != "" && r.ClientIP.String() != netip.MustParseAddr(ip).String() {
			t.Fatalf("client ip %q became %v", ip, r.ClientIP)
		}
		if dst != "" && !r.OriginalDst.IsValid() {
			t.Fatalf("original dst %q parsed to an invalid AddrPort", dst)
		}
	})
}
