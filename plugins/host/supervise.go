package host

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	policypb "github.com/realipd/realipd/plugins/proto"
	"github.com/realipd/realipd/plugins/sdk"
)

// killTimeout bounds a graceful go-plugin Kill before the process gets
// SIGKILL from us (go-plugin itself waits 2 s, but only once its shutdown
// RPC has returned, which a stopped process never does).
const killTimeout = 4 * time.Second

// backoffReset: a plugin that stayed up this long restarts after MinBackoff
// again instead of the doubled delay.
const backoffReset = time.Minute

// instance is one started plugin process and its connection.
type instance struct {
	client  *plugin.Client
	cmd     *exec.Cmd // its Process is the plugin once client.Client returned
	rpc     policypb.PolicyClient
	conn    *grpc.ClientConn
	pid     int
	started time.Time
	cancel  context.CancelFunc // stops the connection watcher
}

// start launches a new process with a new go-plugin Client, connects and
// configures it. The binary is verified at every start (see command), not
// only by New: a restart never runs a file that changed since.
func (h *Host) start() (*instance, *inputs, error) {
	cmd, exe, err := h.command()
	if err != nil {
		return nil, nil, fmt.Errorf("host: policy %q: plugin %s: start: %w", h.cfg.Name, h.path, err)
	}
	cmd.SysProcAttr = sysProcAttr()
	cmd.Dir = h.cfg.Dir
	cmd.Env = []string{sdk.LogLevelEnv + "=" + h.pluginLogLevel()}
	// No SecureConfig: command has verified what cmd runs, and go-plugin
	// would only hash cmd.Path once more (on Linux a path that names another
	// file in this process than in the plugin's).
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{sdk.ProtocolVersion: {sdk.PluginName: &sdk.GRPCPlugin{}}},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		StartTimeout:     h.cfg.StartTimeout,
		Logger:           newSlogLogger(h.log),
		SyncStdout:       &lineLogger{l: h.log, stream: "stdout"},
		SyncStderr:       &lineLogger{l: h.log, stream: "stderr"},
	})
	inst := &instance{client: client, cmd: cmd, started: time.Now()}
	fail := func(format string, args ...any) (*instance, *inputs, error) {
		h.stop(inst, true)
		return nil, nil, fmt.Errorf("host: policy %q: plugin %s: "+format, append([]any{h.cfg.Name, h.path}, args...)...)
	}
	rpcClient, err := client.Client()
	// The child holds its own reference to the copy once started; keep none
	// here across restarts.
	exe.Close()
	if err != nil {
		return fail("start: %w", err)
	}
	inst.pid = cmd.Process.Pid
	raw, err := rpcClient.Dispense(sdk.PluginName)
	if err != nil {
		return fail("dispense: %w", err)
	}
	rpc, ok := raw.(policypb.PolicyClient)
	gc, ok2 := rpcClient.(*plugin.GRPCClient)
	if !ok || !ok2 {
		return fail("dispense: unexpected client type %T", raw)
	}
	inst.rpc, inst.conn = rpc, gc.Conn

	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.StartTimeout)
	defer cancel()
	resp, err := rpc.Configure(ctx, &policypb.ConfigureRequest{PolicyName: h.cfg.Name, ConfigJson: h.configJSON})
	if err != nil {
		if status.Code(err) == codes.InvalidArgument {
			return fail("rejected its config: %s", status.Convert(err).Message())
		}
		return fail("configure: %w", err)
	}
	in := inputsFromProto(resp.GetInputs())
	wctx, wcancel := context.WithCancel(context.Background())
	inst.cancel = wcancel
	go h.watchConn(wctx, inst.conn)
	h.log.Debug("plugin started", "pid", inst.pid, "inputs", in.String())
	return inst, in, nil
}

// pluginLogLevel is the lowest level h's logger keeps, in hclog's words.
func (h *Host) pluginLogLevel() string {
	return newSlogLogger(h.log).GetLevel().String()
}

