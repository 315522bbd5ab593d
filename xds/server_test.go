package xds

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	sotwclient "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/realipd/realipd/sockowner"
)

// The ports of adsResources' listeners.
var adsPorts = []uint32{15001, 15006}

// adsResources is a small valid version: the cluster passthrough and the
// listeners virtual_outbound (15001) and virtual_inbound (15006). n changes
// the cluster's connect timeout and the listeners' stat prefix, so that
// versions differ in content (delta sends only what changed).
func adsResources(t testing.TB, n int) map[resource.Type][]types.Resource {
	t.Helper()
	c := &clusterv3.Cluster{
		Name:                 "passthrough",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(time.Duration(n) * time.Second),
	}
	listener := func(name string, port uint32) *listenerv3.Listener {
		tp, err := anypb.New(&tcpproxyv3.TcpProxy{
			StatPrefix:       name + "_" + strconv.Itoa(n),
			ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "passthrough"},
		})
		if err != nil {
			t.Fatal(err)
		}
		return &listenerv3.Listener{
			Name: name,
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
			}}},
			FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.tcp_proxy",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp},
			}}}},
		}
	}
	out := listener("virtual_outbound", adsPorts[0])
	out.UseOriginalDst = wrapperspb.Bool(true)
	res := map[resource.Type][]types.Resource{
		resource.ClusterType:  {c},
		resource.ListenerType: {out, listener("virtual_inbound", adsPorts[1])},
	}
	for typ, list := range res {
		for _, r := range list {
			if err := r.(interface{ ValidateAll() error }).ValidateAll(); err != nil {
				t.Fatalf("%s: %v", typ, err)
			}
		}
	}
	return res
}

// adsVersion is the version name of adsResources(n).
func adsVersion(n int) string { return "v" + strconv.Itoa(n) }

// publish sets adsResources(n) as version adsVersion(n).
func (at *adsTest) publish(n int) {
	at.t.Helper()
	if err := at.s.SetResources(adsVersion(n), adsResources(at.t, n)); err != nil {
		at.t.Fatal(err)
	}
}

// adsTest is a running Server, its registry and events, and a client
// connection to it.
type adsTest struct {
	t      testing.TB
	s      *Server
	reg    *prometheus.Registry
	ev     *recEvents
	target string
	conn   *grpc.ClientConn
	rec    *recorder
	cancel context.CancelFunc
	done   chan error
}

// startADS serves on network ("tcp" or "unix") and connects a client whose
// received SotW responses are recorded. Goroutine leaks fail the test.
func startADS(t testing.TB, network string, opts Options) *adsTest {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) }) // registered first, runs last
	at := &adsTest{t: t, reg: prometheus.NewRegistry(), ev: newRecEvents(), rec: &recorder{}, done: make(chan error, 1)}
	if opts.Registerer == nil {
		opts.Registerer = at.reg
	}
	if opts.Events == nil {
		opts.Events = at.ev
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	at.s = s
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = "unix://" + filepath.Join(shortTempDir(t), "xds.sock")
	}
	ln, err := Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	at.target = ln.Addr().String()
	if network == "unix" {
		at.target = addr
	}
	ctx, cancel := context.WithCancel(context.Background())
	at.cancel = cancel
	go func() { at.done <- s.ServeListener(ctx, ln) }()
	conn, err := grpc.NewClient(at.target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStreamInterceptor(at.rec.intercept))
	if err != nil {
		t.Fatal(err)
	}
	at.conn = conn
	t.Cleanup(at.stop)
	return at
}

