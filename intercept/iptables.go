package intercept

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Family is an IP family: IPv4 rules are iptables', IPv6 rules ip6tables'.
type Family int

// The IP families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return "Family(" + strconv.Itoa(int(f)) + ")"
}

// loopback is the family's loopback range, localBind the source address
// Envoy's inbound passthrough binds in redirect mode (127.0.0.6, ::6), and
// anyIP the wildcard address (TPROXY's --on-ip).
func (f Family) loopback() string {
	if f == IPv6 {
		return "::1/128"
	}
	return "127.0.0.0/8"
}

func (f Family) localBind() string {
	if f == IPv6 {
		return "::6/128"
	}
	return "127.0.0.6/32"
}

func (f Family) anyIP() string {
	if f == IPv6 {
		return "::"
	}
	return "0.0.0.0"
}

// Mode is how inbound connections are steered: REDIRECT (nat) or TPROXY
// (mangle). Outbound connections are redirected in both modes.
type Mode string

// The interception modes, spelt as in the configuration (xds.mode).
const (
	ModeRedirect Mode = "redirect"
	ModeTProxy   Mode = "tproxy"
)

// Table is an iptables table.
type Table string

// The tables realipd writes to.
const (
	TableNAT    Table = "nat"
	TableMangle Table = "mangle"
)

// ChainPrefix starts the name of every chain realipd creates; a jump from
// a built-in chain to a chain with this prefix is realipd's.
const ChainPrefix = "REALIPD_"

// realipd's chains. The nat chains exist in both modes; the mangle chains
// in TPROXY mode only.
const (
	ChainOutput      = "REALIPD_OUTPUT"       // nat, from OUTPUT: which outbound connections are captured
	ChainRedirect    = "REALIPD_REDIRECT"     // nat: REDIRECT to the outbound port
	ChainInbound     = "REALIPD_INBOUND"      // nat, from PREROUTING (redirect mode); mangle, from PREROUTING (tproxy mode): which inbound ports are captured
	ChainInRedirect  = "REALIPD_IN_REDIRECT"  // nat: REDIRECT to the inbound port
	ChainDivert      = "REALIPD_DIVERT"       // mangle: packets of established TPROXY connections, marked and accepted
	ChainTProxy      = "REALIPD_TPROXY"       // mangle: TPROXY to the inbound port, with the TPROXY mark
	ChainRestoreMark = "REALIPD_RESTORE_MARK" // mangle, from OUTPUT: the application's answers to Envoy's transparent connections get the TPROXY mark back
)

// IPTablesOptions are the settings of the rules. Every field is required
// unless said otherwise; Validate names the problems.
type IPTablesOptions struct {
	Mode Mode

	// OutboundPort and InboundPort are the capture ports: Envoy's
	// virtual_outbound and virtual_inbound listeners (xds.outbound_port,
	// xds.inbound_port). Connections to them are never captured.
	OutboundPort uint16
	InboundPort  uint16

	// ExcludeUIDs and ExcludeGIDs own the sockets whose outbound
	// connections are never captured: Envoy's (and any process that must
	// reach the network directly). Without them Envoy's own upstream
	// connections would be captured again. A connection they make to a
	// local, non-loopback address is sent to the inbound port instead, so
	// that a call from the application to a service it serves itself goes
	// through Envoy's outbound and inbound sides.
	ExcludeUIDs []uint32
	ExcludeGIDs []uint32

	// Mark is the SO_MARK (origdst.mark) of connections that are never
	// captured: realipd's native listener sets it on its upstream dials.
	Mark uint32
	// TProxyMark (origdst.tproxy_mark; TPROXY mode) marks the packets
	// TPROXY takes, and is the mark Envoy's original_src filter puts on its
	// upstream connections to the application; the policy routing sends
	// packets with this mark to the local host. RouteTable is the routing
	// table of that rule (1 to 4294967295 but 253, 254 and 255).
	TProxyMark uint32
	RouteTable uint32

	// Outbound: connections to these destinations are captured
	// (IncludeAllOutbound: every destination), except those to
	// ExcludeOutboundCIDRs and ExcludeOutboundPorts. The CIDRs must be of
	// the rendered family.
	IncludeAllOutbound   bool
	IncludeOutboundCIDRs []netip.Prefix
	ExcludeOutboundCIDRs []netip.Prefix
	ExcludeOutboundPorts []uint16

	// Inbound: connections to these local ports are captured
	// (IncludeAllInbound: every port), except ExcludeInboundPorts.
	IncludeAllInbound   bool
	IncludeInboundPorts []uint16
	ExcludeInboundPorts []uint16

	// Host lets ApplyIPTables install the rules in the host's network
	// namespace (see HostNetns), where they capture the host's own
	// connections: its sshd's and every program's on it. Without it,
	// ApplyIPTables refuses there with ErrHostNetns. It changes nothing in
	// the rules.
	Host bool
}

