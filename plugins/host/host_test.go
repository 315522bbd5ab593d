package host

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/realipd/realipd/plugins"
)

func req(ip string, headers ...string) *plugins.Request {
	r := &plugins.Request{Peer: "10.0.0.1:5555", Listener: "virtual_inbound"}
	if ip != "" {
		r.ClientIP = netip.MustParseAddr(ip)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Headers = append(r.Headers, plugins.Header{Name: headers[i], Value: headers[i+1]})
	}
	return r
}

func decide(t *testing.T, h *Host, r *plugins.Request) plugins.Decision {
	t.Helper()
	d, err := h.Decide(context.Background(), r)
	if err != nil {
		t.Fatalf("Decide(%v): %v", r.ClientIP, err)
	}
	return d
}

func header(d plugins.Decision, name string) string {
	for _, h := range d.Headers {
		if h.Name == name {
			return h.Value
		}
	}
	return ""
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestDenylist(t *testing.T) {
	list := filepath.Join(t.TempDir(), "deny.txt")
	writeFile(t, list, "# blocked\n198.51.100.0/24\n203.0.113.7 # one host\n\n2001:db8::/32\n")
	h, rec := newHost(t, Config{Path: bin.denylist, Settings: map[string]any{"list": list, "status": 403}})
	rec.wait(t, "initial list loaded", 0, func(r record) bool { return r.msg == "list loaded" })

	tests := []struct {
		ip       string
		deny     bool
		match    string
		wantBody string
	}{
		{ip: "198.51.100.9", deny: true, match: "198.51.100.0/24"},
		{ip: "203.0.113.7", deny: true, match: "203.0.113.7"},
		{ip: "203.0.113.8"},
		{ip: "2001:db8::1", deny: true, match: "2001:db8::/32"},
		{ip: "::ffff:198.51.100.1", deny: true, match: "198.51.100.0/24"},
		{ip: "2001:db9::1"},
		{ip: ""}, // no client IP: allowed by default
	}
	for _, tt := range tests {
		t.Run(tt.ip, func(t *testing.T) {
			d := decide(t, h, req(tt.ip))
			if d.Deny != tt.deny {
				t.Fatalf("deny = %v, want %v (%+v)", d.Deny, tt.deny, d)
			}
			if !tt.deny {
				return
			}
			if d.Status != 403 || d.Body != "denied by denylist\n" || d.Metadata["denylist_match"] != tt.match {
				t.Errorf("decision = %+v, want status 403, default body, match %s", d, tt.match)
			}
		})
	}

	// Replacing the file reloads it; a broken file keeps the last list.
	n := rec.len()
	writeFile(t, list, "192.0.2.0/24\n")
	_, n = rec.wait(t, "reloaded list", n, func(r record) bool { return r.msg == "list loaded" && r.attrs["entries"] == float64(1) })
	if d := decide(t, h, req("192.0.2.1")); !d.Deny {
		t.Errorf("192.0.2.1 allowed after reload")
	}
	if d := decide(t, h, req("198.51.100.9")); d.Deny {
		t.Errorf("198.51.100.9 still denied after reload")
	}
	writeFile(t, list, "not an ip\n")
	rec.wait(t, "failed reload", n, func(r record) bool { return r.msg == "reload failed; keeping the last list" })
	if d := decide(t, h, req("192.0.2.1")); !d.Deny {
		t.Errorf("192.0.2.1 allowed after a broken list was written")
	}
}

func TestDenylistDefaults(t *testing.T) {
	h, rec := newHost(t, Config{Path: bin.denylist})
	if d := decide(t, h, req("198.51.100.9")); d.Deny {
		t.Errorf("denied with no list configured: %+v", d)
	}
	r, _ := rec.wait(t, "no-list warning", 0, func(r record) bool { return strings.Contains(r.msg, "no list configured") })
	if r.level != slog.LevelWarn {
		t.Errorf("no-list record at %v, want WARN", r.level)
	}
}

func TestGeotag(t *testing.T) {
	table := filepath.Join(t.TempDir(), "geo.csv")
	writeFile(t, table, "network,country,asn,as_org\n192.0.2.0/24,de,AS3320,Example Telekom\n2001:db8::/32,FR,64500,\n")
	tests := []struct {
		name     string
		settings map[string]any
		ip       string
		headers  map[string]string
		metadata map[string]string
	}{
		{
			name: "shipped table", ip: "8.8.8.8",
			headers:  map[string]string{"x-client-country": "US", "x-client-asn": "AS15169"},
			metadata: map[string]string{"geo_country": "US", "geo_asn": "AS15169", "geo_org": "Google"},
		},
		{
			name: "longest prefix", ip: "203.0.113.200",
			headers: map[string]string{"x-client-country": "XD", "x-client-asn": "AS64499"},
		},
		{
			name: "unknown", ip: "10.1.2.3",
			headers:  map[string]string{"x-client-country": "ZZ", "x-client-asn": "AS0"},
			metadata: map[string]string{"geo_country": "ZZ", "geo_asn": "AS0", "geo_org": ""},
		},
		{
			name: "custom table and headers", ip: "192.0.2.77",
			settings: map[string]any{"table": table, "country_header": "X-Geo", "asn_header": "x-as", "unknown_country": "xx"},
			headers:  map[string]string{"x-geo": "DE", "x-as": "AS3320"},
			metadata: map[string]string{"geo_org": "Example Telekom"},
		},
		{
			name: "custom unknown", ip: "192.0.3.1",
			settings: map[string]any{"table": table, "unknown_country": "xx"},
			headers:  map[string]string{"x-client-country": "XX"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := newHost(t, Config{Path: bin.geotag, Settings: tt.settings})
			d := decide(t, h, req(tt.ip))
			if d.Deny {
				t.Fatalf("geotag denied: %+v", d)
			}
			for k, v := range tt.headers {
				if got := header(d, k); got != v {
					t.Errorf("header %s = %q, want %q (all: %v)", k, got, v, d.Headers)
				}
			}
			for k, v := range tt.metadata {
				if got := d.Metadata[k]; got != v {
					t.Errorf("metadata %s = %q, want %q", k, got, v)
				}
			}
			if d.CacheTTL != time.Minute {
				t.Errorf("CacheTTL = %v, want the 1m default", d.CacheTTL)
			}
		})
	}
}

func TestConfigRejected(t *testing.T) {
	tests := []struct {
		name     string
		path     string
		settings map[string]any
		want     string
	}{
		{"plugin error", bin.testpolicy, map[string]any{"reject": "tenant list missing"}, "rejected its config: tenant list missing"},
		{"unknown key", bin.testpolicy, map[string]any{"colour": "red"}, `unknown field "colour"`},
		{"denylist missing file", bin.denylist, map[string]any{"list": "/nonexistent/deny.txt"}, "no such file"},
		{"denylist bad status", bin.denylist, map[string]any{"status": 200}, "status 200"},
		{"geotag bad header", bin.geotag, map[string]any{"country_header": "x geo"}, "not a valid HTTP header name"},
		{"geotag bad table", bin.geotag, map[string]any{"table": writeTemp(t, "1.2.3.0/24,USA,1\n")}, "line 1: country"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(Config{Name: "pol-" + tt.name, Path: tt.path, SHA256: sha(t, tt.path), Settings: tt.settings})
			if err == nil {
				t.Fatal("New succeeded")
			}
			for _, want := range []string{`policy "pol-` + tt.name + `"`, tt.want} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func writeTemp(t *testing.T, content string) string {
	p := filepath.Join(t.TempDir(), "f")
	writeFile(t, p, content)
	return p
}

func TestDecisionFields(t *testing.T) {
	h, _ := newHost(t, Config{Path: bin.testpolicy, Settings: map[string]any{"tag": "t1"}})
	d := decide(t, h, req("192.0.2.1", "x-test", "deny"))
	if !d.Deny || d.Status != 451 || d.Body != "nope" || header(d, "x-policy") != "testpolicy" {
		t.Errorf("deny decision = %+v", d)
	}
	d = decide(t, h, req("2001:db8::1", "x-tenant", "acme", "x-other", "ignored"))
	want := map[string]string{"tag": "t1", "client_ip": "2001:db8::1", "tenant": "acme", "peer": "", "listener": ""}
	for k, v := range want {
		if d.Metadata[k] != v {
			t.Errorf("metadata %s = %q, want %q (undeclared inputs must not be sent)", k, d.Metadata[k], v)
		}
	}
	_, err := h.Decide(context.Background(), req("192.0.2.1", "x-test", "error"))
	if !errors.Is(err, ErrPlugin) || !strings.Contains(err.Error(), "boom") {
		t.Errorf("error decision: err = %v, want ErrPlugin with the plugin's message", err)
	}

	all, _ := newHost(t, Config{Path: bin.testpolicy, Settings: map[string]any{"all": true}})
	d = decide(t, all, req("192.0.2.1"))
	if d.Metadata["peer"] != "10.0.0.1:5555" || d.Metadata["listener"] != "virtual_inbound" {
		t.Errorf("all inputs: metadata = %v, want peer and listener sent", d.Metadata)
	}
}

// TestHeaderValueBytes: a request header value that is not valid UTF-8
// reaches the plugin byte for byte (header values are bytes in the plugin
// API), and the plugin's answer built from it comes back: as bytes in a
// header, with U+FFFD in metadata (a protobuf string) instead of failing
// the call.
func TestHeaderValueBytes(t *testing.T) {
	h, _ := newHost(t, Config{Path: bin.testpolicy})
	for _, v := range []string{"evil\xff", "\xc3", "a\x00\x80b", "caf\xc3\xa9"} {
		d, err := h.Decide(context.Background(), req("192.0.2.1", "x-tenant", v))
		if err != nil {
			t.Fatalf("value %q: %v", v, err)
		}
		if got := d.Metadata["tenant_hex"]; got != hex.EncodeToString([]byte(v)) {
			t.Errorf("value %q: the plugin received %s (hex)", v, got)
		}
		if got := header(d, "x-tenant-echo"); got != v {
			t.Errorf("value %q: echoed header %q", v, got)
		}
		if got, want := d.Metadata["tenant"], strings.ToValidUTF8(v, "\uFFFD"); got != want {
			t.Errorf("value %q: metadata %q, want %q", v, got, want)
		}
	}
}

func TestCache(t *testing.T) {
	reg := prometheus.NewRegistry()
	h, _ := newHost(t, Config{
		Path: bin.testpolicy, CacheTTL: time.Minute, Registerer: reg,
		Settings: map[string]any{"cache_ttl": "10s"},
	})
	var now time.Duration
	h.clock = func() time.Duration { return now }

	calls := func(r *plugins.Request) string { return decide(t, h, r).Metadata["calls"] }
	steps := []struct {
		name      string
		req       *plugins.Request
		advance   time.Duration
		wantCalls string
	}{
		{name: "first call", req: req("192.0.2.1", "x-tenant", "a"), wantCalls: "1"},
		{name: "same inputs: hit", req: req("192.0.2.1", "x-tenant", "a"), wantCalls: "1"},
		{name: "undeclared header differs: hit", req: req("192.0.2.1", "x-tenant", "a", "user-agent", "curl"), wantCalls: "1"},
		{name: "header name case: hit", req: req("192.0.2.1", "X-Tenant", "a"), wantCalls: "1"},
		{name: "declared header differs: miss", req: req("192.0.2.1", "x-tenant", "b"), wantCalls: "2"},
		{name: "IP differs: miss", req: req("192.0.2.2", "x-tenant", "a"), wantCalls: "3"},
		{name: "before the plugin's TTL: hit", req: req("192.0.2.1", "x-tenant", "a"), advance: 9 * time.Second, wantCalls: "1"},
		{name: "after the plugin's TTL: miss", req: req("192.0.2.1", "x-tenant", "a"), advance: 2 * time.Second, wantCalls: "4"},
	}
	for _, s := range steps {
		now += s.advance
		if got := calls(s.req); got != s.wantCalls {
			t.Errorf("%s: plugin call count %s, want %s", s.name, got, s.wantCalls)
		}
	}
	if hits, misses := value(t, h.m.hits), value(t, h.m.misses); hits != 4 || misses != 4 {
		t.Errorf("hits, misses = %v, %v; want 4, 4", hits, misses)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			registered[mf.GetName()] += m.GetCounter().GetValue()
		}
	}
	if registered["realipd_plugin_cache_hits_total"] != 4 || registered["realipd_plugin_cache_misses_total"] != 4 {
		t.Errorf("registered metrics = %v, want 4 hits and 4 misses", registered)
	}

	// A decision without a TTL is never cached; neither is one when the
	// policy's cache_ttl is 0.
	noTTL, _ := newHost(t, Config{Path: bin.testpolicy, CacheTTL: time.Minute})
	noCache, _ := newHost(t, Config{Path: bin.testpolicy, Settings: map[string]any{"cache_ttl": "10s"}})
	for _, h := range []*Host{noTTL, noCache} {
		decide(t, h, req("192.0.2.1"))
		if got := decide(t, h, req("192.0.2.1")).Metadata["calls"]; got != "2" {
			t.Errorf("uncacheable decision reused: calls = %s", got)
		}
	}
}

// TestHang: a call the plugin never answers ends at the policy's deadline
// with ErrTimeout, the chain applies the entry's on_error to it, and the
// plugin keeps answering other calls without being restarted. Durations are
// held only to what cannot fail on a loaded machine: a call cannot end
// before its deadline, and the generous guard only catches a hang.
func TestHang(t *testing.T) {
	const timeout = 150 * time.Millisecond
	const guard = 10 * time.Second
	// A health ping slowed down by load must not restart the plugin.
	h, _ := newHost(t, Config{Path: bin.testpolicy, Timeout: timeout, HealthTimeout: guard})
	for _, onError := range []plugins.ErrorAction{plugins.ErrorDeny, plugins.ErrorAllow} {
		chain, err := plugins.NewChain(plugins.ChainEntry{Name: "hang", Policy: h, OnError: onError})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		v := chain.Decide(context.Background(), req("192.0.2.1", "x-test", "hang"))
		elapsed := time.Since(start)
		if !errors.Is(v.Err, ErrTimeout) || v.ErrPolicy != "hang" {
			t.Errorf("on_error %v: verdict error %v from %q, want ErrTimeout from the policy", onError, v.Err, v.ErrPolicy)
		}
		if v.Deny != (onError == plugins.ErrorDeny) {
			t.Errorf("on_error %v: verdict deny = %v", onError, v.Deny)
		}
		if elapsed < timeout || elapsed > guard {
			t.Errorf("on_error %v: hanging call returned after %v, timeout %v", onError, elapsed, timeout)
		}
	}
	// The caller's own cancellation is reported as such.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.Decide(ctx, req("192.0.2.1")); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled ctx: err = %v, want context.Canceled", err)
	}
	// The plugin is still healthy and answers other requests. Load may make
	// a call miss the short deadline as well; had the hang wedged the
	// plugin, every call would.
	answered := false
	for end := time.Now().Add(guard); !answered && time.Now().Before(end); {
		_, err := h.Decide(context.Background(), req("192.0.2.1"))
		if err != nil && !errors.Is(err, ErrTimeout) {
			t.Fatalf("call after the hang: %v", err)
		}
		answered = err == nil
	}
	if !answered {
		t.Errorf("no call answered within %v after the hang", guard)
	}
	if _, restarts, _ := h.state(); restarts != 0 {
		t.Errorf("hang caused %d restarts", restarts)
	}
}

func TestCrashRestart(t *testing.T) {
	const timeout = 300 * time.Millisecond
	h, _ := newHost(t, Config{
		Path: bin.testpolicy, Timeout: timeout, Settings: map[string]any{"tag": "configured"},
		MinBackoff: 500 * time.Millisecond, // a sure outage window to probe
	})
	pid1 := decide(t, h, req("192.0.2.1")).Metadata["pid"]

	// Traffic during the whole fault: every call either succeeds or fails
	// with ErrUnavailable/ErrTimeout within its timeout.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures, worst = 0, time.Duration(0)
	var badErr error
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				_, err := h.Decide(context.Background(), req("192.0.2.9"))
				el := time.Since(start)
				mu.Lock()
				worst = max(worst, el)
				if err != nil {
					failures++
					if !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrTimeout) {
						badErr = err
					}
				}
				mu.Unlock()
			}
		})
	}

	kill(t, pid1)
	waitState(t, h, "plugin down", func(up bool, _ int) bool { return !up })
	start := time.Now()
	_, err := h.Decide(context.Background(), req("192.0.2.1"))
	if !errors.Is(err, ErrUnavailable) || time.Since(start) > timeout {
		t.Errorf("call during outage: err = %v after %v, want ErrUnavailable at once", err, time.Since(start))
	}
	waitState(t, h, "restart", func(up bool, restarts int) bool { return up && restarts == 1 })
	d := decide(t, h, req("192.0.2.1"))
	close(stop)
	wg.Wait()
	if d.Metadata["pid"] == pid1 || d.Metadata["tag"] != "configured" {
		t.Errorf("after restart: pid %s (was %s), tag %q; want a new process with its config", d.Metadata["pid"], pid1, d.Metadata["tag"])
	}
	if badErr != nil {
		t.Errorf("traffic saw error %v, want ErrUnavailable or ErrTimeout", badErr)
	}
	if worst > timeout+time.Second {
		t.Errorf("slowest call during the fault took %v, timeout %v", worst, timeout)
	}
	if got := value(t, h.m.restarts); got != 1 {
		t.Errorf("restarts metric = %v", got)
	}
	t.Logf("%d failed calls during the outage, slowest call %v", failures, worst)

	// A plugin that crashes in the middle of a call: that call fails within
	// its timeout and the plugin comes back.
	start = time.Now()
	_, err = h.Decide(context.Background(), req("192.0.2.1", "x-test", "crash"))
	if !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrTimeout) || time.Since(start) > timeout+time.Second {
		t.Errorf("crashing call: err = %v after %v", err, time.Since(start))
	}
	waitState(t, h, "second restart", func(up bool, restarts int) bool { return up && restarts == 2 })
	decide(t, h, req("192.0.2.1"))
}