// stop closes the client and drains the server (idempotent).
func (at *adsTest) stop() {
	if at.cancel == nil {
		return
	}
	at.conn.Close()
	at.cancel()
	at.cancel = nil
	select {
	case err := <-at.done:
		if err != nil {
			at.t.Errorf("serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		at.t.Error("server did not stop")
	}
}

// waitFor polls cond until it holds, failing the test after a deadline.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// typeOf returns the tracker's state of node's typeURL ("" fields when
// unknown).
func (at *adsTest) typeOf(node, typeURL string) debugType {
	return at.s.debugState().Nodes[node].Types[typeURL]
}

// waitACKed waits until node has ACKed version for every type of typeURLs.
func (at *adsTest) waitACKed(node, version string, typeURLs ...string) {
	at.t.Helper()
	waitFor(at.t, node+" to ACK "+version, func() bool {
		for _, u := range typeURLs {
			if at.typeOf(node, u).LastACKedVersion != version {
				return false
			}
		}
		return true
	})
}

// watches returns the open SotW and delta watches the cache holds for node.
func (at *adsTest) watches(node string) (sotw, delta int) {
	for _, id := range at.s.cache.GetStatusKeys() {
		if id == node {
			info := at.s.cache.GetStatusInfo(node)
			return info.GetNumWatches(), info.GetNumDeltaWatches()
		}
	}
	return 0, 0
}

// recorder records the SotW responses a client connection receives.
type recorder struct {
	mu  sync.Mutex
	got []*discovery.DiscoveryResponse
}

func (r *recorder) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	return recStream{ClientStream: cs, r: r}, err
}

// of returns the recorded responses of typeURL.
func (r *recorder) of(typeURL string) []*discovery.DiscoveryResponse {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*discovery.DiscoveryResponse
	for _, d := range r.got {
		if d.GetTypeUrl() == typeURL {
			out = append(out, d)
		}
	}
	return out
}

type recStream struct {
	grpc.ClientStream
	r *recorder
}

func (s recStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if d, ok := m.(*discovery.DiscoveryResponse); ok && err == nil {
		s.r.mu.Lock()
		s.r.got = append(s.r.got, proto.CloneOf(d))
		s.r.mu.Unlock()
	}
	return err
}

// recEvents records Events calls in order.
type recEvents struct {
	ch chan string // "acked <node> <port>" or "gone <node>"

	mu    sync.Mutex
	peers []sockowner.Peer // of every ListenerACKed, in order
}

func newRecEvents() *recEvents { return &recEvents{ch: make(chan string, 1000)} }

func (e *recEvents) ListenerACKed(node string, peer sockowner.Peer, port uint32) {
	e.mu.Lock()
	e.peers = append(e.peers, peer)
	e.mu.Unlock()
	e.ch <- "acked " + node + " " + strconv.FormatUint(uint64(port), 10)
}

// ackPeers returns the peers of the ListenerACKed calls so far.
func (e *recEvents) ackPeers() []sockowner.Peer {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.peers)
}
func (e *recEvents) NodeGone(node string) { e.ch <- "gone " + node }

// next returns the next n events, failing after a deadline.
func (e *recEvents) next(t testing.TB, n int) []string {
	t.Helper()
	var out []string
	timeout := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case s := <-e.ch:
			out = append(out, s)
		case <-timeout:
			t.Fatalf("timed out waiting for events: have %q, want %d", out, n)
		}
	}
	return out
}

// ackedEvents are the ListenerACKed events of node for adsPorts.
func ackedEvents(node string) []string {
	var out []string
	for _, p := range adsPorts {
		out = append(out, "acked "+node+" "+strconv.FormatUint(uint64(p), 10))
	}
	return out
}

// names returns the names of the resources in a response.
func names(t testing.TB, res []*anypb.Any) []string {
	t.Helper()
	var out []string
	for _, a := range res {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m.(interface{ GetName() string }).GetName())
	}
	slices.Sort(out)
	return out
}

func counter(t testing.TB, c *prometheus.CounterVec, typeURL string) float64 {
	t.Helper()
	return testutil.ToFloat64(c.WithLabelValues(typeURL))
}

// getDebug fetches /debug/xds through DebugHandler.
func getDebug(t testing.TB, s *Server) map[string]any {
	t.Helper()
	rr := httptest.NewRecorder()
	s.DebugHandler().ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/debug/xds", nil))
	if rr.Code != http.StatusOK || rr.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("/debug/xds: %d %s", rr.Code, rr.Header().Get("Content-Type"))
	}
	var doc map[string]any
	if err := json.Unmarshal(rr.Body.Bytes(), &doc); err != nil {
		t.Fatalf("/debug/xds: %v\n%s", err, rr.Body)
	}
	return doc
}

// jsonAt walks doc along keys (JSON objects only).
func jsonAt(doc any, keys ...string) any {
	for _, k := range keys {
		m, ok := doc.(map[string]any)
		if !ok {
			return nil
		}
		doc = m[k]
	}
	return doc
}

