package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/plugintest"
	"github.com/realipd/realipd/plugins"
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

// heldPolicy blocks in Decide until release is closed, telling entered when
// a call has started, and counts its Close. Like a plugin host, it fails a
// call still pending when it is closed.
type heldPolicy struct {
	entered chan struct{}
	release chan struct{}
	closed  chan struct{}
	closes  atomic.Int32
}

func (p *heldPolicy) Decide(context.Context, *plugins.Request) (plugins.Decision, error) {
	p.entered <- struct{}{}
	select {
	case <-p.release:
		return plugins.Decision{Metadata: map[string]string{"from": "policy"}}, nil
	case <-p.closed:
		return plugins.Decision{}, errors.New("policy closed while deciding")
	}
}

func (p *heldPolicy) Close() error {
	if p.closes.Add(1) == 1 {
		close(p.closed)
	}
	return nil
}

// heldChain is a chain of one heldPolicy.
func heldChain(t *testing.T) (*plugins.Chain, *heldPolicy) {
	t.Helper()
	p := &heldPolicy{entered: make(chan struct{}, 1), release: make(chan struct{}), closed: make(chan struct{})}
	c, err := plugins.NewChain(plugins.ChainEntry{Name: "held", Policy: p})
	if err != nil {
		t.Fatal(err)
	}
	return c, p
}

// decideHeld runs one request on c as the ext_proc server does (holding c
// while it decides) and returns its verdict on the channel once done; it
// returns when the request is inside p's Decide.
func decideHeld(t *testing.T, c *plugins.Chain, p *heldPolicy) <-chan plugins.Verdict {
	t.Helper()
	if !c.Acquire() {
		t.Fatal("Acquire failed")
	}
	v := make(chan plugins.Verdict, 1)
	go func() {
		defer c.Release()
		v <- c.Decide(context.Background(), &plugins.Request{})
	}()
	<-p.entered
	return v
}

