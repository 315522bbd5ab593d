//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/realipd/realipd/internal/config"
)

// needMark skips a test that binds the native listener when the process
// may not set SO_MARK (origdst.mark), which the role checks at start.
func needMark(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the origdst role checks at start that it may set SO_MARK (CAP_NET_ADMIN)")
	}
}

// freePort returns a TCP port that is free on 127.0.0.1 now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// origdstDumpOf returns the origdst part of /config_dump.
func origdstDumpOf(t *testing.T, admin string) origdstDump {
	t.Helper()
	body, code := get(t, admin+"/config_dump")
	var d struct {
		OrigDst *origdstDump `json:"origdst"`
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &d) != nil || d.OrigDst == nil {
		t.Fatalf("/config_dump = %d, without an origdst object:\n%s", code, body)
	}
	return *d.OrigDst
}

// waitPort waits until /config_dump shows want for port.
func waitPort(t *testing.T, admin string, port int, want origdstPortDump) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d := origdstDumpOf(t, admin)
		got := d.Ports[strconv.Itoa(port)]
		if d.Fallback == "auto" && reflect.DeepEqual(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/config_dump origdst = %+v, want port %d %+v", d, port, want)
		}
		time.Sleep(10 * time.Millisecond) // polling an observable state, not synchronising
	}
}

// reusePortListen listens on addr with SO_REUSEPORT, as Envoy's listeners
// do: a stand-in Envoy that answers every connection with "envoy\n".
func reusePortListen(t *testing.T, addr string) net.Listener {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(t.Context(), "tcp4", addr)
	if err != nil {
		t.Fatalf("a stand-in Envoy cannot listen on %s beside the native listener: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "envoy\n")
			c.Close()
		}
	}()
	return ln
}

// TestServeOrigDstAuto: serve with the xDS role and origdst.fallback auto,
// the capture port being xds.outbound_port. At start the native listener
// serves the port; a stand-in Envoy listens there too (SO_REUSEPORT, the
// same user) and its ADS client ACKs the listeners: the port is handed
// over (the native listener stops accepting, /config_dump names the node,
// /readyz stays ready, the metrics count the handoff) and new connections
// reach the stand-in. Once the stand-in's socket is gone, the native
// listener takes the port back, although the node is still connected.
func TestServeOrigDstAuto(t *testing.T) {
	needMark(t)
	port := freePort(t)
	path := writeFile(t, "auto.yaml", fmt.Sprintf(`
extproc: {listen: 127.0.0.1:0}
admin: {listen: 127.0.0.1:0}
xds: {listen: 127.0.0.1:0, extproc_address: 127.0.0.1:9001, outbound_port: %d}
origdst: {enabled: true, fallback: auto, fallback_grace: 300ms, listen: ["127.0.0.1:%d"]}
`, port, port))
	s := startServe(t, path, nil)
	s.logs.wait(t, regexp.MustCompile(fmt.Sprintf(`msg="origdst: serving" role=origdst address=127.0.0.1:%d`, port)), 0)
	waitPort(t, s.admin, port, origdstPortDump{Holder: "native"})
	ready := func(step string) {
		t.Helper()
		if body, code := get(t, s.admin+"/readyz"); code != http.StatusOK || !strings.Contains(body, "origdst") {
			t.Errorf("%s: /readyz = %d %q, want 200 naming origdst", step, code, body)
		}
	}
	metrics := func(step string, want ...string) {
		t.Helper()
		body, _ := get(t, s.admin+"/metrics")
		for _, w := range want {
			if !strings.Contains(body, w+"\n") {
				t.Errorf("%s: /metrics lacks %q", step, w)
			}
		}
	}
	// The handoff's loop reports ready once it runs, a moment after the
	// listener logged that it serves: wait for it once, then it must stay.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, code := get(t, s.admin+"/readyz"); code == http.StatusOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // polling an observable state, not synchronising
	}
	ready("start")
	metrics("start", "realipd_origdst_listeners 1", `realipd_origdst_ports{holder="native"} 1`)

	envoy := reusePortListen(t, fmt.Sprintf("127.0.0.1:%d", port))
	conn := dialADS(t, s.logs.wait(t, reXDSAddr, 0)[1])
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	connectNode(t, ctx, conn, "sidecar-1")
	waitPort(t, s.admin, port, origdstPortDump{Holder: "envoy", Nodes: []string{"sidecar-1"}})
	ready("handed off")
	metrics("handed off", "realipd_origdst_listeners 0", `realipd_origdst_ports{holder="envoy"} 1`,
		`realipd_origdst_handoffs_total{to="envoy"} 1`, `realipd_origdst_handoffs_total{to="native"} 0`)
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c); err != nil || string(b) != "envoy\n" {
		t.Errorf("a connection to the port Envoy holds: %q, %v; want the stand-in's answer", b, err)
	}
	c.Close()

	// The stand-in's socket is gone; its node is still connected.
	envoy.Close()
	waitPort(t, s.admin, port, origdstPortDump{Holder: "native", Claimed: []string{"sidecar-1"},
		Waiting: fmt.Sprintf("no socket of uid 0 other than the native listener's listens on 127.0.0.1:%d", port)})
	ready("taken back")
	metrics("taken back", "realipd_origdst_listeners 1", `realipd_origdst_handoffs_total{to="native"} 1`,
		`realipd_origdst_handoff_claims_refused_total{reason="socket_gone"} 1`)
	s.logs.wait(t, regexp.MustCompile(fmt.Sprintf(`msg="origdst: serving" role=origdst address=127.0.0.1:%d`, port)), 1)

	// The node goes: after the grace its claim is gone too.
	conn.Close()
	waitPort(t, s.admin, port, origdstPortDump{Holder: "native"})
}

// TestOrigDstAutoWithoutXDS: without the xDS role (which the validation
// requires for auto, but the role does not rely on that), auto says at
// start that nothing will ever ACK and binds as always.
func TestOrigDstAutoWithoutXDS(t *testing.T) {
	needMark(t)
	cfg := config.Default()
	cfg.ExtProc.Enabled, cfg.Admin.Enabled = false, false
	cfg.OrigDst.Enabled, cfg.OrigDst.Fallback = true, "auto"
	cfg.OrigDst.Listen = []string{"127.0.0.1:0"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.XDS.Enabled = false
	logs := newLogTail()
	logger := slog.New(slog.NewTextHandler(logs, nil))
	reg := prometheus.NewRegistry()
	chains, err := newDecisions(context.Background(), &cfg, logger, reg, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer chains.close()
	rt, err := origdstRole(&cfg, logger, reg, chains, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.closeListeners()
	if !strings.Contains(logs.String(), `level=INFO msg="origdst: fallback is auto but the xDS role is off: no Envoy will ever ACK a listener, so the capture addresses are bound as with always"`) {
		t.Errorf("not logged:\n%s", logs)
	}
	if d := rt.dump(); d.Fallback != "always" || d.Ports != nil {
		t.Errorf("dump = %+v, want fallback always", d)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- rt.role.run(ctx) }()
	logs.wait(t, regexp.MustCompile(`msg="origdst: serving"`), 0)
	if err := rt.ready(ctx); err != nil {
		t.Errorf("not ready: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}