// TestSotWClient runs go-control-plane's SotW ADS client, one stream per
// type as that client does, through the ACK path and a NACK: clusters then
// listeners are received and ACKed, the tracker, the metrics and /debug/xds
// follow, and a NACKed version is not sent again until a new one exists.
func TestSotWClient(t *testing.T) {
	at := startADS(t, "tcp", Options{})
	at.publish(1)
	const node = "sidecar-1"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := &corev3.Node{Id: node, Cluster: "realipd"}

	cds := sotwclient.NewADSClient(ctx, n, resource.ClusterType)
	if err := cds.InitConnect(at.conn); err != nil {
		t.Fatal(err)
	}
	r, err := cds.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if got := names(t, r.Resources); !slices.Equal(got, []string{"passthrough"}) {
		t.Fatalf("clusters %v", got)
	}
	if err := cds.Ack(); err != nil {
		t.Fatal(err)
	}
	lds := sotwclient.NewADSClient(ctx, n, resource.ListenerType)
	if err := lds.InitConnect(at.conn); err != nil {
		t.Fatal(err)
	}
	r, err = lds.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if got := names(t, r.Resources); !slices.Equal(got, []string{"virtual_inbound", "virtual_outbound"}) {
		t.Fatalf("listeners %v", got)
	}
	if err := lds.Ack(); err != nil {
		t.Fatal(err)
	}
	at.waitACKed(node, "v1", resource.ClusterType, resource.ListenerType)
	if got, want := at.ev.next(t, 2), ackedEvents(node); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}

	// Versions and nonces as received (the sotw client keeps them to itself).
	checkSeq := func(typeURL string, want ...string) {
		t.Helper()
		var got []string
		for _, d := range at.rec.of(typeURL) {
			got = append(got, d.GetVersionInfo()+"/"+d.GetNonce())
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s responses (version/nonce) %v, want %v", typeURL, got, want)
		}
	}
	checkSeq(resource.ClusterType, "v1/1")
	checkSeq(resource.ListenerType, "v1/1")

	// Metrics.
	for _, u := range []string{resource.ClusterType, resource.ListenerType} {
		if got := counter(t, at.s.m.responses, u); got != 1 {
			t.Errorf("responses_total{%s} = %v, want 1", u, got)
		}
		if got := counter(t, at.s.m.acks, u); got != 1 {
			t.Errorf("acks_total{%s} = %v, want 1", u, got)
		}
		if got := counter(t, at.s.m.nacks, u); got != 0 {
			t.Errorf("nacks_total{%s} = %v, want 0", u, got)
		}
	}
	if got := testutil.ToFloat64(at.s.m.sotwActive); got != 2 {
		t.Errorf("streams_active{sotw} = %v, want 2", got)
	}
	if got := testutil.ToFloat64(at.s.m.nodes); got != 1 {
		t.Errorf("nodes_connected = %v, want 1", got)
	}
	if got := testutil.ToFloat64(at.s.m.snapshot.WithLabelValues("v1")); got != 1 {
		t.Errorf("snapshot_info{v1} = %v", got)
	}
	if err := testutil.GatherAndCompare(at.reg, strings.NewReader(`
# HELP realipd_xds_snapshot_info The resource version being served (value 1, the version in the label; no series before the first one).
# TYPE realipd_xds_snapshot_info gauge
realipd_xds_snapshot_info{version="v1"} 1
`), "realipd_xds_snapshot_info"); err != nil {
		t.Error(err)
	}

	// /debug/xds.
	doc := getDebug(t, at.s)
	if v := jsonAt(doc, "version"); v != "v1" {
		t.Errorf("version %v", v)
	}
	if jsonAt(doc, "published_at") == nil || jsonAt(doc, "last_rejected") != nil {
		t.Errorf("published_at %v, last_rejected %v", jsonAt(doc, "published_at"), jsonAt(doc, "last_rejected"))
	}
	if s := jsonAt(doc, "nodes", node, "streams"); s != float64(2) {
		t.Errorf("streams %v", s)
	}
	for _, u := range []string{resource.ClusterType, resource.ListenerType} {
		ty := jsonAt(doc, "nodes", node, "types", u)
		if jsonAt(ty, "last_sent_version") != "v1" || jsonAt(ty, "last_acked_version") != "v1" || jsonAt(ty, "last_nack") != nil {
			t.Errorf("%s: %v", u, ty)
		}
	}

	// A new version reaches both streams.
	at.publish(2)
	for _, c := range []sotwclient.ADSClient{cds, lds} {
		if _, err := c.Fetch(); err != nil {
			t.Fatal(err)
		}
		if err := c.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	at.waitACKed(node, "v2", resource.ClusterType, resource.ListenerType)
	if got, want := at.ev.next(t, 2), ackedEvents(node); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}

	// NACK: the clusters of v3 are rejected.
	at.publish(3)
	if _, err := cds.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := cds.Nack("cluster passthrough: bad"); err != nil {
		t.Fatal(err)
	}
	if _, err := lds.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := lds.Ack(); err != nil {
		t.Fatal(err)
	}
	// The NACK's watch is held, not answered: with the listener stream's
	// watch that makes two open watches. (Answered, it would leave one.)
	waitFor(t, "the NACK's watch to be held", func() bool {
		w, _ := at.watches(node)
		return w == 2 && at.typeOf(node, resource.ListenerType).LastACKedVersion == "v3"
	})
	ct := at.typeOf(node, resource.ClusterType)
	if ct.LastSentVersion != "v3" || ct.LastACKedVersion != "v2" || ct.LastNACK == nil ||
		ct.LastNACK.Version != "v3" || ct.LastNACK.Error != "cluster passthrough: bad" || ct.LastNACK.Time.IsZero() {
		t.Errorf("cluster state after the NACK: %+v %+v", ct, ct.LastNACK)
	}
	if got := counter(t, at.s.m.nacks, resource.ClusterType); got != 1 {
		t.Errorf("nacks_total{clusters} = %v, want 1", got)
	}
	doc = getDebug(t, at.s)
	nack := jsonAt(doc, "nodes", node, "types", resource.ClusterType, "last_nack")
	if jsonAt(nack, "version") != "v3" || jsonAt(nack, "error") != "cluster passthrough: bad" || jsonAt(nack, "time") == nil {
		t.Errorf("/debug/xds last_nack %v", nack)
	}
	// The next cluster response is v4, right after the NACKed one (its
	// nonce is the next): v3 was not sent again in between.
	at.publish(4)
	if _, err := cds.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := cds.Ack(); err != nil {
		t.Fatal(err)
	}
	checkSeq(resource.ClusterType, "v1/1", "v2/2", "v3/3", "v4/4")
	if _, err := lds.Fetch(); err != nil {
		t.Fatal(err)
	}
	if err := lds.Ack(); err != nil {
		t.Fatal(err)
	}
	at.waitACKed(node, "v4", resource.ClusterType, resource.ListenerType)
	checkSeq(resource.ListenerType, "v1/1", "v2/2", "v3/3", "v4/4")
	if got := counter(t, at.s.m.responses, resource.ClusterType); got != 4 {
		t.Errorf("responses_total{clusters} = %v, want 4", got)
	}
}

