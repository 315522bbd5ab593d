package xds

import (
	"os"
	"runtime"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/realipd/realipd/sockowner"
)

// TestEventsNameThePeer: every ListenerACKed carries the peer of the
// stream the ACK came on, as the kernel names it (the node id proves
// nothing), and /debug/xds lists each node's peers.
func TestEventsNameThePeer(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("peer credentials need Linux")
	}
	me := uint32(os.Geteuid())
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			at := startADS(t, network, Options{})
			at.publish(1)
			const node = "peer"
			a := openSotW(t, at.conn)
			a.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ClusterType})
			a.ack(a.recv())
			a.send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType})
			a.ack(a.recv())
			if got, want := at.ev.next(t, 2), ackedEvents(node); !slices.Equal(got, want) {
				t.Fatalf("events %q, want %q", got, want)
			}
			for _, p := range at.ev.ackPeers() {
				if !p.Known || p.UID != me || (network == "unix") != (p.PID == int32(os.Getpid())) {
					t.Errorf("event peer %+v, want uid %d (and this pid on a unix socket)", p, me)
				}
			}
			peers := at.s.debugState().Nodes[node].Peers
			want := sockowner.Peer{UID: me, Known: true}
			if network == "unix" {
				want.PID = int32(os.Getpid())
			}
			if !slices.Equal(peers, []string{want.String()}) {
				t.Errorf("/debug/xds peers %q, want [%q]", peers, want)
			}
		})
	}
}
