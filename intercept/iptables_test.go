package intercept

import (
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/iptables")

// defaults are the options `realipd iptables` takes from the default
// configuration.
func defaults(mode Mode) IPTablesOptions {
	return IPTablesOptions{
		Mode:               mode,
		OutboundPort:       15001,
		InboundPort:        15006,
		ExcludeUIDs:        []uint32{1337},
		Mark:               1338,
		TProxyMark:         1337,
		RouteTable:         133,
		IncludeAllOutbound: true,
		IncludeAllInbound:  true,
	}
}

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

// withLists includes and excludes by CIDR and port, with two uids and a gid.
func withLists(mode Mode, f Family) IPTablesOptions {
	o := defaults(mode)
	o.ExcludeUIDs = []uint32{1337, 101}
	o.ExcludeGIDs = []uint32{1337}
	o.IncludeAllOutbound = false
	o.IncludeAllInbound = false
	if f == IPv4 {
		o.IncludeOutboundCIDRs = prefixes("10.0.0.0/8", "192.168.0.0/16")
		o.ExcludeOutboundCIDRs = prefixes("10.96.0.0/12", "169.254.169.254/32")
	} else {
		o.IncludeOutboundCIDRs = prefixes("fd00::/8", "2001:db8::/32")
		o.ExcludeOutboundCIDRs = prefixes("fd00:96::/32", "fe80::/10")
	}
	o.ExcludeOutboundPorts = []uint16{22, 3306}
	o.IncludeInboundPorts = []uint16{8080, 9090}
	o.ExcludeInboundPorts = []uint16{15090}
	return o
}

func TestRenderGolden(t *testing.T) {
	type tc struct {
		name string
		opts IPTablesOptions
		fam  Family
	}
	var cases []tc
	for _, mode := range []Mode{ModeRedirect, ModeTProxy} {
		for _, f := range []Family{IPv4, IPv6} {
			fam := "ipv4"
			if f == IPv6 {
				fam = "ipv6"
			}
			cases = append(cases, tc{string(mode) + "-" + fam, defaults(mode), f})
			cases = append(cases, tc{string(mode) + "-" + fam + "-lists", withLists(mode, f), f})
		}
	}
	noOwners := defaults(ModeRedirect)
	noOwners.ExcludeUIDs = nil
	noOwners.ExcludeInboundPorts = []uint16{15090, 15021}
	cases = append(cases, tc{"redirect-ipv4-no-owners", noOwners, IPv4})
	outboundOnly := defaults(ModeTProxy)
	outboundOnly.IncludeAllInbound = false
	outboundOnly.ExcludeGIDs = []uint32{1337}
	cases = append(cases, tc{"tproxy-ipv4-outbound-only", outboundOnly, IPv4})

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := RenderIPTables(c.opts, c.fam)
			if err != nil {
				t.Fatal(err)
			}
			got := r.String()
			path := filepath.Join("testdata", "iptables", c.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("%s differs from the rendering (go test -update rewrites it):\n%s", path, got)
			}
			again, _ := RenderIPTables(c.opts, c.fam)
			if again.String() != got {
				t.Error("two renderings of the same options differ")
			}
		})
	}
}

// TestRenderShape checks the promises the golden files are read for: one
// jump per built-in chain, every jump and target naming a declared chain,
// the family's addresses only.
func TestRenderShape(t *testing.T) {
	for _, mode := range []Mode{ModeRedirect, ModeTProxy} {
		for _, f := range []Family{IPv4, IPv6} {
			for _, o := range []IPTablesOptions{defaults(mode), withLists(mode, f)} {
				r, err := RenderIPTables(o, f)
				if err != nil {
					t.Fatal(err)
				}
				wantTables := 1
				if mode == ModeTProxy {
					wantTables = 2
					if r.Routing == nil || r.Routing.Mark != 1337 || r.Routing.Table != 133 {
						t.Errorf("%s %v: routing %+v", mode, f, r.Routing)
					}
				} else if r.Routing != nil {
					t.Errorf("%s %v: routing in redirect mode", mode, f)
				}
				if len(r.Tables) != wantTables {
					t.Fatalf("%s %v: %d tables", mode, f, len(r.Tables))
				}
				for _, tr := range r.Tables {
					builtins := map[string]int{}
					for _, j := range tr.Jumps {
						fields := strings.Fields(j)
						builtins[fields[1]]++
						if target := fields[len(fields)-1]; !contains(tr.Chains, target) {
							t.Errorf("%s: jump %q to an undeclared chain", tr.Table, j)
						}
					}
					for b, n := range builtins {
						if n != 1 {
							t.Errorf("%s %v %s: %d jumps from %s", mode, f, tr.Table, n, b)
						}
					}
					for _, l := range tr.Rules {
						fields := strings.Fields(l)
						if !contains(tr.Chains, fields[1]) {
							t.Errorf("rule %q of an undeclared chain", l)
						}
						if target := fields[indexOf(fields, "-j")+1]; strings.HasPrefix(target, ChainPrefix) && !contains(tr.Chains, target) {
							t.Errorf("rule %q jumps to an undeclared chain", l)
						}
						other := "127.0.0."
						if f == IPv4 {
							other = "::"
						}
						if strings.Contains(l, other) {
							t.Errorf("%v rule %q has an address of the other family", f, l)
						}
					}
				}
			}
		}
	}
}

