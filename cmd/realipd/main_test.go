package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/xds"
)

// TestMain lets a test run the real binary: with REALIPD_TEST_MAIN=1 the
// test executable is realipd (see startMain).
func TestMain(m *testing.M) {
	if os.Getenv("REALIPD_TEST_MAIN") == "1" {
		main()
		return
	}
	if spec := os.Getenv(adsClientEnv); spec != "" {
		os.Exit(adsClientChild(spec))
	}
	netnstestRunChild()
	code := m.Run()
	if pluginDir != "" {
		os.RemoveAll(pluginDir)
	}
	os.Exit(code)
}

// runCmd calls run in-process and returns stdout, stderr and the exit code.
func runCmd(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(t.Context(), args, &out, &errb)
	return out.String(), errb.String(), exitCode(err)
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestResolve(t *testing.T) {
	trustFile := writeFile(t, "trust.yaml", "trust:\n  strategy: rightmost_trusted_range\n  trusted_cidrs: [10.0.0.0/8]\n")
	countFile := writeFile(t, "count.yaml", "trust:\n  strategy: rightmost_trusted_count\n  trusted_hops: 2\n  trusted_cidrs: [10.0.0.0/8]\norigdst:\n  proxy_protocol: true\n")
	envoyFile := writeFile(t, "envoy.yaml", "trust:\n  strategy: envoy_xff\n  trusted_cidrs: [10.0.0.0/8]\n")
	badFile := writeFile(t, "bad.yaml", "trust:\n  strategy: nope\n  trusted_cidrs: [10.0.0.0/33]\n")
	vector := []string{"resolve", "--strategy", "rightmost_trusted_range", "--trusted-cidrs", "10.0.0.0/8",
		"-H", "X-Forwarded-For: 203.0.113.9, 10.1.1.1"}
	with := func(base []string, more ...string) []string { return append(append([]string{}, base...), more...) }

	tests := []struct {
		name       string
		args       []string
		wantOut    string // exact stdout
		wantErr    string // fragment of stderr; "" means stderr must be empty
		wantCode   int
		wantErrNot string // fragment stderr must not contain
	}{
		{name: "issue vector", args: with(vector, "--remote-addr", "10.0.0.5:80"), wantOut: "203.0.113.9\n"},
		{name: "untrusted peer", args: with(vector, "--remote-addr", "198.51.100.7:80"), wantOut: "198.51.100.7\n"},
		{name: "untrusted v6 peer", args: with(vector, "--remote-addr", "[2001:DB8::0:1]:443"), wantOut: "2001:db8::1\n"},
		{name: "all trusted: the peer stands in", args: []string{"resolve", "--trusted-cidrs", "10.0.0.0/8", "--remote-addr", "10.0.0.5:80",
			"-H", "X-Forwarded-For: 10.9.9.9, 10.1.1.1"}, wantOut: "10.0.0.5\n"},
		{name: "no header: the peer sent it", args: []string{"resolve", "--trusted-cidrs", "10.0.0.0/8", "--remote-addr", "10.0.0.5:80"},
			wantOut: "10.0.0.5\n"},
		{name: "invalid decisive entry: unresolved", args: []string{"resolve", "--trusted-cidrs", "10.0.0.0/8", "--remote-addr", "10.0.0.5:80",
			"-H", "X-Forwarded-For: 8.8.8.8, bogus, 10.1.1.1"}, wantErr: "the client IP is unresolved (invalid); the server denies it", wantCode: 1},
		{name: "envoy_xff with Envoy's zero defaults", args: []string{"resolve", "--strategy", "envoy_xff", "--trusted-cidrs", "10.0.0.0/8",
			"--trusted-hops", "0", "--remote-addr", "10.0.0.5:80", "-H", "X-Forwarded-For: 203.0.113.9, 10.1.1.1"}, wantOut: "203.0.113.9\n"},
		{name: "defaults: the peer is the client", args: []string{"resolve", "--remote-addr", "10.0.0.5:80", "-H", "X-Forwarded-For: 203.0.113.9"},
			wantOut: "10.0.0.5\n"},
		{name: "empty remote-addr is a non-IP peer", args: []string{"resolve", "--strategy", "remote_addr", "--remote-addr", ""},
			wantErr: "unresolved (no_peer)", wantCode: 1, wantErrNot: "usage"},
		{name: "remote_addr ignores header", args: []string{"resolve", "--strategy", "remote_addr", "--header", "X-Real-IP", "--remote-addr", "[::ffff:192.0.2.1]:9"},
			wantOut: "192.0.2.1\n"},
		{name: "lines kept in order, rightmost", args: []string{"resolve", "--strategy", "rightmost_non_private", "--remote-addr", "10.0.0.1:1",
			"-H", "X-Forwarded-For: 8.8.8.8", "-H", "Accept: */*", "-H", "x-forwarded-for: 1.1.1.1, 10.0.0.1"}, wantOut: "1.1.1.1\n"},
		{name: "lines kept in order, leftmost", args: []string{"resolve", "--strategy", "leftmost_non_private", "--remote-addr", "10.0.0.1:1",
			"-H", "X-Forwarded-For: 10.0.0.2, 8.8.8.8", "-H", "x-forwarded-for: 1.1.1.1, 10.0.0.1"}, wantOut: "8.8.8.8\n"},
		{name: "single header: last line wins, case-insensitive name", args: []string{"resolve", "--strategy", "single_header", "--header", "x-real-ip",
			"--remote-addr", "10.0.0.1:1", "-H", "X-REAL-IP: 1.2.3.4", "-H", "X-Real-Ip: 5.6.7.8:80"}, wantOut: "5.6.7.8\n"},
		{name: "empty value line keeps its slot", args: []string{"resolve", "--strategy", "rightmost_trusted_count",
			"--remote-addr", "10.0.0.1:1", "-H", "X-Forwarded-For: 8.8.8.8", "-H", "X-Forwarded-For:"}, wantErr: "unresolved (invalid)", wantCode: 1},
		{name: "forwarded header", args: []string{"resolve", "--strategy", "rightmost_trusted_count", "--header", "Forwarded", "--remote-addr", "10.0.0.1:1",
			"-H", `Forwarded: for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.9`, "--trusted-hops", "2"}, wantOut: "2001:db8:cafe::17\n"},
		{name: "envoy_xff hops 0 without use_remote_address", args: []string{"resolve", "--strategy", "envoy_xff", "--trusted-hops", "0",
			"--remote-addr", "192.0.2.1:5", "-H", "X-Forwarded-For: 203.0.113.9"}, wantOut: "203.0.113.9\n"},
		{name: "envoy_xff use_remote_address", args: []string{"resolve", "--strategy", "envoy_xff", "--trusted-hops", "0", "--use-remote-address",
			"--remote-addr", "192.0.2.1:5", "-H", "X-Forwarded-For: 203.0.113.9"}, wantOut: "192.0.2.1\n"},
		{name: "config supplies trust", args: []string{"resolve", "--config", trustFile, "--remote-addr", "10.0.0.5:80",
			"-H", "X-Forwarded-For: 203.0.113.9, 10.1.1.1"}, wantOut: "203.0.113.9\n"},
		{name: "flag overrides config", args: []string{"resolve", "--config", trustFile, "--trusted-cidrs", "", "--remote-addr", "10.0.0.5:80",
			"-H", "X-Forwarded-For: 203.0.113.9, 10.1.1.1"}, wantOut: "10.0.0.5\n"},
		{name: "other strategy drops config params", args: []string{"resolve", "--config", trustFile, "--strategy", "rightmost_trusted_count",
			"--remote-addr", "10.0.0.5:80", "-H", "X-Forwarded-For: 203.0.113.9, 10.1.1.1"}, wantOut: "10.1.1.1\n"},
		{name: "config cidrs for proxy protocol ignored", args: []string{"resolve", "--config", countFile, "--remote-addr", "10.0.0.5:80",
			"-H", "X-Forwarded-For: 203.0.113.9, 10.1.1.1"}, wantOut: "203.0.113.9\n"},
		{name: "invalid config", args: []string{"resolve", "--config", badFile, "--remote-addr", "1.2.3.4"},
			wantErr: "trust.trusted_cidrs[0]: \"10.0.0.0/33\" is not a CIDR", wantCode: 1},
		{name: "missing config", args: []string{"resolve", "--config", filepath.Join(t.TempDir(), "absent.yaml"), "--remote-addr", "1.2.3.4"},
			wantErr: "no such file", wantCode: 1},
		{name: "bad flag", args: []string{"resolve", "--bogus"}, wantErr: "flag provided but not defined", wantCode: 2},
		{name: "missing remote-addr", args: []string{"resolve", "-H", "X-Forwarded-For: 1.2.3.4"}, wantErr: "--remote-addr is required", wantCode: 2},
		{name: "bad strategy", args: []string{"resolve", "--strategy", "nope", "--remote-addr", "1.2.3.4"},
			wantErr: `--strategy: "nope" is not one of remote_addr`, wantCode: 2},
		{name: "bad cidr", args: with(vector, "--trusted-cidrs", "10.0.0.0/8,10.0.0.0/33", "--remote-addr", "1.2.3.4"),
			wantErr: `--trusted-cidrs: "10.0.0.0/33" is not a CIDR`, wantCode: 2},
		{name: "trusted-hops 0 for count", args: []string{"resolve", "--strategy", "rightmost_trusted_count", "--trusted-hops", "0", "--remote-addr", "1.2.3.4"},
			wantErr: "--trusted-hops: 0 is not valid", wantCode: 2},
		{name: "parameter the strategy does not use", args: []string{"resolve", "--strategy", "remote_addr", "--use-remote-address", "--remote-addr", "1.2.3.4"},
			wantErr: "--use-remote-address: not used by remote_addr", wantCode: 2},
		{name: "single_header on XFF", args: []string{"resolve", "--strategy", "single_header", "--remote-addr", "1.2.3.4"},
			wantErr: "--header: single_header cannot read X-Forwarded-For", wantCode: 2},
		{name: "file value named by its key", args: []string{"resolve", "--config", envoyFile, "--trusted-hops", "1", "--remote-addr", "1.2.3.4"},
			wantErr: "trust.trusted_cidrs: cannot be combined", wantCode: 2},
		{name: "header line without colon", args: []string{"resolve", "--remote-addr", "1.2.3.4", "-H", "X-Forwarded-For 1.2.3.4"},
			wantErr: "want 'Name: value'", wantCode: 2},
		{name: "header line with bad name", args: []string{"resolve", "--remote-addr", "1.2.3.4", "-H", "X Forwarded: 1.2.3.4"},
			wantErr: "not a valid header name", wantCode: 2},
		{name: "bad trusted-hops", args: []string{"resolve", "--remote-addr", "1.2.3.4", "--trusted-hops", "two"}, wantErr: "invalid value", wantCode: 2},
		{name: "positional argument", args: []string{"resolve", "--remote-addr", "1.2.3.4", "extra"}, wantErr: `unexpected argument "extra"`, wantCode: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCmd(t, tt.args...)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d; stderr:\n%s", code, tt.wantCode, errOut)
			}
			if tt.wantCode == 0 || tt.wantOut != "" {
				if out != tt.wantOut {
					t.Errorf("stdout = %q, want %q", out, tt.wantOut)
				}
			} else if out != "" {
				t.Errorf("stdout = %q, want nothing", out)
			}
			if tt.wantErr == "" && errOut != "" {
				t.Errorf("stderr = %q, want nothing", errOut)
			}
			if !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("stderr = %q, want it to contain %q", errOut, tt.wantErr)
			}
			if tt.wantErrNot != "" && strings.Contains(errOut, tt.wantErrNot) {
				t.Errorf("stderr = %q, must not contain %q", errOut, tt.wantErrNot)
			}
		})
	}
}