// ErrHostNetns is ApplyIPTables' refusal to apply in the host's network
// namespace without IPTablesOptions.Host.
var ErrHostNetns = errors.New("intercept: this is the host's network namespace: the rules would capture the host's own connections (new SSH ones included)")

// OptionError is one problem with an IPTablesOptions. Option names the
// setting as realipd's configuration spells it (exclude_uids,
// include_outbound_cidrs...), Index the list entry (-1: the whole setting).
type OptionError struct {
	Option string
	Index  int
	Reason string
}

func (e *OptionError) Error() string {
	if e.Index >= 0 {
		return fmt.Sprintf("%s[%d]: %s", e.Option, e.Index, e.Reason)
	}
	return e.Option + ": " + e.Reason
}

// Validate checks o for rendering in family f. It returns nil or the
// errors.Join of an *OptionError per problem.
func (o *IPTablesOptions) Validate(f Family) error {
	var errs []error
	add := func(option string, index int, format string, args ...any) {
		errs = append(errs, &OptionError{Option: option, Index: index, Reason: fmt.Sprintf(format, args...)})
	}
	if f != IPv4 && f != IPv6 {
		add("family", -1, "%v is not IPv4 or IPv6", f)
	}
	switch o.Mode {
	case ModeRedirect, ModeTProxy:
	default:
		add("mode", -1, "%q is not %s or %s", string(o.Mode), ModeRedirect, ModeTProxy)
	}
	if o.OutboundPort == 0 {
		add("outbound_port", -1, "0 is not a port between 1 and 65535")
	}
	if o.InboundPort == 0 {
		add("inbound_port", -1, "0 is not a port between 1 and 65535")
	}
	if o.InboundPort != 0 && o.InboundPort == o.OutboundPort {
		add("inbound_port", -1, "%d is also the outbound_port", o.InboundPort)
	}
	ids := func(option string, list []uint32) {
		for i, id := range list {
			if id == 1<<32-1 {
				add(option, i, "4294967295 is (uid_t)-1, not an ID")
			}
			if slices.Index(list, id) < i {
				add(option, i, "%d is listed twice", id)
			}
		}
	}
	ids("exclude_uids", o.ExcludeUIDs)
	ids("exclude_gids", o.ExcludeGIDs)
	if o.Mark == 0 {
		add("mark", -1, "0 is not a mark: give a nonzero fwmark")
	}
	if o.Mode == ModeTProxy {
		if o.TProxyMark == 0 {
			add("tproxy_mark", -1, "0 is not a mark: give a nonzero fwmark")
		} else if o.TProxyMark == o.Mark {
			add("tproxy_mark", -1, "%d is also the mark; the exclusion mark must differ from the TPROXY mark", o.TProxyMark)
		}
		switch o.RouteTable {
		case 0, 253, 254, 255:
			add("route_table", -1, "%d is not a table realipd may own (0 is unspecified, 253 default, 254 main, 255 local)", o.RouteTable)
		}
	}
	cidrs := func(option string, list []netip.Prefix) {
		for i, p := range list {
			switch {
			case !p.IsValid():
				add(option, i, "not a CIDR")
			case p.Addr().Is4() != (f == IPv4) || p.Addr().Is4In6():
				add(option, i, "%s is not an %v CIDR", p, f)
			case p != p.Masked():
				add(option, i, "%s has address bits set past /%d", p, p.Bits())
			case slices.Index(list, p) < i:
				add(option, i, "%s is listed twice", p)
			}
		}
	}
	cidrs("include_outbound_cidrs", o.IncludeOutboundCIDRs)
	cidrs("exclude_outbound_cidrs", o.ExcludeOutboundCIDRs)
	if o.IncludeAllOutbound && len(o.IncludeOutboundCIDRs) > 0 {
		add("include_outbound_cidrs", -1, "every destination (*) is included; a list of CIDRs cannot be added to it")
	}
	ports := func(option string, list []uint16) {
		for i, p := range list {
			if p == 0 {
				add(option, i, "0 is not a port between 1 and 65535")
			} else if slices.Index(list, p) < i {
				add(option, i, "%d is listed twice", p)
			}
		}
	}
	ports("exclude_outbound_ports", o.ExcludeOutboundPorts)
	ports("include_inbound_ports", o.IncludeInboundPorts)
	ports("exclude_inbound_ports", o.ExcludeInboundPorts)
	if o.IncludeAllInbound && len(o.IncludeInboundPorts) > 0 {
		add("include_inbound_ports", -1, "every port (*) is included; a list of ports cannot be added to it")
	}
	for i, p := range o.ExcludeInboundPorts {
		if p != 0 && slices.Contains(o.IncludeInboundPorts, p) {
			add("exclude_inbound_ports", i, "%d is also in include_inbound_ports", p)
		}
	}
	return errors.Join(errs...)
}

