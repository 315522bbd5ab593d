package intercept

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// savedTable is one table of iptables-save's output.
type savedTable struct {
	builtin map[string]bool // chains with a policy: the built-in ones
	chains  []string        // every chain, in the order listed
	rules   []savedRule
}

type savedRule struct {
	chain string
	line  string // "-A CHAIN spec", as printed
}

// target is the chain or target a rule jumps or goes to ("" if none).
func (r savedRule) target() string {
	f := strings.Fields(r.line)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" {
			return f[i+1]
		}
	}
	return ""
}

// parseSave reads the output of iptables-save (every table it lists).
func parseSave(text string) (map[Table]*savedTable, error) {
	tables := map[Table]*savedTable{}
	var cur *savedTable
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			cur = &savedTable{builtin: map[string]bool{}}
			tables[Table(line[1:])] = cur
		case cur == nil:
			return nil, fmt.Errorf("iptables-save line %d: %q outside a table", n+1, line)
		case line == "COMMIT":
			cur = nil
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) < 2 {
				return nil, fmt.Errorf("iptables-save line %d: bad chain line %q", n+1, line)
			}
			cur.chains = append(cur.chains, f[0])
			if f[1] != "-" {
				cur.builtin[f[0]] = true
			}
		case strings.HasPrefix(line, "-A "):
			f := strings.Fields(line)
			if len(f) < 2 {
				return nil, fmt.Errorf("iptables-save line %d: bad rule %q", n+1, line)
			}
			cur.rules = append(cur.rules, savedRule{chain: f[1], line: line})
		default:
			return nil, fmt.Errorf("iptables-save line %d: unexpected %q", n+1, line)
		}
	}
	return tables, nil
}

// ours lists realipd's chains in t, in the order listed.
func (t *savedTable) ours() []string {
	var out []string
	if t == nil {
		return nil
	}
	for _, c := range t.chains {
		if strings.HasPrefix(c, ChainPrefix) && !t.builtin[c] {
			out = append(out, c)
		}
	}
	return out
}

// jumps lists the rules of built-in chains that lead to one of realipd's
// chains: the rules realipd adds there.
func (t *savedTable) jumps() []savedRule {
	var out []savedRule
	if t == nil {
		return nil
	}
	for _, r := range t.rules {
		if t.builtin[r.chain] && strings.HasPrefix(r.target(), ChainPrefix) {
			out = append(out, r)
		}
	}
	return out
}

// tproxyMarks lists the marks realipd's TPROXY rules in t (mangle) set:
// the --tproxy-mark of REALIPD_TPROXY and the --set-xmark of
// REALIPD_DIVERT, each once.
func (t *savedTable) tproxyMarks() []uint32 {
	var out []uint32
	if t == nil {
		return nil
	}
	for _, r := range t.rules {
		if r.chain != ChainTProxy && r.chain != ChainDivert {
			continue
		}
		f := strings.Fields(r.line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] != "--tproxy-mark" && f[i] != "--set-xmark" {
				continue
			}
			value, _, _ := strings.Cut(f[i+1], "/")
			m, err := strconv.ParseUint(value, 0, 32)
			if err == nil && m != 0 && !slices.Contains(out, uint32(m)) {
				out = append(out, uint32(m))
			}
		}
	}
	return out
}

// rulesOf lists the rules of the given chains, chain by chain.
func (t *savedTable) rulesOf(chains []string) []string {
	var out []string
	for _, c := range chains {
		for _, r := range t.rules {
			if r.chain == c {
				out = append(out, r.line)
			}
		}
	}
	return out
}

// planTable returns the iptables-restore --noflush input that turns the
// table as saved into want (nil: none of realipd's rules), or "" when it
// already is. It touches only realipd's chains and the jumps to them from
// built-in chains: it declares (creates or flushes) realipd's chains,
// deletes the jumps that are not wanted (duplicates included) and the
// chains that are not wanted, adds the wanted jumps that are missing, and
// the rules. Applied, it leaves each wanted jump exactly once.
func planTable(table Table, want *TableRules, saved *savedTable) string {
	var wantChains, wantJumps, wantRules []string
	if want != nil {
		wantChains, wantJumps, wantRules = want.Chains, want.Jumps, want.Rules
	}
	ours := saved.ours()
	jumps := saved.jumps()
	if saved != nil && want != nil {
		var have []string
		for _, j := range jumps {
			have = append(have, j.line)
		}
		sortedOurs := slices.Sorted(slices.Values(ours))
		if slices.Equal(sortedOurs, wantChains) && slices.Equal(have, wantJumps) && slices.Equal(saved.rulesOf(sortedOurs), wantRules) {
			return "" // already as wanted
		}
	}
	if want == nil && len(ours) == 0 && len(jumps) == 0 {
		return ""
	}

	var b strings.Builder
	b.WriteString("*" + string(table) + "\n")
	declare := slices.Clone(wantChains)
	for _, c := range ours {
		if !slices.Contains(declare, c) {
			declare = append(declare, c)
		}
	}
	slices.Sort(declare)
	for _, c := range declare {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	kept := map[string]bool{}
	for _, j := range jumps {
		if slices.Contains(wantJumps, j.line) && !kept[j.line] {
			kept[j.line] = true
			continue
		}
		b.WriteString("-D" + strings.TrimPrefix(j.line, "-A") + "\n")
	}
	for _, c := range ours {
		if !slices.Contains(wantChains, c) {
			b.WriteString("-X " + c + "\n")
		}
	}
	for _, j := range wantJumps {
		if !kept[j] {
			b.WriteString(j + "\n")
		}
	}
	for _, r := range wantRules {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}