func TestResolveJSON(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     clientip.Explanation // checked fields: ClientIP, ResolvedFrom, Reason, Strategy, Peer, and the verdicts
		verdicts []string
	}{
		{
			name: "picked",
			args: []string{"--strategy", "rightmost_trusted_range", "--trusted-cidrs", "10.0.0.0/8", "--remote-addr", "10.0.0.5:80",
				"-H", "X-Forwarded-For: 203.0.113.9, 10.1.1.1"},
			want:     clientip.Explanation{Strategy: "rightmost_trusted_range", Peer: "10.0.0.5:80", ClientIP: "203.0.113.9", ResolvedFrom: "header", Reason: "header"},
			verdicts: []string{"trusted", "picked"},
		},
		{
			name: "all trusted",
			args: []string{"--strategy", "rightmost_trusted_range", "--trusted-cidrs", "10.0.0.0/8", "--remote-addr", "10.0.0.5:80",
				"-H", "X-Forwarded-For: 10.2.2.2, 10.1.1.1"},
			want:     clientip.Explanation{Strategy: "rightmost_trusted_range", Peer: "10.0.0.5:80", ClientIP: "10.0.0.5", ResolvedFrom: "peer", Reason: "all_trusted"},
			verdicts: []string{"trusted", "trusted"},
		},
		{
			name: "unresolved",
			args: []string{"--strategy", "rightmost_trusted_range", "--trusted-cidrs", "10.0.0.0/8", "--remote-addr", "10.0.0.5:80",
				"-H", "X-Forwarded-For: 8.8.8.8, bogus, 10.1.1.1"},
			wantCode: 1,
			want:     clientip.Explanation{Strategy: "rightmost_trusted_range", Peer: "10.0.0.5:80", ClientIP: "", ResolvedFrom: "none", Reason: "invalid"},
			verdicts: []string{"trusted", "invalid"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCmd(t, append([]string{"resolve", "--json"}, tt.args...)...)
			if code != tt.wantCode {
				t.Fatalf("exit code = %d, want %d; stderr: %s", code, tt.wantCode, errOut)
			}
			if (code != 0) != strings.Contains(errOut, "unresolved") {
				t.Errorf("stderr = %q", errOut)
			}
			var all resolveOutput
			dec := json.NewDecoder(strings.NewReader(out))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&all); err != nil {
				t.Fatalf("stdout is not resolve's output: %v\n%s", err, out)
			}
			// The input model is named; no policy runs without --config.
			if all.Model != "as_sent_by_peer" || all.Entry != "" || all.Policies == nil || len(all.Policies) != 0 {
				t.Errorf("input %q, envoy_entry %q, policies %v: want as_sent_by_peer, none, []", all.Model, all.Entry, all.Policies)
			}
			if wantDecision := map[bool]string{true: "allow", false: "deny"}[tt.wantCode == 0]; all.Decision != wantDecision {
				t.Errorf("decision %q, want %q", all.Decision, wantDecision)
			}
			got := all.Explanation
			if got.Strategy != tt.want.Strategy || got.Peer != tt.want.Peer || got.ClientIP != tt.want.ClientIP ||
				got.ResolvedFrom != tt.want.ResolvedFrom || got.Reason != tt.want.Reason || got.Detail == "" {
				t.Errorf("explanation = %+v, want %+v", got, tt.want)
			}
			var verdicts []string
			for _, e := range got.Entries {
				verdicts = append(verdicts, e.Verdict)
			}
			if strings.Join(verdicts, ",") != strings.Join(tt.verdicts, ",") {
				t.Errorf("verdicts = %v, want %v", verdicts, tt.verdicts)
			}
		})
	}
}

