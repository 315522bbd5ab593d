package policies

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/plugintest"
	"github.com/realipd/realipd/plugins"
)

// pluginBin holds the example plugins and the host's test plugin (which
// reads the x-test and x-tenant request headers) that TestMain builds once.
var pluginBin struct{ denylist, geotag, headerdeny, testpolicy string }

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "realipd-policies-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins, err := plugintest.Build(dir, "../../examples/plugins/denylist", "../../examples/plugins/geotag",
		"../../examples/plugins/headerdeny", "../../plugins/host/testdata/testpolicy")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pluginBin.denylist, pluginBin.geotag, pluginBin.testpolicy = bins["denylist"], bins["geotag"], bins["testpolicy"]
	pluginBin.headerdeny = bins["headerdeny"]
	return m.Run()
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	sum, err := plugintest.SHA256(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func pluginPolicies(t *testing.T) []config.Policy {
	list := filepath.Join(t.TempDir(), "deny.txt")
	if err := os.WriteFile(list, []byte("198.51.100.0/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ms := func(d string) config.Duration {
		var c config.Duration
		if err := c.UnmarshalJSON([]byte(`"` + d + `"`)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	return []config.Policy{
		{Name: "blocklist", Type: "cidr", Deny: config.CIDRs("203.0.113.0/24")},
		{Name: "deny", Type: "plugin", Path: pluginBin.denylist, SHA256: fileSHA(t, pluginBin.denylist),
			Timeout: ms("2s"), OnError: "deny", CacheTTL: ms("30s"),
			Config: map[string]any{"list": list, "status": 429, "body": "go away\n"}},
		{Name: "geo", Type: "plugin", Path: pluginBin.geotag, SHA256: fileSHA(t, pluginBin.geotag),
			Timeout: ms("2s"), OnError: "allow", CacheTTL: ms("30s")},
		{Name: "tenant", Type: "plugin", Path: pluginBin.testpolicy, SHA256: fileSHA(t, pluginBin.testpolicy),
			Timeout: ms("2s"), OnError: "allow", Config: map[string]any{"tag": "e2e"}},
	}
}

// serveExtProc serves chain (resolving from the peer) with realipd's
// ext_proc server on a loopback port for the test and returns a client
// connected to it over gRPC.
func serveExtProc(t *testing.T, chain *plugins.Chain) *extproctest.Client {
	t.Helper()
	r, err := clientip.New(clientip.Config{Strategy: clientip.RemoteAddr})
	if err != nil {
		t.Fatal(err)
	}
	d, err := decide.New(decide.Settings{Resolver: r, Chain: chain}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := extproc.New(decide.NewCurrent(d), extproc.Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := extproc.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeListener(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	c, err := extproctest.Dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.MessageTimeout = 5 * time.Second // the first call starts TLS to the plugins; be generous on a loaded machine
	return c
}

// TestPluginsThroughExtProc is the end-to-end path: policies config → Chain
// with real plugin processes → realipd's ext_proc server → an Envoy-like
// ext_proc client over real gRPC.
func TestPluginsThroughExtProc(t *testing.T) {
	chain, err := BuildWith(pluginPolicies(t), Options{Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { chain.Close() })
	if got := strings.Join(chain.Names(), ","); got != "blocklist,deny,geo,tenant" {
		t.Fatalf("chain %s", got)
	}
	c := serveExtProc(t, chain)

	tests := []struct {
		name       string
		peer       string
		headers    []extproctest.Header
		wantStatus int // 0: allowed
		wantMeta   map[string]string
		wantHdrs   map[string]string
	}{
		{
			name: "plugin deny", peer: "198.51.100.7:40000", wantStatus: 429,
			wantMeta: map[string]string{"decision": "deny", "policy": "deny", "client_ip": "198.51.100.7", "denylist_match": "198.51.100.0/24"},
		},
		{
			name: "headers read by a plugin",
			peer: "8.8.8.8:40000",
			headers: []extproctest.Header{{Name: ":path", Value: "/"}, {Name: "x-tenant", Value: "acme"},
				{Name: "cookie", Value: "secret"}, {Name: "x-test", Value: "allow"}},
			// The plugin puts the x-tenant it received in its metadata; the
			// geo plugin before it allowed and tagged the request.
			wantMeta: map[string]string{"decision": "allow", "tenant": "acme", "tag": "e2e", "geo_country": "US", "client_ip": "8.8.8.8"},
			wantHdrs: map[string]string{"x-policy": "testpolicy", "x-client-country": "US"},
		},
		{
			name: "plugin deny decided on a header, with earlier metadata",
			peer: "8.8.8.8:40000",
			headers: []extproctest.Header{{Name: ":path", Value: "/"}, {Name: "x-test", Value: "deny"},
				{Name: "x-tenant", Value: "beta"}},
			wantStatus: 403, // the plugin's 451 is not an Envoy status code: deny_status applies
			wantMeta: map[string]string{"decision": "deny", "policy": "tenant", "tenant": "beta", "tag": "e2e",
				"geo_country": "US", "client_ip": "8.8.8.8", "peer": "8.8.8.8:40000"},
			wantHdrs: map[string]string{"x-policy": "testpolicy"},
		},
		{
			name: "built-in deny first", peer: "203.0.113.1:40000", wantStatus: 403,
			wantMeta: map[string]string{"decision": "deny", "policy": "blocklist"},
		},
		{
			name:     "allowed and tagged",
			peer:     "8.8.8.8:40000",
			wantMeta: map[string]string{"decision": "allow", "client_ip": "8.8.8.8", "geo_country": "US", "geo_asn": "AS15169", "geo_org": "Google"},
			wantHdrs: map[string]string{"x-real-ip": "8.8.8.8", "x-client-country": "US", "x-client-asn": "AS15169"},
		},
		{
			name:     "allowed, unknown to the table",
			peer:     "[2001:db8:1::5]:40000",
			wantMeta: map[string]string{"decision": "allow", "geo_country": "XD", "geo_asn": "AS64499"},
			wantHdrs: map[string]string{"x-client-country": "XD"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := c.Process(context.Background(), extproctest.Request{SourceAddress: tt.peer, Headers: tt.headers})
			if err != nil {
				t.Fatal(err)
			}
			meta, err := res.Metadata("realipd")
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.wantMeta {
				if meta[k] != v {
					t.Errorf("metadata %s = %q, want %q (all: %v)", k, meta[k], v, meta)
				}
			}
			if tt.wantStatus != 0 {
				if res.Immediate == nil || int(res.Immediate.GetStatus().GetCode()) != tt.wantStatus {
					t.Fatalf("immediate response %v, want status %d", res.Immediate, tt.wantStatus)
				}
				if tt.wantStatus == 429 && string(res.Immediate.GetBody()) != "go away\n" {
					t.Errorf("deny body %q, want the plugin's", res.Immediate.GetBody())
				}
			} else if res.Immediate != nil {
				t.Fatalf("denied: %v", res.Immediate)
			}
			for k, v := range tt.wantHdrs {
				if got, _ := res.SetHeader(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

// TestNonUTF8HeaderThroughExtProc: a request header value that is not valid
// UTF-8 must not make a plugin call fail. Were it to, on_error: allow would
// let a client skip any plugin that reads headers by adding one such byte.
// headerdeny must deny "evil\xff"; the test plugin behind it must receive
// and echo its x-tenant bytes unchanged, and its metadata built from them
// must reach Envoy (as valid UTF-8).
func TestNonUTF8HeaderThroughExtProc(t *testing.T) {
	ms := func(d string) config.Duration {
		var c config.Duration
		if err := c.UnmarshalJSON([]byte(`"` + d + `"`)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	chain, err := BuildWith([]config.Policy{
		{Name: "agents", Type: "plugin", Path: pluginBin.headerdeny, SHA256: fileSHA(t, pluginBin.headerdeny),
			Timeout: ms("2s"), OnError: "allow", CacheTTL: ms("30s"),
			Config: map[string]any{"header": "user-agent", "contains": []string{"evil"}}},
		{Name: "tenant", Type: "plugin", Path: pluginBin.testpolicy, SHA256: fileSHA(t, pluginBin.testpolicy),
			Timeout: ms("2s"), OnError: "allow"},
	}, Options{Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { chain.Close() })
	c := serveExtProc(t, chain)

	tests := []struct {
		name     string
		headers  []extproctest.Header
		deny     bool
		wantMeta map[string]string
		wantHdrs map[string]string
	}{
		{name: "denied despite a byte that is not UTF-8", deny: true,
			headers:  []extproctest.Header{{Name: ":path", Value: "/"}, {Name: "user-agent", Value: "evil\xff"}},
			wantMeta: map[string]string{"decision": "deny", "policy": "agents", "headerdeny_match": "evil"}},
		{name: "denied, valid UTF-8", deny: true,
			headers:  []extproctest.Header{{Name: "user-agent", Value: "very evil"}},
			wantMeta: map[string]string{"decision": "deny", "policy": "agents", "headerdeny_match": "evil"}},
		{name: "allowed, bytes passed on",
			headers:  []extproctest.Header{{Name: "user-agent", Value: "good\xff"}, {Name: "x-tenant", Value: "acme\xff"}},
			wantMeta: map[string]string{"decision": "allow", "tenant_hex": "61636d65ff", "tenant": "acme\uFFFD"},
			wantHdrs: map[string]string{"x-tenant-echo": "acme\xff", "x-policy": "testpolicy"}},
		{name: "allowed, no header",
			wantMeta: map[string]string{"decision": "allow", "tenant_hex": ""},
			wantHdrs: map[string]string{"x-policy": "testpolicy"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := c.Process(context.Background(), extproctest.Request{SourceAddress: "8.8.8.8:40000", Headers: tt.headers})
			if err != nil {
				t.Fatal(err)
			}
			if denied := res.Immediate != nil; denied != tt.deny {
				t.Fatalf("denied = %v, want %v (immediate response %v)", denied, tt.deny, res.Immediate)
			}
			if tt.deny && string(res.Immediate.GetBody()) != "denied by headerdeny\n" {
				t.Errorf("deny body %q, want headerdeny's", res.Immediate.GetBody())
			}
			meta, err := res.Metadata("realipd")
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.wantMeta {
				if got, ok := meta[k]; !ok || got != v {
					t.Errorf("metadata %s = %q, want %q (all: %v)", k, got, v, meta)
				}
			}
			for k, v := range tt.wantHdrs {
				if got, _ := res.SetHeader(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestBuildPluginErrors(t *testing.T) {
	good := pluginPolicies(t)
	tests := []struct {
		name   string
		mutate func(ps []config.Policy)
		check  bool // also reported by Check, without starting anything
		want   []string
	}{
		{"sha256 mismatch", func(ps []config.Policy) { ps[1].SHA256 = strings.Repeat("0", 64) }, true,
			[]string{"policies[1]", `policy "deny"`, pluginBin.denylist, "sha256 mismatch"}},
		{"missing binary", func(ps []config.Policy) { ps[2].Path = "/nonexistent/geotag" }, true,
			[]string{"policies[2]", "/nonexistent/geotag", "no such file"}},
		{"config rejected", func(ps []config.Policy) { ps[2].Config = map[string]any{"colour": "red"} }, false,
			[]string{"policies[2]", `policy "geo"`, "rejected its config", `unknown field "colour"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps := append([]config.Policy(nil), good...)
			tt.mutate(ps)
			_, err := Build(ps)
			if err == nil {
				t.Fatal("Build succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Build error %q lacks %q", err, w)
				}
			}
			if cerr := Check(ps); (cerr != nil) != tt.check {
				t.Errorf("Check = %v, want an error: %v", cerr, tt.check)
			}
		})
	}
	if err := Check(good); err != nil {
		t.Errorf("Check(good) = %v", err)
	}
}
