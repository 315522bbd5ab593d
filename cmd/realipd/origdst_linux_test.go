//go:build linux

package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/realipd/realipd/internal/netnstest"
)

// TestServeOrigDstCannotStart: a native listener that cannot start stops
// serve with exit 1 and one line naming the role, the key and the reason.
func TestServeOrigDstCannotStart(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	config := func(origdst string) string {
		return worldReadable(t, fmt.Sprintf("extproc: {listen: 127.0.0.1:0}\nxds: {enabled: false}\nadmin: {enabled: false}\norigdst: %s\n", origdst))
	}
	for _, tt := range []struct {
		name    string
		origdst string
		root    bool // the case needs root (as root, the others run as nobody)
		want    string
	}{
		{"address in use", fmt.Sprintf(`{enabled: true, listen: ["0.0.0.0:0", %q]}`, taken.Addr()), true,
			fmt.Sprintf("origdst.listen[1] %s: the address is already in use (", taken.Addr())},
		{"no privilege for SO_MARK", `{enabled: true, listen: ["127.0.0.1:0"]}`, false,
			"origdst.mark: origdst: setting SO_MARK 1338 on the upstream dials needs CAP_NET_ADMIN"},
		{"no privilege for tproxy", `{enabled: true, mode: tproxy, listen: ["127.0.0.1:0"]}`, false,
			"origdst.mode: mode tproxy needs CAP_NET_ADMIN to make the socket transparent (IP_TRANSPARENT): run realipd as root or grant it the capability (binding origdst.listen[0] 127.0.0.1:0)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"serve", "--config", config(tt.origdst)}
			var errOut string
			var code int
			switch root := os.Geteuid() == 0; {
			case tt.root && !root:
				t.Skip("needs root")
			case !tt.root && root:
				errOut, code = runAsNobody(t, args...)
			default:
				_, errOut, code = runCmd(t, args...)
			}
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			want := "realipd: serve: the origdst role cannot start: " + tt.want
			if code != 1 || !strings.HasPrefix(lines[len(lines)-1], want) {
				t.Errorf("exit %d, stderr:\n%s\nwant its last line to start with %q", code, errOut, want)
			}
			if strings.Contains(errOut, "bind: address already in use") || strings.Contains(errOut, "operation not permitted") {
				t.Errorf("the error is the raw errno:\n%s", errOut)
			}
		})
	}
}

// worldReadable writes content to a file that any user can read.
func worldReadable(t *testing.T, content string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "realipd-origdst-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "origdst.yaml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// runAsNobody runs the test binary as realipd with args as the user
// nobody (no capabilities) and returns its stderr and exit code.
func runAsNobody(t *testing.T, args ...string) (string, int) {
	t.Helper()
	bin := netnstest.ExecutableForAnyone(t)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "REALIPD_TEST_MAIN=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return stderr.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return stderr.String(), 0
}
