package main

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// resolveJSON runs resolve --json with args and decodes its output.
func resolveJSON(t *testing.T, args ...string) (out resolveOutput, stderr string, code int) {
	t.Helper()
	stdout, stderr, code := runCmd(t, append([]string{"resolve", "--json"}, args...)...)
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("resolve %v: stdout is not its JSON output (%v):\n%s\nstderr: %s", args, err, stdout, stderr)
	}
	return out, stderr, code
}

// TestResolveInputModel: the JSON output names the input model; with
// --as-forwarded-by-envoy it also says what became of Envoy's entry:
// removed, left because it is not what Envoy appends (warned about on
// stderr), left because the file turns xff_appended_by_envoy off or the
// strategy reads another header, or never appended for a pipe peer.
func TestResolveInputModel(t *testing.T) {
	off := writeFile(t, "off.yaml", "extproc:\n  xff_appended_by_envoy: false\n")
	count1 := []string{"--strategy", "rightmost_trusted_count", "--trusted-hops", "1"}
	tests := []struct {
		name              string
		args              []string
		model, entry, ip  string
		warned            bool
		wantCode, entries int
	}{
		{name: "default: as the peer sent it", args: []string{"--remote-addr", "10.0.0.5:80", "-H", "X-Forwarded-For: 203.0.113.9, 10.0.0.5"},
			model: "as_sent_by_peer", ip: "10.0.0.5", entries: 1},
		{name: "as forwarded: Envoy's entry removed", args: []string{"--as-forwarded-by-envoy", "--remote-addr", "10.0.0.5:80", "-H", "X-Forwarded-For: 203.0.113.9, 10.0.0.5"},
			model: "as_forwarded_by_envoy", entry: "removed", ip: "203.0.113.9", entries: 1},
		{name: "as forwarded: a loopback peer's destination", args: []string{"--as-forwarded-by-envoy", "--destination-addr", "10.9.9.9:10000",
			"--remote-addr", "127.0.0.1:4711", "-H", "X-Forwarded-For: 203.0.113.9, 10.9.9.9"},
			model: "as_forwarded_by_envoy", entry: "removed", ip: "203.0.113.9", entries: 1},
		{name: "as forwarded: not what Envoy appends", args: []string{"--as-forwarded-by-envoy", "--remote-addr", "10.0.0.5:80", "-H", "X-Forwarded-For: 203.0.113.9, 10.1.1.1"},
			model: "as_forwarded_by_envoy", entry: "mismatch", ip: "10.1.1.1", warned: true, entries: 1},
		{name: "as forwarded: xff_appended_by_envoy off", args: []string{"--as-forwarded-by-envoy", "--config", off, "--remote-addr", "10.0.0.5:80", "-H", "X-Forwarded-For: 203.0.113.9, 10.0.0.5"},
			model: "as_forwarded_by_envoy", entry: "not_removed", ip: "10.0.0.5", entries: 1},
		{name: "as forwarded: another header", args: []string{"--as-forwarded-by-envoy", "--header", "X-Client-Chain", "--remote-addr", "10.0.0.5:80",
			"-H", "X-Client-Chain: 203.0.113.9, 10.0.0.5"},
			model: "as_forwarded_by_envoy", entry: "not_removed", ip: "10.0.0.5", entries: 1},
		{name: "as forwarded: a pipe peer", args: []string{"--as-forwarded-by-envoy", "--remote-addr", "/run/envoy.sock", "-H", "X-Forwarded-For: 203.0.113.9"},
			model: "as_forwarded_by_envoy", entry: "not_appended", ip: "203.0.113.9", entries: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, stderr, code := resolveJSON(t, append(slices.Clone(count1), tt.args...)...)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %s", code, tt.wantCode, stderr)
			}
			if out.Model != tt.model || out.Entry != tt.entry || out.ClientIP != tt.ip || len(out.Entries) != tt.entries {
				t.Errorf("input %q, envoy_entry %q, client_ip %q, %d entries; want %q, %q, %q, %d", out.Model, out.Entry, out.ClientIP, len(out.Entries), tt.model, tt.entry, tt.ip, tt.entries)
			}
			if warned := strings.Contains(stderr, "is not the address Envoy appends"); warned != tt.warned {
				t.Errorf("warned %v, want %v: %q", warned, tt.warned, stderr)
			}
		})
	}
	if _, stderr, code := runCmd(t, "resolve", "--destination-addr", "10.9.9.9:1", "--remote-addr", "127.0.0.1:1"); code != 2 || !strings.Contains(stderr, "--as-forwarded-by-envoy") {
		t.Errorf("--destination-addr alone: exit %d, %q", code, stderr)
	}
	if _, stderr, code := runCmd(t, "resolve", "--as-forwarded-by-envoy", "--destination-addr", "10.9.9.9", "--remote-addr", "127.0.0.1:1"); code != 2 || !strings.Contains(stderr, "not an ip:port") {
		t.Errorf("--destination-addr without a port: exit %d, %q", code, stderr)
	}
}

