//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
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

// TestIPTablesRemoveWhateverFlagsCLI: rules applied in tproxy mode (with
// their own mark and table) are removed by a plain --remove, the policy
// routing included: --remove reads what is there.
func TestIPTablesRemoveWhateverFlagsCLI(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		family, ip := []string(nil), "-4"
		if v6 {
			family, ip = []string{"--ipv6"}, "-6"
		}
		t.Run(ip, func(t *testing.T) {
			n := netnstest.New(t)
			routing := func() string { return n.IP(t, ip, "rule", "list") + n.IP(t, ip, "route", "show", "table", "all") }
			before := routing()
			cli := func(args ...string) {
				t.Helper()
				n.Must(t, func() error {
					var out, errb bytes.Buffer
					if err := run(context.Background(), append(append([]string{"iptables"}, family...), args...), &out, &errb); err != nil {
						return fmt.Errorf("iptables %v: %v: %s", args, err, errb.String())
					}
					return nil
				})
			}
			cli("--apply", "--mode", "tproxy", "--tproxy-mark", "0x77", "--route-table", "177")
			if r := routing(); !strings.Contains(r, "fwmark 0x77 lookup 177") {
				t.Fatalf("no policy routing after apply:\n%s", r)
			}
			cli("--remove")
			if after := routing(); after != before {
				t.Errorf("--remove without the flags of --apply left:\n%s\nbefore:\n%s", after, before)
			}
		})
	}
}

// TestIPTablesHostNetnsCLI: in the host's network namespace --apply
// refuses and says what the rules would do; --host lets it through. PATH
// is empty, so that nothing can be applied here even if the refusal were
// missing: with --host the error is the missing iptables-save.
func TestIPTablesHostNetnsCLI(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err1 := os.Readlink("/proc/thread-self/ns/net")
	kthreadd, err2 := os.Readlink("/proc/2/ns/net")
	if err1 != nil || err2 != nil || self != kthreadd {
		netnstest.Unavailable(t, fmt.Sprintf("runs in the host's network namespace (this one %q, kthreadd's %q: %v %v)", self, kthreadd, err1, err2))
	}
	t.Setenv("PATH", t.TempDir())
	out, errOut, code := runCmd(t, "iptables", "--apply")
	for _, want := range []string{
		"refused: intercept: this is the host's network namespace",
		"or give --host",
		"captured: new inbound TCP connections to any local port, to port 15006 (REDIRECT)",
		"left alone: outbound connections of uid 1337",
	} {
		if code != 1 || !strings.Contains(errOut, want) {
			t.Errorf("--apply in the host's namespace: exit %d, stderr lacks %q:\n%s", code, want, errOut)
		}
	}
	if out != "" {
		t.Errorf("stdout %q", out)
	}
	_, errOut, code = runCmd(t, "iptables", "--apply", "--host")
	if code != 1 || !strings.Contains(errOut, "iptables-save is not on PATH") {
		t.Errorf("--apply --host: exit %d, stderr %q; want the missing iptables-save", code, errOut)
	}
}

// TestIPTablesHostLeavesSSHCLI: with --host (here inside a namespace of
// the test's) and every inbound port captured, port 22 is left alone, and
// --apply says so.
func TestIPTablesHostLeavesSSHCLI(t *testing.T) {
	inNetns(t, func() {
		var out, errb bytes.Buffer
		if err := run(context.Background(), []string{"iptables", "--apply", "--host"}, &out, &errb); err != nil {
			t.Errorf("--apply --host: %v: %s", err, errb.String())
			return
		}
		if !strings.Contains(out.String(), "except to port 22 (SSH: --host)") {
			t.Errorf("--apply --host printed:\n%s", out.String())
		}
		saved, _ := save("iptables-save")
		if !strings.Contains(saved, "-A REALIPD_INBOUND -p tcp -m tcp --dport 22 -j RETURN\n") {
			t.Errorf("port 22 is captured:\n%s", saved)
		}
	})
}