// pluginConfig copies testdata/good/full.yaml into a new directory with,
// at its relative path ./bin/my-policy, a plugin binary holding content
// (none when content is nil), the file pinning sum, and returns the copy's
// path. The plugin's config names ./deny.txt, which the caller writes.
func pluginConfig(t *testing.T, content []byte, sum string) string {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile("../../internal/config/testdata/good/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// The file pins sha256("test").
	data = bytes.ReplaceAll(data, []byte("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"), []byte(sum))
	path := filepath.Join(dir, "realipd.yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if content != nil {
		if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "bin", "my-policy"), content, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// validateCase is one run of realipd validate and what it must print.
type validateCase struct {
	name     string
	args     []string
	wantCode int
	wantOut  []string
	wantErr  []string
}

func TestValidateCommand(t *testing.T) {
	const testSum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" // sha256("test")
	bad := "../../internal/config/testdata/bad/many.yaml"
	noPlugin := pluginConfig(t, nil, testSum)
	wrongPlugin := pluginConfig(t, []byte("not the pinned binary"), testSum)
	tests := []validateCase{
		{name: "bad lists every error", args: []string{"--config", bad}, wantCode: 1, wantErr: []string{
			"27 errors",
			`trust.trusted_cidrs[1]: "10.0.0.0/33" is not a CIDR`,
			`policies[0].type: "foo" is not one of cidr, plugin`,
			"extproc.deny_status:", "xds.mode:", "origdst.tproxy_mark:", "admin.listen:", "policies[2].sha256:",
		}},
		{name: "plugin binary missing", args: []string{"--config", noPlugin}, wantCode: 1, wantErr: []string{`policy "custom"`, filepath.Join(filepath.Dir(noPlugin), "bin", "my-policy")}},
		{name: "plugin checksum mismatch", args: []string{"--config", wrongPlugin}, wantCode: 1, wantErr: []string{`policy "custom"`, filepath.Join(filepath.Dir(wrongPlugin), "bin", "my-policy"), "sha256"}},
		{name: "missing flag", wantCode: 2, wantErr: []string{"--config is required"}},
		{name: "missing file", args: []string{"--config", "absent.yaml"}, wantCode: 1, wantErr: []string{"absent.yaml"}},
		{name: "empty file", args: []string{"--config", writeFile(t, "empty.yaml", "# nothing yet\n")}, wantCode: 1, wantErr: []string{"empty.yaml: the file is empty"}},
		{name: "help", args: []string{"--help"}, wantOut: []string{"Usage:\n  realipd validate --config FILE"}},
	}
	if !testing.Short() {
		// validate starts the plugins, so the binary must be a real one;
		// its config names ./deny.txt, next to the file.
		bin, sum, err := builtPlugin("denylist")
		if err != nil {
			t.Fatal(err)
		}
		content, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		good := pluginConfig(t, content, sum)
		if err := os.WriteFile(filepath.Join(filepath.Dir(good), "deny.txt"), []byte("192.0.2.1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		noList := pluginConfig(t, content, sum)
		tests = append(tests,
			validateCase{name: "good", args: []string{"--config", good}, wantOut: []string{good + ": OK", "strategy rightmost_trusted_range", "admin, extproc, xds, origdst", "3 policies"}},
			validateCase{name: "the plugin refuses its config", args: []string{"--config", noList}, wantCode: 1, wantErr: []string{
				"policies[2]", `policy "custom"`, "rejected its config", filepath.Join(filepath.Dir(noList), "deny.txt"),
			}},
		)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCmd(t, append([]string{"validate"}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d; stderr:\n%s", code, tt.wantCode, errOut)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout = %q, want it to contain %q", out, w)
				}
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr = %q, want it to contain %q", errOut, w)
				}
			}
		})
	}
}

