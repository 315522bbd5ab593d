package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// IPTables configures the iptables interception rules (intercept.iptables)
// that `realipd iptables` renders, applies and removes. The capture ports
// are xds.outbound_port and xds.inbound_port, the marks origdst.mark (never
// captured) and origdst.tproxy_mark, the mode that of the role that takes
// the connections (Config.IPTablesMode).
type IPTables struct {
	// ExcludeUIDs and ExcludeGIDs own the sockets whose outbound
	// connections are never captured: Envoy's. 1337 is the uid Istio's
	// proxy image runs Envoy as; Envoy's own image runs it as 101.
	ExcludeUIDs []int `json:"exclude_uids"`
	ExcludeGIDs []int `json:"exclude_gids"`
	// RouteTable is the routing table of the TPROXY policy rule.
	RouteTable int `json:"route_table"`
	// IncludeOutboundCIDRs are the destinations whose outbound connections
	// are captured; ["*"] is every destination, [] none. Entries of both
	// families may be listed: each family's rules take their own.
	IncludeOutboundCIDRs []string `json:"include_outbound_cidrs"`
	ExcludeOutboundCIDRs []string `json:"exclude_outbound_cidrs"`
	ExcludeOutboundPorts []int    `json:"exclude_outbound_ports"`
	// IncludeInboundPorts are the local ports whose inbound connections are
	// captured; ["*"] is every port, [] none.
	IncludeInboundPorts []PortOrAll `json:"include_inbound_ports"`
	ExcludeInboundPorts []int       `json:"exclude_inbound_ports"`

	includeOutbound, excludeOutbound []netip.Prefix // parsed by Validate
}

// PortOrAll is an entry of a port list that may say "every port": a port
// number, or the string "*" (All).
type PortOrAll struct {
	Port int
	All  bool
}

// MarshalJSON writes "*" or the number.
func (p PortOrAll) MarshalJSON() ([]byte, error) {
	if p.All {
		return []byte(`"*"`), nil
	}
	return json.Marshal(p.Port)
}

// UnmarshalJSON reads "*" or a whole number.
func (p *PortOrAll) UnmarshalJSON(b []byte) error {
	var v any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("config: port: %w", err)
	}
	if err := p.checkShape(v); err != nil {
		return err
	}
	if n, ok := v.(json.Number); ok {
		i, _ := strconv.Atoi(n.String())
		*p = PortOrAll{Port: i}
		return nil
	}
	*p = PortOrAll{All: true}
	return nil
}

// checkShape accepts "*" and whole numbers (checkShape's hook).
func (PortOrAll) checkShape(v any) error {
	switch v := v.(type) {
	case string:
		if v == "*" {
			return nil
		}
		return fmt.Errorf("must be a port number or \"*\" (every port), not the string %q", v)
	case json.Number:
		if _, err := strconv.Atoi(v.String()); err != nil {
			return fmt.Errorf("%s is not a whole number in range", v)
		}
		return nil
	}
	return fmt.Errorf("must be a port number or \"*\" (every port), not %s", describe(v))
}

func defaultIPTables() IPTables {
	return IPTables{
		ExcludeUIDs:          []int{1337},
		ExcludeGIDs:          []int{},
		RouteTable:           133,
		IncludeOutboundCIDRs: []string{"*"},
		ExcludeOutboundCIDRs: []string{},
		ExcludeOutboundPorts: []int{},
		IncludeInboundPorts:  []PortOrAll{{All: true}},
		ExcludeInboundPorts:  []int{},
	}
}

// IncludeAllOutbound reports whether include_outbound_cidrs is ["*"].
func (t IPTables) IncludeAllOutbound() bool {
	return slices.Equal(t.IncludeOutboundCIDRs, []string{"*"})
}

// IncludeOutboundPrefixes returns the parsed include_outbound_cidrs (after
// Validate; empty with IncludeAllOutbound).
func (t IPTables) IncludeOutboundPrefixes() []netip.Prefix { return t.includeOutbound }

// ExcludeOutboundPrefixes returns the parsed exclude_outbound_cidrs (after
// Validate).
func (t IPTables) ExcludeOutboundPrefixes() []netip.Prefix { return t.excludeOutbound }

// IncludeAllInbound reports whether include_inbound_ports is ["*"].
func (t IPTables) IncludeAllInbound() bool {
	return len(t.IncludeInboundPorts) == 1 && t.IncludeInboundPorts[0].All
}

// InboundPorts returns the ports of include_inbound_ports (none with
// IncludeAllInbound).
func (t IPTables) InboundPorts() []int {
	var out []int
	for _, p := range t.IncludeInboundPorts {
		if !p.All {
			out = append(out, p.Port)
		}
	}
	return out
}

// maxID is the largest uid or gid: (uid_t)-1 is not one.
const maxID = 1<<32 - 2

