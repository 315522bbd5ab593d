package host

import (
	"context"
	"slices"
	"testing"
	"time"

	policypb "github.com/realipd/realipd/plugins/proto"
)

// BenchmarkDecideCached is the hot path when the plugin's decision is
// cached: no plugin call at all. Goal: <= 100 ns/op, 0 allocs.
func BenchmarkDecideCached(b *testing.B) {
	h, _ := newHost(b, Config{Path: bin.testpolicy, CacheTTL: time.Minute,
		Settings: map[string]any{"ip_only": true, "cache_ttl": "1m"}})
	r := req("192.0.2.1")
	ctx := context.Background()
	if _, err := h.Decide(ctx, r); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := h.Decide(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecideCachedHeaders is a cache hit for a plugin that reads a
// header besides the client IP: the key is built per call (one allocation).
func BenchmarkDecideCachedHeaders(b *testing.B) {
	h, _ := newHost(b, Config{Path: bin.testpolicy, CacheTTL: time.Minute,
		Settings: map[string]any{"cache_ttl": "1m"}})
	r := req("192.0.2.1", "x-tenant", "acme", "user-agent", "curl/8")
	ctx := context.Background()
	if _, err := h.Decide(ctx, r); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := h.Decide(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecideCachedParallel is the cached path under contention.
func BenchmarkDecideCachedParallel(b *testing.B) {
	h, _ := newHost(b, Config{Path: bin.testpolicy, CacheTTL: time.Minute,
		Settings: map[string]any{"ip_only": true, "cache_ttl": "1m"}})
	r := req("192.0.2.1")
	if _, err := h.Decide(context.Background(), r); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, err := h.Decide(ctx, r); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkPluginCall compares an uncached Decide through the host with bare
// gRPC calls on the same go-plugin connection, interleaved in one loop so
// that both see the same machine state. It reports the p50 of each and
// their ratio; the goal is host-p50 <= 1.2 x bare-echo-p50.
//
//   - host: Host.Decide, cache off (request conversion, deadline, the
//     SDK's conversions around a policy that allows at once, decision
//     conversion).
//   - bare-echo: the plugin's Ping RPC, which echoes an empty payload.
//   - bare-decide: the generated client's Decide with a prebuilt request,
//     i.e. the same RPC without the host around it.
func BenchmarkPluginCall(b *testing.B) {
	h, _ := newHost(b, Config{Path: bin.testpolicy, Settings: map[string]any{"ip_only": true, "trivial": true}})
	inst := h.cur.Load()
	r := req("192.0.2.1")
	ctx := context.Background()
	pr := h.inputs.Load().request(r)
	ping := &policypb.PingRequest{}
	// Warm up the connection and both code paths.
	for range 200 {
		if _, err := h.Decide(ctx, r); err != nil {
			b.Fatal(err)
		}
		if _, err := inst.rpc.Ping(ctx, ping); err != nil {
			b.Fatal(err)
		}
	}
	var hostD, echoD, decideD []time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if _, err := h.Decide(ctx, r); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := inst.rpc.Ping(ctx, ping); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if _, err := inst.rpc.Decide(ctx, pr); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		hostD = append(hostD, t1.Sub(t0))
		echoD = append(echoD, t2.Sub(t1))
		decideD = append(decideD, t3.Sub(t2))
	}
	b.StopTimer()
	hp, ep, dp := p50(hostD), p50(echoD), p50(decideD)
	b.ReportMetric(float64(hp.Nanoseconds()), "host-p50-ns")
	b.ReportMetric(float64(ep.Nanoseconds()), "bare-echo-p50-ns")
	b.ReportMetric(float64(dp.Nanoseconds()), "bare-decide-p50-ns")
	b.ReportMetric(float64(hp)/float64(ep), "host/echo-p50")
	b.ReportMetric(float64(hp)/float64(dp), "host/decide-p50")
}

func p50(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