func TestTopLevel(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{name: "no command", wantCode: 2, wantErr: "Commands:"},
		{name: "unknown command", args: []string{"frobnicate"}, wantCode: 2, wantErr: `unknown command "frobnicate"`},
		{name: "help", args: []string{"help"}, wantOut: "Commands:"},
		{name: "--help", args: []string{"--help"}, wantOut: "resolve"},
		{name: "help resolve", args: []string{"help", "resolve"}, wantOut: "--remote-addr ADDR"},
		{name: "resolve --help", args: []string{"resolve", "--help"}, wantOut: "Examples:"},
		{name: "serve -h", args: []string{"serve", "-h"}, wantOut: "SIGTERM"},
		{name: "version", args: []string{"version"}, wantOut: "realipd "},
		{name: "version extra", args: []string{"version", "x"}, wantCode: 2, wantErr: "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCmd(t, tt.args...)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d; stderr:\n%s", code, tt.wantCode, errOut)
			}
			if !strings.Contains(out, tt.wantOut) || (tt.wantOut == "" && out != "") {
				t.Errorf("stdout = %q, want it to contain %q", out, tt.wantOut)
			}
			if !strings.Contains(errOut, tt.wantErr) || (tt.wantErr == "" && errOut != "") {
				t.Errorf("stderr = %q, want it to contain %q", errOut, tt.wantErr)
			}
		})
	}
}