// capturesInbound reports whether any inbound port is captured.
func (o *IPTablesOptions) capturesInbound() bool {
	return o.IncludeAllInbound || len(o.IncludeInboundPorts) > 0
}

// IPTablesRules are the rendered rules of one family: the tables in the
// order they are applied, and in TPROXY mode the policy routing.
type IPTablesRules struct {
	Family  Family
	Mode    Mode
	Tables  []TableRules
	Routing *TProxyRouting // nil in redirect mode
}

// TableRules are realipd's part of one table.
type TableRules struct {
	Table Table
	// Chains are realipd's chains in this table, sorted (as iptables-save
	// lists them).
	Chains []string
	// Jumps are the rules in built-in chains that lead to realipd's chains,
	// one per built-in chain, as iptables-save prints them
	// ("-A OUTPUT -p tcp -j REALIPD_OUTPUT").
	Jumps []string
	// Rules are the rules of realipd's chains, chain by chain in the order
	// of Chains, as iptables-save prints them.
	Rules []string
}

// TProxyRouting is the policy routing of TPROXY mode: packets with the
// mark are looked up in the table, whose only route delivers everything
// locally (ip rule add fwmark MARK lookup TABLE; ip route add local
// default dev lo table TABLE).
type TProxyRouting struct {
	Family Family
	Mark   uint32
	Table  uint32
}

// Commands are the ip(8) commands equivalent to the routing.
func (r *TProxyRouting) Commands() []string {
	ip, dst := "ip -4", "0.0.0.0/0"
	if r.Family == IPv6 {
		ip, dst = "ip -6", "::/0"
	}
	return []string{
		fmt.Sprintf("%s rule add fwmark %#x lookup %d", ip, r.Mark, r.Table),
		fmt.Sprintf("%s route add local %s dev lo table %d", ip, dst, r.Table),
	}
}

