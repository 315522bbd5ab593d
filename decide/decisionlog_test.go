package decide_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
)

// logBuffer collects JSON log lines; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines decodes the lines written so far.
func (b *logBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for l := range strings.Lines(b.buf.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// fakeClock is a monotonic clock the test moves.
type fakeClock struct{ now atomic.Int64 }

func (c *fakeClock) Now() time.Duration  { return time.Duration(c.now.Load()) }
func (c *fakeClock) Add(d time.Duration) { c.now.Add(int64(d)) }

// logger is a JSON logger at level writing to b.
func (b *logBuffer) logger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: level}))
}

var (
	client   = netip.MustParseAddr("203.0.113.9")
	resolved = clientip.Result{IP: client, Source: clientip.SourceHeader, Reason: clientip.ReasonPicked, Position: 2}
)

// TestDecisionLogLines: a deny is one Info line and an allow one Debug
// line, with the door, decision, policy, client IP, peer, where the client
// IP came from and the original destination; an unresolved one says why;
// nothing is written at Info for an allow.
func TestDecisionLogLines(t *testing.T) {
	ctx := context.Background()
	buf := &logBuffer{}
	info := decide.NewDecisionLog(buf.logger(slog.LevelInfo), decide.DecisionLogOptions{})
	info.Log(ctx, decide.Decided{Door: decide.DoorExtProc, Peer: "10.0.0.5:4321", Resolution: resolved})
	if n := len(buf.lines(t)); n != 0 {
		t.Fatalf("an allow at Info wrote %d lines", n)
	}
	info.Log(ctx, decide.Decided{Door: decide.DoorExtProc, Peer: "10.0.0.5:4321", Resolution: resolved, Deny: true, Policy: "blocklist"})
	info.Log(ctx, decide.Decided{Door: decide.DoorTCP, PeerAddr: netip.MustParseAddrPort("10.0.0.6:1"), Resolution: clientip.Result{Reason: clientip.ReasonInvalidEntry},
		ResolvedFrom: "", OriginalDst: netip.MustParseAddrPort("192.0.2.1:443"), Deny: true, Policy: decide.PolicyUnresolved})

	debug := &logBuffer{}
	decide.NewDecisionLog(debug.logger(slog.LevelDebug), decide.DecisionLogOptions{}).Log(ctx, decide.Decided{
		Door: decide.DoorHTTP, Peer: "10.0.0.7:2", Resolution: clientip.Result{IP: netip.MustParseAddr("10.0.0.7"), Source: clientip.SourcePeer, Reason: clientip.ReasonPeer},
		OriginalDst: netip.MustParseAddrPort("192.0.2.2:80"),
	})

	want := []map[string]any{
		{"level": "INFO", "msg": "denied", "door": "extproc", "decision": "deny", "policy": "blocklist", "client_ip": "203.0.113.9", "peer": "10.0.0.5:4321", "resolved_from": "header"},
		{"level": "INFO", "msg": "denied", "door": "origdst_tcp", "decision": "deny", "policy": "trust.on_unresolved", "client_ip": "", "peer": "10.0.0.6:1", "resolved_from": "none",
			"reason": "invalid", "original_dst": "192.0.2.1:443"},
		{"level": "DEBUG", "msg": "allowed", "door": "origdst_http", "decision": "allow", "policy": "", "client_ip": "10.0.0.7", "peer": "10.0.0.7:2", "resolved_from": "peer",
			"original_dst": "192.0.2.2:80"},
	}
	got := append(buf.lines(t), debug.lines(t)...)
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		delete(got[i], "time")
		if !equalLine(got[i], want[i]) {
			t.Errorf("line %d:\n got %v\nwant %v", i, got[i], want[i])
		}
	}
}

