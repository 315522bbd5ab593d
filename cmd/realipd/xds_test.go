package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	sotwclient "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/realipd/realipd/xds"
)

var reXDSAddr = regexp.MustCompile(`msg="xds: serving".* address=(\S+)`)

// xdsConfigFile is a serve configuration with the xDS role on an
// ephemeral port; httpPorts is the xds.http_ports list.
func xdsConfigFile(httpPorts string) string {
	return `
extproc:
  listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
xds:
  listen: 127.0.0.1:0
  extproc_address: 127.0.0.1:9001
  http_ports: ` + httpPorts + "\n"
}

// adsNode is one Envoy-like SotW ADS client (go-control-plane's), with one
// stream for clusters and one for listeners.
type adsNode struct {
	id       string
	cds, lds sotwclient.ADSClient
}

func dialADS(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// connectNode subscribes node id to clusters and listeners, fetches and
// ACKs the first version, and returns the listener names and HTTP chains.
func connectNode(t *testing.T, ctx context.Context, conn *grpc.ClientConn, id string) (*adsNode, []string) {
	t.Helper()
	n := &corev3.Node{Id: id, Cluster: "realipd"}
	a := &adsNode{id: id, cds: sotwclient.NewADSClient(ctx, n, resource.ClusterType), lds: sotwclient.NewADSClient(ctx, n, resource.ListenerType)}
	for _, c := range []sotwclient.ADSClient{a.cds, a.lds} {
		if err := c.InitConnect(conn); err != nil {
			t.Fatal(err)
		}
	}
	r, err := a.cds.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	got := resourceNames(t, r.Resources)
	slices.Sort(got)
	want := []string{xds.PassthroughCluster, xds.InboundPassthroughCluster, xds.ExtProcCluster}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("clusters %v", got)
	}
	if err := a.cds.Ack(); err != nil {
		t.Fatal(err)
	}
	return a, a.fetchListeners(t)
}

// fetchVersion waits for the clusters and listeners of a new version, as
// Envoy, ACKs both, and returns the names of virtual_inbound's filter
// chains.
func (a *adsNode) fetchVersion(t *testing.T) []string {
	t.Helper()
	if _, err := a.cds.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := a.cds.Ack(); err != nil {
		t.Fatal(err)
	}
	return a.fetchListeners(t)
}

// fetchListeners waits for the next listener response, ACKs it, and
// returns the names of virtual_inbound's filter chains.
func (a *adsNode) fetchListeners(t *testing.T) []string {
	t.Helper()
	r, err := a.lds.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.lds.Ack(); err != nil {
		t.Fatal(err)
	}
	var chains []string
	for _, any := range r.Resources {
		l := &listenerv3.Listener{}
		if err := any.UnmarshalTo(l); err != nil {
			t.Fatal(err)
		}
		if l.GetName() == xds.VirtualInbound {
			for _, fc := range l.GetFilterChains() {
				chains = append(chains, fc.GetName())
			}
		}
	}
	return chains
}

func resourceNames(t *testing.T, rs []*anypb.Any) []string {
	t.Helper()
	var out []string
	for _, a := range rs {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m.(interface{ GetName() string }).GetName())
	}
	return out
}

// debugXDS is what /debug/xds says.
type debugXDS struct {
	Version      string `json:"version"`
	LastRejected *struct {
		Path, Reason string
	} `json:"last_rejected"`
	Nodes map[string]struct {
		Types map[string]struct {
			LastSentVersion  string `json:"last_sent_version"`
			LastACKedVersion string `json:"last_acked_version"`
		} `json:"types"`
	} `json:"nodes"`
}

func getDebugXDS(t *testing.T, admin string) debugXDS {
	t.Helper()
	body, code := get(t, admin+"/debug/xds")
	var d debugXDS
	if code != http.StatusOK || json.Unmarshal([]byte(body), &d) != nil {
		t.Fatalf("/debug/xds = %d\n%s", code, body)
	}
	return d
}

// waitACKed waits until node has ACKed version for listeners and clusters.
func waitACKed(t *testing.T, admin, node, version string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d := getDebugXDS(t, admin)
		n := d.Nodes[node]
		if n.Types[resource.ListenerType].LastACKedVersion == version && n.Types[resource.ClusterType].LastACKedVersion == version {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s did not ACK version %s: %+v", node, version, d)
		}
		time.Sleep(10 * time.Millisecond) // polling an observable state, not synchronising
	}
}

