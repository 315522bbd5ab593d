package xds

import (
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
)

// TestNodeLifecycle: a node gets the snapshot on its first request, keeps
// it while any of its streams (SotW or delta) is open, and is forgotten by
// the cache and the tracker when the last one closes (NodeGone);
// ListenerACKed comes with the listeners' ports once the listener version
// is ACKed.
func TestNodeLifecycle(t *testing.T) {
	at := startADS(t, "tcp", Options{})
	const node = "lifecycle"
	if _, err := at.s.cache.GetSnapshot(node); err == nil {
		t.Fatal("snapshot before the node connected")
	}

	// A node that connects before the first version waits for it.
	a := openSotW(t, at.conn)
	a.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ClusterType})
	waitFor(t, "the node", func() bool { w, _ := at.watches(node); return w == 1 })
	at.publish(1)
	r := a.recv()
	if r.GetVersionInfo() != "v1" {
		t.Fatalf("got %s", r.GetVersionInfo())
	}
	if _, err := at.s.cache.GetSnapshot(node); err != nil {
		t.Fatalf("no snapshot for a connected node: %v", err)
	}
	a.ack(r)
	a.send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType})
	l := a.recv()
	at.waitACKed(node, "v1", resource.ClusterType)
	select {
	case e := <-at.ev.ch:
		t.Fatalf("event %q before the listeners were ACKed", e)
	default:
	}
	a.ack(l)
	if got, want := at.ev.next(t, 2), ackedEvents(node); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}

	// A second stream of the same node, delta this time.
	d, closeDelta := openDelta(t, at.conn)
	d.send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ClusterType})
	dr := d.recv()
	if dr.GetSystemVersionInfo() != "v1" {
		t.Fatalf("delta got %s", dr.GetSystemVersionInfo())
	}
	d.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: dr.GetNonce()})
	if n := at.s.debugState().Nodes[node].Streams; n != 2 {
		t.Errorf("streams %d, want 2", n)
	}

	// The first stream closes: the node stays.
	a.cancel()
	waitFor(t, "the SotW stream to close", func() bool { return at.s.debugState().Nodes[node].Streams == 1 })
	if _, err := at.s.cache.GetSnapshot(node); err != nil {
		t.Fatalf("snapshot dropped while a stream is open: %v", err)
	}
	// A new version still reaches the remaining stream.
	at.publish(2)
	if r := d.recv(); r.GetSystemVersionInfo() != "v2" {
		t.Fatalf("delta got %s", r.GetSystemVersionInfo())
	}

	// The last stream closes: the node is gone.
	closeDelta()
	if got := at.ev.next(t, 1); got[0] != "gone "+node {
		t.Errorf("event %q, want gone", got)
	}
	if _, err := at.s.cache.GetSnapshot(node); err == nil {
		t.Error("snapshot kept after the last stream closed")
	}
	if slices.Contains(at.s.cache.GetStatusKeys(), node) {
		t.Error("cache status kept after the last stream closed")
	}
	if _, ok := at.s.debugState().Nodes[node]; ok {
		t.Error("tracker kept the node")
	}
	at.s.mu.Lock()
	streams := len(at.s.streams)
	at.s.mu.Unlock()
	if streams != 0 {
		t.Errorf("tracker kept %d streams", streams)
	}
	if got := testutil.ToFloat64(at.s.m.nodes); got != 0 {
		t.Errorf("nodes_connected = %v", got)
	}
	waitFor(t, "streams_active 0", func() bool {
		return testutil.ToFloat64(at.s.m.sotwActive) == 0 && testutil.ToFloat64(at.s.m.deltaActv) == 0
	})

	// It comes back: a new snapshot, new events.
	b := openSotW(t, at.conn)
	b.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ListenerType})
	if r := b.recv(); r.GetVersionInfo() != "v2" {
		t.Fatalf("reconnected node got %s", r.GetVersionInfo())
	} else {
		b.ack(r)
	}
	if got, want := at.ev.next(t, 2), ackedEvents(node); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
}

// TestBadRequests: a stream must name its node on its first request and use
// xDS type URLs.
func TestBadRequests(t *testing.T) {
	at := startADS(t, "tcp", Options{})
	at.publish(1)
	for _, tt := range []struct {
		name string
		req  *discovery.DiscoveryRequest
	}{
		{"no node", &discovery.DiscoveryRequest{TypeUrl: resource.ClusterType}},
		{"no node id", &discovery.DiscoveryRequest{Node: &corev3.Node{Cluster: "c"}, TypeUrl: resource.ClusterType}},
		{"unknown type", &discovery.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: "type.googleapis.com/foo.Bar"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := openSotW(t, at.conn)
			a.send(tt.req)
			if _, err := a.s.Recv(); status.Code(err) != codes.InvalidArgument {
				t.Errorf("got %v, want InvalidArgument", err)
			}
		})
	}
	d, _ := openDelta(t, at.conn)
	d.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType})
	if _, err := d.s.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("delta without a node: %v, want InvalidArgument", err)
	}
	if len(at.s.debugState().Nodes) != 0 || len(at.s.cache.GetStatusKeys()) != 0 {
		t.Error("a refused stream left a node behind")
	}
}

// TestReconnectSaysWhatItRuns: a node that reconnects names in its first
// listener request's version_info the version it had ACKed; its listener
// ports are Envoy's again at once (ListenerACKed), before it ACKs or, as
// here, NACKs the version it is sent. An unknown version says nothing.
func TestReconnectSaysWhatItRuns(t *testing.T) {
	at := startADS(t, "tcp", Options{})
	const node = "returning"
	at.publish(1)
	a := openSotW(t, at.conn)
	a.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ListenerType})
	a.ack(a.recv())
	if got, want := at.ev.next(t, 2), ackedEvents(node); !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	a.cancel()
	if got := at.ev.next(t, 1); got[0] != "gone "+node {
		t.Fatalf("event %q, want gone", got)
	}
	at.publish(2)

	// Back, running v1: its ports are held again before any answer.
	b := openSotW(t, at.conn)
	b.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ListenerType, VersionInfo: "v1"})
	if got, want := at.ev.next(t, 2), ackedEvents(node); !slices.Equal(got, want) {
		t.Fatalf("events on reconnecting with v1: %q, want %q", got, want)
	}
	r := b.recv()
	b.send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: "v1", ResponseNonce: r.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "cannot bind"}})
	waitFor(t, "the NACK", func() bool { return at.typeOf(node, resource.ListenerType).LastNACK != nil })
	b.cancel()
	if got := at.ev.next(t, 1); got[0] != "gone "+node {
		t.Fatalf("event %q after the NACK, want only gone", got)
	}

	// A version the server does not know (older than it remembers, or
	// another control plane's) holds nothing.
	c := openSotW(t, at.conn)
	c.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ListenerType, VersionInfo: "v-unknown"})
	c.recv()
	c.cancel()
	if got := at.ev.next(t, 1); got[0] != "gone "+node {
		t.Fatalf("event %q for an unknown version, want only gone", got)
	}
}
