package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/config"
)

// startAdmin runs the roles of cfg (admin only: the others disabled) with
// logs going to a logWatch, and returns the admin base URL once it listens.
func startAdmin(t *testing.T, cfg *config.Config) (url string, logs *logWatch) {
	t.Helper()
	logs = newLogWatch(map[string]string{"admin": `msg="admin listening".* addr=(\S+)`})
	logger := slog.New(slog.NewTextHandler(logs, nil))
	s, err := buildRoles(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- runRoles(ctx, logger, s.roles, 5*time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("roles after cancel = %v\n%s", err, logs)
		}
	})
	select {
	case <-logs.ready:
	case err := <-done:
		t.Fatalf("roles returned before the admin listener listened: %v\n%s", err, logs)
	}
	return "http://" + logs.value("admin"), logs
}

// adminOnly is the default configuration with only the admin role, on a
// free loopback port.
func adminOnly() config.Config {
	cfg := config.Default()
	cfg.ExtProc.Enabled = false
	cfg.XDS.Enabled = false
	cfg.Admin.Listen = "127.0.0.1:0"
	return cfg
}

// TestConfigDumpRedactsPluginConfig: /config_dump shows a plugin policy's
// config keys, nested ones included, but none of its values, and leaves
// the configuration in force untouched.
func TestConfigDumpRedactsPluginConfig(t *testing.T) {
	secrets := []string{"s3cr3t-token", "hunter2", "key-one", "key-two", "4711"}
	cfg := adminOnly()
	cfg.Policies = []config.Policy{{
		Name: "vault", Type: "plugin", Path: "/opt/realipd/vault-policy", SHA256: strings.Repeat("ab", 32),
		Timeout: config.Duration{Duration: 50 * time.Millisecond}, OnError: "deny",
		Config: map[string]any{
			"token":    "s3cr3t-token",
			"endpoint": map[string]any{"url": "https://ops:hunter2@vault.internal", "port": json.Number("4711"), "tls": true},
			"keys":     []any{"key-one", map[string]any{"id": "key-two"}},
			"empty":    nil,
		},
	}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	base, _ := startAdmin(t, &cfg)

	body, code := get(t, base+"/config_dump")
	if code != http.StatusOK {
		t.Fatalf("/config_dump = %d\n%s", code, body)
	}
	for _, s := range secrets {
		if strings.Contains(body, s) {
			t.Errorf("/config_dump shows the plugin config value %q:\n%s", s, body)
		}
	}
	var doc struct {
		Config struct {
			Policies []struct {
				Name   string         `json:"name"`
				Path   string         `json:"path"`
				SHA256 string         `json:"sha256"`
				Config map[string]any `json:"config"`
			} `json:"policies"`
		} `json:"config"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("/config_dump is not JSON: %v\n%s", err, body)
	}
	dump := doc.Config
	const r = config.RedactedValue
	want := map[string]any{
		"token":    r,
		"endpoint": map[string]any{"url": r, "port": r, "tls": r},
		"keys":     []any{r, map[string]any{"id": r}},
		"empty":    r,
	}
	if len(dump.Policies) != 1 || !reflect.DeepEqual(dump.Policies[0].Config, want) {
		t.Fatalf("/config_dump policies = %+v, want config %v", dump.Policies, want)
	}
	if p := dump.Policies[0]; p.Name != "vault" || p.Path != "/opt/realipd/vault-policy" || p.SHA256 != cfg.Policies[0].SHA256 {
		t.Errorf("/config_dump policy = %+v, want name, path and sha256 shown", p)
	}
	if got := cfg.Policies[0].Config["endpoint"].(map[string]any)["url"]; got != "https://ops:hunter2@vault.internal" {
		t.Errorf("the configuration in force was changed: endpoint.url = %v", got)
	}
}

// TestAdminChecksHost: the admin listener of serve refuses a Host that is
// not an IP address, localhost or a name of admin.allowed_hosts, as a DNS
// rebinding page would send, on pprof and config_dump alike.
func TestAdminChecksHost(t *testing.T) {
	cfg := adminOnly()
	cfg.Admin.AllowedHosts = []string{"realipd-admin.internal"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	base, _ := startAdmin(t, &cfg)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	for _, tt := range []struct {
		path, host string
		want       int
	}{
		{"/config_dump", "rebind.attacker.example:9902", http.StatusForbidden},
		{"/debug/pprof/cmdline", "rebind.attacker.example", http.StatusForbidden},
		{"/config_dump", "localhost:9902", http.StatusOK},
		{"/config_dump", "realipd-admin.internal:9902", http.StatusOK},
		{"/healthz", "10.1.2.3:9902", http.StatusOK},
	} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, base+tt.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = tt.host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("GET %s with Host %q = %d, want %d", tt.path, tt.host, resp.StatusCode, tt.want)
		}
	}
}