func contains(list []string, s string) bool {
	return indexOf(list, s) >= 0
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*IPTablesOptions)
		fam  Family
		want []string // each a fragment of one error, in order
	}{
		{"defaults", func(*IPTablesOptions) {}, IPv4, nil},
		{"bad mode", func(o *IPTablesOptions) { o.Mode = "nat" }, IPv4, []string{`mode: "nat" is not redirect or tproxy`}},
		{"ports", func(o *IPTablesOptions) { o.OutboundPort = 0; o.InboundPort = 0 }, IPv4,
			[]string{"outbound_port: 0 is not a port", "inbound_port: 0 is not a port"}},
		{"same ports", func(o *IPTablesOptions) { o.InboundPort = 15001 }, IPv4, []string{"inbound_port: 15001 is also the outbound_port"}},
		{"zero mark", func(o *IPTablesOptions) { o.Mark = 0 }, IPv4, []string{"mark: 0 is not a mark"}},
		{"tproxy marks", func(o *IPTablesOptions) { o.Mode = ModeTProxy; o.TProxyMark = 1338 }, IPv4,
			[]string{"tproxy_mark: 1338 is also the mark"}},
		{"tproxy zero mark", func(o *IPTablesOptions) { o.Mode = ModeTProxy; o.TProxyMark = 0 }, IPv4, []string{"tproxy_mark: 0 is not a mark"}},
		{"redirect ignores the tproxy mark", func(o *IPTablesOptions) { o.TProxyMark = 0; o.RouteTable = 0 }, IPv4, nil},
		{"main table", func(o *IPTablesOptions) { o.Mode = ModeTProxy; o.RouteTable = 254 }, IPv4, []string{"route_table: 254 is not a table"}},
		{"uids", func(o *IPTablesOptions) { o.ExcludeUIDs = []uint32{1337, 1337, 1<<32 - 1} }, IPv4,
			[]string{"exclude_uids[1]: 1337 is listed twice", "exclude_uids[2]: 4294967295 is (uid_t)-1"}},
		{"v4 CIDR for v6", func(o *IPTablesOptions) { o.ExcludeOutboundCIDRs = prefixes("10.0.0.0/8") }, IPv6,
			[]string{"exclude_outbound_cidrs[0]: 10.0.0.0/8 is not an IPv6 CIDR"}},
		{"v6 CIDR for v4", func(o *IPTablesOptions) {
			o.IncludeAllOutbound = false
			o.IncludeOutboundCIDRs = prefixes("::ffff:10.0.0.0/104", "fd00::/8")
		}, IPv4, []string{"include_outbound_cidrs[0]: ::ffff:10.0.0.0/104 is not an IPv4 CIDR", "include_outbound_cidrs[1]: fd00::/8 is not an IPv4 CIDR"}},
		{"unmasked CIDR", func(o *IPTablesOptions) {
			o.ExcludeOutboundCIDRs = []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr("10.1.2.3"), 8)}
		}, IPv4, []string{"exclude_outbound_cidrs[0]: 10.1.2.3/8 has address bits set past /8"}},
		{"all and a list", func(o *IPTablesOptions) {
			o.IncludeOutboundCIDRs = prefixes("10.0.0.0/8")
			o.IncludeInboundPorts = []uint16{80}
		}, IPv4, []string{"include_outbound_cidrs: every destination (*) is included", "include_inbound_ports: every port (*) is included"}},
		{"port lists", func(o *IPTablesOptions) {
			o.IncludeAllInbound = false
			o.IncludeInboundPorts = []uint16{80, 0}
			o.ExcludeInboundPorts = []uint16{80}
			o.ExcludeOutboundPorts = []uint16{22, 22}
		}, IPv4, []string{"exclude_outbound_ports[1]: 22 is listed twice", "include_inbound_ports[1]: 0 is not a port",
			"exclude_inbound_ports[0]: 80 is also in include_inbound_ports"}},
		{"family", func(*IPTablesOptions) {}, Family(5), []string{"family: Family(5) is not IPv4 or IPv6"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := defaults(ModeRedirect)
			tt.edit(&o)
			err := o.Validate(tt.fam)
			var got []string
			if err != nil {
				for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
					if _, ok := errors.AsType[*OptionError](e); !ok {
						t.Errorf("%v is not an *OptionError", e)
					}
					got = append(got, e.Error())
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("errors %q, want %d matching %q", got, len(tt.want), tt.want)
			}
			for i := range got {
				if !strings.Contains(got[i], tt.want[i]) {
					t.Errorf("error %d: %q, want it to contain %q", i, got[i], tt.want[i])
				}
			}
			if _, rerr := RenderIPTables(o, tt.fam); (rerr == nil) != (err == nil) {
				t.Errorf("RenderIPTables error %v, Validate %v", rerr, err)
			}
		})
	}
}
