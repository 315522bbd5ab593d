package extproc_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/extproc/extproctest"
)

// jsonLines decodes the JSON log lines of buf whose msg is one of msgs.
func jsonLines(t *testing.T, buf *syncBuffer, msgs ...string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for l := range strings.Lines(buf.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		for _, msg := range msgs {
			if m["msg"] == msg {
				delete(m, "time")
				out = append(out, m)
			}
		}
	}
	return out
}

// TestDecisionLogOverGRPC: over a real Process stream, every deny is one
// Info line naming the door, the decision, the deciding policy, the client
// IP, the peer and where the client IP came from; an allow writes nothing
// at Info and one Debug line at Debug. Past the rate (2 a second on an
// injected clock) denies are held back and counted, and the next line says
// how many. The deny counter has the deciding policy as a label.
func TestDecisionLogOverGRPC(t *testing.T) {
	var buf syncBuffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var now atomic.Int64
	clock := func() time.Duration { return time.Duration(now.Load()) }
	reg := prometheus.NewRegistry()
	d, err := decide.New(settings(t), decide.NewDecisionLog(log, decide.DecisionLogOptions{PerSecond: 2, Now: clock}))
	if err != nil {
		t.Fatal(err)
	}
	ts := startWith(t, "tcp", decide.NewCurrent(d), extproc.Options{Logger: log, Registerer: reg})
	ask := func(xff string) {
		t.Helper()
		if _, err := ts.client.Process(context.Background(), extproctest.Request{Headers: hdrs("x-forwarded-for", xff+", 10.0.0.1"), SourceAddress: "10.0.0.1:4321"}); err != nil {
			t.Fatal(err)
		}
	}
	ask("203.0.113.7, 10.0.0.2") // allowed: nothing at Info
	for range 5 {
		ask("198.51.100.7") // denied by the blocklist; 3 of them held back
	}
	now.Add(int64(time.Second))
	ask("8.8.8.8, bogus") // unresolved: denied by trust.on_unresolved, with the count held back

	got := jsonLines(t, &buf, "allowed", "denied")
	deny := map[string]any{"level": "INFO", "msg": "denied", "door": "extproc", "decision": "deny", "policy": "blocklist",
		"client_ip": "198.51.100.7", "peer": "10.0.0.1:4321", "resolved_from": "header"}
	want := []map[string]any{deny, deny, {"level": "INFO", "msg": "denied", "door": "extproc", "decision": "deny", "policy": "trust.on_unresolved",
		"client_ip": "", "peer": "10.0.0.1:4321", "resolved_from": "none", "reason": "invalid", "suppressed": 3.0}}
	if len(got) != len(want) {
		t.Fatalf("%d decision lines, want %d:\n%s", len(got), len(want), buf.String())
	}
	for i := range want {
		if !sameLine(got[i], want[i]) {
			t.Errorf("line %d:\n got %v\nwant %v", i, got[i], want[i])
		}
	}

	// The deny counter by policy; the allow series has no policy.
	for _, c := range []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"decision": "deny", "policy": "blocklist"}, 5},
		{map[string]string{"decision": "deny", "policy": "trust.on_unresolved"}, 1},
		{map[string]string{"decision": "allow", "policy": ""}, 1},
	} {
		if got := counterWith(t, reg, "realipd_extproc_requests_total", c.labels); got != c.want {
			t.Errorf("realipd_extproc_requests_total%v = %v, want %v", c.labels, got, c.want)
		}
	}

	// At Debug, an allow is a line too.
	var dbuf syncBuffer
	dlog := slog.New(slog.NewJSONHandler(&dbuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ds := start(t, "tcp", settings(t), extproc.Options{Logger: dlog})
	if _, err := ds.client.Process(context.Background(), extproctest.Request{Headers: hdrs("x-forwarded-for", "203.0.113.7, 10.0.0.1"), SourceAddress: "10.0.0.1:4321"}); err != nil {
		t.Fatal(err)
	}
	allow := map[string]any{"level": "DEBUG", "msg": "allowed", "door": "extproc", "decision": "allow", "policy": "",
		"client_ip": "203.0.113.7", "peer": "10.0.0.1:4321", "resolved_from": "header"}
	if got := jsonLines(t, &dbuf, "allowed", "denied"); len(got) != 1 || !sameLine(got[0], allow) {
		t.Errorf("at Debug: %v, want %v", got, allow)
	}
}

func sameLine(got, want map[string]any) bool {
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

// counterWith returns the value of the series of metric name whose labels
// include labels.
func counterWith(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}
