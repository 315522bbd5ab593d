package config

import (
	"encoding/json"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/realipd/realipd/clientip"
)

var update = flag.Bool("update", false, "rewrite testdata/bad/*.golden from the current output")

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	want := clientip.Config{Strategy: clientip.RightmostTrustedRange, Header: "X-Forwarded-For", TrustedCIDRs: []netip.Prefix{}}
	if got := c.Trust.ClientIP(); !reflect.DeepEqual(got, want) {
		t.Errorf("ClientIP() = %+v, want %+v", got, want)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"extproc.listen", c.ExtProc.Listen, "127.0.0.1:9001"},
		{"xds.listen", c.XDS.Listen, "127.0.0.1:18000"},
		{"admin.listen", c.Admin.Listen, "127.0.0.1:9902"},
		{"admin.allowed_hosts", c.Admin.AllowedHosts, []string{}},
		{"origdst.enabled", c.OrigDst.Enabled, false},
		{"extproc.drain_timeout", c.ExtProc.DrainTimeout.Duration, 10 * time.Second},
		{"extproc.deny_status", c.ExtProc.DenyStatus, 403},
		{"extproc.xff_appended_by_envoy", c.ExtProc.XFFAppendedByEnvoy, true},
		{"extproc.client_ip_header", c.ExtProc.ClientIPHeader, "x-real-ip"},
		{"ExtProcAddress()", c.ExtProcAddress(), "127.0.0.1:9001"},
		{"origdst.ListenAddrs()", c.OrigDst.ListenAddrs(), []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:15001"), netip.MustParseAddrPort("0.0.0.0:15006")}},
		{"origdst.fallback_grace", c.OrigDst.FallbackGrace.Duration, 5 * time.Second},
		{"origdst.dial_timeout", c.OrigDst.DialTimeout.Duration, 5 * time.Second},
		{"origdst.idle_timeout", c.OrigDst.IdleTimeout.Duration, time.Hour},
		{"origdst.drain_timeout", c.OrigDst.DrainTimeout.Duration, 10 * time.Second},
		{"origdst.max_connections", c.OrigDst.MaxConnections, 10000},
		{"origdst.http_event_loops", c.OrigDst.HTTPEventLoops, 0},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
}

func TestParseKeepsDefaultsForAbsentKeys(t *testing.T) {
	c, err := Parse([]byte("extproc:\n  listen: 127.0.0.1:7001\nxds:\n  http_ports: [81]\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.ExtProc.Listen = "127.0.0.1:7001"
	want.XDS.HTTPPorts = []int{81}
	if err := want.Validate(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("Parse =\n%+v\nwant\n%+v", *c, want)
	}
}

func TestGoodFiles(t *testing.T) {
	files, _ := filepath.Glob("testdata/good/*.yaml")
	if len(files) == 0 {
		t.Fatal("no testdata/good files")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if _, err := Load(f); err != nil {
				t.Errorf("Load: %v", err)
			}
		})
	}
}