func kill(t *testing.T, pid string) {
	t.Helper()
	var n int
	for _, c := range pid {
		n = n*10 + int(c-'0')
	}
	if err := syscall.Kill(n, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s: %v", pid, err)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	noexec := filepath.Join(dir, "noexec")
	b, err := os.ReadFile(bin.testpolicy)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(noexec, b, 0o644); err != nil {
		t.Fatal(err)
	}
	good := sha(t, bin.testpolicy)
	wrong := strings.Repeat("ab", 32)
	tests := []struct {
		name, path, sum string
		want            []string
		checksum        bool
	}{
		{name: "ok", path: bin.testpolicy, sum: good},
		{name: "upper-case sum", path: bin.testpolicy, sum: strings.ToUpper(good)},
		{name: "mismatch", path: bin.testpolicy, sum: wrong, want: []string{bin.testpolicy, "sha256 mismatch", "configured " + wrong, "file has " + good}, checksum: true},
		{name: "missing", path: filepath.Join(dir, "nope"), sum: good, want: []string{filepath.Join(dir, "nope"), "no such file"}},
		{name: "not executable", path: noexec, sum: sha(t, noexec), want: []string{noexec, "not executable"}},
		{name: "directory", path: dir, sum: good, want: []string{dir, "not a regular file"}},
		{name: "no sum", path: bin.testpolicy, want: []string{"sha256 is required"}},
		{name: "bad sum", path: bin.testpolicy, sum: "xyz", want: []string{"not 64 hex digits"}},
		{name: "no path", want: []string{"no plugin path"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Name: "p1", Path: tt.path, SHA256: tt.sum}
			for _, fn := range []struct {
				name string
				run  func() error
			}{
				{"Check", func() error { return Check(cfg) }},
				{"New", func() error {
					h, err := New(cfg)
					if err == nil {
						h.Close()
					}
					return err
				}},
			} {
				err := fn.run()
				if len(tt.want) == 0 {
					if err != nil {
						t.Errorf("%s: %v", fn.name, err)
					}
					continue
				}
				if err == nil {
					t.Fatalf("%s succeeded", fn.name)
				}
				for _, w := range append(tt.want, `policy "p1"`) {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%s: error %q does not contain %q", fn.name, err, w)
					}
				}
				if errors.Is(err, ErrChecksum) != tt.checksum {
					t.Errorf("%s: errors.Is(err, ErrChecksum) = %v", fn.name, !tt.checksum)
				}
			}
		})
	}
}

