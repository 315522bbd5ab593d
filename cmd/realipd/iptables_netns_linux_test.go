//go:build linux

package main

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/realipd/realipd/internal/netnstest"
)

// inNetns makes a network namespace for the test and runs f on an OS
// thread that joined it (never unlocked: the thread ends with f).
func inNetns(t *testing.T, f func()) {
	t.Helper()
	n := netnstest.New(t)
	n.Must(t, func() error { f(); return nil })
}

// save is iptables-save (or ip6tables-save) without its comments.
func save(tool string) (string, error) {
	out, err := exec.Command(tool).Output()
	var b strings.Builder
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String(), err
}

// TestIPTablesApplyRemoveCLI runs --apply twice and --remove through the
// command's code path, in a namespace with a rule of someone else's.
func TestIPTablesApplyRemoveCLI(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		tool  string
		jumps []string
	}{
		{[]string{"--mode", "redirect"}, "iptables-save", []string{"-A PREROUTING -p tcp -j REALIPD_INBOUND", "-A OUTPUT -p tcp -j REALIPD_OUTPUT"}},
		{[]string{"--mode", "tproxy", "--ipv6", "--exclude-uids", "101"}, "ip6tables-save",
			[]string{"-A OUTPUT -p tcp -j REALIPD_OUTPUT", "-A PREROUTING -p tcp -j REALIPD_INBOUND", "-A OUTPUT -p tcp -j REALIPD_RESTORE_MARK"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			inNetns(t, func() {
				restore := strings.Replace(tc.tool, "-save", "-restore", 1)
				cmd := exec.Command(restore, "--noflush")
				cmd.Stdin = strings.NewReader("*nat\n-A OUTPUT -p udp -j RETURN\nCOMMIT\n*mangle\n-A PREROUTING -p udp -j RETURN\nCOMMIT\n")
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("%s: %v: %s", restore, err, out)
					return
				}
				before, err := save(tc.tool)
				if err != nil {
					t.Error(err)
					return
				}
				cli := func(extra ...string) string {
					var out, errb bytes.Buffer
					err := run(context.Background(), append(append([]string{"iptables"}, tc.args...), extra...), &out, &errb)
					if code := exitCode(err); code != 0 {
						t.Errorf("iptables %v: exit %d: %s", extra, code, errb.String())
					}
					return out.String()
				}
				if out := cli("--apply"); !strings.Contains(out, "applied") {
					t.Errorf("--apply printed %q", out)
				}
				cli("--apply")
				applied, _ := save(tc.tool)
				for _, j := range tc.jumps {
					if n := strings.Count(applied, j+"\n"); n != 1 {
						t.Errorf("%q appears %d times after two --apply:\n%s", j, n, applied)
					}
				}
				rendered := cli() // printed, not applied: the same rules
				for _, l := range strings.Split(rendered, "\n") {
					if strings.HasPrefix(l, "-A ") && !strings.Contains(applied, l+"\n") {
						t.Errorf("rendered rule %q is not installed", l)
					}
				}
				if out := cli("--remove"); !strings.Contains(out, "removed") {
					t.Errorf("--remove printed %q", out)
				}
				if after, _ := save(tc.tool); after != before {
					t.Errorf("--remove left:\n%s\nbefore --apply:\n%s", after, before)
				}
			})
		})
	}
}