// testRuntime is a chainRuntime whose chain in force is c, used by an
// ext_proc server (without a listener), with the given shutdown wait.
func testRuntime(t *testing.T, c *plugins.Chain, drain time.Duration) *chainRuntime {
	t.Helper()
	rt := &chainRuntime{log: discardLogger(), drain: drain, retiring: map[*plugins.Chain]struct{}{}, chain: c}
	srv, err := extproc.New(testSettings(t, c), extproc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rt.use(chainConsumer{name: "extproc", stage: func(_ *config.Config, chain *plugins.Chain) (func() error, error) {
		s := testSettings(t, chain)
		return func() error { return srv.Update(s) }, nil
	}})
	return rt
}

func testSettings(t *testing.T, c *plugins.Chain) extproc.Settings {
	t.Helper()
	r, err := clientip.New(clientip.Config{Strategy: clientip.RemoteAddr})
	if err != nil {
		t.Fatal(err)
	}
	return extproc.Settings{Resolver: r, Chain: c}
}

// commit puts c in force in rt, as a reload does.
func commit(t *testing.T, rt *chainRuntime, c *plugins.Chain) {
	t.Helper()
	cfg := config.Default()
	s, err := rt.stage(&cfg, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.commit(); err != nil {
		t.Fatal(err)
	}
}

func isClosed(c *plugins.Chain) bool {
	select {
	case <-c.Done():
		return true
	default:
		return false
	}
}

// TestReloadRetiresAfterHeldRequest is the regression test of the timed
// retirement (the sum of the timeouts plus 2 s, which a throttled pod could
// outlive): a request inside the replaced chain's Decide when the reload
// commits keeps that chain open however long it takes, gets its policy's
// own decision (not an on_error deny), and the chain closes once, after it.
func TestReloadRetiresAfterHeldRequest(t *testing.T) {
	old, p := heldChain(t)
	rt := testRuntime(t, old, time.Hour)
	verdict := decideHeld(t, old, p)

	next, nextPolicy := heldChain(t)
	commit(t, rt, next)
	rt.mu.Lock()
	_, retiring := rt.retiring[old]
	rt.mu.Unlock()
	if !retiring {
		t.Error("the replaced chain is not retiring")
	}
	if old.Acquire() {
		t.Error("the replaced chain can still be acquired")
	}
	if isClosed(old) || p.closes.Load() != 0 {
		t.Fatal("the replaced chain was closed while a request was inside its Decide")
	}

	close(p.release)
	if v := <-verdict; v.Err != nil || v.Deny || v.Metadata["from"] != "policy" {
		t.Errorf("held request: %+v, want the policy's allow", v)
	}
	<-old.Done()
	if n := p.closes.Load(); n != 1 {
		t.Errorf("the replaced chain's policy closed %d times, want 1", n)
	}
	rt.close()
	if n := nextPolicy.closes.Load(); n != 1 {
		t.Errorf("the chain in force closed %d times at shutdown, want 1", n)
	}
}

// TestChainRuntimeClose: shutdown waits for the requests still deciding,
// at most the drain timeout, then closes every chain; no reload is staged
// after it.
func TestChainRuntimeClose(t *testing.T) {
	t.Run("waits for holders", func(t *testing.T) {
		retired, rp := heldChain(t)
		rt := testRuntime(t, retired, time.Hour)
		retiredVerdict := decideHeld(t, retired, rp)
		current, cp := heldChain(t)
		commit(t, rt, current)
		currentVerdict := decideHeld(t, current, cp)

		closed := make(chan struct{})
		go func() { rt.close(); close(closed) }()
		// close retires the chain in force before it waits.
		for current.Acquire() {
			current.Release()
			runtime.Gosched()
		}
		if isClosed(current) || isClosed(retired) {
			t.Fatal("a chain was closed at shutdown while a request was inside its Decide")
		}
		close(rp.release)
		close(cp.release)
		for _, v := range []plugins.Verdict{<-retiredVerdict, <-currentVerdict} {
			if v.Err != nil || v.Deny {
				t.Errorf("request held across the shutdown: %+v, want the policy's allow", v)
			}
		}
		<-closed
		if rp.closes.Load() != 1 || cp.closes.Load() != 1 {
			t.Errorf("closes: retired %d, in force %d; want 1 each", rp.closes.Load(), cp.closes.Load())
		}
		cfg := config.Default()
		if _, err := rt.reload(&cfg); !errors.Is(err, errShuttingDown) {
			t.Errorf("reload after close = %v, want errShuttingDown", err)
		}
		rt.close() // idempotent
	})
	t.Run("drain timeout", func(t *testing.T) {
		c, p := heldChain(t)
		rt := testRuntime(t, c, time.Nanosecond)
		verdict := decideHeld(t, c, p)
		rt.close() // does not wait for the held request
		if !isClosed(c) || p.closes.Load() != 1 {
			t.Fatal("the chain is open after close, past the drain timeout")
		}
		if v := <-verdict; v.Err == nil || !v.Deny {
			t.Errorf("request cut at shutdown: %+v, want the on_error deny", v)
		}
	})
	t.Run("no holders", func(t *testing.T) {
		c, p := heldChain(t)
		rt := testRuntime(t, c, time.Hour)
		next, _ := heldChain(t)
		commit(t, rt, next)
		<-c.Done() // retired with no request inside: closed without waiting
		rt.close()
		if p.closes.Load() != 1 {
			t.Errorf("the replaced chain closed %d times, want 1", p.closes.Load())
		}
	})
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestChainRuntimeCommitsEveryConsumerFirst: a reload gives the new chain
// to every role before it retires the old one, so that no role's request
// finds its chain retired with no replacement in its settings.
func TestChainRuntimeCommitsEveryConsumerFirst(t *testing.T) {
	old, _ := heldChain(t)
	rt := &chainRuntime{log: discardLogger(), drain: time.Second, retiring: map[*plugins.Chain]struct{}{}, chain: old}
	var seen []bool
	for _, name := range []string{"extproc", "origdst"} {
		rt.use(chainConsumer{name: name, stage: func(*config.Config, *plugins.Chain) (func() error, error) {
			return func() error {
				ok := old.Acquire()
				if ok {
					old.Release()
				}
				seen = append(seen, ok)
				return nil
			}, nil
		}})
	}
	next, _ := heldChain(t)
	commit(t, rt, next)
	if fmt.Sprint(seen) != "[true true]" {
		t.Errorf("the old chain could be acquired during the consumers' commits: %v, want [true true]", seen)
	}
	if old.Acquire() {
		t.Error("the old chain is not retired after the commit")
	}
	<-old.Done()
	rt.done(time.Now())
	rt.done(time.Now())
	if !isClosed(next) {
		t.Error("the chain in force is open after the last role is done")
	}
}
