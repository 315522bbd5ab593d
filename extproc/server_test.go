package extproc_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/plugins"
)

// testServer is a running extproc server and a client connected to it.
type testServer struct {
	srv    *extproc.Server
	cur    *decide.Current
	target string
	client *extproctest.Client
	cancel context.CancelFunc
	done   chan error
	// streamErrs receives what every Process handler returned.
	streamErrs chan error
}

// settings are the defaults of the integration tests: X-Forwarded-For
// trusted through 10.0.0.0/8 and fd00::/8, Envoy's hop removed, a blocklist
// for 198.51.100.0/24.
func settings(t testing.TB) decide.Settings {
	r, err := clientip.New(clientip.Config{
		Strategy:     clientip.RightmostTrustedRange,
		TrustedCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")},
	})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := plugins.NewChain(plugins.ChainEntry{Name: "blocklist", Policy: plugins.NewCIDR(nil, []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")})})
	if err != nil {
		t.Fatal(err)
	}
	return decide.Settings{Resolver: r, Chain: chain, XFFAppendedByEnvoy: true}
}

// start serves on network ("tcp" or "unix") and connects a client.
func start(t testing.TB, network string, s decide.Settings, opts extproc.Options) *testServer {
	t.Helper()
	d, err := decide.New(s, decide.NewDecisionLog(opts.Logger, decide.DecisionLogOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	return startWith(t, network, decide.NewCurrent(d), opts)
}

// startWith is start with the decisions of cur.
func startWith(t testing.TB, network string, cur *decide.Current, opts extproc.Options) *testServer {
	t.Helper()
	ts := &testServer{cur: cur, done: make(chan error, 1), streamErrs: make(chan error, 100000)}
	opts.ServerOptions = append(opts.ServerOptions, grpc.ChainStreamInterceptor(
		func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			err := handler(srv, ss)
			if info.FullMethod == "/envoy.service.ext_proc.v3.ExternalProcessor/Process" {
				select {
				case ts.streamErrs <- err:
				default:
				}
			}
			return err
		}))
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	srv, err := extproc.New(cur, opts)
	if err != nil {
		t.Fatal(err)
	}
	ts.srv = srv
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = "unix://" + filepath.Join(shortTempDir(t), "extproc.sock")
	}
	ln, err := extproc.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	ts.target = ln.Addr().String()
	if network == "unix" {
		ts.target = addr
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	go func() { ts.done <- srv.ServeListener(ctx, ln) }()
	c, err := extproctest.Dial(ts.target)
	if err != nil {
		t.Fatal(err)
	}
	ts.client = c
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// update makes s the settings of the server's decisions, as a reload
// does (the chain it replaces is not retired).
func (ts *testServer) update(s decide.Settings) error {
	d, err := decide.New(s, nil)
	if err != nil {
		return err
	}
	ts.cur.Store(d)
	return nil
}

// stop closes the client and drains the server (idempotent).
func (ts *testServer) stop(t testing.TB) {
	if ts.cancel == nil {
		return
	}
	ts.client.Close()
	ts.cancel()
	ts.cancel = nil
	select {
	case err := <-ts.done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("server did not stop")
	}
}

// shortTempDir is a temporary directory with a path short enough for a
// unix socket (108 bytes).
func shortTempDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "rip")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func hdrs(kv ...string) []extproctest.Header {
	var out []extproctest.Header
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, extproctest.Header{Name: kv[i], Value: kv[i+1]})
	}
	return out
}

var allPhases = []extproctest.Phase{
	extproctest.RequestHeaders, extproctest.RequestBody, extproctest.RequestTrailers,
	extproctest.ResponseHeaders, extproctest.ResponseBody, extproctest.ResponseTrailers,
}

func TestServe(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			ts := start(t, network, settings(t), extproc.Options{})
			ctx := context.Background()
			tests := []struct {
				name      string
				req       extproctest.Request
				wantN     int // answers
				wantIP    string
				wantMeta  map[string]string
				wantDeny  int
				wantNoHdr bool
			}{
				{
					name:  "every phase",
					req:   extproctest.Request{Headers: hdrs(":path", "/", "x-forwarded-for", "203.0.113.5, 10.0.0.1"), SourceAddress: "10.0.0.1:5000", Phases: allPhases},
					wantN: 6, wantIP: "203.0.113.5",
					wantMeta: map[string]string{"client_ip": "203.0.113.5", "peer": "10.0.0.1:5000", "strategy": "rightmost_trusted_range", "resolved_from": "header", "decision": "allow"},
				},
				{
					name:  "spoofed x-real-ip and x-forwarded-for from an untrusted peer",
					req:   extproctest.Request{Headers: hdrs("x-real-ip", "1.2.3.4", "x-forwarded-for", "1.2.3.4, 192.0.2.77"), SourceAddress: "192.0.2.77:40000"},
					wantN: 1, wantIP: "192.0.2.77",
					wantMeta: map[string]string{"client_ip": "192.0.2.77", "peer": "192.0.2.77:40000", "strategy": "rightmost_trusted_range", "resolved_from": "peer", "decision": "allow"},
				},
				{
					name:  "IPv6 peer and client",
					req:   extproctest.Request{Headers: hdrs("x-forwarded-for", "2001:db8:aa::1, fd00::9, fd00::1"), SourceAddress: "[fd00::1]:8443"},
					wantN: 1, wantIP: "2001:db8:aa::1",
					wantMeta: map[string]string{"client_ip": "2001:db8:aa::1", "peer": "[fd00::1]:8443", "strategy": "rightmost_trusted_range", "resolved_from": "header", "decision": "allow"},
				},
				{
					name:  "missing source.address is unresolved: denied",
					req:   extproctest.Request{Headers: hdrs("x-forwarded-for", "203.0.113.8, 10.0.0.1")},
					wantN: 1, wantDeny: 403,
					wantMeta: map[string]string{"client_ip": "", "peer": "", "strategy": "rightmost_trusted_range", "resolved_from": "none", "decision": "deny", "policy": "trust.on_unresolved"},
				},
				{
					name:  "deny",
					req:   extproctest.Request{Headers: hdrs("x-forwarded-for", "198.51.100.23, 10.0.0.1"), SourceAddress: "10.0.0.1:1", Phases: allPhases},
					wantN: 1, wantDeny: 403,
					wantMeta: map[string]string{"client_ip": "198.51.100.23", "peer": "10.0.0.1:1", "strategy": "rightmost_trusted_range", "resolved_from": "header", "decision": "deny", "policy": "blocklist"},
				},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					res, err := ts.client.Process(ctx, tt.req)
					if err != nil {
						t.Fatal(err)
					}
					if len(res.Responses) != tt.wantN {
						t.Fatalf("%d answers, want %d", len(res.Responses), tt.wantN)
					}
					meta, err := res.Metadata("realipd")
					if err != nil {
						t.Fatal(err)
					}
					if !maps.Equal(meta, tt.wantMeta) {
						t.Errorf("metadata\n got %v\nwant %v", meta, tt.wantMeta)
					}
					if tt.wantDeny != 0 {
						if res.Immediate == nil || int(res.Immediate.GetStatus().GetCode()) != tt.wantDeny || len(res.Immediate.GetBody()) == 0 {
							t.Fatalf("immediate response %v, want status %d with a body", res.Immediate, tt.wantDeny)
						}
						return
					}
					if res.Immediate != nil {
						t.Fatalf("denied: %v", res.Immediate)
					}
					if tt.wantNoHdr {
						if _, ok := res.SetHeader("x-real-ip"); ok || !res.Removed("x-real-ip") {
							t.Errorf("x-real-ip not removed")
						}
						return
					}
					opt := res.SetHeaderOption("x-real-ip")
					if opt == nil {
						t.Fatal("x-real-ip not set")
					}
					if got := string(opt.GetHeader().GetRawValue()); got != tt.wantIP {
						t.Errorf("x-real-ip = %q, want %q", got, tt.wantIP)
					}
					if opt.GetHeader().GetValue() != "" || !extproctest.Overwrites(opt) {
						t.Errorf("x-real-ip option %v: want raw_value only and OVERWRITE_IF_EXISTS_OR_ADD", opt)
					}
				})
			}
			ts.stop(t)
			checkStreamsEndedOK(t, ts)
		})
	}
}

