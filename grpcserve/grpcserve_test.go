package grpcserve

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// holdDesc is a service with one bidirectional stream, Hold: the handler
// answers the first message, then waits for release (or the end of the
// stream) and returns nil.
var holdDesc = grpc.ServiceDesc{
	ServiceName: "test.Hold",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Hold",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(srv any, ss grpc.ServerStream) error {
			h := srv.(*holder)
			if err := ss.RecvMsg(&emptypb.Empty{}); err != nil {
				return err
			}
			if err := ss.SendMsg(&emptypb.Empty{}); err != nil {
				return err
			}
			select {
			case <-h.release:
				return nil
			case <-ss.Context().Done():
				return ss.Context().Err()
			}
		},
	}},
}

type holder struct{ release chan struct{} }

// rig is a gRPC server with the Hold service and health, served by Serve
// on a loopback listener, and a client connection to it.
type rig struct {
	hold    *holder
	health  *health.Server
	serving atomic.Int32
	conn    *grpc.ClientConn
	cancel  context.CancelFunc
	done    chan error
}

func newRig(t *testing.T, d Drain) *rig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{hold: &holder{release: make(chan struct{})}, health: health.NewServer(), done: make(chan error, 1)}
	gs := grpc.NewServer()
	gs.RegisterService(&holdDesc, r.hold)
	healthpb.RegisterHealthServer(gs, r.health)
	d.Health, d.Serving = r.health, &r.serving
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- Serve(ctx, gs, ln, d) }()
	r.conn, err = grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		r.conn.Close()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return r
}

// open starts a Hold stream and waits for its first answer.
func (r *rig) open(t *testing.T) grpc.ClientStream {
	t.Helper()
	st, err := r.conn.NewStream(t.Context(), &holdDesc.Streams[0], "/test.Hold/Hold")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SendMsg(&emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	if err := st.RecvMsg(&emptypb.Empty{}); err != nil {
		t.Fatalf("the stream's first answer: %v", err)
	}
	return st
}

// waitFor polls cond until it holds or fails the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still not %s after 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestServeDrains: when ctx ends, health turns NOT_SERVING, the listener
// stops counting as serving, a new stream is refused with UNAVAILABLE, and
// the open stream finishes normally; Serve then returns nil.
func TestServeDrains(t *testing.T) {
	r := newRig(t, Drain{Name: "test", Timeout: time.Minute})
	waitFor(t, "serving", func() bool { return r.serving.Load() == 1 })
	hc := healthpb.NewHealthClient(r.conn)
	watchCtx, endWatch := context.WithCancel(t.Context())
	defer endWatch()
	watch, err := hc.Watch(watchCtx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := watch.Recv(); err != nil || st.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before the drain: %v, %v", st, err)
	}
	st := r.open(t)

	r.cancel()
	if s, err := watch.Recv(); err != nil || s.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health once draining: %v, %v", s, err)
	}
	endWatch() // a stream that would hold the drain to its timeout
	waitFor(t, "no longer counted as serving", func() bool { return r.serving.Load() == 0 })
	// A new stream on the connection that got the GOAWAY is refused.
	waitFor(t, "refusing new streams", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
		return status.Code(err) == codes.Unavailable
	})
	select {
	case err := <-r.done:
		t.Fatalf("Serve returned %v while a stream was open", err)
	default:
	}

	close(r.hold.release) // the open stream finishes
	if err := st.RecvMsg(&emptypb.Empty{}); err != io.EOF {
		t.Errorf("the open stream ended with %v, want its normal end", err)
	}
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Serve after the drain: %v", err)
		}
		r.done <- err // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return once the last stream finished")
	}
}

// TestServeDrainTimeout: a stream still open at the timeout is cut, and
// Serve returns nil.
func TestServeDrainTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	r := newRig(t, Drain{Name: "test", Timeout: timeout})
	st := r.open(t)
	start := time.Now()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Serve after the drain timeout: %v", err)
		}
		if d := time.Since(start); d < timeout {
			t.Errorf("Serve returned after %v, before the drain timeout %v", d, timeout)
		}
		r.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the drain timeout")
	}
	if err := st.RecvMsg(&emptypb.Empty{}); status.Code(err) != codes.Unavailable && status.Code(err) != codes.Canceled {
		t.Errorf("the cut stream ended with %v, want UNAVAILABLE or CANCELED", err)
	}
}

// TestServeOnDrain: OnDrain runs when the drain starts; what it ends lets
// the drain finish long before its timeout.
func TestServeOnDrain(t *testing.T) {
	var r *rig
	var calls atomic.Int32
	r = newRig(t, Drain{Name: "test", Timeout: time.Minute, OnDrain: func() {
		if calls.Add(1) == 1 {
			close(r.hold.release)
		}
	}})
	st := r.open(t)
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
		r.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return: OnDrain did not end the stream")
	}
	if err := st.RecvMsg(&emptypb.Empty{}); err != io.EOF {
		t.Errorf("the stream ended with %v, want its normal end", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("OnDrain ran %d times, want 1", n)
	}
}

// failingListener fails Accept with an error that is not temporary.
type failingListener struct {
	net.Listener
}

func (l failingListener) Accept() (net.Conn, error) {
	return nil, errors.New("accept failed for good")
}

// TestServeFails: when serving fails, Serve returns the error with the
// name and address, health is NOT_SERVING, OnDrain ran and the listener
// no longer counts as serving.
func TestServeFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hs := health.NewServer()
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	var serving atomic.Int32
	var drained atomic.Bool
	err = Serve(context.Background(), gs, failingListener{ln}, Drain{Name: "test", Health: hs, Serving: &serving, OnDrain: func() { drained.Store(true) }})
	want := "test: serve " + ln.Addr().String() + ": "
	if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "accept failed for good") {
		t.Errorf("Serve = %v, want %q and the cause", err, want)
	}
	if res, _ := hs.Check(context.Background(), &healthpb.HealthCheckRequest{}); res.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health after the failure: %v", res.GetStatus())
	}
	if serving.Load() != 0 || !drained.Load() {
		t.Errorf("serving %d, OnDrain ran %v; want 0 and true", serving.Load(), drained.Load())
	}
}