// adsStream is a raw SotW ADS stream, for what the sotw client cannot do
// (several types on one stream, exact requests).
type adsStream struct {
	t      testing.TB
	s      discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cancel context.CancelFunc
}

func openSotW(t testing.TB, conn *grpc.ClientConn) *adsStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	st := &adsStream{t: t, s: s, cancel: cancel}
	t.Cleanup(cancel)
	return st
}

func (a *adsStream) send(req *discovery.DiscoveryRequest) {
	a.t.Helper()
	if err := a.s.Send(req); err != nil {
		a.t.Fatal(err)
	}
}

func (a *adsStream) recv() *discovery.DiscoveryResponse {
	a.t.Helper()
	r, err := a.s.Recv()
	if err != nil {
		a.t.Fatal(err)
	}
	return r
}

// ack ACKs r.
func (a *adsStream) ack(r *discovery.DiscoveryResponse) {
	a.t.Helper()
	a.send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()})
}

// TestClustersBeforeListeners: with the cluster and listener watches of one
// stream open, every new version's clusters are sent before its listeners.
//
// An idle stream is handed the clusters first whatever the mode, so the
// test publishes while the stream is busy: a request for another type
// (which the snapshot has none of, so its watch is just held) makes the
// stream log on its goroutine, and the test's log handler holds it there.
// Without go-control-plane's ordered ADS mode each watch has its own
// channel and a stream coming back to both ready picks one at random: the
// 16 versions below would catch that but for a chance of 2^-16.
func TestClustersBeforeListeners(t *testing.T) {
	hold := &holdingHandler{match: "New subscription for type", held: make(chan struct{}), release: make(chan struct{})}
	at := startADS(t, "tcp", Options{Logger: slog.New(hold)})
	at.publish(1)
	var others []string // the types other than clusters and listeners
	for typ := types.ResponseType(0); typ < types.UnknownType; typ++ {
		if u, _ := cache.GetResponseTypeURL(typ); u != resource.ClusterType && u != resource.ListenerType {
			others = append(others, u)
		}
	}
	version := 1
	for stream := range 2 {
		node := "ordered-" + strconv.Itoa(stream)
		a := openSotW(t, at.conn)
		a.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ClusterType})
		r := a.recv()
		if r.GetTypeUrl() != resource.ClusterType || r.GetVersionInfo() != adsVersion(version) {
			t.Fatalf("first response %s %s", r.GetTypeUrl(), r.GetVersionInfo())
		}
		a.ack(r)
		a.send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType})
		r = a.recv()
		if r.GetTypeUrl() != resource.ListenerType || r.GetVersionInfo() != adsVersion(version) {
			t.Fatalf("second response %s %s", r.GetTypeUrl(), r.GetVersionInfo())
		}
		a.ack(r)
		for i, other := range others {
			waitFor(t, "the watches", func() bool { w, _ := at.watches(node); return w == 2+i })
			hold.armed.Store(true)
			a.send(&discovery.DiscoveryRequest{TypeUrl: other})
			<-hold.held
			version++
			at.publish(version) // both watches answered while the stream is busy
			hold.release <- struct{}{}
			first, second := a.recv(), a.recv()
			if first.GetTypeUrl() != resource.ClusterType || second.GetTypeUrl() != resource.ListenerType ||
				first.GetVersionInfo() != adsVersion(version) || second.GetVersionInfo() != adsVersion(version) {
				t.Fatalf("version %d: got %s %s then %s %s, want clusters then listeners", version,
					first.GetTypeUrl(), first.GetVersionInfo(), second.GetTypeUrl(), second.GetVersionInfo())
			}
			a.ack(first)
			a.ack(second)
		}
		a.cancel()
	}
}