// TestBadFiles compares the whole error report of each bad file with its
// golden file (go test -run TestBadFiles -update rewrites them).
func TestBadFiles(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad/*.yaml")
	if len(files) == 0 {
		t.Fatal("no testdata/bad files")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, err := Load(f)
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			got := err.Error() + "\n"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, rerr := os.ReadFile(golden)
			if rerr != nil {
				t.Fatalf("%v (run with -update to create it)", rerr)
			}
			if got != string(want) {
				t.Errorf("error report differs from %s\n got:\n%s\nwant:\n%s", golden, got, want)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(absent) = %v, want an error wrapping os.ErrNotExist", err)
	}
}

// TestValidate checks each rule: the exact set of key paths reported, and
// a fragment of each message.
func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want map[string]string // key path -> message fragment; nil: valid
	}{
		{name: "cidr out of range", yaml: "trust: {trusted_cidrs: [10.0.0.0/8, 10.0.0.0/33]}",
			want: map[string]string{"trust.trusted_cidrs[1]": `"10.0.0.0/33" is not a CIDR`}},
		{name: "cidr host bits", yaml: "trust: {trusted_cidrs: [10.0.0.1/8]}",
			want: map[string]string{"trust.trusted_cidrs[0]": "did you mean 10.0.0.0/8"}},
		{name: "cidr bare ip and v6", yaml: "trust: {trusted_cidrs: [10.0.0.1, '2001:db8::/32', '::1']}"},
		{name: "cidr zone refused", yaml: "trust: {trusted_cidrs: ['fe80::1%eth0']}",
			want: map[string]string{"trust.trusted_cidrs[0]": "is not a CIDR or an IP address"}},
		{name: "unknown strategy", yaml: "trust: {strategy: foo}",
			want: map[string]string{"trust.strategy": `"foo" is not one of remote_addr, single_header, leftmost_non_private, rightmost_non_private, rightmost_trusted_count, rightmost_trusted_range, envoy_xff`}},
		{name: "trusted count zero", yaml: "trust: {strategy: rightmost_trusted_count, trusted_hops: 0}",
			want: map[string]string{"trust.trusted_hops": "0 is not valid for rightmost_trusted_count (need >= 1)"}},
		{name: "trusted count default 1", yaml: "trust: {strategy: rightmost_trusted_count}"},
		{name: "trusted count too many", yaml: "trust: {strategy: rightmost_trusted_count, trusted_hops: 65}",
			want: map[string]string{"trust.trusted_hops": "65 is more than"}},
		{name: "hops unused", yaml: "trust: {strategy: rightmost_trusted_range, trusted_hops: 1}",
			want: map[string]string{"trust.trusted_hops": "not used by rightmost_trusted_range"}},
		{name: "use_remote_address unused", yaml: "trust: {strategy: remote_addr, use_remote_address: true}",
			want: map[string]string{"trust.use_remote_address": "not used by remote_addr"}},
		{name: "zero values are not set", yaml: "trust: {strategy: rightmost_trusted_range, trusted_hops: 0, use_remote_address: false}"},
		{name: "cidrs unused", yaml: "trust: {strategy: leftmost_non_private, trusted_cidrs: [10.0.0.0/8]}",
			want: map[string]string{"trust.trusted_cidrs": "not used by leftmost_non_private"}},
		{name: "cidrs kept for proxy protocol", yaml: "trust: {strategy: rightmost_trusted_count, trusted_cidrs: [10.0.0.0/8]}\norigdst: {proxy_protocol: true}"},
		{name: "proxy protocol needs cidrs", yaml: "origdst: {proxy_protocol: true}",
			want: map[string]string{"origdst.proxy_protocol": "needs trust.trusted_cidrs"}},
		{name: "envoy_xff hops zero", yaml: "trust: {strategy: envoy_xff, trusted_hops: 0}"},
		{name: "envoy_xff negative hops", yaml: "trust: {strategy: envoy_xff, trusted_hops: -1}",
			want: map[string]string{"trust.trusted_hops": "-1 is not valid for envoy_xff"}},
		{name: "envoy_xff cidrs with use_remote_address", yaml: "trust: {strategy: envoy_xff, trusted_cidrs: [10.0.0.0/8], use_remote_address: true}",
			want: map[string]string{"trust.trusted_cidrs": "cannot be combined"}},
		{name: "envoy_xff cidrs with trusted_hops", yaml: "trust: {strategy: envoy_xff, trusted_cidrs: [10.0.0.0/8], trusted_hops: 1}",
			want: map[string]string{"trust.trusted_cidrs": "cannot be combined"}},
		// Envoy's zero defaults mean "not set" next to xff_trusted_cidrs.
		{name: "envoy_xff cidrs with Envoy's zero defaults", yaml: "trust: {strategy: envoy_xff, trusted_cidrs: [10.0.0.0/8], trusted_hops: 0, use_remote_address: false}"},
		{name: "on_unresolved pass", yaml: "trust: {on_unresolved: pass}"},
		{name: "on_unresolved bad", yaml: "trust: {on_unresolved: allow}",
			want: map[string]string{"trust.on_unresolved": `"allow" is not one of deny, pass`}},
		{name: "envoy_xff other header", yaml: "trust: {strategy: envoy_xff, header: X-Real-IP}",
			want: map[string]string{"trust.header": "envoy_xff reads X-Forwarded-For only"}},
		{name: "single_header refuses xff", yaml: "trust: {strategy: single_header, header: X-Forwarded-For}",
			want: map[string]string{"trust.header": "single_header cannot read X-Forwarded-For"}},
		{name: "single_header refuses forwarded", yaml: "trust: {strategy: single_header, header: FORWARDED}",
			want: map[string]string{"trust.header": "single_header cannot read FORWARDED"}},
		{name: "header not a token", yaml: "trust: {strategy: rightmost_non_private, header: 'X Forwarded'}",
			want: map[string]string{"trust.header": "is not a valid header name"}},
		{name: "header ignored by remote_addr", yaml: "trust: {strategy: remote_addr, header: ''}"},
		{name: "listen forms", yaml: "extproc: {listen: 'unix:///run/x.sock'}\nxds: {listen: '[::1]:0', extproc_address: 'unix:///run/x.sock'}\nadmin: {listen: ':9902'}"},
		{name: "listen bad", yaml: "extproc: {listen: '127.0.0.1'}\nxds: {listen: '127.0.0.1:65536'}\nadmin: {listen: 'unix://run/x.sock'}",
			want: map[string]string{"extproc.listen": "is not host:port", "xds.listen": "port \"65536\" is not between 0 and 65535", "admin.listen": "absolute path"}},
		{name: "socket groups", yaml: "extproc: {listen: 'unix:///run/realipd/extproc.sock', socket_group: 65532}\nxds: {listen: 'unix:///run/realipd/xds.sock', socket_group: 0}"},
		{name: "socket group on tcp", yaml: "extproc: {socket_group: 65532}\nxds: {socket_group: 65532}",
			want: map[string]string{"extproc.socket_group": `needs a unix:// extproc.listen ("127.0.0.1:9001" is TCP`, "xds.socket_group": `needs a unix:// xds.listen ("127.0.0.1:18000" is TCP`}},
		{name: "socket group not a gid", yaml: "extproc: {listen: 'unix:///run/e.sock', socket_group: -1}\nxds: {listen: 'unix:///run/x.sock', socket_group: 4294967295}",
			want: map[string]string{"extproc.socket_group": "-1 is not a group ID between 0 and 4294967294", "xds.socket_group": "4294967295 is not a group ID"}},
		{name: "listen port 0 needs extproc_address", yaml: "extproc: {listen: '127.0.0.1:0'}",
			want: map[string]string{"xds.extproc_address": "required when extproc.listen has port 0"}},
		{name: "extproc_address port 0", yaml: "xds: {extproc_address: '127.0.0.1:0'}",
			want: map[string]string{"xds.extproc_address": "is not between 1 and 65535"}},
		{name: "same listen twice", yaml: "admin: {listen: '127.0.0.1:9001'}",
			want: map[string]string{"admin.listen": `"127.0.0.1:9001" is also extproc.listen`}},
		{name: "same listen but disabled", yaml: "admin: {listen: '127.0.0.1:9001'}\nextproc: {enabled: false}"},
		{name: "admin allowed_hosts", yaml: "admin: {allowed_hosts: [admin.internal, Realipd-Admin, host_1.example.com.]}"},
		{name: "admin allowed_hosts bad", yaml: "admin: {allowed_hosts: ['', '10.1.2.3', '[::1]', LocalHost, '*.internal', 'admin.internal:9902', 'a..b', '-x', 'admin.internal', 'ADMIN.internal.']}",
			want: map[string]string{"admin.allowed_hosts[0]": "empty", "admin.allowed_hosts[1]": "IP addresses are always accepted",
				"admin.allowed_hosts[2]": "IP addresses are always accepted", "admin.allowed_hosts[3]": "localhost is always accepted",
				"admin.allowed_hosts[4]": "wildcards are not supported", "admin.allowed_hosts[5]": "without a port",
				"admin.allowed_hosts[6]": "is not a host name", "admin.allowed_hosts[7]": "is not a host name",
				"admin.allowed_hosts[9]": `"ADMIN.internal." is already admin.allowed_hosts[8]`}},
		{name: "deny_status", yaml: "extproc: {deny_status: 199}",
			want: map[string]string{"extproc.deny_status": "199 is not an HTTP status"}},
		{name: "deny_status 511", yaml: "extproc: {deny_status: 511}"},
		{name: "deny_status not in Envoy's enum", yaml: "extproc: {deny_status: 451}",
			want: map[string]string{"extproc.deny_status": "451 is not a status Envoy's ext_proc ImmediateResponse accepts"}},
		{name: "client_ip_header", yaml: "extproc: {client_ip_header: Host}",
			want: map[string]string{"extproc.client_ip_header": "must not overwrite"}},
		{name: "namespace", yaml: "extproc: {metadata_namespace: ''}",
			want: map[string]string{"extproc.metadata_namespace": "not a valid namespace"}},
		{name: "drain negative", yaml: "extproc: {drain_timeout: -1s}",
			want: map[string]string{"extproc.drain_timeout": "negative"}},
		{name: "xds modes and ports", yaml: "xds: {mode: nat, outbound_port: 15006, ip_families: [], http_ports: [0]}",
			want: map[string]string{"xds.mode": `"nat" is not one of redirect, tproxy`, "xds.inbound_port": "also the outbound_port",
				"xds.ip_families": "must list", "xds.http_ports[0]": "0 is not a port"}},
		{name: "original source needs tproxy", yaml: "origdst: {original_source: true}",
			want: map[string]string{"origdst.original_source": "needs origdst.mode: tproxy"}},
		{name: "ip families", yaml: "xds: {ip_families: [ipv6, IPv4, ipv6]}",
			want: map[string]string{"xds.ip_families[1]": `"IPv4" is not one of ipv4, ipv6`, "xds.ip_families[2]": "listed twice"}},
		{name: "origdst", yaml: "origdst: {enabled: true, listen: [], mark: 0, tproxy_mark: 4294967296, fallback: auto}\nxds: {enabled: false}",
			want: map[string]string{"origdst.listen": "at least one", "origdst.mark": "0 is not a fwmark",
				"origdst.tproxy_mark": "4294967296 is not a fwmark", "origdst.fallback": "auto needs xds.enabled"}},
		{name: "origdst listen", yaml: "origdst: {listen: ['0.0.0.0:1', 'x:1', '0.0.0.0:1', '[fe80::1%eth0]:1']}",
			want: map[string]string{"origdst.listen[1]": "not an IP:port", "origdst.listen[2]": "listed twice", "origdst.listen[3]": "zones"}},
		{name: "origdst marks equal", yaml: "origdst: {mark: 7, tproxy_mark: 7}",
			want: map[string]string{"origdst.tproxy_mark": "must differ"}},
		{name: "origdst timeouts and limit", yaml: "origdst: {dial_timeout: 0s, idle_timeout: -1s, drain_timeout: -1s, fallback_grace: -5s, max_connections: 0}",
			want: map[string]string{"origdst.dial_timeout": "0s is not a positive duration", "origdst.idle_timeout": "negative",
				"origdst.drain_timeout": "negative", "origdst.fallback_grace": "negative", "origdst.max_connections": "0 is not a positive"}},
		{name: "origdst no idle timeout, no drain", yaml: "origdst: {idle_timeout: 0s, drain_timeout: 0s, fallback_grace: 0s}"},
		{name: "origdst event loops", yaml: "origdst: {http_event_loops: -2}",
			want: map[string]string{"origdst.http_event_loops": "-2 is not -1 (none), 0 (automatic) or a number of loops up to 1024"}},
		{name: "origdst event loops too many", yaml: "origdst: {http_event_loops: 1025}",
			want: map[string]string{"origdst.http_event_loops": "1025 is not"}},
		{name: "origdst no event loops", yaml: "origdst: {http_event_loops: -1}"},
		{name: "policy type", yaml: "policies: [{name: a, type: foo}]",
			want: map[string]string{"policies[0].type": `"foo" is not one of cidr, plugin`}},
		{name: "policy names", yaml: "policies: [{type: cidr, deny: [10.0.0.0/8]}, {name: a, type: cidr, deny: [10.0.0.0/8]}, {name: a, type: cidr, allow: [10.0.0.0/8]}]",
			want: map[string]string{"policies[0].name": "required", "policies[2].name": `"a" is already the name of policies[1]`}},
		{name: "cidr policy", yaml: "policies: [{name: a, type: cidr}, {name: b, type: cidr, deny: [x], allow: ['10.0.0.0/8'], path: /p, on_error: deny}]",
			want: map[string]string{"policies[0]": "needs deny, allow or both", "policies[1].deny[0]": `"x" is not a CIDR or an IP`,
				"policies[1].path": "not used by cidr", "policies[1].on_error": "not used by cidr"}},
		{name: "plugin policy", yaml: "policies: [{name: p, type: plugin, sha256: ABCD, timeout: 0s, on_error: maybe, cache_ttl: -1s, deny: [10.0.0.0/8]}]",
			want: map[string]string{"policies[0].path": "required", "policies[0].sha256": "not 64 hexadecimal", "policies[0].timeout": "not a positive duration",
				"policies[0].on_error": `"maybe" is not one of allow, deny`, "policies[0].cache_ttl": "negative", "policies[0].deny": "not used by plugin"}},
		{name: "plugin defaults", yaml: "policies: [{name: p, type: plugin, path: /bin/true, sha256: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}]"},
		{name: "unknown keys", yaml: "trust: {stratgy: x}\nextra: 1\npolicies: [{name: a, type: cidr, deny: [10.0.0.0/8], dney: []}]",
			want: map[string]string{"trust.stratgy": "unknown key", "extra": "unknown key", "policies[0].dney": "unknown key"}},
		{name: "keys are case sensitive", yaml: "trust: {Strategy: remote_addr}",
			want: map[string]string{"trust.Strategy": "unknown key"}},
		{name: "wrong kinds", yaml: "extproc: {enabled: 1, deny_status: 4.5, listen: 9001}\nxds: {http_ports: 8080}\norigdst: {listen: [15001]}\npolicies: {}",
			want: map[string]string{"extproc.enabled": "must be true or false", "extproc.deny_status": "whole number", "extproc.listen": "must be a string",
				"xds.http_ports": "must be a list", "origdst.listen[0]": "must be a string", "policies": "must be a list"}},
		{name: "duration forms", yaml: "extproc: {drain_timeout: 0}\npolicies: [{name: p, type: plugin, path: /p, sha256: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa, timeout: 1.5}]",
			want: map[string]string{"policies[0].timeout": "write it with a unit"}},
		{name: "duration garbage", yaml: "extproc: {drain_timeout: soon}",
			want: map[string]string{"extproc.drain_timeout": `"soon" is not a duration`}},
		{name: "huge number", yaml: "xds: {outbound_port: 99999999999999999999}",
			want: map[string]string{"xds.outbound_port": "not a whole number in range"}},
		{name: "null keeps shape", yaml: "trust:\nxds: {http_ports: null}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Parse error = %v, want a *ValidationError", err)
			}
			got := map[string]string{}
			for _, fe := range ve.Errors {
				if _, dup := got[fe.Path]; dup {
					t.Errorf("path %s reported twice: %v", fe.Path, ve)
				}
				got[fe.Path] = fe.Msg
			}
			for path, frag := range tt.want {
				msg, ok := got[path]
				if !ok {
					t.Errorf("no error for %s; got:\n%v", path, ve)
					continue
				}
				if !strings.Contains(msg, frag) {
					t.Errorf("%s: message %q does not contain %q", path, msg, frag)
				}
			}
			for path, msg := range got {
				if _, ok := tt.want[path]; !ok {
					t.Errorf("unexpected error %s: %s", path, msg)
				}
			}
		})
	}
}

func TestParsedForms(t *testing.T) {
	c, err := Load("testdata/good/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ci := c.Trust.ClientIP()
	wantCIDRs := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("192.0.2.7/32")}
	if ci.Strategy != clientip.RightmostTrustedRange || ci.Header != "X-Forwarded-For" || !slices.Equal(ci.TrustedCIDRs, wantCIDRs) {
		t.Errorf("ClientIP() = %+v", ci)
	}
	if _, err := clientip.New(ci); err != nil {
		t.Errorf("clientip.New(ClientIP()) = %v", err)
	}
	if c.ExtProc.ClientIPHeader != "x-real-ip" {
		t.Errorf("client_ip_header = %q, want it lower-cased", c.ExtProc.ClientIPHeader)
	}
	if got := c.ExtProcAddress(); got != "unix:///run/realipd/extproc.sock" {
		t.Errorf("ExtProcAddress() = %q", got)
	}
	if got, want := c.OrigDst.ListenAddrs(), []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:15001"), netip.MustParseAddrPort("[::]:15001")}; !slices.Equal(got, want) {
		t.Errorf("ListenAddrs() = %v, want %v", got, want)
	}
	p := c.Policies[1]
	if got, want := p.AllowPrefixes(), []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8::/32")}; !slices.Equal(got, want) {
		t.Errorf("AllowPrefixes() = %v, want %v", got, want)
	}
	if got, want := p.DenyPrefixes(), []netip.Prefix{netip.MustParsePrefix("203.0.113.66/32")}; !slices.Equal(got, want) {
		t.Errorf("DenyPrefixes() = %v, want %v", got, want)
	}
	plug := c.Policies[2]
	if plug.Timeout.Duration != 20*time.Millisecond || plug.CacheTTL.Duration != 30*time.Second || plug.OnError != "allow" || plug.Config["list"] != "./deny.txt" {
		t.Errorf("plugin policy = %+v", plug)
	}
}

func TestPluginDefaults(t *testing.T) {
	c, err := Parse([]byte("policies: [{name: p, type: plugin, path: /bin/p, sha256: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}]"))
	if err != nil {
		t.Fatal(err)
	}
	p := c.Policies[0]
	if p.Timeout.Duration != DefaultPluginTimeout || p.OnError != DefaultPluginOnError || p.CacheTTL.Duration != 0 {
		t.Errorf("defaults not applied: %+v", p)
	}
}

func TestNetwork(t *testing.T) {
	tests := []struct{ in, network, addr string }{
		{"unix:///run/x.sock", "unix", "/run/x.sock"},
		{"127.0.0.1:9001", "tcp", "127.0.0.1:9001"},
		{"[::1]:0", "tcp", "[::1]:0"},
	}
	for _, tt := range tests {
		if n, a := Network(tt.in); n != tt.network || a != tt.addr {
			t.Errorf("Network(%q) = %q, %q; want %q, %q", tt.in, n, a, tt.network, tt.addr)
		}
	}
}

func TestDurationJSON(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{`"20ms"`, 20 * time.Millisecond, false},
		{`"1m30s"`, 90 * time.Second, false},
		{`0`, 0, false},
		{`5`, 0, true},
		{`"5"`, 0, true},
		{`true`, 0, true},
	}
	for _, tt := range tests {
		var d Duration
		err := json.Unmarshal([]byte(tt.in), &d)
		if (err != nil) != tt.wantErr || d.Duration != tt.want {
			t.Errorf("Unmarshal(%s) = %v, %v; want %v, error %v", tt.in, d.Duration, err, tt.want, tt.wantErr)
		}
	}
	b, err := json.Marshal(Duration{1500 * time.Millisecond})
	if err != nil || string(b) != `"1.5s"` {
		t.Errorf("Marshal = %s, %v", b, err)
	}
}

func TestValidationErrorText(t *testing.T) {
	one := &ValidationError{File: "f.yaml", Errors: []FieldError{{Path: "trust.strategy", Msg: "bad"}}}
	if got, want := one.Error(), "config: f.yaml: trust.strategy: bad"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	two := &ValidationError{Errors: []FieldError{{Path: "a", Msg: "x"}, {Msg: "y"}}}
	if got, want := two.Error(), "config: 2 errors:\n  a: x\n  y"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

// FuzzParse: no input panics; an accepted document marshals to JSON that
// parses again to the same configuration.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*/*.yaml")
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("trust: {strategy: envoy_xff, trusted_hops: 3}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		js, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("Marshal accepted config: %v", err)
		}
		c2, err := Parse(js)
		if err != nil {
			t.Fatalf("re-Parse of %s: %v", js, err)
		}
		if !reflect.DeepEqual(c.Trust.ClientIP(), c2.Trust.ClientIP()) {
			t.Fatalf("ClientIP differs after round trip: %+v vs %+v", c.Trust.ClientIP(), c2.Trust.ClientIP())
		}
	})
}

// TestREADMEConfigExample keeps the configuration example in README.md
// true: every YAML block there parses and validates, the placeholder of
// a plugin's hash aside (the complete reference, with every default, is
// docs/config.md, checked by TestConfigDoc).
func TestREADMEConfigExample(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(blocks) == 0 {
		t.Fatal("README.md has no ```yaml block")
	}
	placeholder := regexp.MustCompile(`"<sha256sum [^>]*>"`)
	for _, b := range blocks {
		block := placeholder.ReplaceAllString(b[1], strings.Repeat("a", 64))
		if _, err := Parse([]byte(block)); err != nil {
			t.Errorf("README's configuration example:\n%s\n%v", b[1], err)
		}
	}
}
