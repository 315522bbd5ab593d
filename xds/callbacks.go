package xds

import (
	"context"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/realipd/realipd/sockowner"
)

// This file is the tracker: go-control-plane's server calls the callbacks
// below synchronously on each stream's goroutine, and they
//
//   - give a node its snapshot on the first request of its first stream and
//     clear it when its last stream closes (see Server.join, Server.leave);
//   - classify every request as initial, ACK or NACK by its response_nonce,
//     against the last response sent on the same stream and type;
//   - keep, per node and type URL, the versions sent and ACKed and the last
//     NACK, for /debug/xds and the metrics;
//   - queue the Events.
//
// Stream IDs are per go-control-plane server, and per protocol, so a stream
// is keyed by the listener it came in on (each ServeListener has its own
// go-control-plane server), the protocol and the ID.

// streamKey names one ADS stream.
type streamKey struct {
	listener uint32
	delta    bool
	id       int64
}

// streamState is what the tracker knows about one stream.
type streamState struct {
	node string
	peer sockowner.Peer          // who opened it, as the kernel says
	sent map[string]sentResponse // by type URL: the last response sent
}

// sentResponse is the last response sent on a stream for one type.
type sentResponse struct {
	nonce, version string
	answered       bool // an ACK or NACK for nonce has been counted
}

// nodeState is what the tracker knows about one node: its open streams
// (SotW and delta together) and, per type URL, the state shown on
// /debug/xds.
type nodeState struct {
	streams int
	types   map[string]*typeState
}

// typeState is one node's state for one type URL.
type typeState struct {
	sent, acked string // versions
	nack        *nackState
}

// nackState is a node's last NACK of one type.
type nackState struct {
	version, message string
	at               time.Time
}

func (n *nodeState) typ(typeURL string) *typeState {
	t := n.types[typeURL]
	if t == nil {
		t = &typeState{}
		if n.types == nil {
			n.types = make(map[string]*typeState, 2)
		}
		n.types[typeURL] = t
	}
	return t
}

// callbacks are the go-control-plane callbacks of one ServeListener.
type callbacks struct {
	s        *Server
	listener uint32
}

var _ serverv3.Callbacks = callbacks{}

func (c callbacks) key(delta bool, id int64) streamKey {
	return streamKey{listener: c.listener, delta: delta, id: id}
}

// OnStreamOpen counts a new SotW stream and notes its peer.
func (c callbacks) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	c.s.m.sotwActive.Inc()
	c.s.opened(c.key(false, id), peerOf(ctx))
	return nil
}

// OnStreamClosed forgets a SotW stream.
func (c callbacks) OnStreamClosed(id int64, _ *core.Node) {
	c.s.m.sotwActive.Dec()
	c.s.leave(c.key(false, id))
}

// OnStreamRequest checks (admitSotW) and tracks a SotW request.
// go-control-plane has filled in req.Node from the stream's last request
// that carried one.
func (c callbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	if err := c.s.admitSotW(c.key(false, id), req); err != nil {
		return err
	}
	return c.s.onRequest(c.key(false, id), req.GetNode().GetId(), req.GetTypeUrl(), req.GetVersionInfo(), req.GetResponseNonce(), req.GetErrorDetail())
}