func TestVersionString(t *testing.T) {
	oldV, oldR, oldD := version, revision, buildDate
	t.Cleanup(func() { version, revision, buildDate = oldV, oldR, oldD })
	version, revision, buildDate = "v9.8.7", "0123456789abcdef0123456789abcdef01234567", "2026-01-02T03:04:05Z"
	want := "realipd v9.8.7 (commit 0123456789abcdef0123456789abcdef01234567, built 2026-01-02T03:04:05Z, " +
		runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + ")"
	if got := versionString(); got != want {
		t.Errorf("versionString() = %q, want %q", got, want)
	}
}

// TestReadBuildInfo: what a binary built without -ldflags reports, from
// the build information the Go toolchain records.
func TestReadBuildInfo(t *testing.T) {
	vcs := func(rev, tm, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev},
			{Key: "vcs.time", Value: tm}, {Key: "vcs.modified", Value: modified}}
	}
	const rev = "fd7c8cd0a1b2c3d4e5f60718293a4b5c6d7e8f90"
	tests := []struct {
		name                string
		ver, rev, date      string
		info                *debug.BuildInfo
		wantV, wantC, wantD string
	}{
		{name: "no build info", info: nil, wantV: "devel", wantC: "unknown", wantD: "unknown"},
		{name: "go run, no VCS", info: &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}},
			wantV: "devel", wantC: "unknown", wantD: "unknown"},
		{name: "go install of a tag", info: &debug.BuildInfo{Main: debug.Module{Version: "v0.1.0"}},
			wantV: "v0.1.0", wantC: "unknown", wantD: "unknown"},
		{name: "go install @latest before any tag",
			info:  &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261207022900-fd7c8cd0a1b2"}},
			wantV: "v0.0.0-20261207022900-fd7c8cd0a1b2", wantC: "fd7c8cd0a1b2", wantD: "2026-12-07T02:29:00Z"},
		{name: "go install of a commit after a tag",
			info:  &debug.BuildInfo{Main: debug.Module{Version: "v0.1.1-0.20261207022900-fd7c8cd0a1b2"}},
			wantV: "v0.1.1-0.20261207022900-fd7c8cd0a1b2", wantC: "fd7c8cd0a1b2", wantD: "2026-12-07T02:29:00Z"},
		{name: "go build in a clone with changes",
			info: &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261207022900-fd7c8cd0a1b2+dirty"},
				Settings: vcs(rev, "2026-12-07T02:29:00Z", "true")},
			wantV: "v0.0.0-20261207022900-fd7c8cd0a1b2+dirty", wantC: rev + "-dirty", wantD: "2026-12-07T02:29:00Z"},
		{name: "go build in a clean clone, no version stamped",
			info:  &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs(rev, "2026-12-07T02:29:00Z", "false")},
			wantV: "devel", wantC: rev, wantD: "2026-12-07T02:29:00Z"},
		{name: "ldflags win", ver: "v0.2.0", rev: "abc", date: "2027-01-01T00:00:00Z",
			info:  &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261207022900-fd7c8cd0a1b2"}, Settings: vcs(rev, "2026-12-07T02:29:00Z", "true")},
			wantV: "v0.2.0", wantC: "abc", wantD: "2027-01-01T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := readBuildInfo(tt.ver, tt.rev, tt.date, tt.info)
			if b.Version != tt.wantV || b.Commit != tt.wantC || b.Date != tt.wantD {
				t.Errorf("got version %q commit %q date %q, want %q %q %q", b.Version, b.Commit, b.Date, tt.wantV, tt.wantC, tt.wantD)
			}
			if b.GoVersion != runtime.Version() || b.Platform != runtime.GOOS+"/"+runtime.GOARCH {
				t.Errorf("go %q platform %q", b.GoVersion, b.Platform)
			}
		})
	}
}

