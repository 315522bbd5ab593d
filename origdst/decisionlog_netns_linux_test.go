//go:build linux

package origdst

import (
	"bufio"
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/intercept"
)

// logLines is a log destination whose JSON lines a test reads; safe for
// concurrent use.
type logLines struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// decisions returns the decision log's lines written so far, without their
// time.
func (l *logLines) decisions(t testing.TB) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for line := range strings.Lines(l.b.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == "allowed" || m["msg"] == "denied" {
			delete(m, "time")
			out = append(out, m)
		}
	}
	return out
}

// TestDecisionLogNetns: the native listener logs every decision through
// the decision log, on a real connection redirected by real iptables
// rules: a denied TCP connection (Info) and an allowed one (Debug), with
// the peer, the client, where it came from and the original destination;
// and on the HTTP ports a request denied by a policy, one refused before
// any policy (CONNECT, as Envoy would) and an unresolved one. The deny
// counters carry the deciding policy.
func TestDecisionLogNetns(t *testing.T) {
	w := newWorld(t)
	f := intercept.IPv4
	w.rules(t, intercept.ModeRedirect, f)
	target := netip.AddrPortFrom(w.bIP[f], 80)
	w.upstream(t, w.b, target)
	httpTarget := netip.AddrPortFrom(w.bIP[f], 8080)
	w.httpApp(t, httpTarget)
	pod := w.aIP[f]
	trustPod := []netip.Prefix{netip.PrefixFrom(pod, pod.BitLen())}
	blocked := netip.MustParseAddr("198.51.100.66")
	rec := &recorder{deny: map[netip.Addr]bool{pod: true, blocked: true}}
	var logs logLines
	r := w.serve(t, Options{
		Mode: ModeRedirect, Listen: both(outboundPort), HTTPPorts: []uint16{8080},
		Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}, Settings{
		Chain:        rec.chain(t),
		TrustedCIDRs: trustPod,
		Resolver:     resolver(t, clientip.Config{Strategy: clientip.RightmostTrustedRange, TrustedCIDRs: trustPod}),
	})
	var want []map[string]any
	check := func(step string) {
		t.Helper()
		got := logs.decisions(t)
		if len(got) != len(want) {
			t.Fatalf("%s: %d decision lines, want %d:\n%v", step, len(got), len(want), got)
		}
		for i := range want {
			peer, _ := got[i]["peer"].(string)
			if ap, err := netip.ParseAddrPort(peer); err == nil && ap.Addr() == pod {
				got[i]["peer"] = pod.String() + ":*" // the client's port is the kernel's choice
			}
			if !sameLine(got[i], want[i]) {
				t.Errorf("%s: line %d:\n got %v\nwant %v", step, i, got[i], want[i])
			}
		}
	}

	// TCP: the pod itself is denied, then allowed.
	refusedAtOnce(t, w.a, target)
	want = append(want, map[string]any{"level": "INFO", "msg": "denied", "door": "origdst_tcp", "decision": "deny", "policy": "recorder",
		"client_ip": pod.String(), "peer": pod.String() + ":*", "resolved_from": "peer", "original_dst": target.String()})
	check("TCP deny")
	rec.mu.Lock()
	delete(rec.deny, pod)
	rec.mu.Unlock()
	if greeting, _, err := exchange(dial(t, w.a, target), "x"); err != nil || greeting != "hi "+target.String() {
		t.Fatalf("allowed connection: %q %v", greeting, err)
	}
	want = append(want, map[string]any{"level": "DEBUG", "msg": "allowed", "door": "origdst_tcp", "decision": "allow", "policy": "",
		"client_ip": pod.String(), "peer": pod.String() + ":*", "resolved_from": "peer", "original_dst": target.String()})
	check("TCP allow")

	// HTTP: denied by the policy, refused as Envoy would, unresolved.
	c := dial(t, w.a, httpTarget)
	br := bufio.NewReader(c)
	for _, req := range []struct{ raw, status, policy, client, from, reason string }{
		{"GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: " + blocked.String() + "\r\n\r\n", "403", "recorder", blocked.String(), "header", ""},
		{"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n", "403", "http_refused", "", "none", "none"},
		{"GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 8.8.8.8, bogus\r\n\r\n", "403", "trust.on_unresolved", "", "none", "invalid"},
	} {
		resp, _ := roundTrip(t, c, br, req.raw)
		if got := resp.Status[:3]; got != req.status {
			t.Errorf("%q: status %s, want %s", req.raw, got, req.status)
		}
		line := map[string]any{"level": "INFO", "msg": "denied", "door": "origdst_http", "decision": "deny", "policy": req.policy,
			"client_ip": req.client, "peer": pod.String() + ":*", "resolved_from": req.from, "original_dst": httpTarget.String()}
		if req.reason != "" {
			line["reason"] = req.reason
		}
		want = append(want, line)
		if req.policy == "http_refused" {
			// net/http ends the connection after a CONNECT it answered.
			c = dial(t, w.a, httpTarget)
			br = bufio.NewReader(c)
		}
	}
	check("HTTP")

	for _, m := range []struct {
		name, policy string
		want         float64
	}{
		{"connections_refused_total", "recorder", 1},
		{"http_requests_total", "recorder", 1},
		{"http_requests_total", "http_refused", 1},
		{"http_requests_total", "trust.on_unresolved", 1},
	} {
		if got := r.metric(t, m.name, m.policy); got != m.want {
			t.Errorf("%s{policy=%q} = %v, want %v", m.name, m.policy, got, m.want)
		}
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
