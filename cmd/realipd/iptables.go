package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/realipd/realipd/intercept"
	"github.com/realipd/realipd/internal/config"
)

const iptablesSynopsis = `iptables [--mode redirect|tproxy] [--ipv6] [--apply [--host] | --remove] [--config FILE]
                  [--outbound-port N] [--inbound-port N] [--exclude-uids a,b] [--exclude-gids a,b]
                  [--mark N] [--tproxy-mark N] [--route-table N]
                  [--include-outbound-cidrs '*'|a,b] [--exclude-outbound-cidrs a,b] [--exclude-outbound-ports a,b]
                  [--include-inbound-ports '*'|a,b] [--exclude-inbound-ports a,b]`

const iptablesDescription = `
Render, apply or remove the iptables rules that steer new TCP connections to
the capture ports: outbound ones to xds.outbound_port (REDIRECT), inbound
ones to xds.inbound_port (REDIRECT, or TPROXY in tproxy mode). Connections
already open are left alone. The rules live in realipd's own chains
(REALIPD_*), each reached by one jump from a built-in chain; see
docs/interception.md, "realipd iptables: the rules, for operators".

Without --apply or --remove the rules are printed on stdout as
iptables-restore input (ip6tables-restore with --ipv6). --apply says what
will be captured and what is left alone, then installs the rules in this
network namespace: one iptables-restore --noflush transaction per table, a
jump added only when missing, so applying twice is applying once; in
tproxy mode it also adds the policy routing (ip rule fwmark MARK lookup
TABLE, ip route local default dev lo table TABLE). It refuses in the host's
own network namespace, where the rules would capture the host's
connections (new SSH sessions included), unless --host is given; with
--host and every inbound port captured, port 22 (SSH) is left alone.
--remove deletes the jumps, realipd's chains and the policy routing they
use, as the namespace has them (whatever the mode and marks given), and
nothing else. Both need CAP_NET_ADMIN and iptables-save/iptables-restore on
PATH; each run handles one family.

--config takes the capture ports (xds), the marks (origdst.mark,
origdst.tproxy_mark), intercept.iptables and the mode of the role that
takes the connections (xds.mode, or origdst.mode with xds off; a file where
xds and the native listener would differ is refused) from a file; flags
given on the command line override it. Lists are comma-separated; '' is an
empty list and '*' every destination or port. The CIDRs of a flag must be
of the family rendered; those of the file are sorted by family.`

const iptablesExamples = `
  realipd iptables --mode tproxy                       # print the IPv4 rules
  sudo realipd iptables --config /etc/realipd.yaml --apply
  sudo ip netns exec demo realipd iptables --apply     # in the namespace demo
  sudo realipd iptables --config /etc/realipd.yaml --apply --host   # this host's own traffic
  sudo realipd iptables --config /etc/realipd.yaml --apply --ipv6
  sudo realipd iptables --config /etc/realipd.yaml --remove`

// iptablesSetting ties an option of intercept.IPTablesOptions (its
// OptionError name) to its flag and its configuration key.
type iptablesSetting struct{ option, flag, key string }

var iptablesSettings = []iptablesSetting{
	{"mode", "mode", "xds.mode"},
	{"outbound_port", "outbound-port", "xds.outbound_port"},
	{"inbound_port", "inbound-port", "xds.inbound_port"},
	{"exclude_uids", "exclude-uids", "intercept.iptables.exclude_uids"},
	{"exclude_gids", "exclude-gids", "intercept.iptables.exclude_gids"},
	{"mark", "mark", "origdst.mark"},
	{"tproxy_mark", "tproxy-mark", "origdst.tproxy_mark"},
	{"route_table", "route-table", "intercept.iptables.route_table"},
	{"include_outbound_cidrs", "include-outbound-cidrs", "intercept.iptables.include_outbound_cidrs"},
	{"exclude_outbound_cidrs", "exclude-outbound-cidrs", "intercept.iptables.exclude_outbound_cidrs"},
	{"exclude_outbound_ports", "exclude-outbound-ports", "intercept.iptables.exclude_outbound_ports"},
	{"include_inbound_ports", "include-inbound-ports", "intercept.iptables.include_inbound_ports"},
	{"exclude_inbound_ports", "exclude-inbound-ports", "intercept.iptables.exclude_inbound_ports"},
}

// iptablesFlagValues are the flags of iptables: the actions, and the
// settings (by flag name) that override the file, parsed by iptablesFlags.
type iptablesFlagValues struct {
	config, mode              *string
	ipv6, apply, remove, host *bool
	str                       map[string]*string
}

