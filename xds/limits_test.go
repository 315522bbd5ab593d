package xds

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// refusedCount reads realipd_xds_refused_total{reason} from reg (0 when
// the series does not exist).
func refusedCount(t testing.TB, reg prometheus.Gatherer, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "realipd_xds_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// bigNode is a node whose metadata holds size bytes.
func bigNode(id string, size int) *corev3.Node {
	return &corev3.Node{Id: id, Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		"blob": structpb.NewStringValue(strings.Repeat("m", size)),
	}}}
}

// sotwRaw opens a SotW stream on conn whose errors the caller reads
// (sending to a stream the server has ended fails with io.EOF; its status
// is what Recv returns).
func sotwRaw(t testing.TB, conn *grpc.ClientConn) (discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	return s, cancel
}

// wantCode checks that err is a gRPC status with code.
func wantCode(t testing.TB, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: got %v, want %s", what, err, code)
	}
}

// mustCode checks that err is a gRPC status with code, or ends the test.
func mustCode(t testing.TB, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want %s", what, err, code)
	}
}

// waitForgotten waits until the server holds no node, stream or cache
// entry.
func (at *adsTest) waitForgotten() {
	at.t.Helper()
	waitFor(at.t, "every node to be forgotten", func() bool {
		at.s.mu.Lock()
		n, st := len(at.s.nodes), len(at.s.streams)
		at.s.mu.Unlock()
		return n == 0 && st == 0 && len(at.s.cache.GetStatusKeys()) == 0
	})
}

// TestNodeIDIsTheStreamsFirst: every request of a stream names the node of
// its first request, or the stream ends (InvalidArgument) before the cache
// sees the other id; when the stream closes, nothing of the node is left.
// The cache keeps a node's id, not its metadata.
// go-control-plane keeps a cache entry for every node id a request names,
// and only the stream's first was ever cleared.
func TestNodeIDIsTheStreamsFirst(t *testing.T) {
	at := startADS(t, "tcp", Options{})
	at.publish(1)

	// SotW: a new id (with node metadata) on the request that ACKs.
	a, _ := sotwRaw(t, at.conn)
	if err := a.Send(&discovery.DiscoveryRequest{Node: bigNode("first", 50<<10), TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	r, err := a.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// The cache keeps the node's id, not its metadata.
	if n := at.s.cache.GetStatusInfo("first").GetNode(); n.GetId() != "first" || n.GetMetadata() != nil {
		t.Errorf("the cache keeps the node %q with metadata of %d bytes", n.GetId(), len(n.GetMetadata().String()))
	}
	for i := range 20 {
		// Sends after the server ended the stream fail: the status is
		// what Recv returns.
		a.Send(&discovery.DiscoveryRequest{Node: bigNode("other-"+strconv.Itoa(i), 50<<10), TypeUrl: resource.ClusterType,
			VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()})
	}
	_, err = a.Recv()
	wantCode(t, "SotW request naming another node", err, codes.InvalidArgument)
	if err != nil && !strings.Contains(err.Error(), `"other-0" differs from the stream's first, "first"`) {
		t.Errorf("error %v", err)
	}
	at.waitForgotten()

	// Delta: the node may be omitted after the first request, not changed,
	// nor emptied.
	for _, other := range []string{"other", ""} {
		d, _ := openDelta(t, at.conn)
		d.send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "delta-first"}, TypeUrl: resource.ClusterType})
		dr := d.recv()
		d.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: dr.GetNonce()})
		d.send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: other}, TypeUrl: resource.ListenerType})
		_, err := d.s.Recv()
		wantCode(t, fmt.Sprintf("delta request naming node %q", other), err, codes.InvalidArgument)
		at.waitForgotten()
	}
	if got := refusedCount(t, at.reg, "node_id"); got != 3 {
		t.Errorf("refused_total{node_id} = %v, want 3", got)
	}
}

