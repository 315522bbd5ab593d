package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/internal/plugintest"
)

// pluginDir holds the plugins built by the tests; TestMain removes it.
var pluginDir string

// builtPlugins builds the plugins the tests run once per test binary, when
// a test first needs one, and returns their paths by name: the plugin
// host's test plugin (testpolicy) and the example denylist.
var builtPlugins = sync.OnceValues(func() (map[string]string, error) {
	dir, err := os.MkdirTemp("", "realipd-cmd-test-")
	if err != nil {
		return nil, err
	}
	pluginDir = dir
	return plugintest.Build(dir, "../../plugins/host/testdata/testpolicy", "../../examples/plugins/denylist")
})

// builtPlugin returns the path and sha256 of the built plugin name (see
// builtPlugins).
func builtPlugin(name string) (path, sum string, err error) {
	bins, err := builtPlugins()
	if err != nil {
		return "", "", err
	}
	sum, err = plugintest.SHA256(bins[name])
	return bins[name], sum, err
}

// testPolicy returns the path and sha256 of the plugin host's test plugin.
func testPolicy() ([2]string, error) {
	path, sum, err := builtPlugin("testpolicy")
	return [2]string{path, sum}, err
}

// pluginFile is a reload test configuration with one plugin policy whose
// config is cfg.
func pluginFile(t *testing.T, cfg string) string {
	t.Helper()
	bin, err := testPolicy()
	if err != nil {
		t.Fatal(err)
	}
	return reloadFile("10.0.0.0/8", fmt.Sprintf(`policies:
  - name: tp
    type: plugin
    path: %s
    sha256: "%s"
    timeout: 1s
    on_error: deny
    config: %s
`, bin[0], bin[1], cfg))
}

// pluginAnswer sends one allowed request and returns the test plugin's
// metadata: its tag and process id.
func (s *serveRun) pluginAnswer(t *testing.T) (tag string, pid int) {
	t.Helper()
	res, err := s.client.Process(t.Context(), extproctest.Request{
		SourceAddress: "10.0.0.5:4321",
		Headers:       []extproctest.Header{{Name: ":path", Value: "/"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	md, err := res.Metadata("realipd")
	if err != nil || res.Immediate != nil {
		t.Fatalf("request: metadata %v, %v, immediate response %v", md, err, res.Immediate)
	}
	if _, err := fmt.Sscan(md["pid"], &pid); err != nil {
		t.Fatalf("metadata %v: no pid", md)
	}
	return md["tag"], pid
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// waitExit waits, at most 10 s, for process pid to be gone. No event tells
// when another process's child exits: this polls.
func waitExit(t *testing.T, pid int, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) still running after 10s", what, pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReloadSwapsPluginChain reloads a plugin policy's config: a new plugin
// process serves the requests that follow and the old one, which no request
// is deciding on any more, is stopped; a config the plugin refuses keeps the
// running chain; shutdown stops the plugins.
func TestReloadSwapsPluginChain(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts plugin processes")
	}
	path := writeFile(t, "realipd.yaml", pluginFile(t, "{tag: v1}"))
	s := startServe(t, path, nil)
	s.client.MessageTimeout = 5 * time.Second // the first call to a plugin sets up TLS

	tag, pid1 := s.pluginAnswer(t)
	if tag != "v1" {
		t.Fatalf("tag %q, want v1", tag)
	}

	replaceFile(t, path, pluginFile(t, "{tag: v2}"))
	if last := s.nextReload(t); !strings.Contains(last, `msg="configuration reloaded"`) {
		t.Fatalf("reload: %s\n%s", last, s.logs)
	}
	tag, pid2 := s.pluginAnswer(t)
	if tag != "v2" || pid2 == pid1 {
		t.Errorf("after the reload: tag %q pid %d, want v2 from a new process (old pid %d)", tag, pid2, pid1)
	}
	waitExit(t, pid1, "the replaced plugin")

	replaceFile(t, path, pluginFile(t, "{reject: not today}"))
	last := s.nextReload(t)
	if !strings.Contains(last, "reload rejected") || !strings.Contains(s.logs.String(), "not today") {
		t.Errorf("a config the plugin refuses: %s, want rejected with the plugin's reason\n%s", last, s.logs)
	}
	if tag, pid := s.pluginAnswer(t); tag != "v2" || pid != pid2 {
		t.Errorf("after the rejected reload: tag %q pid %d, want v2 from pid %d", tag, pid, pid2)
	}

	replaceFile(t, path, pluginFile(t, "{tag: v3}"))
	if last := s.nextReload(t); !strings.Contains(last, `msg="configuration reloaded"`) {
		t.Fatalf("reload: %s\n%s", last, s.logs)
	}
	_, pid3 := s.pluginAnswer(t)
	s.stop()
	for _, pid := range []int{pid2, pid3} {
		if alive(pid) {
			t.Errorf("plugin pid %d still running after serve returned", pid)
		}
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