// lineWatch is an io.Writer that is safe for concurrent use and closes
// seen the first time the output contains want.
type lineWatch struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
}

func newLineWatch(want string) *lineWatch { return &lineWatch{want: want, seen: make(chan struct{})} }

func (w *lineWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	if w.want != "" && strings.Contains(w.buf.String(), w.want) {
		close(w.seen)
		w.want = ""
	}
	return n, err
}

func (w *lineWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// ephemeralConfig is a configuration whose listeners all take a port the
// kernel picks, so that serve tests never collide with each other or with a
// realipd running on the machine.
const ephemeralConfig = `
extproc:
  listen: 127.0.0.1:0
xds:
  listen: 127.0.0.1:0
  extproc_address: 127.0.0.1:9001
admin:
  listen: 127.0.0.1:0
`

func TestServeInProcess(t *testing.T) {
	cfg := writeFile(t, "serve.yaml", "trust:\n  strategy: envoy_xff\n  trusted_cidrs: [10.0.0.0/8]\n"+
		"extproc:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nxds:\n  enabled: false\n")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stderr := newLineWatch(`msg="realipd running"`)
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", cfg}, io.Discard, stderr) }()
	select {
	case <-stderr.seen:
	case err := <-done:
		t.Fatalf("serve returned before running: %v\n%s", err, stderr)
	}
	select {
	case err := <-done:
		t.Fatalf("serve returned without a signal: %v", err)
	default:
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve after cancel = %v, want nil\n%s", err, stderr)
	}
	logs := stderr.String()
	for _, want := range []string{"strategy=envoy_xff", "trusted_cidrs=1", "roles=\"[admin extproc]\"", "role=extproc listen=127.0.0.1:0", "realipd stopped"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "role=xds") {
		t.Errorf("disabled xds role ran:\n%s", logs)
	}
}

func TestServeRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"invalid file", []string{"--config", writeFile(t, "bad.yaml", "extproc:\n  deny_status: 99\n  bogus: 1\n")}, 1, "extproc.bogus: unknown key"},
		{"missing file", []string{"--config", filepath.Join(t.TempDir(), "absent.yaml")}, 1, "no such file"},
		{"bad log level", []string{"--log-level", "loud"}, 2, "--log-level"},
		{"bad log format", []string{"--log-format", "xml"}, 2, "--log-format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := runCmd(t, append([]string{"serve"}, tt.args...)...)
			if code != tt.wantCode || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("exit %d, stderr %q; want exit %d containing %q", code, errOut, tt.wantCode, tt.wantErr)
			}
		})
	}
}