func TestWrongProtocolVersion(t *testing.T) {
	_, err := New(Config{Name: "old", Path: bin.badversion, SHA256: sha(t, bin.badversion)})
	if err == nil {
		t.Fatal("New succeeded with a plugin of another protocol version")
	}
	for _, w := range []string{bin.badversion, `policy "old"`, "incompatible API version", "Plugin version: 99"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

func TestLogBridge(t *testing.T) {
	h, rec := newHost(t, Config{Path: bin.testpolicy, Settings: map[string]any{"log_warn": "hello from the plugin"}})
	r, _ := rec.wait(t, "plugin warning", 0, func(r record) bool { return r.msg == "hello from the plugin" })
	if r.level != slog.LevelWarn || r.attrs["answer"] != float64(42) || r.attrs["policy"] == nil {
		t.Errorf("bridged record = %+v, want WARN with answer=42 and the policy", r)
	}
	// Plain output on stdout arrives at debug level, line by line.
	r, _ = rec.wait(t, "plugin stdout", 0, func(r record) bool { return r.msg == "plugin output" && r.attrs["stream"] == "stdout" })
	if r.level != slog.LevelDebug || r.attrs["line"] != "printed: hello from the plugin" {
		t.Errorf("stdout record = %+v", r)
	}
	_ = h
}

func TestClose(t *testing.T) {
	h, _ := newHost(t, Config{Path: bin.testpolicy})
	pid := decide(t, h, req("192.0.2.1")).Metadata["pid"]
	var n int
	for _, c := range pid {
		n = n*10 + int(c-'0')
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	// go-plugin has waited for the process: it no longer exists.
	if err := syscall.Kill(n, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("plugin process %d after Close: kill(0) = %v, want ESRCH", n, err)
	}
	if _, err := h.Decide(context.Background(), req("192.0.2.1")); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Decide after Close: %v, want ErrUnavailable", err)
	}
	h.Close() // idempotent
}

func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		t.Fatal(err)
	}
	if c := out.GetCounter(); c != nil {
		return c.GetValue()
	}
	return out.GetGauge().GetValue()
}

