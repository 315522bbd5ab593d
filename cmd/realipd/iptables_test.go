package main

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/realipd/realipd/intercept"
)

// defaultIPTables are the options the default configuration gives.
func defaultIPTables(mode intercept.Mode) intercept.IPTablesOptions {
	return intercept.IPTablesOptions{
		Mode: mode, OutboundPort: 15001, InboundPort: 15006,
		ExcludeUIDs: []uint32{1337}, Mark: 1338, TProxyMark: 1337, RouteTable: 133,
		IncludeAllOutbound: true, IncludeAllInbound: true,
	}
}

func render(t *testing.T, o intercept.IPTablesOptions, f intercept.Family) string {
	t.Helper()
	r, err := intercept.RenderIPTables(o, f)
	if err != nil {
		t.Fatal(err)
	}
	return r.String()
}

func TestIPTablesRender(t *testing.T) {
	file := writeFile(t, "realipd.yaml", `xds:
  mode: tproxy
  outbound_port: 16001
  inbound_port: 16006
origdst:
  mark: 7
  tproxy_mark: 9
intercept:
  iptables:
    exclude_uids: [101]
    exclude_gids: [102]
    route_table: 200
    include_outbound_cidrs: [10.0.0.0/8, "fd00::/8"]
    exclude_outbound_cidrs: [10.96.0.0/12, "fd00:96::/32"]
    exclude_outbound_ports: [22]
    include_inbound_ports: [8080]
    exclude_inbound_ports: [9090]
`)
	fromFile := intercept.IPTablesOptions{
		Mode: intercept.ModeTProxy, OutboundPort: 16001, InboundPort: 16006,
		ExcludeUIDs: []uint32{101}, ExcludeGIDs: []uint32{102}, Mark: 7, TProxyMark: 9, RouteTable: 200,
		IncludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		ExcludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")},
		ExcludeOutboundPorts: []uint16{22}, IncludeInboundPorts: []uint16{8080}, ExcludeInboundPorts: []uint16{9090},
	}
	fromFile6 := fromFile
	fromFile6.IncludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00::/8")}
	fromFile6.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00:96::/32")}
	overridden := fromFile
	overridden.Mode = intercept.ModeRedirect
	overridden.ExcludeUIDs = nil
	overridden.IncludeOutboundCIDRs = nil
	overridden.IncludeAllOutbound = true
	overridden.ExcludeInboundPorts = []uint16{9090, 9091}
	overridden.Mark = 0x53a
	flagsOnly := defaultIPTables(intercept.ModeRedirect)
	flagsOnly.OutboundPort, flagsOnly.InboundPort = 1, 2
	flagsOnly.ExcludeGIDs = []uint32{5, 6}
	flagsOnly.TProxyMark, flagsOnly.RouteTable = 3, 4
	flagsOnly.IncludeAllOutbound = false
	flagsOnly.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32")}
	flagsOnly.ExcludeOutboundPorts = []uint16{25}
	flagsOnly.IncludeAllInbound = false
	flagsOnly.IncludeInboundPorts = []uint16{80, 443}

	tests := []struct {
		name string
		args []string
		opts intercept.IPTablesOptions
		fam  intercept.Family
	}{
		{"defaults", nil, defaultIPTables(intercept.ModeRedirect), intercept.IPv4},
		{"tproxy", []string{"--mode", "tproxy"}, defaultIPTables(intercept.ModeTProxy), intercept.IPv4},
		{"ipv6", []string{"--ipv6", "--mode=tproxy"}, defaultIPTables(intercept.ModeTProxy), intercept.IPv6},
		{"file", []string{"--config", file}, fromFile, intercept.IPv4},
		{"file ipv6: the file's IPv6 CIDRs", []string{"--config", file, "--ipv6"}, fromFile6, intercept.IPv6},
		{"flags override the file", []string{"--config", file, "--mode", "redirect", "--exclude-uids", "",
			"--include-outbound-cidrs", "*", "--exclude-inbound-ports", "9090, 9091", "--mark", "0x53a"}, overridden, intercept.IPv4},
		{"every flag", []string{"--outbound-port", "1", "--inbound-port", "2", "--exclude-gids", "5,6", "--tproxy-mark", "3",
			"--route-table", "4", "--include-outbound-cidrs", "", "--exclude-outbound-cidrs", "192.0.2.1",
			"--exclude-outbound-ports", "25", "--include-inbound-ports", "80,443"}, flagsOnly, intercept.IPv4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCmd(t, append([]string{"iptables"}, tt.args...)...)
			if code != 0 || errOut != "" {
				t.Fatalf("exit %d, stderr %q", code, errOut)
			}
			if want := render(t, tt.opts, tt.fam); out != want {
				t.Errorf("stdout:\n%s\nwant the library's rendering:\n%s", out, want)
			}
		})
	}
}

