//go:build linux

package intercept

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ApplyIPTables installs the rules of opts for family f in the network
// namespace of the calling thread, with the iptables-save and
// iptables-restore (ip6tables-*) found on PATH, and in TPROXY mode the
// policy routing (over netlink, no ip binary needed). It is idempotent:
// each table is one `iptables-restore --noflush` transaction that
// recreates realipd's chains and adds a jump from a built-in chain only
// when it is missing, and a table already as wanted is not written at all.
// Jumps and chains of realipd's that the options no longer call for (after
// a change of mode) are removed in the same transaction. It needs
// CAP_NET_ADMIN. In the host's network namespace (HostNetns) it refuses
// with ErrHostNetns unless opts.Host is set.
func ApplyIPTables(ctx context.Context, opts IPTablesOptions, f Family) error {
	rules, err := RenderIPTables(opts, f)
	if err != nil {
		return err
	}
	if !opts.Host {
		host, err := HostNetns()
		if err != nil {
			return fmt.Errorf("%w: cannot tell whether this is the host's network namespace: %v", ErrHostNetns, err)
		}
		if host {
			return ErrHostNetns
		}
	}
	tools, err := lookTools(f)
	if err != nil {
		return err
	}
	if err := checkNetAdmin(); err != nil {
		return err
	}
	if rules.Routing != nil {
		if err := setupRouting(rules.Routing); err != nil {
			return err
		}
	}
	saved, err := tools.save(ctx)
	if err != nil {
		return err
	}
	return tools.converge(ctx, saved, rules)
}

// RemoveIPTables deletes what ApplyIPTables added for family f, as the
// namespace has it now, whatever the mode and marks of opts: the jumps
// from built-in chains to realipd's chains (those whose names start with
// REALIPD_), then realipd's chains, in nat and mangle, and the TPROXY
// policy routing: the rules "fwmark MARK lookup TABLE", for the marks
// realipd's mangle rules set (read before they go) and opts.TProxyMark,
// whose table is opts.RouteTable or holds realipd's route ("local default
// dev lo"), and that route. Nothing else is touched; removing what is not
// there is not an error. iptables cannot delete a table, so a table that
// ApplyIPTables had to create stays, with empty built-in chains.
func RemoveIPTables(ctx context.Context, opts IPTablesOptions, f Family) error {
	if err := opts.Validate(f); err != nil {
		return err
	}
	tools, err := lookTools(f)
	if err != nil {
		return err
	}
	if err := checkNetAdmin(); err != nil {
		return err
	}
	saved, err := tools.save(ctx)
	if err != nil {
		return err
	}
	marks := saved[TableMangle].tproxyMarks()
	if opts.TProxyMark != 0 {
		marks = append(marks, opts.TProxyMark)
	}
	if err := tools.converge(ctx, saved, &IPTablesRules{Family: f, Mode: opts.Mode}); err != nil {
		return err
	}
	return removeRouting(f, marks, opts.RouteTable)
}

// tools are the iptables binaries of one family.
type tools struct {
	save_, restore string
}

func lookTools(f Family) (tools, error) {
	prefix := "iptables"
	if f == IPv6 {
		prefix = "ip6tables"
	}
	var t tools
	for _, x := range []struct {
		dst  *string
		name string
	}{{&t.save_, prefix + "-save"}, {&t.restore, prefix + "-restore"}} {
		p, err := exec.LookPath(x.name)
		if err != nil {
			return tools{}, fmt.Errorf("%s is not on PATH (%s): install iptables (Debian and Ubuntu: apt-get install iptables)", x.name, os.Getenv("PATH"))
		}
		*x.dst = p
	}
	return t, nil
}

// capNetAdmin is CAP_NET_ADMIN's bit in /proc/self/status.
const capNetAdmin = 12

// checkNetAdmin fails early, with the fix, when the process lacks
// CAP_NET_ADMIN. A status it cannot read is left for iptables to judge.
func checkNetAdmin() error {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		hexCaps, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(hexCaps), 16, 64)
		if err == nil && caps&(1<<capNetAdmin) == 0 {
			return errors.New("CAP_NET_ADMIN is missing: iptables and policy routing need it (run as root; in Kubernetes, an init container with capabilities NET_ADMIN and NET_RAW)")
		}
	}
	return nil
}