// holdingHandler is a slog handler that, once armed, holds the goroutine
// logging a message containing match until the test releases it.
type holdingHandler struct {
	match         string
	armed         atomic.Bool
	held, release chan struct{}
}

func (h *holdingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *holdingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *holdingHandler) WithGroup(string) slog.Handler            { return h }
func (h *holdingHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.match) && h.armed.CompareAndSwap(true, false) {
		h.held <- struct{}{}
		<-h.release
	}
	return nil
}

// TestSotWNACKAfterNewerVersion: a NACK of a version that is no longer the
// newest is answered at once with the newest, over a unix socket.
func TestSotWNACKAfterNewerVersion(t *testing.T) {
	at := startADS(t, "unix", Options{})
	at.publish(1)
	const node = "nack-late"
	a := openSotW(t, at.conn)
	a.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ClusterType})
	r1 := a.recv()
	a.ack(r1)
	waitFor(t, "the cluster watch", func() bool { w, _ := at.watches(node); return w == 1 })
	at.publish(2)
	r2 := a.recv() // v2, not answered yet
	if r2.GetVersionInfo() != "v2" {
		t.Fatalf("got %s", r2.GetVersionInfo())
	}
	at.publish(3) // no watch is open: nothing is sent
	a.send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, VersionInfo: "v1", ResponseNonce: r2.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "v2 is bad"}})
	r3 := a.recv()
	if r3.GetVersionInfo() != "v3" || r3.GetNonce() != "3" {
		t.Fatalf("after the NACK of v2: %s nonce %s, want v3 nonce 3", r3.GetVersionInfo(), r3.GetNonce())
	}
	a.ack(r3)
	at.waitACKed(node, "v3", resource.ClusterType)
	if n := at.typeOf(node, resource.ClusterType).LastNACK; n == nil || n.Version != "v2" || n.Error != "v2 is bad" {
		t.Errorf("last NACK %+v", n)
	}
}