// OnStreamResponse records a SotW response about to be sent.
func (c callbacks) OnStreamResponse(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	c.s.onResponse(c.key(false, id), resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
}

// OnDeltaStreamOpen counts a new delta stream and notes its peer.
func (c callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	c.s.m.deltaActv.Inc()
	c.s.opened(c.key(true, id), peerOf(ctx))
	return nil
}

// OnDeltaStreamClosed forgets a delta stream.
func (c callbacks) OnDeltaStreamClosed(id int64, _ *core.Node) {
	c.s.m.deltaActv.Dec()
	c.s.leave(c.key(true, id))
}

// OnStreamDeltaRequest checks (admitDelta) and tracks a delta request.
// Unlike the SotW server, go-control-plane's delta server calls it before
// filling in a missing node, so only the stream's first request names the
// node; the tracker remembers it.
func (c callbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	if err := c.s.admitDelta(c.key(true, id), req); err != nil {
		return err
	}
	// A delta request carries no version_info (its initial resource
	// versions are per resource): a reconnecting delta node holds its
	// ports again when it ACKs the version it is sent.
	return c.s.onRequest(c.key(true, id), req.GetNode().GetId(), req.GetTypeUrl(), "", req.GetResponseNonce(), req.GetErrorDetail())
}

// OnStreamDeltaResponse records a delta response about to be sent; its
// system_version_info is the snapshot version.
func (c callbacks) OnStreamDeltaResponse(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	c.s.onResponse(c.key(true, id), resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
}

// OnFetchRequest refuses REST fetches (no REST endpoint is served).
func (c callbacks) OnFetchRequest(context.Context, *discovery.DiscoveryRequest) error {
	return status.Error(codes.Unimplemented, "xds: REST fetch is not served")
}

// OnFetchResponse is never called (see OnFetchRequest).
func (c callbacks) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}

// onRequest tracks one request. An error ends the stream. version is the
// request's version_info (SotW; "" for delta).
func (s *Server) onRequest(k streamKey, nodeID, typeURL, version, nonce string, errDetail *rpcstatus.Status) error {
	tc := s.m.of(typeURL)
	if tc == nil {
		// Only the type URLs go-control-plane knows are served: this bounds
		// the metrics' labels and the watches of a stream (one per type,
		// which is what keeps go-control-plane's per-stream response
		// channels from filling up).
		return s.refuse(refusedTypeURL, codes.InvalidArgument, "xds: type_url %q is not an xDS resource type", clip(typeURL, 256))
	}
	s.mu.Lock()
	st := s.streams[k]
	if st == nil {
		s.mu.Unlock()
		if nodeID == "" {
			return s.refuse(refusedNodeID, codes.InvalidArgument, "xds: the first request of a stream must name the node (node.id)")
		}
		p, err := s.join(k, nodeID)
		if err != nil {
			return err
		}
		// Nothing was sent on this stream yet: no ACK or NACK, but maybe
		// the version the node runs.
		s.runs(nodeID, p, typeURL, version)
		return nil
	}
	sent, ok := st.sent[typeURL]
	if nonce == "" || !ok || nonce != sent.nonce || sent.answered {
		// An initial request, a repeated one, or one with a stale nonce
		// (go-control-plane ignores those).
		node, p := st.node, st.peer
		s.mu.Unlock()
		if !ok {
			s.runs(node, p, typeURL, version)
		}
		return nil
	}
	sent.answered = true
	st.sent[typeURL] = sent
	node := st.node
	ts := s.nodes[node].typ(typeURL)
	if errDetail != nil {
		msg := clip(errDetail.GetMessage(), maxNACKBytes)
		ts.nack = &nackState{version: sent.version, message: msg, at: time.Now()}
		s.mu.Unlock()
		tc.nacks.Inc()
		s.log.Warn("xds: node rejected resources (NACK); the version is not sent again until a new one exists",
			"node", node, "type_url", typeURL, "version", sent.version, "error", msg)
		return nil
	}
	ts.acked = sent.version
	var evs []event
	if typeURL == resource.ListenerType && s.events.ev != nil {
		for _, p := range s.portsOf(sent.version) {
			evs = append(evs, event{node: node, peer: st.peer, port: p})
		}
	}
	s.mu.Unlock()
	tc.acks.Inc()
	s.events.push(evs...)
	return nil
}

// onResponse records the response about to be sent on stream k.
func (s *Server) onResponse(k streamKey, typeURL, nonce, version string) {
	s.mu.Lock()
	st := s.streams[k]
	if st != nil {
		if st.sent == nil {
			st.sent = make(map[string]sentResponse, 2)
		}
		st.sent[typeURL] = sentResponse{nonce: nonce, version: version}
		s.nodes[st.node].typ(typeURL).sent = version
	}
	s.mu.Unlock()
	if tc := s.m.of(typeURL); tc != nil {
		tc.responses.Inc()
	}
}

// opened notes the peer of stream k until its first request joins it.
func (s *Server) opened(k streamKey, p sockowner.Peer) {
	s.mu.Lock()
	s.peers[k] = p
	s.mu.Unlock()
}

// join registers stream k of node (its first request) and returns the
// stream's peer. The node's first stream gives the node the current
// snapshot, so that go-control-plane's watch, created right after this
// callback returns, is answered at once. A new node over Limits.MaxNodes
// is refused.
func (s *Server) join(k streamKey, node string) (sockowner.Peer, error) {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	s.mu.Lock()
	p := s.peers[k]
	delete(s.peers, k)
	n := s.nodes[node]
	if n == nil && len(s.nodes) >= s.limits.MaxNodes {
		s.mu.Unlock()
		return p, s.refuse(refusedNodes, codes.ResourceExhausted, "xds: %d nodes are connected already", s.limits.MaxNodes)
	}
	s.streams[k] = &streamState{node: node, peer: p}
	if n == nil {
		n = &nodeState{}
		s.nodes[node] = n
		s.m.nodes.Set(float64(len(s.nodes)))
	}
	n.streams++
	first := n.streams == 1
	snap := s.snap
	s.mu.Unlock()
	if first && snap != nil {
		if err := s.cache.SetSnapshot(context.Background(), node, snap); err != nil {
			s.log.Warn("xds: set snapshot", "node", node, "error", err)
		}
	}
	return p, nil
}

// leave forgets stream k. When it was its node's last stream, the node's
// snapshot and state are dropped, so a departed node costs nothing, and
// NodeGone is queued.
func (s *Server) leave(k streamKey) {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	s.mu.Lock()
	delete(s.peers, k) // a stream closed before its first request
	st := s.streams[k]
	if st == nil {
		s.mu.Unlock()
		return
	}
	delete(s.streams, k)
	n := s.nodes[st.node]
	n.streams--
	last := n.streams == 0
	if last {
		delete(s.nodes, st.node)
		s.m.nodes.Set(float64(len(s.nodes)))
	}
	s.mu.Unlock()
	if last {
		s.cache.ClearSnapshot(st.node)
		s.events.push(event{node: st.node, gone: true})
	}
}

// runs hears the first request of a type on a stream: a node that
// reconnects says in version_info which listener version it runs, one it
// had ACKed. Its listeners on those ports are Envoy's again, as after an
// ACK, even if it never ACKs another version (it may NACK the next):
// ListenerACKed for the version's ports, when the version is a recent
// one. Nothing for other types, an empty version or an unknown one.
func (s *Server) runs(node string, peer sockowner.Peer, typeURL, version string) {
	if typeURL != resource.ListenerType || version == "" || s.events.ev == nil {
		return
	}
	s.mu.Lock()
	var evs []event
	for _, p := range s.portsOf(version) {
		evs = append(evs, event{node: node, peer: peer, port: p})
	}
	s.mu.Unlock()
	s.events.push(evs...)
}