// save reads the tables as iptables-save prints them.
func (t tools) save(ctx context.Context) (map[Table]*savedTable, error) {
	out, err := t.run(ctx, t.save_, nil)
	if err != nil {
		return nil, err
	}
	saved, err := parseSave(out)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.save_, err)
	}
	return saved, nil
}

// converge makes every table realipd writes to, as saved holds it, as
// rules wants it (a table rules does not name: none of realipd's rules).
func (t tools) converge(ctx context.Context, saved map[Table]*savedTable, rules *IPTablesRules) error {
	for _, table := range []Table{TableNAT, TableMangle} {
		input := planTable(table, rules.Table(table), saved[table])
		if input == "" {
			continue
		}
		if _, err := t.run(ctx, t.restore, []byte(input), "--noflush", "--wait=10"); err != nil {
			return fmt.Errorf("table %s: %w", table, err)
		}
	}
	return nil
}

// run runs one of the binaries and returns its stdout; an error carries
// its stderr and, when it points at one, the likely cause.
func (t tools) run(ctx context.Context, bin string, stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		return "", fmt.Errorf("%s %s: %w: %s%s", bin, strings.Join(args, " "), err, msg, hint(msg))
	}
	return stdout.String(), nil
}

// hint names the likely cause of an iptables failure.
func hint(stderr string) string {
	s := strings.ToLower(stderr)
	switch {
	case strings.Contains(s, "permission denied") || strings.Contains(s, "operation not permitted"):
		return " (iptables needs CAP_NET_ADMIN, and CAP_NET_RAW for the legacy backend: run as root, or give the container NET_ADMIN and NET_RAW)"
	case strings.Contains(s, "tproxy") || strings.Contains(s, "socket") || strings.Contains(s, "connmark"):
		return " (TPROXY mode needs the kernel's xt_TPROXY, xt_socket, nf_tproxy_ipv4/ipv6 and xt_connmark: see docs/interception.md)"
	case strings.Contains(s, "redirect") || strings.Contains(s, "table does not exist") || strings.Contains(s, "nat"):
		return " (REDIRECT needs the kernel's nf_nat and xt_REDIRECT: see docs/interception.md)"
	}
	return ""
}