// TestResolveJSONRunsPolicies: resolve --json --config runs the file's
// policies after resolving, as the server does, and shows the decision,
// the deciding policy and the deny status; trust.on_unresolved denies
// first. Without --json no policy runs.
func TestResolveJSONRunsPolicies(t *testing.T) {
	cfg := writeFile(t, "realipd.yaml", `trust:
  strategy: rightmost_trusted_range
  trusted_cidrs: [10.0.0.0/8]
extproc:
  deny_status: 429
policies:
  - {name: allowed-nets, type: cidr, allow: [203.0.113.0/24, 198.51.100.0/24]}
  - {name: block, type: cidr, deny: [198.51.100.0/24]}
`)
	tests := []struct {
		name, xff                string
		decision, policy, client string
		status, code             int
	}{
		{name: "allowed", xff: "203.0.113.9, 10.1.1.1", decision: "allow", client: "203.0.113.9"},
		{name: "denied by the second policy", xff: "198.51.100.7", decision: "deny", policy: "block", status: 429, client: "198.51.100.7"},
		{name: "not in the allow list", xff: "192.0.2.1", decision: "deny", policy: "allowed-nets", status: 429, client: "192.0.2.1"},
		{name: "unresolved", xff: "203.0.113.9, bogus", decision: "deny", policy: "trust.on_unresolved", status: 429, code: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, stderr, code := resolveJSON(t, "--config", cfg, "--remote-addr", "10.0.0.5:80", "-H", "X-Forwarded-For: "+tt.xff)
			if code != tt.code {
				t.Fatalf("exit %d, want %d: %s", code, tt.code, stderr)
			}
			if out.Decision != tt.decision || out.Policy != tt.policy || out.Status != tt.status || out.ClientIP != tt.client {
				t.Errorf("decision %q by %q, status %d, client %q; want %q by %q, %d, %q", out.Decision, out.Policy, out.Status, out.ClientIP, tt.decision, tt.policy, tt.status, tt.client)
			}
			if tt.code == 0 && !slices.Equal(out.Policies, []string{"allowed-nets", "block"}) {
				t.Errorf("policies %v", out.Policies)
			}
		})
	}
	// Without --json, only the resolution: a denied client still resolves.
	if stdout, _, code := runCmd(t, "resolve", "--config", cfg, "--remote-addr", "10.0.0.5:80", "-H", "X-Forwarded-For: 198.51.100.7"); code != 0 || stdout != "198.51.100.7\n" {
		t.Errorf("without --json: exit %d, %q", code, stdout)
	}
}

// TestResolveJSONRunsPlugins: a plugin policy of --config runs as a real
// plugin process, sees the headers it declares, decides, and is stopped
// before resolve returns.
func TestResolveJSONRunsPlugins(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts plugin processes")
	}
	cfg := writeFile(t, "realipd.yaml", pluginFile(t, "{tag: resolve}"))
	for _, tc := range []struct{ test, decision, policy string }{{"allow", "allow", ""}, {"deny", "deny", "tp"}} {
		out, stderr, code := resolveJSON(t, "--config", cfg, "--remote-addr", "10.0.0.5:80",
			"-H", "X-Forwarded-For: 203.0.113.9", "-H", "X-Test: "+tc.test, "-H", "X-Tenant: acme")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		md := out.Metadata
		if out.Decision != tc.decision || out.Policy != tc.policy || md["tag"] != "resolve" || md["tenant"] != "acme" || md["client_ip"] != "203.0.113.9" {
			t.Errorf("x-test %s: decision %q by %q, metadata %v", tc.test, out.Decision, out.Policy, md)
		}
		// The plugin asks for 451, which Envoy cannot send: the server
		// answers deny_status, as resolve says.
		if tc.decision == "deny" && out.Status != 403 {
			t.Errorf("deny status %d, want 403", out.Status)
		}
		pid, err := strconv.Atoi(md["pid"])
		if err != nil {
			t.Fatalf("metadata %v: no pid", slices.Sorted(maps.Keys(md)))
		}
		// Stopped and reaped before resolve returned: no wait.
		if alive(pid) {
			t.Errorf("the plugin process %d outlived resolve", pid)
		}
	}
}