// TestServeXDS: serve runs the xDS control plane beside ext_proc and
// admin; an Envoy-like ADS client gets the clusters and listeners the
// configuration describes, and /readyz, /debug/xds and /config_dump show it.
func TestServeXDS(t *testing.T) {
	path := writeFile(t, "realipd.yaml", xdsConfigFile("[8080]"))
	s := startServe(t, path, nil)
	addr := s.logs.wait(t, reXDSAddr, 0)[1]
	conn := dialADS(t, addr)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	// Reflection lists the ADS service, as grpcurl list would show it.
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var services []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		services = append(services, s.GetName())
	}
	if !slices.Contains(services, xds.ServiceName) {
		t.Errorf("reflection lists %v, want %s", services, xds.ServiceName)
	}

	_, chains := connectNode(t, ctx, conn, "sidecar-1")
	if !slices.Contains(chains, "http_8080") {
		t.Errorf("virtual_inbound chains %v, want http_8080", chains)
	}
	d := getDebugXDS(t, s.admin)
	waitACKed(t, s.admin, "sidecar-1", d.Version)
	if body, code := get(t, s.admin+"/readyz"); code != http.StatusOK || !strings.Contains(body, "xds") {
		t.Errorf("/readyz = %d %q, want 200 naming xds", code, body)
	}
	body, _ := get(t, s.admin+"/config_dump")
	var dump struct {
		XDS struct {
			Version string
			Nodes   map[string]map[string]xds.TypeVersions
		} `json:"xds"`
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil || dump.XDS.Version != d.Version {
		t.Errorf("/config_dump xds.version = %q (%v), want %s:\n%s", dump.XDS.Version, err, d.Version, body)
	}
	for _, url := range []string{resource.ClusterType, resource.ListenerType} {
		if v := dump.XDS.Nodes["sidecar-1"][url]; v.Sent != d.Version || v.ACKed != d.Version {
			t.Errorf("/config_dump xds.nodes[sidecar-1][%s] = %+v, want %s sent and ACKed:\n%s", url, v, d.Version, body)
		}
	}
	if body, _ := get(t, s.admin+"/metrics"); !strings.Contains(body, "realipd_xds_acks_total") {
		t.Errorf("/metrics lacks the xDS metrics")
	}
}

// TestXDSReload: a valid edit of the file (rewritten in place, and replaced
// by an atomic rename) reaches an already-connected node as a new version;
// an invalid one does not, is logged with its key path and shown on
// /debug/xds, and a node that connects afterwards gets the last good
// version.
func TestXDSReload(t *testing.T) {
	path := writeFile(t, "realipd.yaml", xdsConfigFile("[8080]"))
	s := startServe(t, path, nil)
	conn := dialADS(t, s.logs.wait(t, reXDSAddr, 0)[1])
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	node, _ := connectNode(t, ctx, conn, "sidecar-1")
	first := getDebugXDS(t, s.admin).Version
	waitACKed(t, s.admin, "sidecar-1", first)

	reloads := 0
	reload := func(write func(content string), content string) {
		t.Helper()
		write(content)
		reloads++
		s.logs.wait(t, reReloadDone, reloads-1)
	}
	inPlace := func(content string) {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(content); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	renamed := func(content string) {
		tmp := filepath.Join(filepath.Dir(path), ".realipd.yaml.tmp")
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}

	reload(inPlace, xdsConfigFile("[8080, 9090]"))
	if chains := node.fetchVersion(t); !slices.Contains(chains, "http_9090") {
		t.Fatalf("after an in-place edit the node got chains %v, want http_9090", chains)
	}
	second := getDebugXDS(t, s.admin).Version
	if second == first {
		t.Fatalf("version unchanged (%s) after a valid edit", second)
	}
	waitACKed(t, s.admin, "sidecar-1", second)

	// 15006 is the inbound capture port: not an application port.
	reload(renamed, xdsConfigFile("[8080, 15006]"))
	s.logs.wait(t, regexp.MustCompile(`key=xds\.http_ports\[1\] reason=`), 0)
	d := getDebugXDS(t, s.admin)
	if d.Version != second {
		t.Errorf("an invalid edit changed the version to %s", d.Version)
	}
	if d.LastRejected == nil || d.LastRejected.Path != "xds.http_ports[1]" || d.LastRejected.Reason == "" {
		t.Errorf("/debug/xds last_rejected = %+v, want xds.http_ports[1] and why", d.LastRejected)
	}
	_, chains := connectNode(t, ctx, dialADS(t, s.logs.wait(t, reXDSAddr, 0)[1]), "sidecar-2")
	if !slices.Contains(chains, "http_9090") || slices.Contains(chains, "http_15006") {
		t.Errorf("a node connecting after the invalid edit got chains %v, want the last good version's", chains)
	}
	waitACKed(t, s.admin, "sidecar-2", second)

	// A key the file's own validation refuses shows there too.
	reload(inPlace, strings.Replace(xdsConfigFile("[8080]"), "xds:\n", "xds:\n  mode: nat\n", 1))
	if d := getDebugXDS(t, s.admin); d.LastRejected == nil || d.LastRejected.Path != "xds.mode" || d.Version != second {
		t.Errorf("/debug/xds after an invalid xds.mode: %+v", d)
	}

	// The next valid edit, by rename, is the next version the first node
	// sees: nothing was sent for the invalid one.
	reload(renamed, xdsConfigFile("[7070]"))
	if chains := node.fetchVersion(t); !slices.Equal(chains, []string{"http_7070", "capture_15006"}) {
		t.Errorf("after the rename the node got chains %v, want [http_7070 capture_15006]", chains)
	}
	third := getDebugXDS(t, s.admin).Version
	if third == second {
		t.Fatal("version unchanged after the rename")
	}
	waitACKed(t, s.admin, "sidecar-1", third)
}