// TestNodeBounds: a node id over 1 KiB and a node over 64 KiB are refused
// (InvalidArgument), a request over 1 MiB too (ResourceExhausted), and a
// node just under those bounds is served.
func TestNodeBounds(t *testing.T) {
	at := startADS(t, "unix", Options{})
	at.publish(1)
	for _, tt := range []struct {
		name   string
		node   *corev3.Node
		code   codes.Code
		reason string
	}{
		{"long id", &corev3.Node{Id: strings.Repeat("i", 1025)}, codes.InvalidArgument, "node_id"},
		{"big node", bigNode("big", 65<<10), codes.InvalidArgument, "node_size"},
		{"big request", bigNode("huge", 1<<20), codes.ResourceExhausted, "request_size"},
		{"fits", bigNode(strings.Repeat("i", 1024), 60<<10), codes.OK, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, cancel := sotwRaw(t, at.conn)
			defer cancel()
			a.Send(&discovery.DiscoveryRequest{Node: tt.node, TypeUrl: resource.ClusterType})
			r, err := a.Recv()
			wantCode(t, tt.name, err, tt.code)
			if tt.code == codes.OK {
				if r.GetVersionInfo() != "v1" {
					t.Errorf("got %q, want v1", r.GetVersionInfo())
				}
				// The cache keeps the node's id, not its metadata.
				if n := at.s.cache.GetStatusInfo(tt.node.GetId()).GetNode(); n.GetId() != tt.node.GetId() || n.GetMetadata() != nil {
					t.Errorf("the cache keeps the node %q with metadata of %d bytes", n.GetId(), len(n.GetMetadata().String()))
				}
			}
			if tt.reason != "" {
				// gRPC answers a request over the size before the
				// interceptor hears of it: wait for the count.
				waitFor(t, "refused_total{"+tt.reason+"} 1", func() bool { return refusedCount(t, at.reg, tt.reason) == 1 })
			}
		})
	}
	at.waitForgotten()
}

// TestResourceNames: a request may name at most 64 resources per list,
// each "*" or one served; the names a reconnecting delta node says it has
// may be gone (they are removed); Envoy's wildcard requests are served.
func TestResourceNames(t *testing.T) {
	at := startADS(t, "tcp", Options{})
	at.publish(1)
	many := make([]string, 50_000)
	for i := range many {
		many[i] = "name-" + strconv.Itoa(i)
	}

	// Served: wildcard, or names served. (A SotW request naming "*" is
	// not answered: go-control-plane's snapshot cache, in ADS mode,
	// answers only requests naming every resource of their type.)
	for _, names := range [][]string{nil, {"virtual_inbound", "virtual_outbound"}} {
		a := openSotW(t, at.conn)
		a.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "names"}, TypeUrl: resource.ListenerType, ResourceNames: names})
		if r := a.recv(); len(r.GetResources()) != 2 {
			t.Errorf("names %q: %d listeners, want 2", names, len(r.GetResources()))
		}
		a.cancel()
	}
	// A reconnecting delta node that had a listener no longer served.
	d, closeDelta := openDelta(t, at.conn)
	d.send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "names"}, TypeUrl: resource.ListenerType,
		ResourceNamesSubscribe: []string{"*"}, InitialResourceVersions: map[string]string{"old_listener": "1"}})
	if r := d.recv(); !slices.Equal(deltaNames(r), []string{"virtual_inbound", "virtual_outbound"}) || !slices.Equal(r.GetRemovedResources(), []string{"old_listener"}) {
		t.Errorf("delta reconnect: %v, removed %v", deltaNames(r), r.GetRemovedResources())
	}
	closeDelta()

	// Refused.
	initial := make(map[string]string, 65)
	for i := range 65 {
		initial["l"+strconv.Itoa(i)] = "1"
	}
	for _, tt := range []struct {
		name  string
		sotw  *discovery.DiscoveryRequest
		delta *discovery.DeltaDiscoveryRequest
	}{
		{name: "sotw not served", sotw: &discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: []string{"virtual_outbound", "nope"}}},
		{name: "sotw too many", sotw: &discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, ResourceNames: many[:65]}},
		{name: "delta 50000", delta: &discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResourceNamesSubscribe: many}},
		{name: "delta not served", delta: &discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResourceNamesSubscribe: []string{"virtual_outbound"}}},
		{name: "delta unsubscribe", delta: &discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResourceNamesUnsubscribe: many[:65]}},
		{name: "delta initial versions", delta: &discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, InitialResourceVersions: initial}},
	} {
		var err error
		if tt.sotw != nil {
			a := openSotW(t, at.conn)
			a.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "names"}, TypeUrl: resource.ClusterType})
			a.ack(a.recv())
			a.s.Send(tt.sotw)
			_, err = a.s.Recv()
		} else {
			d, _ := openDelta(t, at.conn)
			tt.delta.Node = &corev3.Node{Id: "names"}
			d.s.Send(tt.delta)
			_, err = d.s.Recv()
		}
		wantCode(t, tt.name, err, codes.InvalidArgument)
	}
	if got := refusedCount(t, at.reg, "resource_names"); got != 6 {
		t.Errorf("refused_total{resource_names} = %v, want 6", got)
	}
	at.waitForgotten()
}