// iptablesFlagSet builds iptables' FlagSet without running it.
func iptablesFlagSet() (*flag.FlagSet, iptablesFlagValues) {
	fs := newFlagSet("iptables", iptablesSynopsis, iptablesDescription, iptablesExamples)
	configPath := fs.String("config", "", "configuration `FILE` for the mode, ports, marks and intercept.iptables; flags override it")
	mode := fs.String("mode", "", "`MODE` of the inbound side: redirect or tproxy (default: xds.mode, or origdst.mode with xds off; redirect)")
	ipv6 := fs.Bool("ipv6", false, "render or apply the IPv6 rules (ip6tables) instead of the IPv4 ones")
	apply := fs.Bool("apply", false, "install the rules in this network namespace (idempotent; needs CAP_NET_ADMIN)")
	remove := fs.Bool("remove", false, "delete realipd's jumps, chains and TPROXY routing from this network namespace, as they are there")
	host := fs.Bool("host", false, "let --apply capture in the host's own network namespace (port 22 is then left alone)")
	str := map[string]*string{}
	for _, s := range []struct{ flag, usage string }{
		{"outbound-port", "outbound capture `PORT` (default: xds.outbound_port, 15001)"},
		{"inbound-port", "inbound capture `PORT` (default: xds.inbound_port, 15006)"},
		{"exclude-uids", "`UIDs` whose outbound connections are never captured: Envoy's (default: 1337)"},
		{"exclude-gids", "`GIDs` whose outbound connections are never captured (default: none)"},
		{"mark", "SO_MARK `N` of connections never captured (default: origdst.mark, 1338; 0x.. for hex)"},
		{"tproxy-mark", "TPROXY mark `N` (default: origdst.tproxy_mark, 1337)"},
		{"route-table", "routing `TABLE` of the TPROXY policy rule (default: 133)"},
		{"include-outbound-cidrs", "destination `CIDRs` captured: '*' every one (default), '' none"},
		{"exclude-outbound-cidrs", "destination `CIDRs` never captured"},
		{"exclude-outbound-ports", "destination `PORTS` never captured"},
		{"include-inbound-ports", "local `PORTS` captured: '*' every one (default), '' none"},
		{"exclude-inbound-ports", "local `PORTS` never captured"},
	} {
		str[s.flag] = fs.String(s.flag, "", s.usage)
	}
	return fs, iptablesFlagValues{config: configPath, mode: mode, ipv6: ipv6, apply: apply, remove: remove, host: host, str: str}
}

func runIPTables(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := iptablesFlagSet()
	configPath, mode, ipv6, apply, remove, str := f.config, f.mode, f.ipv6, f.apply, f.remove, f.str
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	set := flagsSet(fs)
	if *apply && *remove {
		return usageError("iptables: --apply and --remove exclude each other")
	}
	if *f.host && !*apply {
		return usageError("iptables: --host goes with --apply")
	}

	cfg := config.Default()
	if *configPath != "" {
		loaded, err := config.LoadContext(ctx, *configPath)
		if err != nil {
			return failure(err)
		}
		cfg = *loaded
	} else if err := cfg.Validate(); err != nil {
		return failure(err) // the defaults are valid; this parses them
	}
	family := intercept.IPv4
	if *ipv6 {
		family = intercept.IPv6
	}
	opts := iptablesOptions(&cfg, family)
	switch m, err := cfg.IPTablesMode(); {
	case set["mode"]:
		opts.Mode = intercept.Mode(*mode)
	case err != nil && !*remove: // removing takes away what is there, whatever the mode
		return failure(fmt.Errorf("iptables: %w (or give --mode)", err))
	case err == nil:
		opts.Mode = intercept.Mode(m)
	}
	if errs := iptablesFlags(&opts, str, set); len(errs) > 0 {
		return usageError("iptables: %s", strings.Join(errs, "\n  "))
	}
	if *f.host {
		opts.Host = true
		if opts.IncludeAllInbound && !slices.Contains(opts.ExcludeInboundPorts, sshPort) {
			opts.ExcludeInboundPorts = append(opts.ExcludeInboundPorts, sshPort)
		}
	}
	if err := opts.Validate(family); err != nil {
		msgs, byFlag := iptablesErrors(err, set)
		if byFlag {
			return usageError("iptables: %s", strings.Join(msgs, "\n  "))
		}
		return failure(fmt.Errorf("iptables: %s", strings.Join(msgs, "\n  ")))
	}

	switch {
	case *apply:
		summary := iptablesSummary(&opts, family)
		refused := func(err error) error {
			return failure(fmt.Errorf("iptables --apply: refused: %w.\n"+
				"Apply the rules inside the network namespace of the pod or container whose traffic realipd takes\n"+
				"(an init container, or ip netns exec NAME realipd iptables ...), or give --host to capture this host's own connections.\n"+
				"They would do this:\n%s", err, summary))
		}
		if !opts.Host { // ApplyIPTables checks too; here the summary is not printed as if applied
			if host, err := intercept.HostNetns(); err != nil {
				return refused(fmt.Errorf("%w: cannot tell whether this is the host's network namespace: %v", intercept.ErrHostNetns, err))
			} else if host {
				return refused(intercept.ErrHostNetns)
			}
		}
		fmt.Fprint(stdout, summary)
		if err := intercept.ApplyIPTables(ctx, opts, family); err != nil {
			if errors.Is(err, intercept.ErrHostNetns) {
				return refused(err)
			}
			return failure(fmt.Errorf("iptables --apply: %w", err))
		}
		fmt.Fprintf(stdout, "realipd iptables: applied the %s rules (%v)\n", opts.Mode, family)
	case *remove:
		if err := intercept.RemoveIPTables(ctx, opts, family); err != nil {
			return failure(fmt.Errorf("iptables --remove: %w", err))
		}
		fmt.Fprintf(stdout, "realipd iptables: removed realipd's %v rules\n", family)
	default:
		rules, err := intercept.RenderIPTables(opts, family)
		if err != nil {
			return failure(fmt.Errorf("iptables: %w", err))
		}
		fmt.Fprint(stdout, rules.String())
	}
	return nil
}