// deltaStream is a raw delta ADS stream.
type deltaStream struct {
	t testing.TB
	s discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func openDelta(t testing.TB, conn *grpc.ClientConn) (*deltaStream, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	return &deltaStream{t: t, s: s}, cancel
}

func (d *deltaStream) send(req *discovery.DeltaDiscoveryRequest) {
	d.t.Helper()
	if err := d.s.Send(req); err != nil {
		d.t.Fatal(err)
	}
}

func (d *deltaStream) recv() *discovery.DeltaDiscoveryResponse {
	d.t.Helper()
	r, err := d.s.Recv()
	if err != nil {
		d.t.Fatal(err)
	}
	return r
}

func deltaNames(r *discovery.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.GetResources() {
		out = append(out, res.GetName())
	}
	slices.Sort(out)
	return out
}

// TestDelta: the first delta requests of a type name no resources, as
// Envoy's do (wildcard), and get everything; ACKs; a new version; a NACK is
// not answered with the same version again, and the next version is.
func TestDelta(t *testing.T) {
	at := startADS(t, "unix", Options{})
	at.publish(1)
	const node = "delta-1"
	d, _ := openDelta(t, at.conn)
	d.send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: node, Cluster: "realipd"}, TypeUrl: resource.ClusterType})
	r := d.recv()
	if r.GetTypeUrl() != resource.ClusterType || r.GetSystemVersionInfo() != "v1" || !slices.Equal(deltaNames(r), []string{"passthrough"}) {
		t.Fatalf("first delta response: %s %s %v", r.GetTypeUrl(), r.GetSystemVersionInfo(), deltaNames(r))
	}
	d.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: r.GetNonce()})
	d.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType})
	r = d.recv()
	if r.GetTypeUrl() != resource.ListenerType || r.GetSystemVersionInfo() != "v1" || !slices.Equal(deltaNames(r), []string{"virtual_inbound", "virtual_outbound"}) {
		t.Fatalf("listener delta response: %s %s %v", r.GetTypeUrl(), r.GetSystemVersionInfo(), deltaNames(r))
	}
	d.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: r.GetNonce()})
	at.waitACKed(node, "v1", resource.ClusterType, resource.ListenerType)
	if got, want := at.ev.next(t, 2), ackedEvents(node); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	if got := testutil.ToFloat64(at.s.m.deltaActv); got != 1 {
		t.Errorf("streams_active{delta} = %v", got)
	}

	// A new version: clusters first, then listeners.
	waitFor(t, "both delta watches", func() bool { _, w := at.watches(node); return w == 2 })
	at.publish(2)
	c, l := d.recv(), d.recv()
	if c.GetTypeUrl() != resource.ClusterType || c.GetSystemVersionInfo() != "v2" || l.GetTypeUrl() != resource.ListenerType || l.GetSystemVersionInfo() != "v2" {
		t.Fatalf("v2: %s %s then %s %s", c.GetTypeUrl(), c.GetSystemVersionInfo(), l.GetTypeUrl(), l.GetSystemVersionInfo())
	}
	d.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: c.GetNonce()})
	d.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: l.GetNonce()})
	at.waitACKed(node, "v2", resource.ClusterType, resource.ListenerType)

	// NACK v3's clusters.
	waitFor(t, "both delta watches", func() bool { _, w := at.watches(node); return w == 2 })
	at.publish(3)
	c, l = d.recv(), d.recv()
	if c.GetSystemVersionInfo() != "v3" || l.GetSystemVersionInfo() != "v3" {
		t.Fatalf("v3: %s %s", c.GetSystemVersionInfo(), l.GetSystemVersionInfo())
	}
	d.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: c.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "no"}})
	d.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: l.GetNonce()})
	// Both watches held: the NACK was not answered.
	waitFor(t, "the NACK's watch to be held", func() bool {
		_, w := at.watches(node)
		return w == 2 && at.typeOf(node, resource.ListenerType).LastACKedVersion == "v3"
	})
	if n := at.typeOf(node, resource.ClusterType).LastNACK; n == nil || n.Version != "v3" || n.Error != "no" {
		t.Errorf("last NACK %+v", n)
	}
	at.publish(4)
	next := d.recv()
	nonce, _ := strconv.Atoi(c.GetNonce())
	if next.GetTypeUrl() != resource.ClusterType || next.GetSystemVersionInfo() != "v4" || next.GetNonce() != strconv.Itoa(nonce+2) {
		t.Fatalf("after the NACK: %s %s nonce %s, want clusters v4 nonce %d", next.GetTypeUrl(), next.GetSystemVersionInfo(), next.GetNonce(), nonce+2)
	}
	if got := counter(t, at.s.m.nacks, resource.ClusterType); got != 1 {
		t.Errorf("nacks_total = %v", got)
	}
}

// TestHealthReflectionDrain: health SERVING, reflection lists the ADS
// service (as grpcurl list does), Ready; then a drain ends the open ADS
// streams with status OK well before the drain timeout.
func TestHealthReflectionDrain(t *testing.T) {
	at := startADS(t, "tcp", Options{DrainTimeout: time.Minute})
	at.publish(1)
	hc := healthpb.NewHealthClient(at.conn)
	for _, svc := range []string{"", ServiceName} {
		resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q = %v, %v; want SERVING", svc, resp.GetStatus(), err)
		}
	}
	if err := at.s.Ready(context.Background()); err != nil {
		t.Errorf("Ready while serving: %v", err)
	}
	rc := reflectionpb.NewServerReflectionClient(at.conn)
	rs, err := rc.ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var svcs []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		svcs = append(svcs, s.GetName())
	}
	if !slices.Contains(svcs, ServiceName) {
		t.Errorf("reflection lists %v, want %s", svcs, ServiceName)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: ServiceName}}); err != nil {
		t.Fatal(err)
	}
	resp, err = rs.Recv()
	if err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("file containing %s: %v %v", ServiceName, resp.GetErrorResponse(), err)
	}
	rs.CloseSend()

	a := openSotW(t, at.conn)
	a.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "draining"}, TypeUrl: resource.ClusterType})
	a.ack(a.recv())
	d, _ := openDelta(t, at.conn)
	d.send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "draining-delta"}, TypeUrl: resource.ClusterType})
	d.recv()

	start := time.Now()
	at.cancel()
	at.cancel = nil
	if err := <-at.done; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("drain took %v: the ADS streams were not ended", took)
	}
	if _, err := a.s.Recv(); err != io.EOF {
		t.Errorf("SotW stream after the drain: %v, want EOF (status OK)", err)
	}
	if _, err := d.s.Recv(); err != io.EOF {
		t.Errorf("delta stream after the drain: %v, want EOF (status OK)", err)
	}
	if err := at.s.Ready(context.Background()); err == nil {
		t.Error("Ready after the drain")
	}
	waitFor(t, "the nodes to be forgotten", func() bool { return len(at.s.cache.GetStatusKeys()) == 0 })
	at.conn.Close()
}