// logLines records the records a Server logs: level, message and the
// error attribute.
type logLines struct {
	mu    sync.Mutex
	lines []logLine
}

type logLine struct {
	level      slog.Level
	msg, error string
}

func (l *logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l *logLines) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logLines) WithGroup(string) slog.Handler            { return l }
func (l *logLines) Handle(_ context.Context, r slog.Record) error {
	line := logLine{level: r.Level, msg: r.Message}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			line.error = a.Value.String()
		}
		return true
	})
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
	return nil
}

// warnings returns the warnings whose message contains s.
func (l *logLines) warnings(s string) []logLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logLine
	for _, line := range l.lines {
		if line.level == slog.LevelWarn && strings.Contains(line.msg, s) {
			out = append(out, line)
		}
	}
	return out
}

// nackText is a NACK message of 1 MB, not all ASCII: its 4096th byte is
// inside a character, which is not cut.
var nackText = "x" + strings.Repeat("é", 500_000) + "the end"

// TestNACKText: a NACK's message is kept (/debug/xds) and logged cut to
// 4 KiB, with a marker saying how much was cut.
func TestNACKText(t *testing.T) {
	logs := &logLines{}
	at := startADS(t, "tcp", Options{Logger: slog.New(logs)})
	at.publish(1)
	a := openSotW(t, at.conn)
	a.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "nack"}, TypeUrl: resource.ClusterType})
	r := a.recv()
	a.send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: r.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: nackText}})
	waitFor(t, "the NACK", func() bool { return at.typeOf("nack", resource.ClusterType).LastNACK != nil })
	checkNACKText(t, "/debug/xds", jsonAt(getDebug(t, at.s), "nodes", "nack", "types", resource.ClusterType, "last_nack", "error").(string))
	w := logs.warnings("NACK")
	if len(w) != 1 {
		t.Fatalf("%d NACK warnings, want 1", len(w))
	}
	checkNACKText(t, "the warning", w[0].error)
}

// checkNACKText checks that got is nackText cut to 4 KiB with the marker.
func checkNACKText(t testing.TB, where, got string) {
	t.Helper()
	const marker = "…[truncated "
	i := strings.Index(got, marker)
	if i != 4095 || !strings.HasPrefix(nackText, got[:i]) || !utf8.ValidString(got) ||
		got[i:] != fmt.Sprintf("…[truncated %d bytes]", len(nackText)-i) {
		t.Errorf("%s: NACK text of %d bytes: ...%q", where, len(got), got[max(0, len(got)-60):])
	}
}

// TestMaxNodes: a new node over Limits.MaxNodes is refused
// (ResourceExhausted); a connected node may open another stream; a node
// that leaves makes room.
func TestMaxNodes(t *testing.T) {
	at := startADS(t, "tcp", Options{Limits: Limits{MaxNodes: 2}})
	at.publish(1)
	open := func(node string) (*adsStream, error) {
		a := openSotW(t, at.conn)
		a.s.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ClusterType})
		_, err := a.s.Recv()
		return a, err
	}
	a1, err := open("n1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := open("n2"); err != nil {
		t.Fatal(err)
	}
	_, err = open("n3")
	wantCode(t, "a third node", err, codes.ResourceExhausted)
	if _, err := open("n1"); err != nil {
		t.Errorf("a second stream of n1: %v", err)
	}
	if got := refusedCount(t, at.reg, "nodes"); got != 1 {
		t.Errorf("refused_total{nodes} = %v, want 1", got)
	}
	if len(at.s.debugState().Nodes) != 2 || slices.Contains(at.s.cache.GetStatusKeys(), "n3") {
		t.Errorf("nodes %v, cache %v", at.s.debugState().Nodes, at.s.cache.GetStatusKeys())
	}
	a1.cancel()
	waitFor(t, "n1 to have one stream", func() bool { return at.s.debugState().Nodes["n1"].Streams == 1 })
	_, err = open("n3")
	wantCode(t, "a third node while n1 still has a stream", err, codes.ResourceExhausted)
}

