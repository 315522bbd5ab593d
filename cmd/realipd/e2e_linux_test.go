//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/internal/netnstest"
	"github.com/realipd/realipd/internal/plugintest"
)

// e2eConfig is the configuration of TestEndToEnd: every role, a cidr
// policy denying block, and the denylist example plugin reading list.
// With native, the native listener is on too.
func e2eConfig(block, plugin, sum, list, httpPorts string, native bool) string {
	cfg := fmt.Sprintf(`
trust:
  strategy: rightmost_trusted_range
  trusted_cidrs: [10.0.0.0/8]
extproc: {listen: 127.0.0.1:0}
xds: {listen: 127.0.0.1:0, extproc_address: 127.0.0.1:9001, http_ports: [%s]}
admin: {listen: 127.0.0.1:0}
policies:
  - {name: block, type: cidr, deny: [%s]}
  - name: denylist
    type: plugin
    path: %s
    sha256: "%s"
    timeout: 2s
    on_error: deny
    config: {list: %s}
`, httpPorts, block, plugin, sum, list)
	if native {
		cfg += "origdst: {enabled: true, listen: ['0.0.0.0:15001'], drain_timeout: 2s}\n"
	}
	return cfg
}

// TestEndToEnd builds the realipd binary and the denylist example plugin
// with go build, and runs `realipd serve` with every role from one
// configuration: ext_proc (driven by extproctest over gRPC), the xDS
// control plane (an ADS client fetches and ACKs clusters and listeners),
// the plugin (a real go-plugin subprocess), the admin listener, and, where
// root and network namespaces are available (required with
// REALIPD_REQUIRE_NETNS=1), the native listener behind the REDIRECT rules
// that `realipd iptables --apply` installs, the whole process inside a
// namespace. It checks the answers, that /metrics counts exactly the
// traffic sent, a valid and an invalid reload, and that SIGTERM ends serve
// with exit 0 and no child process left.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary: not with -short")
	}
	dir := t.TempDir()
	bins, err := plugintest.Build(dir, "../realipd", "../../examples/plugins/denylist")
	if err != nil {
		t.Fatal(err)
	}
	sum, err := plugintest.SHA256(bins["denylist"])
	if err != nil {
		t.Fatal(err)
	}
	list := writeFile(t, "deny.txt", "198.51.100.66\n")

	// Where realipd runs: in a namespace of its own (with the native
	// listener), or, when that is not possible, in the test's.
	native := netnsAvailable()
	var wrap []string
	dialContext := (&net.Dialer{Timeout: 5 * time.Second}).DialContext
	var a, b *netnstest.Netns
	if native {
		a, b = netnstest.New(t), netnstest.New(t)
		netnstest.Veth(t, a, b, []string{"10.77.0.1/24"}, []string{"10.77.0.2/24"})
		wrap = []string{"ip", "netns", "exec", a.Name}
		inA := a.Pool(t, 4)
		dialContext = func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			inA(func() { c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr) })
			return c, err
		}
	} else {
		t.Log("without root and network namespaces: the native listener is left out")
	}
	cfg := writeFile(t, "realipd.yaml", e2eConfig("192.0.2.0/24", bins["denylist"], sum, list, "8080", native))

	if native {
		// The init container's step, with the binary itself.
		if out, err := exec.Command("ip", "netns", "exec", a.Name, bins["realipd"], "iptables", "--config", cfg, "--apply").CombinedOutput(); err != nil {
			t.Fatalf("realipd iptables --apply: %v\n%s", err, out)
		}
	}
	cmd, logs, exited := startExeIn(t, wrap, bins["realipd"], "serve", "--config", cfg, "--log-level", "debug")
	wantRoles := `roles="[admin extproc xds origdst]"`
	if !native {
		wantRoles = `roles="[admin extproc xds]"`
	}
	if !strings.Contains(logs.String(), wantRoles) {
		t.Fatalf("serve runs other roles than %s:\n%s", wantRoles, logs)
	}
	extprocAddr := logs.wait(t, reExtProcAddr, 0)[1]
	xdsAddr := logs.wait(t, reXDSAddr, 0)[1]
	admin := "http://" + logs.wait(t, reAdminAddr, 0)[1]

	httpc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DialContext: dialContext}}
	get := func(path string) (string, int) {
		t.Helper()
		resp, err := httpc.Get(admin + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body), resp.StatusCode
	}
	grpcDial := grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dialContext(ctx, "tcp", addr) })

	// ext_proc: allowed, denied by the cidr policy, denied by the plugin,
	// unresolved.
	ep, err := extproctest.Dial(extprocAddr, grpcDial)
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	ask := func(xff string) string {
		t.Helper()
		res, err := ep.Process(t.Context(), extproctest.Request{
			SourceAddress: "10.0.0.5:4321",
			Headers:       []extproctest.Header{{Name: ":path", Value: "/"}, {Name: "x-forwarded-for", Value: xff + ", 10.0.0.5"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.Immediate != nil {
			md, _ := res.Metadata("realipd")
			return fmt.Sprintf("deny %d %s", res.Immediate.GetStatus().GetCode(), md["policy"])
		}
		ip, _ := res.SetHeader("x-real-ip")
		return ip
	}
	traffic := []struct{ xff, want string }{
		{"203.0.113.9", "203.0.113.9"},
		{"203.0.113.9, 10.1.1.1", "203.0.113.9"},
		{"6.6.6.6, 203.0.113.10", "203.0.113.10"},
		{"192.0.2.10", "deny 403 block"},
		{"198.51.100.66", "deny 403 denylist"},
		{"8.8.8.8, bogus", "deny 403 trust.on_unresolved"},
	}
	for _, tr := range traffic {
		if got := ask(tr.xff); got != tr.want {
			t.Errorf("x-forwarded-for %q: %q, want %q", tr.xff, got, tr.want)
		}
	}
	// The decision log: a deny at Info with the policy that decided; at
	// debug, the allows too.
	for _, line := range []string{
		`level=INFO msg=denied door=extproc decision=deny policy=denylist client_ip=198.51.100.66 peer=10.0.0.5:4321 resolved_from=header`,
		`level=INFO msg=denied door=extproc decision=deny policy=trust.on_unresolved client_ip="" peer=10.0.0.5:4321 resolved_from=none reason=invalid`,
		`level=DEBUG msg=allowed door=extproc decision=allow policy="" client_ip=203.0.113.10 peer=10.0.0.5:4321 resolved_from=header`,
	} {
		logs.wait(t, regexp.MustCompile(regexp.QuoteMeta(line)+"\n"), 0)
	}

	// xDS: an Envoy-like node fetches and ACKs the clusters and listeners.
	conn, err := grpc.NewClient("passthrough:///"+xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpcDial)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	node, chains := connectNode(t, ctx, conn, "e2e-node")
	if !slices.Contains(chains, "http_8080") {
		t.Errorf("virtual_inbound's chains %v lack http_8080", chains)
	}
	var debug debugXDS
	for deadline := time.Now().Add(10 * time.Second); ; {
		body, _ := get("/debug/xds")
		if err := json.Unmarshal([]byte(body), &debug); err != nil {
			t.Fatalf("/debug/xds %q: %v", body, err)
		}
		if n, ok := debug.Nodes["e2e-node"]; ok && n.Types[resource.ListenerType].LastACKedVersion != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the listener ACK never showed on /debug/xds: %s", body)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The native listener: a connection from the pod to the peer is
	// proxied.
	nativeConns := 0
	if native {
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
				fmt.Fprintf(c, "hi %s\n", c.RemoteAddr().(*net.TCPAddr).IP)
				c.Close()
			}
		}()
		c, err := dialContext(t.Context(), "tcp", "10.77.0.2:80")
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		greeting, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil || greeting != "hi 10.77.0.1\n" {
			t.Errorf("through the native listener: %q, %v\n%s", greeting, err, logs)
		}
		nativeConns = 1
		logs.wait(t, regexp.MustCompile(`level=DEBUG msg=allowed door=origdst_tcp decision=allow policy="" client_ip=10\.77\.0\.1 peer=10\.77\.0\.1:\d+ resolved_from=peer original_dst=10\.77\.0\.2:80\n`), 0)
	}

	// The admin listener.
	if body, code := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d %q", code, body)
	}
	body, code := get("/readyz")
	if code != http.StatusOK {
		t.Errorf("/readyz = %d %q", code, body)
	}
	for _, r := range []string{"extproc", "xds"} {
		if !strings.Contains(body, r) {
			t.Errorf("/readyz %q does not name %s", body, r)
		}
	}
	if _, code := get("/debug/pprof/"); code != http.StatusOK {
		t.Errorf("/debug/pprof/ = %d", code)
	}
	dump, _ := get("/config_dump")
	var cd struct {
		Config map[string]any `json:"config"`
		XDS    struct {
			Version string `json:"version"`
		} `json:"xds"`
	}
	if err := json.Unmarshal([]byte(dump), &cd); err != nil || cd.Config["policies"] == nil || cd.XDS.Version == "" {
		t.Errorf("/config_dump %q: %v", dump, err)
	}

	// /metrics counts exactly what was sent.
	metrics, _ := get("/metrics")
	want := []string{
		`realipd_extproc_requests_total{decision="allow",policy="",strategy="rightmost_trusted_range"} 3`,
		`realipd_extproc_requests_total{decision="deny",policy="block",strategy="rightmost_trusted_range"} 1`,
		`realipd_extproc_requests_total{decision="deny",policy="denylist",strategy="rightmost_trusted_range"} 1`,
		`realipd_extproc_requests_total{decision="deny",policy="trust.on_unresolved",strategy="rightmost_trusted_range"} 1`,
		`realipd_extproc_unresolved_total{reason="invalid"} 1`,
		`realipd_xds_acks_total{type_url="` + resource.ListenerType + `"} 1`,
		`realipd_config_reloads_total{result="applied"} 0`,
	}
	if native {
		want = append(want, fmt.Sprintf("realipd_origdst_connections_accepted_total %d", nativeConns))
	}
	for _, w := range want {
		if !strings.Contains(metrics, w+"\n") {
			t.Errorf("/metrics lacks %q", w)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", grepLines(metrics, "realipd_extproc_requests_total", "realipd_extproc_unresolved_total", "realipd_xds_acks_total", "realipd_config_reloads_total", "realipd_origdst_connections_accepted"))
	}

	// A valid reload: 203.0.113.0/24 is denied too, and a new HTTP port
	// makes a new xDS version, which the node fetches.
	replaceFile(t, cfg, e2eConfig("192.0.2.0/24, 203.0.113.0/24", bins["denylist"], sum, list, "8080, 8081", native))
	logs.wait(t, regexp.MustCompile(`msg="configuration reloaded"`), 0)
	if got := ask("203.0.113.9"); got != "deny 403 block" {
		t.Errorf("after the reload: %q, want deny 403 block", got)
	}
	if chains := node.fetchVersion(t); !slices.Contains(chains, "http_8081") {
		t.Errorf("after the reload virtual_inbound's chains are %v", chains)
	}
	// An invalid one: rejected with its key path, the last good one
	// keeps serving.
	replaceFile(t, cfg, strings.Replace(e2eConfig("192.0.2.0/24", bins["denylist"], sum, list, "8080", native), "rightmost_trusted_range", "rightmost_guess", 1))
	logs.wait(t, regexp.MustCompile(`msg="configuration reload rejected`), 0)
	if !regexp.MustCompile(`(?m)^.*level=ERROR.*trust\.strategy.*rightmost_guess.*$`).MatchString(logs.String()) {
		t.Errorf("the rejection does not name trust.strategy:\n%s", logs)
	}
	if got := ask("203.0.113.9"); got != "deny 403 block" {
		t.Errorf("after the rejected reload: %q, want the last good configuration's deny", got)
	}
	metrics, _ = get("/metrics")
	for _, w := range []string{`realipd_config_reloads_total{result="applied"} 1`, `realipd_config_reloads_total{result="rejected"} 1`} {
		if !strings.Contains(metrics, w+"\n") {
			t.Errorf("/metrics lacks %q", w)
		}
	}

	// SIGTERM: exit 0, and no child process (the plugins) left.
	children := childPIDs(cmd.Process.Pid)
	if len(children) == 0 {
		t.Errorf("no plugin process runs under realipd (pid %d)", cmd.Process.Pid)
	}
	cancel() // the ADS streams
	ep.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v\n%s", err, logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not stop within 30 s\n%s", logs)
	}
	for _, pid := range children {
		waitExit(t, pid, "a child of realipd")
	}
	if !strings.Contains(logs.String(), "realipd stopped") {
		t.Errorf("no clean shutdown in the logs:\n%s", logs)
	}
}

// netnsAvailable reports whether the native listener part of the test can
// run: netnstest's requirements. With REALIPD_REQUIRE_NETNS=1 it is true,
// so that netnstest fails the test where they are missing.
func netnsAvailable() bool {
	if os.Getenv(netnstest.RequireEnv) == "1" {
		return true
	}
	if os.Geteuid() != 0 {
		return false
	}
	for _, bin := range []string{"ip", "iptables-restore", "ip6tables-restore"} {
		if _, err := exec.LookPath(bin); err != nil {
			return false
		}
	}
	return true
}

// childPIDs lists the processes whose parent is pid.
func childPIDs(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		i := strings.LastIndexByte(string(stat), ')')
		fields := strings.Fields(string(stat)[i+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// grepLines returns the lines of text that start with one of prefixes.
func grepLines(text string, prefixes ...string) string {
	var out []string
	for line := range strings.Lines(text) {
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) {
				out = append(out, strings.TrimSpace(line))
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