func TestIPTablesUsage(t *testing.T) {
	badFile := writeFile(t, "bad.yaml", "intercept:\n  iptables:\n    route_table: 254\n")
	v4File := writeFile(t, "v4.yaml", "intercept:\n  iptables:\n    include_outbound_cidrs: [10.0.0.0/8]\n")
	tests := []struct {
		name string
		args []string
		code int
		want []string // fragments of stderr
	}{
		{"apply and remove", []string{"--apply", "--remove"}, 2, []string{"--apply and --remove exclude each other"}},
		{"bad mode", []string{"--mode", "nat"}, 2, []string{`--mode: "nat" is not redirect or tproxy`}},
		{"bad flag", []string{"--nope"}, 2, []string{"flag provided but not defined: -nope"}},
		{"argument", []string{"extra"}, 2, []string{`unexpected argument "extra"`}},
		{"not numbers", []string{"--exclude-uids", "1337,envoy", "--outbound-port", "70000", "--mark", "x"}, 2,
			[]string{`--exclude-uids: "envoy" is not a number`, `--outbound-port: "70000" is not a number between 0 and 65535`, `--mark: "x" is not a number`}},
		{"zero mark and port", []string{"--mark", "0", "--inbound-port", "0"}, 2, []string{"--inbound-port: 0 is not a port", "--mark: 0 is not a mark"}},
		{"same marks", []string{"--mode", "tproxy", "--tproxy-mark", "1338"}, 2, []string{"--tproxy-mark: 1338 is also the mark"}},
		{"CIDR of the other family", []string{"--ipv6", "--exclude-outbound-cidrs", "fd00::/8,10.0.0.0/8"}, 2,
			[]string{"--exclude-outbound-cidrs (entry 2): 10.0.0.0/8 is not an IPv6 CIDR"}},
		{"not a CIDR", []string{"--exclude-outbound-cidrs", "10.0.0.0/33"}, 2, []string{`--exclude-outbound-cidrs: "10.0.0.0/33" is not a CIDR`}},
		{"star in a list", []string{"--include-outbound-cidrs", "*,10.0.0.0/8"}, 2, []string{`"*" is every destination`}},
		{"overlapping ports", []string{"--include-inbound-ports", "80", "--exclude-inbound-ports", "80"}, 2,
			[]string{"--exclude-inbound-ports (entry 1): 80 is also in include_inbound_ports"}},
		{"bad file", []string{"--config", badFile}, 1, []string{"intercept.iptables.route_table: 254 is a table of the system's"}},
		{"missing file", []string{"--config", "/nonexistent.yaml"}, 1, []string{"config: read"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCmd(t, append([]string{"iptables"}, tt.args...)...)
			if code != tt.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tt.code, errOut)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			for _, w := range tt.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
		})
	}

	// The file's IPv4 list, rendered for IPv6: no IPv6 destination is
	// included, so none is captured.
	out, _, code := runCmd(t, "iptables", "--config", v4File, "--ipv6")
	if code != 0 || strings.Contains(out, "-j REALIPD_REDIRECT\n") {
		t.Errorf("exit %d; an IPv4-only include list captures IPv6 destinations:\n%s", code, out)
	}

	out, _, code = runCmd(t, "iptables", "--help")
	if code != 0 || !strings.Contains(out, "--exclude-inbound-ports") {
		t.Errorf("--help: exit %d\n%s", code, out)
	}
}

// TestIPTablesModeFromRole: the rules take the mode of the role that takes
// the connections: the native listener's with xds off, Envoy's (xds.mode)
// otherwise, which the native listener must then share; --mode overrides.
func TestIPTablesModeFromRole(t *testing.T) {
	tests := []struct {
		name, config string
		args         []string
		mode         intercept.Mode // "": refused
	}{
		{"native listener alone, tproxy", "xds: {enabled: false}\norigdst: {enabled: true, mode: tproxy}\n", nil, intercept.ModeTProxy},
		{"native listener alone, off", "xds: {enabled: false}\norigdst: {mode: tproxy}\n", nil, intercept.ModeTProxy},
		{"xds alone", "xds: {mode: tproxy}\norigdst: {mode: redirect}\n", nil, intercept.ModeTProxy},
		{"both, one mode", "xds: {mode: tproxy}\norigdst: {enabled: true, mode: tproxy, fallback: auto}\n", nil, intercept.ModeTProxy},
		{"both, the native listener never binds", "origdst: {enabled: true, mode: tproxy, fallback: never}\n", nil, intercept.ModeRedirect},
		{"both, two modes", "origdst: {enabled: true, mode: tproxy}\n", nil, ""},
		{"both, two modes, --mode", "origdst: {enabled: true, mode: tproxy}\n", []string{"--mode", "tproxy"}, intercept.ModeTProxy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := writeFile(t, "realipd.yaml", tt.config)
			out, errOut, code := runCmd(t, append([]string{"iptables", "--config", file}, tt.args...)...)
			if tt.mode == "" {
				if code != 1 || !strings.Contains(errOut, "origdst.mode: tproxy differs from xds.mode (redirect)") {
					t.Errorf("exit %d, stderr %q; want exit 1 naming origdst.mode and xds.mode", code, errOut)
				}
				return
			}
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			if want := fmt.Sprintf("# realipd iptables: %s mode,", tt.mode); !strings.HasPrefix(out, want) {
				t.Errorf("rendered %q, want %s mode", strings.SplitN(out, "\n", 2)[0], tt.mode)
			}
		})
	}
}

// TestIPTablesHostFlag: --host only goes with --apply.
func TestIPTablesHostFlag(t *testing.T) {
	_, errOut, code := runCmd(t, "iptables", "--host")
	if code != 2 || !strings.Contains(errOut, "--host goes with --apply") {
		t.Errorf("--host alone: exit %d, stderr %q", code, errOut)
	}
}