// startMain runs the test binary as realipd with args and returns the
// process, once it has logged that it is running, and its stderr (all of
// it, as it comes).
func startMain(t *testing.T, args ...string) (*exec.Cmd, *logTail, <-chan error) {
	t.Helper()
	return startMainIn(t, nil, args...)
}

// startMainIn is startMain with the binary run by the command wrap (such
// as ip netns exec NAME); nil runs it directly.
func startMainIn(t *testing.T, wrap []string, args ...string) (*exec.Cmd, *logTail, <-chan error) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return startExeIn(t, wrap, exe, args...)
}

// startExeIn is startMainIn with the program exe (the test binary, or a
// realipd binary built by the test).
func startExeIn(t *testing.T, wrap []string, exe string, args ...string) (*exec.Cmd, *logTail, <-chan error) {
	t.Helper()
	argv := append(append(slices.Clone(wrap), exe), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "REALIPD_TEST_MAIN=1")
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	logs := newLogTail()
	running := make(chan struct{})
	copied := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(pipe)
		signalled := false
		for sc.Scan() {
			logs.Write([]byte(sc.Text() + "\n"))
			if !signalled && strings.Contains(sc.Text(), `msg="realipd running"`) {
				signalled = true
				close(running)
			}
		}
		copied <- sc.Err()
	}()
	exited := make(chan error, 1)
	select {
	case <-running:
	case <-copied:
		t.Fatalf("realipd %v exited before running:\n%s", args, logs.String())
	}
	go func() {
		<-copied
		exited <- cmd.Wait()
	}()
	return cmd, logs, exited
}

// TestServeSignals runs the real process and stops it with each signal.
func TestServeSignals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd, logs, exited := startMain(t, "serve", "--config", writeFile(t, "serve.yaml", ephemeralConfig))
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if err := <-exited; err != nil {
				t.Fatalf("realipd serve after %v: %v\n%s", sig, err, logs)
			}
			if !strings.Contains(logs.String(), "realipd stopped") {
				t.Errorf("no shutdown log:\n%s", logs)
			}
		})
	}
}

