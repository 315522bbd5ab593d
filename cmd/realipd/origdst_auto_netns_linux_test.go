//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/realipd/realipd/internal/netnstest"
)

// TestServeAutoFakeEnvoyNetns is the attack of a local process on
// fallback: auto, run against the real binary in a pod namespace with
// the rules 'realipd iptables --apply' writes, both capture ports, and a
// policy that denies one client:
//
//   - a process of another user (nobody) that reaches xds.listen and ACKs
//     every listener as node "definitely-not-envoy" takes no port: the
//     native listener keeps both (/config_dump, /readyz, the refusal
//     counted), the denied client is still denied, and nobody cannot
//     bind a capture port;
//   - a stand-in Envoy of realipd's own user, listening on both ports
//     with SO_REUSEPORT and ACKing over the xDS listener, gets them;
//   - when its sockets are gone the native listener serves again.
func TestServeAutoFakeEnvoyNetns(t *testing.T) {
	needMark(t)
	a, b := netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, a, b, []string{"10.79.0.1/24", "10.79.0.3/24"}, []string{"10.79.0.2/24"})
	cfg := writeFile(t, "auto.yaml", `
extproc: {listen: 127.0.0.1:0}
xds: {listen: 127.0.0.1:18000, extproc_address: 127.0.0.1:9001}
admin: {listen: 127.0.0.1:9902}
origdst:
  enabled: true
  fallback: auto
  listen: ["0.0.0.0:15001", "0.0.0.0:15006"]
  drain_timeout: 2s
policies:
  - {name: block, type: cidr, deny: [10.79.0.3/32]}
`)
	// The peer: greets every connection with its address.
	var ln net.Listener
	b.Must(t, func() (err error) { ln, err = net.Listen("tcp", "10.79.0.2:80"); return err })
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "hi\n")
			c.Close()
		}
	}()
	a.Must(t, func() error {
		var out, errb strings.Builder
		if err := run(context.Background(), []string{"iptables", "--config", cfg, "--apply"}, &out, &errb); err != nil {
			return fmt.Errorf("realipd iptables --apply: %v: %s", err, errb.String())
		}
		return nil
	})
	_, logs, _ := startMainIn(t, []string{"ip", "netns", "exec", a.Name}, "serve", "--config", cfg)
	logs.wait(t, regexp.MustCompile(`msg="origdst: serving" role=origdst address=0.0.0.0:15006`), 0)
	logs.wait(t, regexp.MustCompile(`msg="xds: serving"`), 0)

	inA := a.Pool(t, 2)
	dialA := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		inA(func() { c, err = (&net.Dialer{}).DialContext(ctx, network, addr) })
		return c, err
	}
	client := &http.Client{Transport: &http.Transport{DialContext: dialA}}
	get := func(path string) (string, int) {
		t.Helper()
		res, err := client.Get("http://127.0.0.1:9902" + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return string(body), res.StatusCode
	}
	ports := func() map[string]origdstPortDump {
		t.Helper()
		body, _ := get("/config_dump")
		var d struct {
			OrigDst origdstDump `json:"origdst"`
		}
		if err := json.Unmarshal([]byte(body), &d); err != nil {
			t.Fatalf("/config_dump: %v\n%s", err, body)
		}
		return d.OrigDst.Ports
	}
	waitHolders := func(step, want string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			p := ports()
			if p["15001"].Holder == want && p["15006"].Holder == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: ports %+v, want both held by %s\n%s", step, p, want, logs)
			}
			time.Sleep(20 * time.Millisecond) // polling an observable state
		}
	}
	connect := func(from string) (string, error) {
		var c net.Conn
		var err error
		inA(func() {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
			c, err = d.Dial("tcp", "10.79.0.2:80")
		})
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		return string(got), err
	}
	ready := func(step string) {
		t.Helper()
		if body, code := get("/readyz"); code != http.StatusOK {
			t.Errorf("%s: /readyz = %d %q", step, code, body)
		}
	}
	waitHolders("start", "native")
	// Every role reports ready a moment after its listener is bound (the
	// ext_proc server once it serves): wait for it once, then it must
	// stay.
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		if _, code := get("/readyz"); code == http.StatusOK {
			break
		}
		time.Sleep(10 * time.Millisecond) // polling an observable state, not synchronising
	}
	ready("start")

	// The attacker: nobody, as node definitely-not-envoy.
	fake := exec.Command(netnstest.ExecutableForAnyone(t))
	fake.Env = append(fake.Environ(), adsClientEnv+"=127.0.0.1:18000 definitely-not-envoy")
	fake.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	fakeIn, _ := fake.StdinPipe()
	fakeOut, _ := fake.StdoutPipe()
	a.Must(t, fake.Start)
	t.Cleanup(func() { fakeIn.Close(); _ = fake.Wait() })
	if line, _ := bufio.NewReader(fakeOut).ReadString('\n'); line != "acked\n" {
		t.Fatalf("the fake Envoy: %q", line)
	}
	if body, _ := get("/debug/xds"); !strings.Contains(body, `"definitely-not-envoy"`) || !strings.Contains(body, `"uid=65534"`) {
		t.Errorf("/debug/xds does not show the fake node and its user:\n%s", body)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		body, _ := get("/metrics")
		if strings.Contains(body, `realipd_origdst_handoff_claims_refused_total{reason="peer"} 2`+"\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fake node's claims are not counted as refused:\n%s", grepLines(body, "realipd_origdst_"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitHolders("after the fake ACKs", "native")
	ready("after the fake ACKs")
	if got, err := connect("10.79.0.3"); err == nil && got != "" {
		t.Errorf("the denied client got %q through", got)
	}
	if got, err := connect("10.79.0.1"); err != nil || got != "hi\n" {
		t.Errorf("the allowed client: %q, %v", got, err)
	}
	for _, port := range []string{"0.0.0.0:15001", "0.0.0.0:15006"} {
		for _, reuse := range []bool{true, false} {
			if _, err := a.ListenAs(t, 65534, port, reuse); !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("nobody listening on %s (SO_REUSEPORT %v): %v, want address in use", port, reuse, err)
			}
		}
	}
	if !strings.Contains(logs.String(), `msg="origdst: ignored a listener ACK from an ADS peer that is not Envoy's user`) {
		t.Errorf("the ignored claim is not logged:\n%s", logs)
	}

	// The real thing: realipd's own user listening on both ports, then
	// ACKing.
	var envoys []net.Listener
	for _, port := range []string{"0.0.0.0:15001", "0.0.0.0:15006"} {
		a.Must(t, func() error {
			lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
					return err
				}
				return serr
			}}
			l, err := lc.Listen(context.Background(), "tcp4", port)
			if err != nil {
				return err
			}
			envoys = append(envoys, l)
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					io.WriteString(c, "envoy\n")
					c.Close()
				}
			}()
			return nil
		})
	}
	conn, err := grpc.NewClient("passthrough:///127.0.0.1:18000",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dialA(ctx, "tcp", addr) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	connectNode(t, ctx, conn, "envoy-1")
	waitHolders("Envoy's user ACKed", "envoy")
	ready("handed to Envoy")
	if got, err := connect("10.79.0.1"); err != nil || got != "envoy\n" {
		t.Errorf("a connection once Envoy holds the port: %q, %v", got, err)
	}

	for _, l := range envoys {
		l.Close()
	}
	waitHolders("Envoy's sockets gone", "native")
	ready("taken back")
	if got, err := connect("10.79.0.1"); err != nil || got != "hi\n" {
		t.Errorf("a connection once taken back: %q, %v", got, err)
	}
	if got, err := connect("10.79.0.3"); err == nil && got != "" {
		t.Errorf("the denied client got %q through once taken back", got)
	}
}
