package extproc_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/internal/plugintest"
)

// TestServeSIGTERMDrain runs the real realipd binary (built into a temporary
// directory) and sends it SIGTERM during load: the drain must refuse new
// streams, let open ones finish, and the process must exit 0 within the
// drain timeout.
func TestServeSIGTERMDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the realipd binary; skipped in -short mode")
	}
	const drainTimeout = 10 * time.Second
	dir := t.TempDir()
	bins, err := plugintest.Build(dir, "../cmd/realipd")
	if err != nil {
		t.Fatal(err)
	}
	bin := bins["realipd"]
	cfg := filepath.Join(dir, "realipd.yaml")
	conf := `trust:
  strategy: rightmost_trusted_range
  trusted_cidrs: [10.0.0.0/8, fd00::/8]
extproc:
  listen: 127.0.0.1:0
  drain_timeout: 10s
xds:
  enabled: false
admin:
  enabled: false
policies:
  - name: blocklist
    type: cidr
    deny: [198.51.100.0/24]
`
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
		}
	})

	// The address is in the "extproc: serving" log line.
	addrc := make(chan string, 1)
	logDone := make(chan struct{})
	var logs strings.Builder
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			logs.WriteString(line + "\n")
			if strings.Contains(line, `msg="extproc: serving"`) {
				if _, a, ok := strings.Cut(line, "address="); ok {
					addrc <- strings.Fields(a)[0]
				}
			}
		}
	}()
	var addr string
	select {
	case addr = <-addrc:
	case <-logDone:
		t.Fatalf("realipd exited before serving:\n%s", logs.String())
	case <-time.After(30 * time.Second):
		t.Fatal("realipd did not start serving")
	}

	client, err := extproctest.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	exited := make(chan error, 1)
	sigterm := func() {
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		go func() {
			<-logDone
			exited <- cmd.Wait()
		}()
	}
	checkDrainUnderLoad(t, client, drainTimeout, sigterm, exited)
	killed = true
	if !strings.Contains(logs.String(), "realipd stopped") {
		t.Errorf("no clean shutdown in the logs:\n%s", logs.String())
	}
}
