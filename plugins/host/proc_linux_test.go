package host

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestHostExitKillsPlugin runs a small host binary, kills it with SIGKILL
// (no chance to Close) and checks that the kernel kills its plugin. The test
// process becomes a child subreaper so that the orphaned plugin is reparented
// to it and its death can be waited for instead of polled.
func TestHostExitKillsPlugin(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a child subreaper: %v", err)
	}
	t.Cleanup(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })

	cmd := exec.Command(bin.hostbin, "-plugin", bin.testpolicy, "-sha256", sha(t, bin.testpolicy))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("reading plugin pid from hostbin: %v; stderr: %s", err, stderr.String())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("hostbin printed %q", line)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("plugin %d not running before the host is killed: %v", pid, err)
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	type result struct {
		ws  syscall.WaitStatus
		err error
	}
	done := make(chan result, 1)
	go func() {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(pid, &ws, 0, nil)
		done <- result{ws, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("wait for orphaned plugin %d: %v", pid, r.err)
		}
		if !r.ws.Signaled() || r.ws.Signal() != syscall.SIGKILL {
			t.Errorf("plugin ended with %v, want killed by SIGKILL (parent-death signal)", r.ws)
		}
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("plugin %d still running 10s after its host was killed", pid)
	}
}

// TestWedgedPluginRestarted stops the plugin process (SIGSTOP): it is alive
// but answers nothing. Calls time out, the health pings fail, and the host
// kills it and starts a new one.
func TestWedgedPluginRestarted(t *testing.T) {
	const timeout = 200 * time.Millisecond
	h, _ := newHost(t, Config{Path: bin.testpolicy, Timeout: timeout,
		HealthInterval: 100 * time.Millisecond, HealthTimeout: 100 * time.Millisecond, MinBackoff: 10 * time.Millisecond})
	pid, err := strconv.Atoi(decide(t, h, req("192.0.2.1")).Metadata["pid"])
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	waitStopped(t, pid)
	start := time.Now()
	if _, err := h.Decide(context.Background(), req("192.0.2.1")); !errors.Is(err, ErrTimeout) && !errors.Is(err, ErrUnavailable) {
		t.Errorf("call to a stopped plugin: %v, want ErrTimeout", err)
	}
	if el := time.Since(start); el > timeout+time.Second {
		t.Errorf("call to a stopped plugin took %v, timeout %v", el, timeout)
	}
	waitState(t, h, "restart", func(up bool, restarts int) bool { return up && restarts == 1 })
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("wedged plugin %d still exists after the restart: %v", pid, err)
	}
	if got := decide(t, h, req("192.0.2.1")).Metadata["pid"]; got == strconv.Itoa(pid) {
		t.Error("same process after restart")
	}
}

// waitStopped returns once the plugin process pid, a child of this test
// process, has stopped. The kernel reports the stop to wait4 with WUNTRACED
// (without reaping the child, so go-plugin's own wait is unaffected); on a
// loaded machine the stop can otherwise land after the next call.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	stopped := make(chan error, 1)
	go func() {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(pid, &ws, syscall.WUNTRACED, nil)
		if err == nil && !ws.Stopped() {
			err = fmt.Errorf("wait4: status %v, want stopped", ws)
		}
		stopped <- err
	}()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("plugin %d did not stop: %v", pid, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("plugin %d not stopped 10s after SIGSTOP", pid)
	}
}