func TestRunRoles(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	errBoom := errors.New("boom")

	t.Run("a failing role stops the others", func(t *testing.T) {
		stopped := make(chan struct{})
		roles := []role{
			{name: "waits", run: func(ctx context.Context) error { <-ctx.Done(); close(stopped); return nil }},
			{name: "fails", run: func(context.Context) error { return errBoom }},
		}
		err := runRoles(t.Context(), logger, roles, time.Minute)
		if !errors.Is(err, errBoom) || !strings.Contains(err.Error(), "fails: boom") {
			t.Errorf("runRoles = %v, want the failing role's error", err)
		}
		select {
		case <-stopped:
		default:
			t.Error("the other role was not stopped")
		}
	})

	t.Run("a role finishing early does not stop serve", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		finished := make(chan struct{})
		roles := []role{
			{name: "oneshot", run: func(context.Context) error { close(finished); return nil }},
			{name: "waits", run: func(ctx context.Context) error {
				<-finished
				cancel() // the signal comes only after the other role is done
				<-ctx.Done()
				return nil
			}},
		}
		if err := runRoles(ctx, logger, roles, time.Minute); err != nil {
			t.Errorf("runRoles = %v, want nil", err)
		}
	})

	t.Run("a stuck role is reported after the grace period", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		release := make(chan struct{})
		defer close(release)
		roles := []role{{name: "stuck", run: func(context.Context) error { <-release; return nil }}}
		err := runRoles(ctx, logger, roles, 10*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), "[stuck] did not stop") {
			t.Errorf("runRoles = %v, want a stuck-role error", err)
		}
	})

	t.Run("no roles waits for the signal", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- runRoles(ctx, logger, nil, time.Minute) }()
		select {
		case err := <-done:
			t.Fatalf("runRoles returned before the signal: %v", err)
		default:
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("runRoles = %v", err)
		}
	})
}

func TestLoadOrDefault(t *testing.T) {
	cfg, err := loadOrDefault(t.Context(), "")
	if err != nil {
		t.Fatalf("loadOrDefault(\"\") = %v", err)
	}
	if ci := cfg.Trust.ClientIP(); ci.Strategy != clientip.RightmostTrustedRange || len(ci.TrustedCIDRs) != 0 {
		t.Errorf("defaults not validated: ClientIP() = %+v", ci)
	}
	if got := enabledRoles(cfg); strings.Join(got, ",") != "admin,extproc,xds" {
		t.Errorf("default roles = %v, want admin, extproc, xds", got)
	}
}

// TestBootstrap: realipd bootstrap prints envoy/envoy-ads.yaml for the
// default configuration, and a pipe address for a unix:// xds.listen.
func TestBootstrap(t *testing.T) {
	want, err := os.ReadFile("../../envoy/envoy-ads.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCmd(t, "bootstrap")
	if code != 0 || out != string(want) {
		t.Errorf("bootstrap (exit %d, stderr %q) differs from envoy/envoy-ads.yaml:\n%s", code, errOut, out)
	}
	cfg := writeFile(t, "realipd.yaml", "xds: {listen: 'unix:///run/realipd/xds.sock'}\n")
	out, errOut, code = runCmd(t, "bootstrap", "--config", cfg, "--node-id", "pod-7", "--admin-address", "[::1]:9901")
	if code != 0 {
		t.Fatalf("bootstrap --config: exit %d: %s", code, errOut)
	}
	b, err := xds.ParseBootstrap([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	addr := b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
	if addr.GetPipe().GetPath() != "/run/realipd/xds.sock" || b.GetNode().GetId() != "pod-7" || b.GetAdmin().GetAddress().GetSocketAddress().GetAddress() != "::1" {
		t.Errorf("bootstrap for unix:// xds.listen: pipe %q, node %q, admin %v", addr.GetPipe().GetPath(), b.GetNode().GetId(), b.GetAdmin().GetAddress())
	}
	for _, bad := range [][]string{{"--node-id", "a b"}, {"--admin-address", "localhost:9901"}} {
		if _, _, code := runCmd(t, append([]string{"bootstrap"}, bad...)...); code != 2 {
			t.Errorf("bootstrap %q: exit %d, want 2", bad, code)
		}
	}
}