// TestMaxStreams: ADS streams over Limits.MaxStreamsPerConnection on a
// connection, or streams (ADS or not) over Limits.MaxStreams in all, end
// with ResourceExhausted; unary calls on the connection still work.
func TestMaxStreams(t *testing.T) {
	at := startADS(t, "tcp", Options{Limits: Limits{MaxStreamsPerConnection: 2, MaxStreams: 3}})
	at.publish(1)
	open := func(conn *grpc.ClientConn, node string, delta bool) error {
		if delta {
			d, _ := openDelta(t, conn)
			d.s.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ClusterType})
			_, err := d.s.Recv()
			return err
		}
		a := openSotW(t, conn)
		a.s.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ClusterType})
		_, err := a.s.Recv()
		return err
	}
	if err := open(at.conn, "s1", false); err != nil {
		t.Fatal(err)
	}
	if err := open(at.conn, "s2", true); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "a third stream on the connection", open(at.conn, "s3", false), codes.ResourceExhausted)
	if _, err := healthpb.NewHealthClient(at.conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health check beside the ADS streams: %v", err)
	}
	other, err := grpc.NewClient(at.target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := open(other, "s4", true); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "a fourth stream", open(other, "s5", true), codes.ResourceExhausted)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := healthpb.NewHealthClient(other).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	wantCode(t, "a health Watch stream as the fourth", err, codes.ResourceExhausted)
	if got := refusedCount(t, at.reg, "streams_per_connection"); got != 1 {
		t.Errorf("refused_total{streams_per_connection} = %v, want 1", got)
	}
	if got := refusedCount(t, at.reg, "streams"); got != 2 {
		t.Errorf("refused_total{streams} = %v, want 2", got)
	}
}