// sshPort is the inbound port --host leaves alone when every inbound port
// is captured: as Istio does on virtual machines, where its
// `istioctl x workload entry configure` excludes 22 (istio-iptables itself
// stopped hard-coding it in 2021; a pod has no sshd).
const sshPort = 22

// iptablesSummary says, in a few lines, what the rules of o capture and
// what they leave alone, for --apply to print before it applies them.
func iptablesSummary(o *intercept.IPTablesOptions, f intercept.Family) string {
	var b strings.Builder
	join := func(list []string) string { return strings.Join(list, ", ") }
	ports := func(list []uint16) []string {
		var out []string
		for _, p := range list {
			out = append(out, strconv.Itoa(int(p)))
		}
		return out
	}
	cidrs := func(list []netip.Prefix) []string {
		var out []string
		for _, p := range list {
			out = append(out, p.String())
		}
		return out
	}
	inbound := "REDIRECT"
	if o.Mode == intercept.ModeTProxy {
		inbound = "TPROXY"
	}
	fmt.Fprintf(&b, "realipd iptables: %s mode, %v, in this network namespace:\n", o.Mode, f)

	switch {
	case o.IncludeAllOutbound:
		fmt.Fprintf(&b, "  captured: new outbound TCP connections to any address that is not local, to port %d (REDIRECT)", o.OutboundPort)
	case len(o.IncludeOutboundCIDRs) > 0:
		fmt.Fprintf(&b, "  captured: new outbound TCP connections to %s, to port %d (REDIRECT)", join(cidrs(o.IncludeOutboundCIDRs)), o.OutboundPort)
	default:
		b.WriteString("  captured: no outbound connection")
	}
	var except []string
	if len(o.ExcludeOutboundCIDRs) > 0 {
		except = append(except, "to "+join(cidrs(o.ExcludeOutboundCIDRs)))
	}
	if len(o.ExcludeOutboundPorts) > 0 {
		except = append(except, "to ports "+join(ports(o.ExcludeOutboundPorts)))
	}
	if len(except) > 0 && (o.IncludeAllOutbound || len(o.IncludeOutboundCIDRs) > 0) {
		b.WriteString(", except " + strings.Join(except, " and "))
	}
	b.WriteString("\n")

	switch {
	case o.IncludeAllInbound:
		fmt.Fprintf(&b, "  captured: new inbound TCP connections to any local port, to port %d (%s)", o.InboundPort, inbound)
	case len(o.IncludeInboundPorts) > 0:
		fmt.Fprintf(&b, "  captured: new inbound TCP connections to local ports %s, to port %d (%s)", join(ports(o.IncludeInboundPorts)), o.InboundPort, inbound)
	default:
		b.WriteString("  captured: no inbound connection")
	}
	if (o.IncludeAllInbound || len(o.IncludeInboundPorts) > 0) && len(o.ExcludeInboundPorts) > 0 {
		var list []string
		for _, p := range o.ExcludeInboundPorts {
			s := strconv.Itoa(int(p))
			if p == sshPort && o.Host {
				s += " (SSH: --host)"
			}
			list = append(list, s)
		}
		if len(list) == 1 {
			b.WriteString(", except to port " + list[0])
		} else {
			b.WriteString(", except to ports " + join(list))
		}
	}
	b.WriteString("\n")

	fmt.Fprintf(&b, "  left alone: connections open before the rules; connections to the capture ports %d and %d; outbound connections to this host's own addresses (loopback included)\n", o.OutboundPort, o.InboundPort)
	marks := fmt.Sprintf("%#x (origdst.mark: realipd's upstream dials)", o.Mark)
	if o.Mode == intercept.ModeTProxy {
		marks += fmt.Sprintf(" and %#x (origdst.tproxy_mark: Envoy's original_src connections)", o.TProxyMark)
	}
	fmt.Fprintf(&b, "  left alone: connections from sockets marked %s\n", marks)
	var owners []string
	for _, u := range o.ExcludeUIDs {
		owners = append(owners, "uid "+strconv.FormatUint(uint64(u), 10))
	}
	for _, g := range o.ExcludeGIDs {
		owners = append(owners, "gid "+strconv.FormatUint(uint64(g), 10))
	}
	if len(owners) > 0 {
		fmt.Fprintf(&b, "  left alone: outbound connections of %s (Envoy's: intercept.iptables.exclude_uids, exclude_gids)\n", join(owners))
	} else {
		b.WriteString("  left alone: no process by its owner (exclude_uids, exclude_gids are empty): an Envoy here would capture its own connections and loop\n")
	}
	if u, err := strconv.ParseUint(os.Getenv("SUDO_UID"), 10, 32); err == nil && !slices.Contains(o.ExcludeUIDs, uint32(u)) {
		fmt.Fprintf(&b, "  note: your own uid %d (sudo) is not excluded: an Envoy you start as yourself would have its connections captured again and loop (--exclude-uids %d)\n", u, u)
	}
	return b.String()
}

