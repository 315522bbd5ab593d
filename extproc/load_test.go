package extproc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/extproc/extproctest"
)

// loadRequest returns request i of a load run and the answer it must get:
// the client IP of X-Forwarded-For, or a deny for the blocklisted range.
func loadRequest(i int) (req extproctest.Request, wantIP string, wantDeny bool) {
	ip := netip.AddrFrom4([4]byte{203, 0, byte(i >> 8), byte(i)})
	if i%10 == 0 {
		ip = netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		wantDeny = true
	}
	if i%7 == 0 {
		ip = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb9, 14: byte(i >> 8), 15: byte(i)})
		wantDeny = false
	}
	req = extproctest.Request{
		Headers:       hdrs(":method", "GET", ":path", "/load", ":authority", "example.com", "x-real-ip", "6.6.6.6", "x-forwarded-for", ip.String()+", 10.0.0.1"),
		SourceAddress: fmt.Sprintf("10.0.0.1:%d", 1024+i%60000),
	}
	return req, ip.String(), wantDeny
}

// checkLoadAnswer verifies one load answer.
func checkLoadAnswer(res *extproctest.Result, wantIP string, wantDeny bool) error {
	meta, err := res.Metadata("realipd")
	if err != nil {
		return err
	}
	if meta["client_ip"] != wantIP {
		return fmt.Errorf("metadata client_ip %q, want %q", meta["client_ip"], wantIP)
	}
	if wantDeny {
		if res.Immediate == nil || res.Immediate.GetStatus().GetCode() != 403 || meta["decision"] != "deny" {
			return fmt.Errorf("want a 403 deny, got %v", res.Responses)
		}
		return nil
	}
	if got, _ := res.SetHeader("x-real-ip"); got != wantIP || meta["decision"] != "allow" || res.Immediate != nil {
		return fmt.Errorf("x-real-ip %q decision %q, want %q allow", got, meta["decision"], wantIP)
	}
	return nil
}