// TestMaxConnections: a connection over Limits.MaxConnections is closed
// at once; one closing makes room.
func TestMaxConnections(t *testing.T) {
	at := startADS(t, "unix", Options{Limits: Limits{MaxConnections: 2}})
	check := func(conn *grpc.ClientConn) error {
		_, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
		return err
	}
	dial := func() *grpc.ClientConn {
		c, err := grpc.NewClient(at.target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if err := check(at.conn); err != nil {
		t.Fatal(err)
	}
	second := dial()
	if err := check(second); err != nil {
		t.Fatal(err)
	}
	third := dial()
	wantCode(t, "a third connection", check(third), codes.Unavailable)
	third.Close()
	if got := refusedCount(t, at.reg, "connections"); got < 1 {
		t.Errorf("refused_total{connections} = %v, want at least 1", got)
	}
	second.Close()
	waitFor(t, "room for a connection", func() bool {
		c := dial()
		defer c.Close()
		return check(c) == nil
	})
}

// TestBoundsMemory drives what used to grow realipd's heap without bound —
// many node ids on a stream, many streams on a few connections, huge
// subscriptions, huge NACKs — and checks that each is refused or cut,
// counted, and that once the clients are gone the heap is back near where
// it was.
func TestBoundsMemory(t *testing.T) {
	ids, streams, subs, nacks := 20, 60, 10, 10
	if testing.Short() {
		ids, streams, subs, nacks = 5, 20, 3, 3
	}
	at := startADS(t, "tcp", Options{})
	at.publish(1)
	dial := func() *grpc.ClientConn {
		c, err := grpc.NewClient(at.target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC() // and what sync.Pools kept
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	// A first round of everything the test does, so that what is
	// allocated once (gRPC's and protobuf's lazily built tables) is in the
	// baseline.
	warm := dial()
	a := openSotW(t, warm)
	a.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "warm"}, TypeUrl: resource.ClusterType})
	a.ack(a.recv())
	d, _ := openDelta(t, warm)
	d.send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "warm-delta"}, TypeUrl: resource.ClusterType})
	d.recv()
	warm.Close()
	at.waitForgotten()
	waitFor(t, "the connections to close", func() bool { return at.s.conns.Load() == 0 })
	base := heap()

	func() {
		// Many node ids on a stream (50 KB of metadata each): the first
		// other id ends the stream. (Each stream is gone before the next
		// opens, so that the connection's stream count stays low.)
		conn := dial()
		defer conn.Close()
		for s := range ids {
			a, cancel := sotwRaw(t, conn)
			a.Send(&discovery.DiscoveryRequest{Node: bigNode("ids-"+strconv.Itoa(s), 50<<10), TypeUrl: resource.ClusterType})
			r, err := a.Recv()
			if err != nil {
				t.Fatal(err)
			}
			for i := range ids {
				a.Send(&discovery.DiscoveryRequest{Node: bigNode(fmt.Sprintf("ids-%d-%d", s, i), 50<<10), TypeUrl: resource.ClusterType,
					VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()})
			}
			_, err = a.Recv()
			mustCode(t, "another node id", err, codes.InvalidArgument)
			cancel()
			waitFor(t, "the stream to end", func() bool { return at.s.streamsOpen.Load() == 0 })
		}

		// Huge subscriptions: 50,000 names.
		many := make([]string, 50_000)
		for i := range many {
			many[i] = "name-" + strconv.Itoa(i)
		}
		for s := range subs {
			d, cancel := openDelta(t, conn)
			d.s.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "subs-" + strconv.Itoa(s)}, TypeUrl: resource.ClusterType,
				ResourceNamesSubscribe: many})
			_, err := d.s.Recv()
			mustCode(t, "a huge subscription", err, codes.InvalidArgument)
			cancel()
			waitFor(t, "the stream to end", func() bool { return at.s.streamsOpen.Load() == 0 })
		}

		// Many streams on 4 connections: 8 each are served.
		for range 4 {
			conn := dial()
			defer conn.Close()
			for s := range streams {
				a, _ := sotwRaw(t, conn)
				a.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "streams-" + strconv.Itoa(s)}, TypeUrl: resource.ClusterType})
				_, err := a.Recv()
				if s < DefaultMaxStreamsPerConnection {
					if err != nil {
						t.Fatal(err)
					}
				} else {
					mustCode(t, "a stream over the limit", err, codes.ResourceExhausted)
				}
			}
		}

		// Huge NACKs, kept cut while their streams are open.
		for s := range nacks {
			conn := dial()
			defer conn.Close()
			a := openSotW(t, conn)
			node := "nacks-" + strconv.Itoa(s)
			a.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ClusterType})
			r := a.recv()
			a.send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: r.GetNonce(),
				ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: nackText}})
			waitFor(t, "the NACK", func() bool { return at.typeOf(node, resource.ClusterType).LastNACK != nil })
			checkNACKText(t, node, at.typeOf(node, resource.ClusterType).LastNACK.Error)
		}
		// streams-0..7 on each of the 4 connections are 8 nodes.
		if got := len(at.s.debugState().Nodes); got != DefaultMaxStreamsPerConnection+nacks {
			t.Errorf("%d nodes connected, want %d", got, DefaultMaxStreamsPerConnection+nacks)
		}
		for _, c := range []struct {
			reason string
			want   int
		}{
			{"node_id", ids},
			{"streams_per_connection", 4 * (streams - DefaultMaxStreamsPerConnection)},
			{"resource_names", subs},
		} {
			if got := refusedCount(t, at.reg, c.reason); got != float64(c.want) {
				t.Errorf("refused_total{%s} = %v, want %d", c.reason, got, c.want)
			}
		}
	}()

	// Every client is gone: nothing of theirs is left.
	at.waitForgotten()
	const tolerance = 4 << 20
	var now uint64
	deadline := time.Now().Add(10 * time.Second)
	for now = heap(); now > base+tolerance && time.Now().Before(deadline); now = heap() {
		time.Sleep(10 * time.Millisecond) // the streams' goroutines end
	}
	t.Logf("heap: %d KiB before, %d KiB after", base>>10, now>>10)
	if now > base+tolerance {
		t.Errorf("heap %d KiB after the clients left, %d KiB before: more than %d KiB kept", now>>10, base>>10, tolerance>>10)
	}
}