// TestReplacedBinaryRefusedOnRestart checks that the sha256 holds at every
// start: after the binary on disk is swapped, the restart of a crashed
// plugin is refused with ErrChecksum and calls keep failing fast.
func TestReplacedBinaryRefusedOnRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy")
	copyFile(t, bin.testpolicy, path)
	h, rec := newHost(t, Config{Path: path, SHA256: sha(t, bin.testpolicy), Timeout: time.Second,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	pid := decide(t, h, req("192.0.2.1")).Metadata["pid"]

	copyFile(t, bin.geotag, path+".new")
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	kill(t, pid)
	r, _ := rec.wait(t, "refused restart", 0, func(r record) bool { return r.msg == "plugin restart failed" })
	if err, _ := r.attrs["error"].(error); !errors.Is(err, ErrChecksum) {
		t.Errorf("restart error = %v, want ErrChecksum", r.attrs["error"])
	}
	if _, err := h.Decide(context.Background(), req("192.0.2.1")); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Decide with the plugin refused: %v, want ErrUnavailable", err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestStartTimeout: a program that never completes go-plugin's handshake
// is refused after StartTimeout, naming the plugin.
func TestStartTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "silent")
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexec sleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := New(Config{Name: "silent", Path: path, SHA256: sha(t, path), StartTimeout: 300 * time.Millisecond})
	if err == nil {
		t.Fatal("New succeeded")
	}
	for _, w := range []string{`policy "silent"`, path, "timeout while waiting for plugin to start"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("New took %v with a 300ms start timeout", el)
	}
}