func (t *IPTables) validate(errs *errorList, path string, c *Config) {
	t.includeOutbound, t.excludeOutbound = nil, nil
	for _, ids := range []struct {
		key  string
		list []int
	}{{"exclude_uids", t.ExcludeUIDs}, {"exclude_gids", t.ExcludeGIDs}} {
		for i, id := range ids.list {
			p := fmt.Sprintf("%s.%s[%d]", path, ids.key, i)
			if id < 0 || int64(id) > maxID { // int64: on 32-bit systems the constant overflows int
				errs.add(p, "%d is not an ID between 0 and %d", id, int64(maxID))
			} else if slices.Index(ids.list, id) < i {
				errs.add(p, "%d is listed twice", id)
			}
		}
	}
	switch rt := int64(t.RouteTable); {
	case rt < 1 || rt > 0xFFFFFFFF:
		errs.add(path+".route_table", "%d is not a routing table between 1 and 4294967295", t.RouteTable)
	case rt >= 253 && rt <= 255:
		errs.add(path+".route_table", "%d is a table of the system's (253 default, 254 main, 255 local); pick another", t.RouteTable)
	}

	if !t.IncludeAllOutbound() {
		for i, s := range t.IncludeOutboundCIDRs {
			if s == "*" {
				errs.add(fmt.Sprintf("%s.include_outbound_cidrs[%d]", path, i), `"*" (every destination) must be the only entry`)
			}
		}
		t.includeOutbound = parseCIDRList(errs, path+".include_outbound_cidrs", t.IncludeOutboundCIDRs)
	}
	for i, s := range t.ExcludeOutboundCIDRs {
		if s == "*" {
			errs.add(fmt.Sprintf("%s.exclude_outbound_cidrs[%d]", path, i), `"*" would exclude every destination: set include_outbound_cidrs: [] instead`)
		}
	}
	t.excludeOutbound = parseCIDRList(errs, path+".exclude_outbound_cidrs", t.ExcludeOutboundCIDRs)
	validatePorts(errs, path+".exclude_outbound_ports", t.ExcludeOutboundPorts)

	include := t.InboundPorts()
	for i, p := range t.IncludeInboundPorts {
		at := fmt.Sprintf("%s.include_inbound_ports[%d]", path, i)
		if p.All {
			if len(t.IncludeInboundPorts) > 1 {
				errs.add(at, `"*" (every port) must be the only entry`)
			}
			continue
		}
		validatePort(errs, at, p.Port)
		if slices.IndexFunc(t.IncludeInboundPorts, func(q PortOrAll) bool { return q == p }) < i {
			errs.add(at, "%d is listed twice", p.Port)
		}
	}
	validatePorts(errs, path+".exclude_inbound_ports", t.ExcludeInboundPorts)
	for i, p := range t.ExcludeInboundPorts {
		if slices.Contains(include, p) {
			errs.add(fmt.Sprintf("%s.exclude_inbound_ports[%d]", path, i), "%d is also in include_inbound_ports", p)
		}
	}
}

// parseCIDRList parses CIDRs (a bare IP is a single address) and refuses
// duplicates; "*" entries are skipped (reported by the caller).
func parseCIDRList(errs *errorList, path string, list []string) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range list {
		if s == "*" {
			continue
		}
		p, err := parsePrefix(s)
		at := fmt.Sprintf("%s[%d]", path, i)
		switch {
		case err != nil:
			errs.add(at, "%s", err.Error())
		case slices.Contains(out, p):
			errs.add(at, "%s is listed twice", p)
		default:
			out = append(out, p)
		}
	}
	return out
}

// takesTraffic reports which roles take the connections the interception
// rules steer: Envoy through the xDS role, and the native listener unless
// its fallback is never (it then binds nothing).
func (c *Config) takesTraffic() (xds, native bool) {
	return c.XDS.Enabled, c.OrigDst.Enabled && c.OrigDst.Fallback != "never"
}

// IPTablesMode is the mode of the interception rules: that of the role
// that takes the connections. With xds enabled it is xds.mode (Envoy's
// listeners), which the native listener must share when it takes them
// too (a *ValidationError naming both keys when they differ); with xds
// off it is origdst.mode.
func (c *Config) IPTablesMode() (string, error) {
	xds, native := c.takesTraffic()
	switch {
	case !xds:
		return c.OrigDst.Mode, nil
	case native && c.OrigDst.Mode != c.XDS.Mode:
		return "", &ValidationError{Errors: []FieldError{{Path: "origdst.mode",
			Msg: fmt.Sprintf("%s differs from xds.mode (%s): the interception rules steer the same connections to Envoy and to the native listener, so both must be one mode: set origdst.mode and xds.mode alike, or turn xds off for the native listener alone", c.OrigDst.Mode, c.XDS.Mode)}}}
	}
	return c.XDS.Mode, nil
}

// UnservedCapturePorts lists the capture ports the interception rules
// steer connections to (xds.outbound_port when outbound connections are
// captured, xds.inbound_port when inbound ones are) where no role of this
// configuration listens, each with the key that names it. Envoy (xds
// enabled) listens on both; without it, the native listener listens on
// the ports of origdst.listen, or nowhere when its fallback is never. With
// neither role on, no connection is meant to be steered: nil.
func (c *Config) UnservedCapturePorts() []CapturePort {
	xds, native := c.takesTraffic()
	if xds || !c.OrigDst.Enabled {
		return nil
	}
	it := c.Intercept.IPTables
	var want []CapturePort
	if it.IncludeAllOutbound() || len(it.IncludeOutboundCIDRs) > 0 {
		want = append(want, CapturePort{Key: "xds.outbound_port", Port: c.XDS.OutboundPort, Direction: "outbound"})
	}
	if len(it.IncludeInboundPorts) > 0 {
		want = append(want, CapturePort{Key: "xds.inbound_port", Port: c.XDS.InboundPort, Direction: "inbound"})
	}
	var out []CapturePort
	for _, w := range want {
		served := false
		for _, a := range c.OrigDst.listen {
			served = served || (native && int(a.Port()) == w.Port)
		}
		if !served {
			out = append(out, w)
		}
	}
	return out
}

// CapturePort is a port the interception rules steer to.
type CapturePort struct {
	Key       string // xds.outbound_port or xds.inbound_port
	Port      int
	Direction string // outbound or inbound
}