// TestSetResourcesRejects: what SetResources refuses, leaving the version
// served as it was.
func TestSetResourcesRejects(t *testing.T) {
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetResources("v1", adsResources(t, 1)); err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(map[resource.Type][]types.Resource)) map[resource.Type][]types.Resource {
		res := adsResources(t, 2)
		f(res)
		return res
	}
	tests := []struct {
		name, version string
		res           map[resource.Type][]types.Resource
		want          string
	}{
		{"empty version", "", adsResources(t, 2), "empty version"},
		{"no listeners", "v2", mutate(func(r map[resource.Type][]types.Resource) { delete(r, resource.ListenerType) }), "no " + resource.ListenerType},
		{"unknown type", "v2", mutate(func(r map[resource.Type][]types.Resource) { r["type.googleapis.com/foo.Bar"] = nil }), "unknown type"},
		{"wrong type", "v2", mutate(func(r map[resource.Type][]types.Resource) {
			r[resource.ListenerType] = append(r[resource.ListenerType], r[resource.ClusterType][0])
		}), "is a type.googleapis.com/envoy.config.cluster.v3.Cluster"},
		{"nil", "v2", mutate(func(r map[resource.Type][]types.Resource) {
			r[resource.ClusterType] = append(r[resource.ClusterType], (*clusterv3.Cluster)(nil))
		}), "is nil"},
		{"unnamed", "v2", mutate(func(r map[resource.Type][]types.Resource) {
			r[resource.ClusterType] = append(r[resource.ClusterType], &clusterv3.Cluster{})
		}), "has no name"},
		{"twice", "v2", mutate(func(r map[resource.Type][]types.Resource) {
			r[resource.ClusterType] = append(r[resource.ClusterType], r[resource.ClusterType][0])
		}), "listed twice"},
		{"invalid", "v2", mutate(func(r map[resource.Type][]types.Resource) {
			r[resource.ClusterType][0].(*clusterv3.Cluster).ConnectTimeout = durationpb.New(-time.Second)
		}), "ConnectTimeout"},
		{"inconsistent", "v2", mutate(func(r map[resource.Type][]types.Resource) {
			r[resource.ClusterType] = append(r[resource.ClusterType], &clusterv3.Cluster{
				Name: "eds", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
				EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
					ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
				}},
			})
		}), "mismatched"},
		{"same version, other resources", "v1", adsResources(t, 2), "already served with other resources"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.SetResources(tt.version, tt.res)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error with %q", err, tt.want)
			}
			if s.Version() != "v1" {
				t.Errorf("version %q after a rejected SetResources", s.Version())
			}
		})
	}
	if err := s.SetResources("v1", adsResources(t, 1)); err != nil {
		t.Errorf("the same version with the same resources: %v", err)
	}
	if got := testutil.ToFloat64(s.m.published); got != 1 {
		t.Errorf("snapshots_published_total = %v, want 1", got)
	}
}