// checkStreamsEndedOK asserts every Process handler returned nil.
func checkStreamsEndedOK(t *testing.T, ts *testServer) {
	t.Helper()
	for {
		select {
		case err := <-ts.streamErrs:
			if err != nil {
				t.Errorf("a Process stream ended with %v, want nil", err)
			}
		default:
			return
		}
	}
}

func TestObservabilityMode(t *testing.T) {
	ts := start(t, "tcp", settings(t), extproc.Options{})
	res, err := ts.client.Process(context.Background(), extproctest.Request{
		Headers: hdrs("x-forwarded-for", "203.0.113.5, 10.0.0.1"), SourceAddress: "10.0.0.1:1", Phases: allPhases, ObservabilityMode: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Responses) != 0 {
		t.Fatalf("%d answers in observability mode", len(res.Responses))
	}
	ts.stop(t)
	checkStreamsEndedOK(t, ts)
}

func TestStreamEnd(t *testing.T) {
	ts := start(t, "tcp", settings(t), extproc.Options{})
	pc := extprocv3.NewExternalProcessorClient(ts.client.Conn())
	msg := extproctest.Message(extproctest.Request{SourceAddress: "192.0.2.1:1"}, extproctest.RequestHeaders, true)

	t.Run("half-close without messages", func(t *testing.T) {
		stream, err := pc.Process(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("Recv = %v, want io.EOF (status OK)", err)
		}
		if err := <-ts.streamErrs; err != nil {
			t.Errorf("handler returned %v", err)
		}
	})
	t.Run("cancel after an answer", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := pc.Process(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := <-ts.streamErrs; err != nil {
			t.Errorf("handler returned %v after the client cancelled, want nil", err)
		}
	})
	t.Run("cancel while the server waits", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := pc.Process(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Wait until the server has the stream, then go away.
		if err := stream.Send(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(msg); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := <-ts.streamErrs; err != nil {
			t.Errorf("handler returned %v, want nil", err)
		}
	})
	t.Run("several requests on one stream are each answered", func(t *testing.T) {
		stream, err := pc.Process(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := stream.Send(msg); err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if err := extproctest.CheckResponse(extproctest.RequestHeaders, resp); err != nil {
				t.Fatal(err)
			}
		}
		stream.CloseSend()
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("Recv = %v, want io.EOF", err)
		}
		<-ts.streamErrs
	})
}

func TestMalformedMessage(t *testing.T) {
	ts := start(t, "tcp", settings(t), extproc.Options{})
	// A raw stream: the bytes are not a ProcessingRequest.
	desc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
	stream, err := ts.client.Conn().NewStream(context.Background(), desc, "/envoy.service.ext_proc.v3.ExternalProcessor/Process", grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&[]byte{0x12, 0x7f, 0x01}); err != nil {
		t.Fatal(err)
	}
	var out []byte
	err = stream.RecvMsg(&out)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("RecvMsg = %v, want InvalidArgument", err)
	}
}

