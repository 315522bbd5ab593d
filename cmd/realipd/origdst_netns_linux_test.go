//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/netnstest"
)

// origdstConfig is the configuration of TestServeOrigDstNetns with the
// cidr policy's deny list.
func origdstConfig(deny string) string {
	return fmt.Sprintf(`
extproc: {listen: 127.0.0.1:0}
xds: {enabled: false}
admin: {listen: 127.0.0.1:9902}
origdst:
  enabled: true
  listen: ["0.0.0.0:15001"]
  drain_timeout: 2s
policies:
  - {name: block, type: cidr, deny: [%s]}
`, deny)
}

// TestServeOrigDstNetns runs the real binary as serve with origdst enabled
// inside a namespace whose REDIRECT rules 'realipd iptables --apply' wrote:
// a client's connection to a peer is proxied, a client the policy denies
// is reset, a reload that changes the policies applies to the native
// listener too, /readyz names origdst, the metrics are served, and the
// deny is counted and logged with its policy; SIGTERM stops it cleanly.
func TestServeOrigDstNetns(t *testing.T) {
	a, b := netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, a, b, []string{"10.77.0.1/24", "10.77.0.3/24"}, []string{"10.77.0.2/24"})
	cfg := writeFile(t, "origdst.yaml", origdstConfig("10.77.0.3/32"))

	// The peer: greets, reads until EOF, answers with what it read.
	var ln net.Listener
	b.Must(t, func() error {
		var err error
		ln, err = net.Listen("tcp", "10.77.0.2:80")
		return err
	})
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				fmt.Fprintf(c, "hi %s\n", c.RemoteAddr().(*net.TCPAddr).IP)
				got, _ := io.ReadAll(c)
				fmt.Fprintf(c, "got %s\n", got)
			}()
		}
	}()

	a.Must(t, func() error {
		var out, errb bytes.Buffer
		if err := run(context.Background(), []string{"iptables", "--config", cfg, "--apply"}, &out, &errb); err != nil {
			return fmt.Errorf("realipd iptables --apply: %v: %s", err, errb.String())
		}
		return nil
	})
	cmd, logs, exited := startMainIn(t, []string{"ip", "netns", "exec", a.Name}, "serve", "--config", cfg)
	if !strings.Contains(logs.String(), `roles="[admin extproc origdst]"`) {
		t.Errorf("the roles are not logged:\n%s", logs)
	}
	logs.wait(t, regexp.MustCompile(`msg="origdst: serving" role=origdst address=0.0.0.0:15001 mode=redirect`), 0)

	inA := a.Pool(t, 2)
	connect := func(from string) (greeting, rest string, err error) {
		var c net.Conn
		inA(func() {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
			c, err = d.Dial("tcp", "10.77.0.2:80")
		})
		if err != nil {
			return "", "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		if greeting, err = br.ReadString('\n'); err != nil {
			return greeting, "", err
		}
		io.WriteString(c, "ping")
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(br)
		return strings.TrimSpace(greeting), string(got), err
	}
	refused := func(from string) {
		t.Helper()
		greeting, rest, err := connect(from)
		if greeting != "" || rest != "" || err == nil {
			t.Errorf("from %s: %q %q %v, want the connection reset", from, greeting, rest, err)
		}
	}
	// The peer sees the pod's address: realipd dialled it, from the host.
	if greeting, rest, err := connect("10.77.0.1"); err != nil || greeting != "hi 10.77.0.1" || rest != "got ping\n" {
		t.Fatalf("proxied connection: %q %q %v\n%s", greeting, rest, err, logs)
	}
	refused("10.77.0.3")
	// The decision log names the policy (serve logs at info: the deny only).
	logs.wait(t, regexp.MustCompile(`level=INFO msg=denied door=origdst_tcp decision=deny policy=block client_ip=10\.77\.0\.3 peer=10\.77\.0\.3:\d+ resolved_from=peer original_dst=10\.77\.0\.2:80\n`), 0)
	if strings.Contains(logs.String(), "msg=allowed") {
		t.Errorf("an allow was logged at info:\n%s", logs)
	}

	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		inA(func() { c, err = (&net.Dialer{}).DialContext(ctx, network, addr) })
		return c, err
	}}}
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
	if body, code := get("/readyz"); code != http.StatusOK || !strings.Contains(body, "origdst") {
		t.Errorf("/readyz = %d %q, want 200 naming origdst", code, body)
	}
	if body, _ := get("/config_dump"); !strings.Contains(body, `"origdst": {
    "fallback": "always"
  }`) {
		t.Errorf("/config_dump lacks the origdst fallback:\n%s", body)
	}
	metrics, _ := get("/metrics")
	for _, want := range []string{
		"realipd_origdst_connections_accepted_total 2",
		`realipd_origdst_connections_refused_total{policy="block",reason="policy_deny"} 1`,
		`realipd_origdst_connections_refused_total{policy="trust.on_unresolved",reason="policy_deny"} 0`,
		`realipd_origdst_bytes_total{direction="upstream"} 4`,
		"realipd_origdst_listeners 1",
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// A reload that denies 10.77.0.1 as well: the native listener decides
	// on the new chain.
	if err := os.WriteFile(cfg, []byte(origdstConfig("10.77.0.3/32, 10.77.0.1/32")), 0o644); err != nil {
		t.Fatal(err)
	}
	logs.wait(t, regexp.MustCompile(`msg="configuration reloaded"`), 0)
	refused("10.77.0.1")

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v\n%s", err, logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not stop\n%s", logs)
	}
	if !strings.Contains(logs.String(), "origdst: stopped") || !strings.Contains(logs.String(), "realipd stopped") {
		t.Errorf("no clean shutdown:\n%s", logs)
	}
	// The rules stay (they are the init container's), but nothing listens:
	// a connection is refused, not proxied.
	if _, _, err := connect("10.77.0.1"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after serve stopped: %v, want connection refused", err)
	}
}