// Restore is the table's iptables-restore input: the chains (declaring
// them creates or flushes them), the jumps and the rules. Fed to
// `iptables-restore --noflush` it adds the jumps even when they are
// already there; ApplyIPTables adds only the missing ones.
func (t *TableRules) Restore() string {
	var b strings.Builder
	b.WriteString("*" + string(t.Table) + "\n")
	for _, c := range t.Chains {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	for _, l := range t.Jumps {
		b.WriteString(l + "\n")
	}
	for _, l := range t.Rules {
		b.WriteString(l + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// Table returns the rules of table t, or nil when the mode writes nothing
// there.
func (r *IPTablesRules) Table(t Table) *TableRules {
	for i := range r.Tables {
		if r.Tables[i].Table == t {
			return &r.Tables[i]
		}
	}
	return nil
}

// String is the whole rendering, as `realipd iptables` prints it: a
// comment naming the mode and family, each table's restore input, and in
// TPROXY mode the routing as comments (iptables-restore skips them).
func (r *IPTablesRules) String() string {
	var b strings.Builder
	tool := "iptables-restore"
	if r.Family == IPv6 {
		tool = "ip6tables-restore"
	}
	fmt.Fprintf(&b, "# realipd iptables: %s mode, %v (%s --noflush input; realipd iptables --apply adds each jump only once)\n", r.Mode, r.Family, tool)
	for i := range r.Tables {
		b.WriteString(r.Tables[i].Restore())
	}
	if r.Routing != nil {
		b.WriteString("# TPROXY policy routing (--apply sets it up over netlink):\n")
		for _, c := range r.Routing.Commands() {
			b.WriteString("#   " + c + "\n")
		}
	}
	return b.String()
}

// rule is one rule, printed in iptables-save's order: source, destination,
// interfaces, protocol, matches, target.
type rule struct {
	src     string
	dst     string
	notDst  bool
	in, out string
	proto   string
	matches []string
	target  string
}

func (r rule) spec() string {
	var parts []string
	if r.src != "" {
		parts = append(parts, "-s", r.src)
	}
	if r.dst != "" {
		if r.notDst {
			parts = append(parts, "!")
		}
		parts = append(parts, "-d", r.dst)
	}
	if r.in != "" {
		parts = append(parts, "-i", r.in)
	}
	if r.out != "" {
		parts = append(parts, "-o", r.out)
	}
	if r.proto != "" {
		parts = append(parts, "-p", r.proto)
	}
	parts = append(parts, r.matches...)
	parts = append(parts, "-j", r.target)
	return strings.Join(parts, " ")
}

func dport(p uint16) []string { return []string{"-m", "tcp", "--dport", strconv.Itoa(int(p))} }

// synOnly matches a connection's opening SYN (iptables' --syn, as
// iptables-save prints it). The steering rules take nothing else, so that
// a connection conntrack meets mid-stream (one established before the
// rules, in a namespace where nothing tracked connections yet) is never
// redirected, which would reset it, nor handed to TPROXY, which drops the
// packets of a socket that is not transparent.
var synOnly = []string{"-m", "tcp", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN"}

func markMatch(m uint32) []string { return []string{"-m", "mark", "--mark", hex(m)} }

func hex(m uint32) string { return fmt.Sprintf("%#x", m) }

// tableBuilder collects the rules of one table, chain by chain.
type tableBuilder struct {
	table  Table
	jumps  []string
	chains map[string][]string
}

func newTable(t Table, chains ...string) *tableBuilder {
	b := &tableBuilder{table: t, chains: map[string][]string{}}
	for _, c := range chains {
		b.chains[c] = nil
	}
	return b
}

// jump adds the one rule of a built-in chain that leads to chain.
func (b *tableBuilder) jump(builtin, chain string) {
	b.jumps = append(b.jumps, "-A "+builtin+" "+rule{proto: "tcp", target: chain}.spec())
}

func (b *tableBuilder) add(chain string, r rule) {
	if _, ok := b.chains[chain]; !ok {
		panic("intercept: rule for undeclared chain " + chain)
	}
	b.chains[chain] = append(b.chains[chain], "-A "+chain+" "+r.spec())
}

func (b *tableBuilder) done() TableRules {
	t := TableRules{Table: b.table, Jumps: b.jumps}
	for c := range b.chains {
		t.Chains = append(t.Chains, c)
	}
	slices.Sort(t.Chains)
	for _, c := range t.Chains {
		t.Rules = append(t.Rules, b.chains[c]...)
	}
	return t
}

// RenderIPTables renders the rules of opts for family f. It is pure: the
// same options give the same text. The rules are printed as iptables-save
// prints them (marks in hexadecimal: 1337 is 0x539), so that what
// ApplyIPTables installs can be compared with iptables-save's output.
//
// nat (both modes): OUTPUT jumps to REALIPD_OUTPUT, which leaves alone,
// in order, connections marked Mark (and TProxyMark in TPROXY mode), those
// from Envoy's inbound passthrough (source 127.0.0.6 or ::6 over lo), sends
// those of ExcludeUIDs/ExcludeGIDs to a local non-loopback address to
// REALIPD_INBOUND, leaves alone the rest of theirs and every other
// connection to a local address (-o lo), then ExcludeOutboundCIDRs and
// ExcludeOutboundPorts, and REDIRECTs the included destinations to
// OutboundPort. In redirect mode PREROUTING jumps to REALIPD_INBOUND, which
// leaves alone the capture ports and ExcludeInboundPorts and REDIRECTs the
// included ports to InboundPort. Only a connection's opening SYN is
// REDIRECTed (or TPROXYed): connections established before the rules go
// on untouched.
//
// mangle (TPROXY mode): PREROUTING jumps to REALIPD_INBOUND, which saves
// TProxyMark as the connection's mark and stops there for packets that
// carry it (Envoy's original_src connections to the application), leaves
// alone everything that arrives over lo, the capture ports and
// ExcludeInboundPorts, marks and accepts the packets of established
// transparent sockets (REALIPD_DIVERT), and TPROXYs the included ports to
// InboundPort with TProxyMark (REALIPD_TPROXY). OUTPUT jumps to
// REALIPD_RESTORE_MARK, which gives the application's answers on those
// connections the mark back, so that the policy routing delivers them to
// Envoy's transparent socket instead of the network.
func RenderIPTables(opts IPTablesOptions, f Family) (*IPTablesRules, error) {
	if err := opts.Validate(f); err != nil {
		return nil, err
	}
	r := &IPTablesRules{Family: f, Mode: opts.Mode}
	r.Tables = append(r.Tables, renderNAT(&opts, f))
	if opts.Mode == ModeTProxy {
		r.Tables = append(r.Tables, renderMangle(&opts, f))
		r.Routing = &TProxyRouting{Family: f, Mark: opts.TProxyMark, Table: opts.RouteTable}
	}
	return r, nil
}

func capturePorts(o *IPTablesOptions) rule {
	return rule{proto: "tcp", matches: []string{"-m", "multiport", "--dports",
		strconv.Itoa(int(o.OutboundPort)) + "," + strconv.Itoa(int(o.InboundPort))}, target: "RETURN"}
}

func renderNAT(o *IPTablesOptions, f Family) TableRules {
	b := newTable(TableNAT, ChainOutput, ChainRedirect, ChainInbound, ChainInRedirect)
	if o.Mode == ModeRedirect {
		b.jump("PREROUTING", ChainInbound)
	}
	b.jump("OUTPUT", ChainOutput)

	// Inbound: the capture ports, the excluded ports, then the included.
	b.add(ChainInbound, capturePorts(o))
	for _, p := range o.ExcludeInboundPorts {
		b.add(ChainInbound, rule{proto: "tcp", matches: dport(p), target: "RETURN"})
	}
	if o.IncludeAllInbound {
		b.add(ChainInbound, rule{proto: "tcp", target: ChainInRedirect})
	}
	for _, p := range o.IncludeInboundPorts {
		b.add(ChainInbound, rule{proto: "tcp", matches: dport(p), target: ChainInRedirect})
	}
	b.add(ChainInRedirect, rule{proto: "tcp", matches: synOnly, target: "REDIRECT --to-ports " + strconv.Itoa(int(o.InboundPort))})

	// Outbound.
	b.add(ChainOutput, rule{matches: markMatch(o.Mark), target: "RETURN"})
	if o.Mode == ModeTProxy {
		b.add(ChainOutput, rule{matches: markMatch(o.TProxyMark), target: "RETURN"})
	}
	b.add(ChainOutput, rule{src: f.localBind(), out: "lo", target: "RETURN"})
	owners := func(each func(match []string)) {
		for _, u := range o.ExcludeUIDs {
			each([]string{"-m", "owner", "--uid-owner", strconv.FormatUint(uint64(u), 10)})
		}
		for _, g := range o.ExcludeGIDs {
			each([]string{"-m", "owner", "--gid-owner", strconv.FormatUint(uint64(g), 10)})
		}
	}
	if o.capturesInbound() {
		owners(func(m []string) {
			b.add(ChainOutput, rule{dst: f.loopback(), notDst: true, out: "lo", matches: m, target: ChainInbound})
		})
	}
	owners(func(m []string) { b.add(ChainOutput, rule{matches: m, target: "RETURN"}) })
	b.add(ChainOutput, rule{out: "lo", target: "RETURN"})
	for _, p := range o.ExcludeOutboundCIDRs {
		b.add(ChainOutput, rule{dst: p.String(), target: "RETURN"})
	}
	for _, p := range o.ExcludeOutboundPorts {
		b.add(ChainOutput, rule{proto: "tcp", matches: dport(p), target: "RETURN"})
	}
	if o.IncludeAllOutbound {
		b.add(ChainOutput, rule{target: ChainRedirect})
	}
	for _, p := range o.IncludeOutboundCIDRs {
		b.add(ChainOutput, rule{dst: p.String(), target: ChainRedirect})
	}
	b.add(ChainRedirect, rule{proto: "tcp", matches: synOnly, target: "REDIRECT --to-ports " + strconv.Itoa(int(o.OutboundPort))})
	return b.done()
}

func renderMangle(o *IPTablesOptions, f Family) TableRules {
	b := newTable(TableMangle, ChainInbound, ChainDivert, ChainTProxy, ChainRestoreMark)
	b.jump("PREROUTING", ChainInbound)
	b.jump("OUTPUT", ChainRestoreMark)
	mark := hex(o.TProxyMark)
	masks := " --nfmask 0xffffffff --ctmask 0xffffffff"

	b.add(ChainInbound, rule{matches: markMatch(o.TProxyMark), target: "CONNMARK --save-mark" + masks})
	b.add(ChainInbound, rule{matches: markMatch(o.TProxyMark), target: "RETURN"})
	b.add(ChainInbound, rule{in: "lo", target: "RETURN"})
	b.add(ChainInbound, capturePorts(o))
	for _, p := range o.ExcludeInboundPorts {
		b.add(ChainInbound, rule{proto: "tcp", matches: dport(p), target: "RETURN"})
	}
	if o.capturesInbound() {
		b.add(ChainInbound, rule{matches: []string{"-m", "socket", "--transparent"}, target: ChainDivert})
	}
	if o.IncludeAllInbound {
		b.add(ChainInbound, rule{proto: "tcp", target: ChainTProxy})
	}
	for _, p := range o.IncludeInboundPorts {
		b.add(ChainInbound, rule{proto: "tcp", matches: dport(p), target: ChainTProxy})
	}
	b.add(ChainDivert, rule{target: "MARK --set-xmark " + mark + "/0xffffffff"})
	b.add(ChainDivert, rule{target: "ACCEPT"})
	b.add(ChainTProxy, rule{dst: f.loopback(), notDst: true, proto: "tcp", matches: synOnly,
		target: fmt.Sprintf("TPROXY --on-port %d --on-ip %s --tproxy-mark %s/0xffffffff", o.InboundPort, f.anyIP(), mark)})
	b.add(ChainRestoreMark, rule{matches: []string{"-m", "connmark", "--mark", mark}, target: "CONNMARK --restore-mark" + masks})
	return b.done()
}