func TestHealthAndReflection(t *testing.T) {
	ts := start(t, "unix", settings(t), extproc.Options{})
	hc := healthpb.NewHealthClient(ts.client.Conn())
	for _, svc := range []string{"", extproc.ServiceName} {
		resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q = %v, %v; want SERVING", svc, resp.GetStatus(), err)
		}
	}
	if err := ts.srv.Ready(context.Background()); err != nil {
		t.Errorf("Ready while serving: %v", err)
	}
	rc := reflectionpb.NewServerReflectionClient(ts.client.Conn())
	stream, err := rc.ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !strings.Contains(strings.Join(names, ","), extproc.ServiceName) {
		t.Errorf("reflection lists %v, want %s", names, extproc.ServiceName)
	}
	// The service's file descriptor resolves, as grpcurl describe needs.
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: extproc.ServiceName}}); err != nil {
		t.Fatal(err)
	}
	resp, err = stream.Recv()
	if err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("file containing %s: %v %v", extproc.ServiceName, resp.GetErrorResponse(), err)
	}
	stream.CloseSend()
	ts.stop(t)
	if err := ts.srv.Ready(context.Background()); err == nil {
		t.Error("Ready after the drain")
	}
}

func TestListen(t *testing.T) {
	dir := shortTempDir(t)
	t.Run("stale socket is replaced", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close() // the file stays, nobody listens
		if _, err := os.Stat(path); err != nil {
			t.Fatal(err)
		}
		ln2, err := extproc.Listen("unix://" + path)
		if err != nil {
			t.Fatalf("Listen over a stale socket: %v", err)
		}
		ln2.Close()
	})
	t.Run("live socket is refused", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if l, err := extproc.Listen("unix://" + path); err == nil {
			l.Close()
			t.Fatal("Listen took over a live socket")
		}
	})
	t.Run("regular file is left alone", func(t *testing.T) {
		path := filepath.Join(dir, "file")
		if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if l, err := extproc.Listen("unix://" + path); err == nil {
			l.Close()
			t.Fatal("Listen replaced a regular file")
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatal("file removed")
		}
	})
	for _, bad := range []string{"unix://relative.sock", "unix://", "http://127.0.0.1:1", "127.0.0.1:notaport"} {
		if l, err := extproc.Listen(bad); err == nil {
			l.Close()
			t.Errorf("Listen(%q) succeeded", bad)
		}
	}
}

func TestHotUpdateDuringStreams(t *testing.T) {
	s := settings(t)
	ts := start(t, "tcp", s, extproc.Options{})
	req := extproctest.Request{Headers: hdrs("x-forwarded-for", "203.0.113.5, 10.0.0.1"), SourceAddress: "10.0.0.1:1"}
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := ts.client.Process(context.Background(), req)
				if err != nil {
					errs <- err
					return
				}
				v, _ := res.SetHeader("x-real-ip")
				w, _ := res.SetHeader("x-client-ip")
				if v != "203.0.113.5" && w != "203.0.113.5" {
					errs <- errors.New("answer with neither header: " + v + w)
					return
				}
			}
		})
	}
	for i := range 50 {
		next := s
		if i%2 == 0 {
			next.ClientIPHeader = "x-client-ip"
		}
		if err := ts.update(next); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestDebugLogExplains(t *testing.T) {
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ts := start(t, "tcp", settings(t), extproc.Options{Logger: log})
	if _, err := ts.client.Process(context.Background(), extproctest.Request{Headers: hdrs("x-forwarded-for", "203.0.113.8, 10.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	ts.stop(t)
	out := buf.String()
	for _, want := range []string{"no source.address attribute: unresolved", "reason=no_peer", "source.address"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// rawCodec sends and receives *[]byte as is.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
