package xds

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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