func TestRequestHeaders(t *testing.T) {
	tests := []struct {
		name      string
		settings  map[string]any
		wantNames []string
		wantAll   bool
	}{
		{"declared, lower-cased and sorted", nil, []string{"x-tenant", "x-test"}, false},
		{"client IP only", map[string]any{"ip_only": true}, nil, false},
		{"everything", map[string]any{"all": true}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := newHost(t, Config{Path: bin.testpolicy, Settings: tt.settings})
			names, all := h.RequestHeaders()
			if !slices.Equal(names, tt.wantNames) || all != tt.wantAll {
				t.Errorf("RequestHeaders = %q, %v; want %q, %v", names, all, tt.wantNames, tt.wantAll)
			}
			if n := testing.AllocsPerRun(100, func() { h.RequestHeaders() }); n != 0 {
				t.Errorf("RequestHeaders allocates %v times", n)
			}
		})
	}
}

// TestRequestHeadersAfterRestart: a plugin that declares other headers when
// it comes back is honoured by the host and by a Chain holding it.
func TestRequestHeadersAfterRestart(t *testing.T) {
	file := writeTemp(t, "X-One\n")
	h, _ := newHost(t, Config{Path: bin.testpolicy, Settings: map[string]any{"headers_file": file}, MinBackoff: 10 * time.Millisecond})
	chain, err := plugins.NewChain(plugins.ChainEntry{Name: "test", Policy: h})
	if err != nil {
		t.Fatal(err)
	}
	if names, all := chain.RequestHeaders(); !slices.Equal(names, []string{"x-one"}) || all {
		t.Fatalf("before restart: %q, %v", names, all)
	}
	writeFile(t, file, "x-two\nx-three\n")
	kill(t, decide(t, h, req("192.0.2.1")).Metadata["pid"])
	waitState(t, h, "restart", func(up bool, restarts int) bool { return up && restarts == 1 })
	if names, all := h.RequestHeaders(); !slices.Equal(names, []string{"x-three", "x-two"}) || all {
		t.Errorf("host after restart: %q, %v", names, all)
	}
	if names, all := chain.RequestHeaders(); !slices.Equal(names, []string{"x-three", "x-two"}) || all {
		t.Errorf("chain after restart: %q, %v", names, all)
	}
}