// stop kills inst's process and returns once it is gone: gracefully (the
// go-plugin shutdown RPC) unless force, which sends SIGKILL first, as for a
// process that stopped answering.
func (h *Host) stop(inst *instance, force bool) {
	if inst.cancel != nil {
		inst.cancel()
	}
	if force && !inst.client.Exited() {
		inst.kill()
	}
	done := make(chan struct{})
	go func() {
		inst.client.Kill()
		close(done)
	}()
	t := time.NewTimer(killTimeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	h.log.Warn("plugin did not exit; sending SIGKILL", "pid", inst.pid)
	inst.kill()
	<-done
}

// kill sends SIGKILL to inst's process. It signals the process that cmd
// started (on Linux through the pidfd taken at its start), never a pid
// looked up afresh: once the process is gone and reaped its pid may belong
// to another process, and Kill then reports that the process is done.
func (inst *instance) kill() {
	if p := inst.cmd.Process; p != nil {
		_ = p.Kill()
	}
}

// watchConn asks for a health check whenever the connection leaves READY
// (the plugin died or the connection broke), so crashes are noticed at once
// rather than at the next health interval.
func (h *Host) watchConn(ctx context.Context, conn *grpc.ClientConn) {
	for {
		s := conn.GetState()
		if s != connectivity.Ready && s != connectivity.Connecting {
			h.kickSupervisor()
		}
		if !conn.WaitForStateChange(ctx, s) {
			return
		}
	}
}

// health reports why inst is unusable, or nil.
func (h *Host) health(inst *instance) error {
	if inst.client.Exited() {
		return errors.New("plugin process exited")
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.HealthTimeout)
	defer cancel()
	if _, err := inst.rpc.Ping(ctx, &policypb.PingRequest{}); err != nil {
		if inst.client.Exited() {
			return errors.New("plugin process exited")
		}
		return fmt.Errorf("health ping: %w", err)
	}
	return nil
}

// supervise runs until Close: it checks the plugin's health every
// HealthInterval and when kicked, and replaces a dead or unresponsive
// plugin.
func (h *Host) supervise() {
	defer close(h.done)
	tick := time.NewTicker(h.cfg.HealthInterval)
	defer tick.Stop()
	backoff := h.cfg.MinBackoff
	failedPings := 0
	for {
		select {
		case <-h.closing:
			return
		case <-h.kick:
		case <-tick.C:
		}
		inst := h.cur.Load()
		if inst == nil {
			continue
		}
		err := h.health(inst)
		if err == nil {
			failedPings = 0
			continue
		}
		// One slow ping may be load; two in a row, a refused connection or
		// an exited process mean the plugin is gone.
		if code := status.Code(errors.Unwrap(err)); code == codes.DeadlineExceeded && failedPings == 0 && !inst.client.Exited() {
			failedPings++
			h.log.Warn("plugin health ping failed", "error", err)
			continue
		}
		failedPings = 0
		h.log.Error("plugin down; restarting", "pid", inst.pid, "error", err)
		h.cur.Store(nil)
		h.countUp(false)
		h.signalChange()
		h.stop(inst, true)
		if time.Since(inst.started) > backoffReset {
			backoff = h.cfg.MinBackoff
		}
		if !h.restart(&backoff) {
			return
		}
	}
}

// restart starts new instances, waiting backoff before each attempt and
// doubling it, until one works (true) or Close is called (false).
func (h *Host) restart(backoff *time.Duration) bool {
	for attempt := 1; ; attempt++ {
		t := time.NewTimer(*backoff)
		select {
		case <-h.closing:
			t.Stop()
			return false
		case <-t.C:
		}
		*backoff = min(*backoff*2, h.cfg.MaxBackoff)
		inst, in, err := h.start()
		if err != nil {
			h.log.Error("plugin restart failed", "attempt", attempt, "next_in", *backoff, "error", err)
			continue
		}
		if old := h.inputs.Load(); !old.equal(in) {
			h.inputs.Store(in)
			if h.cache != nil {
				h.cache.Purge()
			}
		}
		select {
		case <-h.closing:
			// Close is waiting for us; do not leave a process behind.
			h.stop(inst, false)
			return false
		default:
		}
		h.m.restarts.Inc()
		h.setUp(inst, true)
		h.log.Info("plugin restarted", "pid", inst.pid, "attempt", attempt)
		return true
	}
}
