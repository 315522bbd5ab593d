package config

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestIPTablesParsedForms(t *testing.T) {
	d := Default()
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	it := d.Intercept.IPTables
	if !it.IncludeAllOutbound() || !it.IncludeAllInbound() || len(it.IncludeOutboundPrefixes()) != 0 || len(it.InboundPorts()) != 0 {
		t.Errorf("defaults: all outbound %v, all inbound %v, %v, %v", it.IncludeAllOutbound(), it.IncludeAllInbound(), it.IncludeOutboundPrefixes(), it.InboundPorts())
	}
	if !slices.Equal(it.ExcludeUIDs, []int{1337}) || it.RouteTable != 133 {
		t.Errorf("defaults: %+v", it)
	}

	c, err := Load("testdata/good/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	it = c.Intercept.IPTables
	wantInc := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("192.0.2.7/32")}
	if it.IncludeAllOutbound() || !slices.Equal(it.IncludeOutboundPrefixes(), wantInc) {
		t.Errorf("include_outbound_cidrs parsed as %v (all %v)", it.IncludeOutboundPrefixes(), it.IncludeAllOutbound())
	}
	if got := it.ExcludeOutboundPrefixes(); !slices.Equal(got, []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}) {
		t.Errorf("exclude_outbound_cidrs parsed as %v", got)
	}
	if it.IncludeAllInbound() || !slices.Equal(it.InboundPorts(), []int{8080, 9090}) {
		t.Errorf("include_inbound_ports: %v (all %v)", it.InboundPorts(), it.IncludeAllInbound())
	}

	none, err := Parse([]byte("intercept:\n  iptables:\n    include_outbound_cidrs: []\n    include_inbound_ports: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if it := none.Intercept.IPTables; it.IncludeAllOutbound() || it.IncludeAllInbound() || len(it.InboundPorts()) != 0 {
		t.Errorf("empty lists: %+v", it)
	}
}

func TestPortOrAllJSON(t *testing.T) {
	in := []PortOrAll{{All: true}, {Port: 8080}}
	b, err := json.Marshal(in)
	if err != nil || string(b) != `["*",8080]` {
		t.Fatalf("Marshal = %s, %v", b, err)
	}
	var out []PortOrAll
	if err := json.Unmarshal(b, &out); err != nil || !slices.Equal(out, in) {
		t.Fatalf("Unmarshal = %v, %v", out, err)
	}
	for _, bad := range []string{`"all"`, `true`, `1.5`} {
		var p PortOrAll
		if err := json.Unmarshal([]byte(bad), &p); err == nil {
			t.Errorf("Unmarshal(%s) accepted", bad)
		}
	}
}

// TestUnservedCapturePorts: the capture ports the rules steer to with no
// role listening there. The defaults serve both.
func TestUnservedCapturePorts(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // keys
	}{
		{"the defaults, native listener alone", "xds: {enabled: false}\norigdst: {enabled: true}", nil},
		{"outbound port only", "xds: {enabled: false}\norigdst: {enabled: true, listen: [\"0.0.0.0:15001\"]}", []string{"xds.inbound_port"}},
		{"other ports", "xds: {enabled: false, inbound_port: 16006}\norigdst: {enabled: true, listen: [\"[::]:15001\", \"127.0.0.1:15006\"]}", []string{"xds.inbound_port"}},
		{"inbound not captured", "xds: {enabled: false}\norigdst: {enabled: true, listen: [\"0.0.0.0:15001\"]}\nintercept: {iptables: {include_inbound_ports: []}}", nil},
		{"nothing captured", "xds: {enabled: false}\norigdst: {enabled: true, listen: [\"0.0.0.0:9\"]}\nintercept: {iptables: {include_inbound_ports: [], include_outbound_cidrs: []}}", nil},
		{"never binds", "xds: {enabled: false}\norigdst: {enabled: true, fallback: never}", []string{"xds.outbound_port", "xds.inbound_port"}},
		{"Envoy takes them", "origdst: {enabled: true, listen: [\"0.0.0.0:15001\"]}", nil},
		{"no role for them", "xds: {enabled: false}", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range c.UnservedCapturePorts() {
				got = append(got, p.Key)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("UnservedCapturePorts() keys %q, want %q", got, tt.want)
			}
		})
	}
}

// TestIPTablesMode: the mode of the role that takes the connections.
func TestIPTablesMode(t *testing.T) {
	tests := []struct{ name, yaml, want, err string }{
		{"defaults", "", "redirect", ""},
		{"xds", "xds: {mode: tproxy}", "tproxy", ""},
		{"native listener alone", "xds: {enabled: false}\norigdst: {enabled: true, mode: tproxy}", "tproxy", ""},
		{"both alike", "xds: {mode: tproxy}\norigdst: {enabled: true, mode: tproxy}", "tproxy", ""},
		{"both differ", "origdst: {enabled: true, mode: tproxy}", "", "origdst.mode: tproxy differs from xds.mode (redirect)"},
		{"native listener never binds", "origdst: {enabled: true, mode: tproxy, fallback: never}", "redirect", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.IPTablesMode()
			if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
				t.Errorf("IPTablesMode() = %q, %v; want %q, %q", got, err, tt.want, tt.err)
			}
		})
	}
}