// TestUpGaugeSharedAcrossHosts: a reload runs a policy's new host beside the
// one it retires; closing the old one must not zero the new one's count.
func TestUpGaugeSharedAcrossHosts(t *testing.T) {
	reg := prometheus.NewRegistry()
	old, _ := newHost(t, Config{Name: "shared", Path: bin.testpolicy, Registerer: reg})
	if got := value(t, old.m.up); got != 1 {
		t.Fatalf("realipd_plugin_up with one host = %v, want 1", got)
	}
	successor, _ := newHost(t, Config{Name: "shared", Path: bin.testpolicy, Registerer: reg})
	if got := value(t, successor.m.up); got != 2 {
		t.Fatalf("realipd_plugin_up with two hosts = %v, want 2", got)
	}
	old.Close()
	old.Close() // idempotent: counted once
	if got := value(t, successor.m.up); got != 1 {
		t.Fatalf("realipd_plugin_up after the old host closed = %v, want 1", got)
	}
	successor.Close()
	if got := value(t, successor.m.up); got != 0 {
		t.Fatalf("realipd_plugin_up after both closed = %v, want 0", got)
	}
}

// TestPluginRunsInDir: the plugin's process runs in Config.Dir, so that a
// relative path in its settings is taken from there (realipd passes the
// configuration file's directory), at the first start and at restarts.
func TestPluginRunsInDir(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "headers.txt"), "x-from-dir\n")
	settings := map[string]any{"headers_file": "headers.txt"}
	h, _ := newHost(t, Config{Path: bin.testpolicy, Settings: settings, Dir: dir, MinBackoff: 10 * time.Millisecond})
	if names, _ := h.RequestHeaders(); !slices.Equal(names, []string{"x-from-dir"}) {
		t.Fatalf("RequestHeaders = %q, want the file in Dir read", names)
	}
	kill(t, decide(t, h, req("192.0.2.1")).Metadata["pid"])
	waitState(t, h, "restart", func(up bool, restarts int) bool { return up && restarts == 1 })
	if names, _ := h.RequestHeaders(); !slices.Equal(names, []string{"x-from-dir"}) {
		t.Errorf("after a restart RequestHeaders = %q, want the file in Dir read", names)
	}
	// Without Dir the plugin runs in the host's working directory, which
	// has no headers.txt: Configure fails.
	cfg := Config{Name: "nodir", Path: bin.testpolicy, SHA256: sha(t, bin.testpolicy), Settings: settings}
	if h, err := New(cfg); err == nil {
		h.Close()
		t.Errorf("New without Dir read headers.txt from %s", dir)
	} else if !strings.Contains(err.Error(), "headers.txt") {
		t.Errorf("New without Dir = %v, want the missing headers.txt named", err)
	}
}