// TestRejected: Rejected counts and shows the last rejected configuration.
func TestRejected(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := New(Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	doc := getDebug(t, s)
	if jsonAt(doc, "version") != "" || jsonAt(doc, "last_rejected") != nil || jsonAt(doc, "published_at") != nil {
		t.Errorf("fresh /debug/xds %v", doc)
	}
	if nodes, ok := jsonAt(doc, "nodes").(map[string]any); !ok || len(nodes) != 0 {
		t.Errorf("fresh nodes %v", jsonAt(doc, "nodes"))
	}
	s.Rejected("xds.http_ports[0]", "port 0")
	s.Rejected("xds.inbound_port", "conflicts with xds.outbound_port")
	doc = getDebug(t, s)
	lr := jsonAt(doc, "last_rejected")
	if jsonAt(lr, "path") != "xds.inbound_port" || jsonAt(lr, "reason") != "conflicts with xds.outbound_port" || jsonAt(lr, "time") == nil {
		t.Errorf("last_rejected %v", lr)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP realipd_xds_config_rejected_total Configurations whose xDS resources could not be built or published; the last good resources keep serving.
# TYPE realipd_xds_config_rejected_total counter
realipd_xds_config_rejected_total 2
`), "realipd_xds_config_rejected_total"); err != nil {
		t.Error(err)
	}
	rr := httptest.NewRecorder()
	s.DebugHandler().ServeHTTP(rr, httptest.NewRequest(http.MethodPost, "/debug/xds", nil))
	if rr.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /debug/xds: %d", rr.Code)
	}
}

// TestMetricsRegistration: one Server per registry.
func TestMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(Options{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	_, err := New(Options{Registerer: reg})
	if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); !ok || !strings.Contains(err.Error(), "one Server per registry") {
		t.Errorf("second New on a registry: %v", err)
	}
}

// BenchmarkFanout measures how long a new version takes to reach N nodes,
// from SetResources to every node's ACK of its listeners (each node ACKs
// clusters before listeners), and the heap a connected node costs.
//
// Each simulated node is what an Envoy is to the server: its own gRPC
// connection (TCP over loopback) with one SotW ADS stream, asking for
// clusters, then listeners once clusters arrived, and ACKing every
// response. One connection with many streams would hide the per-connection
// cost that real Envoys bring; 5000 connections are 10000 descriptors here.
// The clients run in this process, so B/node (heap, after GC) counts both
// ends of a connection: a heap profile puts the server's share at about
// 40%. stackB/node is the goroutine stacks of both ends, not in B/node.
//
//	go test ./xds/ -run '^$' -bench BenchmarkFanout -benchtime 1x
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) { benchFanout(b, n) })
	}
}

// countEvents counts ListenerACKed calls.
type countEvents struct {
	acked atomic.Int64
	gone  atomic.Int64
}

func (c *countEvents) ListenerACKed(string, sockowner.Peer, uint32) { c.acked.Add(1) }
func (c *countEvents) NodeGone(string)                              { c.gone.Add(1) }

func benchFanout(b *testing.B, n int) {
	ev := &countEvents{}
	s, err := New(Options{Events: ev})
	if err != nil {
		b.Fatal(err)
	}
	version := 1
	if err := s.SetResources(adsVersion(version), adsResources(b, version)); err != nil {
		b.Fatal(err)
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeListener(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()

	// Every node ACKs both listener ports of each version.
	perVersion := int64(n * len(adsPorts))
	waitACKs := func(what string, want int64) {
		b.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for ev.acked.Load() < want {
			if time.Now().After(deadline) {
				b.Fatalf("%s: %d of %d listener ACK events", what, ev.acked.Load(), want)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	nodes := make([]*fanoutNode, n)
	var wg sync.WaitGroup
	for i := range nodes {
		nd, err := dialFanoutNode(ln.Addr().String(), "node-"+strconv.Itoa(i))
		if err != nil {
			b.Fatal(err)
		}
		nodes[i] = nd
		wg.Go(nd.run)
	}
	defer func() {
		for _, nd := range nodes {
			nd.close()
		}
		wg.Wait()
	}()
	waitACKs("connect", perVersion)
	runtime.GC()
	runtime.ReadMemStats(&after)
	heapPerNode := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
	stackPerNode := float64(int64(after.StackInuse)-int64(before.StackInuse)) / float64(n)

	b.ReportAllocs()
	b.ResetTimer()
	var fanout time.Duration
	for i := 0; i < b.N; i++ {
		version++
		res := adsResources(b, version)
		start := time.Now()
		if err := s.SetResources(adsVersion(version), res); err != nil {
			b.Fatal(err)
		}
		waitACKs("fan-out", int64(version)*perVersion)
		fanout += time.Since(start)
	}
	b.StopTimer()
	b.ReportMetric(fanout.Seconds()/float64(b.N), "s/fanout")
	b.ReportMetric(heapPerNode, "B/node")
	b.ReportMetric(stackPerNode, "stackB/node")
}

// fanoutNode is one simulated Envoy: a connection and its ADS stream.
type fanoutNode struct {
	conn   *grpc.ClientConn
	stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cancel context.CancelFunc
}

func dialFanoutNode(target, id string) (*fanoutNode, error) {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		cancel()
		conn.Close()
		return nil, err
	}
	if err := st.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: id, Cluster: "bench"}, TypeUrl: resource.ClusterType}); err != nil {
		cancel()
		conn.Close()
		return nil, err
	}
	return &fanoutNode{conn: conn, stream: st, cancel: cancel}, nil
}

// run ACKs every response, asking for listeners after the first clusters.
func (nd *fanoutNode) run() {
	askedListeners := false
	for {
		r, err := nd.stream.Recv()
		if err != nil {
			return
		}
		if err := nd.stream.Send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
			return
		}
		if !askedListeners && r.GetTypeUrl() == resource.ClusterType {
			askedListeners = true
			if err := nd.stream.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType}); err != nil {
				return
			}
		}
	}
}

func (nd *fanoutNode) close() {
	nd.cancel()
	nd.conn.Close()
}