// TestLoad runs 100,000 requests over 1,000 concurrent streams (four
// connections, like four Envoy workers), checks every answer and then that
// no goroutine is left behind.
func TestLoad(t *testing.T) {
	const (
		streams  = 1000
		requests = 100_000
		conns    = 4
	)
	if testing.Short() {
		t.Skip("load test skipped in -short mode")
	}
	ts := start(t, "tcp", settings(t), extproc.Options{})
	clients := []*extproctest.Client{ts.client}
	for len(clients) < conns {
		c, err := extproctest.Dial(ts.target)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	for _, c := range clients {
		// This test is about correctness under concurrency, not latency
		// (the comparison benchmark measures that): with a thousand streams
		// in flight and CI running other packages' tests on the same two
		// cores, a request can wait in line longer than Envoy's 200 ms
		// default, which the integration tests keep. A lost or wrong answer
		// still fails here.
		c.MessageTimeout = 20 * time.Second
	}

	var (
		next   atomic.Int64
		failed atomic.Int64
		done   atomic.Int64
		wg     sync.WaitGroup
		first  = make(chan error, 1)
	)
	begin := time.Now()
	for w := range streams {
		c := clients[w%conns]
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= requests {
					return
				}
				req, wantIP, wantDeny := loadRequest(i)
				res, err := c.Process(context.Background(), req)
				if err == nil {
					err = checkLoadAnswer(res, wantIP, wantDeny)
				}
				if err != nil {
					failed.Add(1)
					select {
					case first <- fmt.Errorf("request %d: %w", i, err):
					default:
					}
					continue
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(begin)
	t.Logf("%d requests over %d concurrent streams in %v (%.0f req/s)", requests, streams, elapsed, float64(requests)/elapsed.Seconds())
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed; first: %v", n, requests, <-first)
	}
	if n := done.Load(); n != requests {
		t.Errorf("%d requests answered correctly, want %d", n, requests)
	}
	for _, c := range clients[1:] {
		c.Close()
	}
	ts.stop(t)
	checkStreamsEndedOK(t, ts)
	goleak.VerifyNone(t)
}

// TestDrain triggers the drain during load: streams already open finish
// normally, new streams are refused with UNAVAILABLE, health turns
// NOT_SERVING, and Serve returns within the drain timeout.
func TestDrain(t *testing.T) {
	const drainTimeout = 10 * time.Second
	ts := start(t, "tcp", settings(t), extproc.Options{DrainTimeout: drainTimeout})
	checkDrainUnderLoad(t, ts.client, drainTimeout, ts.cancel, ts.done)
	ts.cancel = nil
	ts.client.Close()
	checkStreamsEndedOK(t, ts)
}

// checkDrainUnderLoad runs load through client, calls drain, and checks
// the drain: health turns NOT_SERVING, the connection gets a GOAWAY and new
// streams are refused with UNAVAILABLE, streams held open across the drain
// finish normally, no request fails in flight, and stopped delivers nil
// within drainTimeout of the drain, not before the held streams finish.
func checkDrainUnderLoad(t *testing.T, client *extproctest.Client, drainTimeout time.Duration, drain func(), stopped <-chan error) {
	t.Helper()
	client.MessageTimeout = 5 * time.Second
	ctx := context.Background()

	// Streams held open across the drain: request headers answered, the
	// response phases still to come (as while the upstream responds).
	pc := extprocv3.NewExternalProcessorClient(client.Conn())
	const held = 8
	var holds []extprocv3.ExternalProcessor_ProcessClient
	for i := range held {
		req, _, _ := loadRequest(i + 1)
		s, err := pc.Process(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(extproctest.Message(req, extproctest.RequestHeaders, true)); err != nil {
			t.Fatal(err)
		}
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := extproctest.CheckResponse(extproctest.RequestHeaders, resp); err != nil {
			t.Fatal(err)
		}
		holds = append(holds, s)
	}
	// Watch health on the same connection.
	watchCtx, watchCancel := context.WithCancel(ctx)
	defer watchCancel()
	watch, err := healthpb.NewHealthClient(client.Conn()).Watch(watchCtx, &healthpb.HealthCheckRequest{Service: extproc.ServiceName})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before drain: %v %v", r, err)
	}

	// Background load until the drain refuses it.
	var (
		wg      sync.WaitGroup
		okN     atomic.Int64
		refused atomic.Int64
		bad     = make(chan error, 64)
		started = make(chan struct{})
		once    sync.Once
	)
	for w := range 32 {
		wg.Go(func() {
			for i := w; ; i += 32 {
				req, wantIP, wantDeny := loadRequest(i)
				req.Phases = []extproctest.Phase{extproctest.RequestHeaders, extproctest.ResponseHeaders}
				res, err := client.Process(ctx, req)
				if err != nil {
					// Refused: UNAVAILABLE before any answer. Anything else,
					// or a failure after an answer, is an in-flight failure.
					if status.Code(err) == codes.Unavailable && len(res.Responses) == 0 {
						refused.Add(1)
						return
					}
					bad <- fmt.Errorf("request %d failed in flight after %d answers: %w", i, len(res.Responses), err)
					return
				}
				if err := checkLoadAnswer(res, wantIP, wantDeny); err != nil {
					bad <- err
					return
				}
				if okN.Add(1) >= 200 {
					once.Do(func() { close(started) })
				}
			}
		})
	}
	select {
	case <-started:
	case err := <-bad:
		t.Fatalf("before the drain: %v", err)
	}

	begin := time.Now()
	drain()
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health during drain: %v %v", r, err)
	}

	// The client sees the GOAWAY: its connection leaves READY. A new
	// stream is then refused with UNAVAILABLE.
	conn := client.Conn()
	for s := conn.GetState(); s == connectivity.Ready; s = conn.GetState() {
		wctx, cancel := context.WithTimeout(ctx, drainTimeout)
		changed := conn.WaitForStateChange(wctx, s)
		cancel()
		if !changed {
			t.Fatal("connection still READY: no GOAWAY")
		}
	}
	if _, err := client.Process(ctx, extproctest.Request{SourceAddress: "192.0.2.1:1"}); status.Code(err) != codes.Unavailable {
		t.Errorf("new stream during drain: %v, want UNAVAILABLE", err)
	}
	wg.Wait() // every worker is refused eventually

	// The drain waits for the held streams.
	select {
	case err := <-stopped:
		t.Fatalf("server stopped (%v) while streams were open", err)
	default:
	}
	for i, s := range holds {
		req, _, _ := loadRequest(i + 1)
		if err := s.Send(extproctest.Message(req, extproctest.ResponseHeaders, false)); err != nil {
			t.Fatalf("held stream %d: send: %v", i, err)
		}
		resp, err := s.Recv()
		if err != nil {
			t.Fatalf("held stream %d: %v", i, err)
		}
		if err := extproctest.CheckResponse(extproctest.ResponseHeaders, resp); err != nil {
			t.Fatal(err)
		}
		if err := s.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("held stream %d end: %v, want io.EOF", i, err)
		}
	}
	watchCancel() // a Watch stream would hold the drain open too

	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("stopped with %v", err)
		}
	case <-time.After(drainTimeout + 5*time.Second):
		t.Fatal("not stopped within the drain timeout")
	}
	if d := time.Since(begin); d > drainTimeout {
		t.Errorf("drain took %v, over the %v deadline", d, drainTimeout)
	}
	close(bad)
	for err := range bad {
		t.Error(err)
	}
	t.Logf("%d requests answered before the drain, %d refused after; drain took %v", okN.Load(), refused.Load(), time.Since(begin))
}

// TestDrainTimeout: a stream that never ends is cut at the drain timeout.
func TestDrainTimeout(t *testing.T) {
	const drainTimeout = 300 * time.Millisecond
	ts := start(t, "tcp", settings(t), extproc.Options{DrainTimeout: drainTimeout})
	pc := extprocv3.NewExternalProcessorClient(ts.client.Conn())
	s, err := pc.Process(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(extproctest.Message(extproctest.Request{SourceAddress: "192.0.2.1:1"}, extproctest.RequestHeaders, true)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	ts.cancel()
	select {
	case err := <-ts.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if d := time.Since(begin); d < drainTimeout || d > drainTimeout+2*time.Second {
		t.Errorf("Serve returned after %v, want about %v", d, drainTimeout)
	}
	if _, err := s.Recv(); err == nil {
		t.Error("held stream still open after the drain timeout")
	}
	ts.cancel = nil
	ts.client.Close()
}