func equalLine(got, want map[string]any) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// TestDecisionLogRateLimit: under a flood each kind writes at most
// PerSecond lines a second on the (injected, monotonic) clock; the next
// line written says how many were held back; denies and allows have their
// own budgets, and a disabled level neither writes nor counts.
func TestDecisionLogRateLimit(t *testing.T) {
	ctx := context.Background()
	buf := &logBuffer{}
	clock := &fakeClock{}
	l := decide.NewDecisionLog(buf.logger(slog.LevelDebug), decide.DecisionLogOptions{PerSecond: 3, Now: clock.Now})
	deny := decide.Decided{Door: decide.DoorExtProc, Peer: "10.0.0.5:1", Resolution: resolved, Deny: true, Policy: "p"}
	allow := decide.Decided{Door: decide.DoorExtProc, Peer: "10.0.0.5:1", Resolution: resolved}
	for range 10 {
		l.Log(ctx, deny)
	}
	l.Log(ctx, allow) // its own budget
	clock.Add(999 * time.Millisecond)
	l.Log(ctx, deny) // still the same second: held back
	clock.Add(time.Millisecond)
	l.Log(ctx, deny) // a new second: written, with the 8 held back
	l.Log(ctx, deny)

	var kinds []string
	var suppressed []float64
	for _, m := range buf.lines(t) {
		kinds = append(kinds, m["decision"].(string))
		n, _ := m["suppressed"].(float64)
		suppressed = append(suppressed, n)
	}
	wantKinds := []string{"deny", "deny", "deny", "allow", "deny", "deny"}
	wantSuppressed := []float64{0, 0, 0, 0, 8, 0}
	if strings.Join(kinds, " ") != strings.Join(wantKinds, " ") || len(suppressed) != len(wantSuppressed) {
		t.Fatalf("decisions written %v, want %v", kinds, wantKinds)
	}
	for i := range wantSuppressed {
		if suppressed[i] != wantSuppressed[i] {
			t.Errorf("line %d: suppressed %v, want %v (all: %v)", i, suppressed[i], wantSuppressed[i], suppressed)
		}
	}

	// At Info, allows are not even counted: the next allow line at Debug
	// would not report them.
	info := &logBuffer{}
	li := decide.NewDecisionLog(info.logger(slog.LevelInfo), decide.DecisionLogOptions{PerSecond: 1, Now: clock.Now})
	for range 5 {
		li.Log(ctx, allow)
	}
	if n := len(info.lines(t)); n != 0 {
		t.Errorf("allows at Info wrote %d lines", n)
	}

	// A nil DecisionLog logs nothing and does not fail.
	var none *decide.DecisionLog
	none.Log(ctx, deny)
}

// TestDecisionLogConcurrent: decisions logged from many goroutines at once
// stay within the budget and every one is either written or counted.
func TestDecisionLogConcurrent(t *testing.T) {
	buf := &logBuffer{}
	clock := &fakeClock{}
	l := decide.NewDecisionLog(buf.logger(slog.LevelInfo), decide.DecisionLogOptions{PerSecond: 5, Now: clock.Now})
	deny := decide.Decided{Door: decide.DoorTCP, Resolution: resolved, Deny: true, Policy: "p"}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				l.Log(context.Background(), deny)
			}
		})
	}
	wg.Wait()
	if n := len(buf.lines(t)); n != 5 {
		t.Fatalf("%d lines in one second, want 5", n)
	}
	clock.Add(time.Second)
	l.Log(context.Background(), deny)
	lines := buf.lines(t)
	if n, _ := lines[len(lines)-1]["suppressed"].(float64); n != 8*100-5 {
		t.Errorf("suppressed %v, want %d", n, 8*100-5)
	}
}

// BenchmarkDecisionLog measures what a decision costs the request path:
// an allow at Info (level disabled), and a deny past the rate (held back
// and counted), from every core at once.
func BenchmarkDecisionLog(b *testing.B) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	deny := decide.Decided{Door: decide.DoorExtProc, Peer: "10.0.0.5:1", Resolution: resolved, Deny: true, Policy: "p"}
	allow := decide.Decided{Door: decide.DoorExtProc, Peer: "10.0.0.5:1", Resolution: resolved}
	for _, bc := range []struct {
		name string
		d    decide.Decided
	}{{"allow_at_info", allow}, {"deny_held_back", deny}} {
		b.Run(bc.name, func(b *testing.B) {
			l := decide.NewDecisionLog(log, decide.DecisionLogOptions{PerSecond: 1})
			ctx := context.Background()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					l.Log(ctx, bc.d)
				}
			})
		})
	}
}
