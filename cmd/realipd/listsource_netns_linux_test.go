//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/netnstest"
)

// TestServeDenyListFromURLNetns: the native listener decides with a cidr
// policy whose deny list is fetched over HTTPS; when the list changes (a
// new ETag), the next refresh denies the newly listed client, without a
// restart and without the listener stopping.
func TestServeDenyListFromURLNetns(t *testing.T) {
	a, b := netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, a, b, []string{"10.78.0.1/24", "10.78.0.3/24"}, []string{"10.78.0.2/24"})

	// The provider listens on loopback inside the namespace serve runs in.
	var mu sync.Mutex
	body, etag := "# deny\n10.78.0.3\n", `"v1"`
	var ln net.Listener
	a.Must(t, func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		io.WriteString(w, body)
	}))
	srv.Listener = ln
	srv.StartTLS()
	defer srv.Close()
	dir := netnstest.PublicDir(t)
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := writeFile(t, "origdst.yaml", fmt.Sprintf(`
extproc: {listen: 127.0.0.1:0}
xds: {enabled: false}
admin: {listen: 127.0.0.1:9902}
origdst:
  enabled: true
  listen: ["0.0.0.0:15001"]
  drain_timeout: 2s
policies:
  - {name: block, type: cidr, deny: [{url: %q, ca_file: %q, refresh: 200ms, required: true}]}
`, srv.URL+"/deny.txt", ca))

	var peer net.Listener
	b.Must(t, func() error {
		var err error
		peer, err = net.Listen("tcp", "10.78.0.2:80")
		return err
	})
	defer peer.Close()
	go func() {
		for {
			c, err := peer.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				fmt.Fprintf(c, "hi %s\n", c.RemoteAddr().(*net.TCPAddr).IP)
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
	logs.wait(t, regexp.MustCompile(`msg="origdst: serving"`), 0)

	inA := a.Pool(t, 2)
	greeting := func(from string) string {
		var c net.Conn
		var err error
		inA(func() {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
			c, err = d.Dial("tcp", "10.78.0.2:80")
		})
		if err != nil {
			return "refused" // reset: the proxy accepted, decided, and refused
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		g, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return "refused"
		}
		return strings.TrimSpace(g)
	}
	if got := greeting("10.78.0.3"); got != "refused" {
		t.Errorf("10.78.0.3, in the fetched deny list: %q, want refused\n%s", got, logs)
	}
	if got := greeting("10.78.0.1"); got != "hi 10.78.0.1" {
		t.Fatalf("10.78.0.1, not listed: %q\n%s", got, logs)
	}

	mu.Lock()
	body, etag = "# deny\n10.78.0.3\n10.78.0.1\n", `"v2"`
	mu.Unlock()
	logs.wait(t, regexp.MustCompile(`msg="list sources changed: new lists in force"`), 0)
	if got := greeting("10.78.0.1"); got != "refused" {
		t.Errorf("10.78.0.1 after the list listed it: %q, want refused\n%s", got, logs)
	}
	if strings.Contains(logs.String(), "configuration reloaded") || strings.Count(logs.String(), `msg="origdst: serving"`) != 1 {
		t.Errorf("the list change reloaded or restarted something:\n%s", logs)
	}

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
}