// iptablesOptions takes the options from a validated configuration. The
// CIDRs of the other family are left out, and the mode is xds.mode: the
// caller takes it from Config.IPTablesMode.
func iptablesOptions(cfg *config.Config, f intercept.Family) intercept.IPTablesOptions {
	it := cfg.Intercept.IPTables
	o := intercept.IPTablesOptions{
		Mode:                 intercept.Mode(cfg.XDS.Mode),
		OutboundPort:         uint16(cfg.XDS.OutboundPort),
		InboundPort:          uint16(cfg.XDS.InboundPort),
		ExcludeUIDs:          toUint32s(it.ExcludeUIDs),
		ExcludeGIDs:          toUint32s(it.ExcludeGIDs),
		Mark:                 uint32(cfg.OrigDst.Mark),
		TProxyMark:           uint32(cfg.OrigDst.TProxyMark),
		RouteTable:           uint32(it.RouteTable),
		IncludeAllOutbound:   it.IncludeAllOutbound(),
		IncludeOutboundCIDRs: ofFamily(it.IncludeOutboundPrefixes(), f),
		ExcludeOutboundCIDRs: ofFamily(it.ExcludeOutboundPrefixes(), f),
		ExcludeOutboundPorts: toUint16s(it.ExcludeOutboundPorts),
		IncludeAllInbound:    it.IncludeAllInbound(),
		IncludeInboundPorts:  toUint16s(it.InboundPorts()),
		ExcludeInboundPorts:  toUint16s(it.ExcludeInboundPorts),
	}
	return o
}

func ofFamily(list []netip.Prefix, f intercept.Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range list {
		if p.Addr().Is4() == (f == intercept.IPv4) {
			out = append(out, p)
		}
	}
	return out
}

func toUint32s(list []int) []uint32 {
	var out []uint32
	for _, v := range list {
		out = append(out, uint32(v))
	}
	return out
}

func toUint16s(list []int) []uint16 {
	var out []uint16
	for _, v := range list {
		out = append(out, uint16(v))
	}
	return out
}

