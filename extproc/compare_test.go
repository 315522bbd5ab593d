package extproc_test

import (
	"bufio"
	"context"
	"io"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/internal/plugintest"
)

// benchProcess is one benchserver process.
type benchProcess struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	addr   string
	client *extproctest.Client
}

// buildBenchServer builds ./internal/benchserver into dir.
func buildBenchServer(b *testing.B, dir string) string {
	b.Helper()
	bins, err := plugintest.Build(dir, "./internal/benchserver")
	if err != nil {
		b.Fatal(err)
	}
	return bins["benchserver"]
}

// startBenchServer runs bin in mode and connects a client to it.
func startBenchServer(b *testing.B, bin, mode string) *benchProcess {
	b.Helper()
	cmd := exec.Command(bin, "-mode", mode)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &benchProcess{cmd: cmd, stdin: stdin}
	b.Cleanup(func() {
		if p.client != nil {
			p.client.Close()
		}
		stdin.Close() // benchserver drains and exits when stdin closes
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("%s server: %v\n%s", mode, err, stderr.String())
			}
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
			b.Errorf("%s server did not exit", mode)
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		b.Fatalf("%s server: no address (%q, %v)\n%s", mode, line, err, stderr.String())
	}
	p.addr = addr
	c, err := extproctest.Dial(addr)
	if err != nil {
		b.Fatal(err)
	}
	c.MessageTimeout = 2 * time.Second // measuring, not enforcing Envoy's limit
	p.client = c
	return p
}

// compareRequest is the request both servers get: a typical browser request
// through one trusted proxy, as Envoy streams it.
var compareRequest = extproctest.Request{
	Headers: hdrs(
		":authority", "api.example.com", ":path", "/v1/items?limit=20", ":method", "GET", ":scheme", "https",
		"user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
		"accept", "application/json", "accept-encoding", "gzip, br", "accept-language", "en-US,en;q=0.9",
		"x-forwarded-for", "203.0.113.7, 10.0.0.2, 10.0.0.1", "x-forwarded-proto", "https",
		"x-request-id", "6f1c5b0e-8a5e-4b8e-9a51-0d6f1d2b3c4d",
	),
	SourceAddress: "10.0.0.1:52814",
}

// startPair builds benchserver and starts realipd's and the no-op server,
// warmed up.
func startPair(b *testing.B) (realipd, noop *benchProcess) {
	bin := buildBenchServer(b, b.TempDir())
	realipd = startBenchServer(b, bin, "realipd")
	noop = startBenchServer(b, bin, "noop")
	for _, p := range []*benchProcess{realipd, noop} {
		for range 2000 {
			if _, err := p.client.Process(context.Background(), compareRequest); err != nil {
				b.Fatal(err)
			}
		}
	}
	res, err := realipd.client.Process(context.Background(), compareRequest)
	if err != nil {
		b.Fatal(err)
	}
	if v, _ := res.SetHeader("x-real-ip"); v != "203.0.113.7" {
		b.Fatalf("realipd answered x-real-ip %q", v)
	}
	return realipd, noop
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(float64(len(sorted)-1) * p)
	return sorted[i]
}

// BenchmarkCompareLatency drives realipd and a no-op ext_proc server, each
// in its own process, with the same Envoy-like client at concurrency 1,
// alternating between them request by request (ABBA order), a new stream per
// request. One iteration is one request to each. It reports both p50 and
// p99 latencies and their ratios (realipd / no-op); the goal is p50 ratio
// <= 1.05 and p99 ratio <= 1.10.
func BenchmarkCompareLatency(b *testing.B) {
	realipd, noop := startPair(b)
	ctx := context.Background()
	var lr, ln []time.Duration
	one := func(p *benchProcess, into *[]time.Duration) {
		t0 := time.Now()
		if _, err := p.client.Process(ctx, compareRequest); err != nil {
			b.Fatal(err)
		}
		*into = append(*into, time.Since(t0))
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			one(realipd, &lr)
			one(noop, &ln)
		} else {
			one(noop, &ln)
			one(realipd, &lr)
		}
	}
	b.StopTimer()
	slices.Sort(lr)
	slices.Sort(ln)
	r50, r99 := percentile(lr, 0.50), percentile(lr, 0.99)
	n50, n99 := percentile(ln, 0.50), percentile(ln, 0.99)
	b.ReportMetric(float64(r50.Microseconds()), "realipd-p50-µs")
	b.ReportMetric(float64(r99.Microseconds()), "realipd-p99-µs")
	b.ReportMetric(float64(n50.Microseconds()), "noop-p50-µs")
	b.ReportMetric(float64(n99.Microseconds()), "noop-p99-µs")
	b.ReportMetric(float64(r50)/float64(n50), "p50-ratio")
	b.ReportMetric(float64(r99)/float64(n99), "p99-ratio")
}

// BenchmarkCompareThroughput drives both servers at concurrency 16 (both
// cores busy), alternating rounds between them, a new stream per request.
// b.N requests go to each server. It reports each server's requests per
// second and the ratio (realipd / no-op); the goal is >= 0.90.
func BenchmarkCompareThroughput(b *testing.B) {
	const (
		concurrency = 16
		rounds      = 10
	)
	realipd, noop := startPair(b)
	ctx := context.Background()
	// round sends n requests to p from 16 workers and returns the time.
	round := func(p *benchProcess, n int) time.Duration {
		var next atomic.Int64
		var wg sync.WaitGroup
		t0 := time.Now()
		for range concurrency {
			wg.Go(func() {
				for next.Add(1) <= int64(n) {
					if _, err := p.client.Process(ctx, compareRequest); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		return time.Since(t0)
	}
	per := max(b.N/rounds, concurrency)
	var tr, tn time.Duration
	b.ResetTimer()
	for i := range rounds {
		if i%2 == 0 {
			tr += round(realipd, per)
			tn += round(noop, per)
		} else {
			tn += round(noop, per)
			tr += round(realipd, per)
		}
	}
	b.StopTimer()
	total := float64(per * rounds)
	rps, nps := total/tr.Seconds(), total/tn.Seconds()
	b.ReportMetric(rps, "realipd-req/s")
	b.ReportMetric(nps, "noop-req/s")
	b.ReportMetric(rps/nps, "throughput-ratio")
	b.ReportMetric(0, "ns/op")
}