func afFamily(f Family) int {
	if f == IPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// defaultDst is the family's default destination (0.0.0.0/0, ::/0).
func defaultDst(f Family) *net.IPNet {
	if f == IPv6 {
		return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
}

func isDefault(n *net.IPNet) bool {
	if n == nil {
		return true
	}
	ones, _ := n.Mask.Size()
	return ones == 0 && n.IP.IsUnspecified()
}

// findRules lists the policy rules that are exactly "fwmark MARK lookup
// TABLE": no other selector. Table 0 stands for any table.
func findRules(h *netlink.Handle, r *TProxyRouting) ([]netlink.Rule, error) {
	filter := uint64(netlink.RT_FILTER_MARK | netlink.RT_FILTER_TABLE)
	if r.Table == 0 {
		filter = netlink.RT_FILTER_MARK
	}
	list, err := h.RuleListFiltered(afFamily(r.Family), &netlink.Rule{Mark: r.Mark, Table: int(r.Table)}, filter)
	if err != nil {
		return nil, fmt.Errorf("list %v policy rules: %w", r.Family, err)
	}
	var out []netlink.Rule
	for _, x := range list {
		if x.Mark != r.Mark || (r.Table != 0 && x.Table != int(r.Table)) || x.Invert || x.Src != nil || x.Dst != nil ||
			x.IifName != "" || x.OifName != "" || x.Dport != nil || x.Sport != nil || x.IPProto != 0 || x.UIDRange != nil ||
			(x.Mask != nil && *x.Mask != 0xffffffff) {
			continue
		}
		out = append(out, x)
	}
	return out, nil
}

// findRoutes lists the routes of the table that are exactly "local
// default dev lo".
func findRoutes(h *netlink.Handle, r *TProxyRouting, lo netlink.Link) ([]netlink.Route, error) {
	list, err := h.RouteListFiltered(afFamily(r.Family), &netlink.Route{Table: int(r.Table)}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list the %v routes of table %d: %w", r.Family, r.Table, err)
	}
	var out []netlink.Route
	for _, x := range list {
		if x.Table == int(r.Table) && x.Type == unix.RTN_LOCAL && isDefault(x.Dst) && x.LinkIndex == lo.Attrs().Index {
			out = append(out, x)
		}
	}
	return out, nil
}

func routingHandle() (*netlink.Handle, netlink.Link, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, nil, fmt.Errorf("netlink: %w", err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("netlink: the loopback interface: %w", err)
	}
	return h, lo, nil
}

// setupRouting adds the rule and the route unless they are there.
func setupRouting(r *TProxyRouting) error {
	h, lo, err := routingHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	cmds := r.Commands()
	if lo.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("%s: the loopback interface is down: bring it up first (ip link set lo up)", cmds[1])
	}
	rules, err := findRules(h, r)
	if err != nil {
		return err
	}
	var added *netlink.Rule
	if len(rules) == 0 {
		rule := netlink.NewRule()
		rule.Family = afFamily(r.Family)
		rule.Mark = r.Mark
		rule.Table = int(r.Table)
		if err := h.RuleAdd(rule); err != nil {
			return fmt.Errorf("%s: %w%s", cmds[0], err, hint(err.Error()))
		}
		added = rule
	}
	routes, err := findRoutes(h, r, lo)
	if err == nil && len(routes) == 0 {
		route := &netlink.Route{
			Family:    afFamily(r.Family),
			Table:     int(r.Table),
			Type:      unix.RTN_LOCAL,
			Dst:       defaultDst(r.Family),
			LinkIndex: lo.Attrs().Index,
			Scope:     netlink.SCOPE_HOST,
			Protocol:  unix.RTPROT_BOOT,
		}
		if err = h.RouteAdd(route); err != nil {
			err = fmt.Errorf("%s: %w%s", cmds[1], err, hint(err.Error()))
		}
	}
	if err != nil && added != nil {
		// Leave nothing half done: the rule without its route.
		if derr := h.RuleDel(added); derr != nil {
			err = fmt.Errorf("%w (and the rule just added stays: %v)", err, derr)
		}
	}
	return err
}

// removeRouting deletes, for each of marks, the policy rules "fwmark
// MARK lookup TABLE" (exactly that) whose table is table or holds the
// route setupRouting adds, and that route. Tables the system owns (0, 253,
// 254, 255) are never touched.
func removeRouting(f Family, marks []uint32, table uint32) error {
	h, lo, err := routingHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	done := map[[2]uint32]bool{}
	for _, mark := range marks {
		rules, err := findRules(h, &TProxyRouting{Family: f, Mark: mark})
		if err != nil {
			return err
		}
		for i := range rules {
			r := &TProxyRouting{Family: f, Mark: mark, Table: uint32(rules[i].Table)}
			if reservedTable(r.Table) || done[[2]uint32{mark, r.Table}] {
				continue
			}
			routes, err := findRoutes(h, r, lo)
			if err != nil {
				return err
			}
			if r.Table != table && len(routes) == 0 {
				continue // not realipd's: its table lacks realipd's route
			}
			done[[2]uint32{mark, r.Table}] = true
			if err := h.RuleDel(&rules[i]); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("delete the policy rule fwmark %#x lookup %d: %w", mark, r.Table, err)
			}
			for j := range routes {
				if err := h.RouteDel(&routes[j]); err != nil && !errors.Is(err, unix.ESRCH) {
					return fmt.Errorf("delete the route local default dev lo table %d: %w", r.Table, err)
				}
			}
		}
	}
	// The route alone, its rule gone already (an earlier remove that failed
	// half way): only in table, the one realipd was told is its own.
	if reservedTable(table) {
		return nil
	}
	routes, err := findRoutes(h, &TProxyRouting{Family: f, Table: table}, lo)
	if err != nil {
		return err
	}
	for i := range routes {
		if err := h.RouteDel(&routes[i]); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete the route local default dev lo table %d: %w", table, err)
		}
	}
	return nil
}

// reservedTable reports whether t is not a table realipd may own: 0
// (unspecified), 253 (default), 254 (main), 255 (local).
func reservedTable(t uint32) bool { return t == 0 || t >= 253 && t <= 255 }