// iptablesFlags applies the flags given on the command line to o and
// returns what it cannot parse, by flag.
func iptablesFlags(o *intercept.IPTablesOptions, str map[string]*string, set map[string]bool) []string {
	var errs []string
	bad := func(name string, format string, args ...any) {
		errs = append(errs, "--"+name+": "+fmt.Sprintf(format, args...))
	}
	number := func(name string, bits int) (uint64, bool) {
		n, err := strconv.ParseUint(strings.TrimSpace(*str[name]), 0, bits)
		if err != nil {
			bad(name, "%q is not a number between 0 and %d", *str[name], uint64(1)<<bits-1)
			return 0, false
		}
		return n, true
	}
	numbers := func(name string, bits int) ([]uint64, bool) {
		var out []uint64
		ok := true
		for _, s := range splitList(*str[name]) {
			n, err := strconv.ParseUint(s, 10, bits)
			if err != nil {
				bad(name, "%q is not a number between 0 and %d", s, uint64(1)<<bits-1)
				ok = false
				continue
			}
			out = append(out, n)
		}
		return out, ok
	}
	ports := func(name string) []uint16 {
		list, _ := numbers(name, 16)
		var out []uint16
		for _, n := range list {
			out = append(out, uint16(n))
		}
		return out
	}
	ids := func(name string) []uint32 {
		list, _ := numbers(name, 32)
		var out []uint32
		for _, n := range list {
			out = append(out, uint32(n))
		}
		return out
	}
	cidrs := func(name string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range splitList(*str[name]) {
			p, err := parseCIDR(s)
			if err != nil {
				bad(name, "%v", err)
				continue
			}
			out = append(out, p)
		}
		return out
	}
	for _, s := range iptablesSettings {
		if !set[s.flag] || s.flag == "mode" {
			continue
		}
		switch s.flag {
		case "outbound-port":
			if n, ok := number(s.flag, 16); ok {
				o.OutboundPort = uint16(n)
			}
		case "inbound-port":
			if n, ok := number(s.flag, 16); ok {
				o.InboundPort = uint16(n)
			}
		case "mark":
			if n, ok := number(s.flag, 32); ok {
				o.Mark = uint32(n)
			}
		case "tproxy-mark":
			if n, ok := number(s.flag, 32); ok {
				o.TProxyMark = uint32(n)
			}
		case "route-table":
			if n, ok := number(s.flag, 32); ok {
				o.RouteTable = uint32(n)
			}
		case "exclude-uids":
			o.ExcludeUIDs = ids(s.flag)
		case "exclude-gids":
			o.ExcludeGIDs = ids(s.flag)
		case "include-outbound-cidrs":
			o.IncludeAllOutbound = strings.TrimSpace(*str[s.flag]) == "*"
			o.IncludeOutboundCIDRs = nil
			if !o.IncludeAllOutbound {
				o.IncludeOutboundCIDRs = cidrs(s.flag)
			}
		case "exclude-outbound-cidrs":
			o.ExcludeOutboundCIDRs = cidrs(s.flag)
		case "exclude-outbound-ports":
			o.ExcludeOutboundPorts = ports(s.flag)
		case "include-inbound-ports":
			o.IncludeAllInbound = strings.TrimSpace(*str[s.flag]) == "*"
			o.IncludeInboundPorts = nil
			if !o.IncludeAllInbound {
				o.IncludeInboundPorts = ports(s.flag)
			}
		case "exclude-inbound-ports":
			o.ExcludeInboundPorts = ports(s.flag)
		}
	}
	return errs
}

// parseCIDR parses a CIDR, or a bare IP as a single address.
func parseCIDR(s string) (netip.Prefix, error) {
	if s == "*" {
		return netip.Prefix{}, errors.New(`"*" is every destination: give it alone, as --include-outbound-cidrs '*'`)
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", s)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an IP address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// iptablesErrors names each problem of IPTablesOptions.Validate by its
// flag when the flag was given, else by its configuration key; byFlag
// reports whether any was a flag's.
func iptablesErrors(err error, set map[string]bool) (msgs []string, byFlag bool) {
	var list []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		list = j.Unwrap()
	} else {
		list = []error{err}
	}
	for _, e := range list {
		oe, ok := errors.AsType[*intercept.OptionError](e)
		if !ok {
			msgs = append(msgs, e.Error())
			continue
		}
		name := oe.Option
		for _, s := range iptablesSettings {
			if s.option != oe.Option {
				continue
			}
			if set[s.flag] {
				name, byFlag = "--"+s.flag, true
			} else {
				name = s.key
			}
		}
		if oe.Index >= 0 && strings.HasPrefix(name, "--") {
			name += fmt.Sprintf(" (entry %d)", oe.Index+1)
		}
		msgs = append(msgs, name+": "+oe.Reason)
	}
	return msgs, byFlag
}
