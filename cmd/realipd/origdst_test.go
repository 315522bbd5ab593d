package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/config"
)

// TestServeOrigDstCannotStart: a native listener that cannot start stops
// serve with exit 1 and one line naming the role, the key and the reason:
// as root, a capture address already in use; otherwise, the missing
// privilege for SO_MARK.
func TestServeOrigDstCannotStart(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the native listener needs Linux")
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := writeFile(t, "origdst.yaml", fmt.Sprintf(`
extproc: {listen: 127.0.0.1:0}
xds: {enabled: false}
admin: {enabled: false}
origdst: {enabled: true, listen: ["0.0.0.0:0", %q]}
`, taken.Addr().String()))
	_, errOut, code := runCmd(t, "serve", "--config", cfg)
	want := fmt.Sprintf("realipd: serve: the origdst role cannot start: origdst.listen[1] %s: the address is already in use", taken.Addr())
	if os.Geteuid() != 0 {
		want = "realipd: serve: the origdst role cannot start: origdst.mark: origdst: setting SO_MARK 1338 on the upstream dials needs CAP_NET_ADMIN"
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if code != 1 || !strings.HasPrefix(lines[len(lines)-1], want) {
		t.Errorf("exit %d, stderr:\n%s\nwant its last line to start with %q", code, errOut, want)
	}
	if strings.Contains(errOut, "errno") || strings.Contains(errOut, "bind: address already in use") {
		t.Errorf("the error is the raw errno:\n%s", errOut)
	}
}

// TestServeOrigDstFallbackNever: fallback never runs the role idle, ready,
// without binding.
func TestServeOrigDstFallbackNever(t *testing.T) {
	cfg := config.Default()
	cfg.ExtProc.Enabled, cfg.XDS.Enabled, cfg.Admin.Enabled = false, false, false
	cfg.OrigDst.Enabled, cfg.OrigDst.Fallback = true, "never"
	cfg.OrigDst.Listen = []string{"192.0.2.1:1"} // not an address of this host: binding it would fail
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := buildRoles(&cfg, discardLogger())
	if err != nil {
		t.Fatalf("buildRoles: %v", err)
	}
	if len(s.roles) != 1 || s.roles[0].name != "origdst" || len(s.targets) != 1 || s.targets[0].name != "policies" {
		t.Fatalf("roles %v, targets %v", s.roles, s.targets)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.roles[0].run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("idle role: %v", err)
	}
}
