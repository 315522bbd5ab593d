package xds

import (
	"fmt"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// This file bounds what ADS clients can make the Server hold. A refusal is
// counted in realipd_xds_refused_total by reason and logged at warning
// level at most once a minute per reason; a refused stream ends with a
// gRPC status saying why.

// refusal is why a client was refused: the reason label of
// realipd_xds_refused_total.
type refusal int

const (
	refusedNodeID refusal = iota // a node id missing, or not the stream's first
	numRefusals
)

// refusalReasons are the reason labels, by refusal.
var refusalReasons = [numRefusals]string{
	refusedNodeID: "node_id",
}

func (r refusal) String() string { return refusalReasons[r] }

// refuseWarnInterval is the least time between two warnings of one refusal
// reason: a misbehaving client repeats itself, and the counter carries the
// numbers.
const refuseWarnInterval = time.Minute

// refuse counts a refusal, logs it (a warning at most once per
// refuseWarnInterval and reason, debug otherwise) and returns the gRPC
// status error that ends the stream.
func (s *Server) refuse(r refusal, code codes.Code, format string, args ...any) error {
	s.m.refused[r].Inc()
	msg := fmt.Sprintf(format, args...)
	if s.refuseWarn[r].allow() {
		s.log.Warn("xds: refused an ADS client (counted in realipd_xds_refused_total; warned at most once a minute per reason)",
			"reason", r.String(), "error", msg)
	} else {
		s.log.Debug("xds: refused an ADS client", "reason", r.String(), "error", msg)
	}
	return status.Error(code, msg)
}

// rateLimit lets one event through per interval. It is safe for concurrent
// use: of events arriving together, one passes.
type rateLimit struct {
	next atomic.Int64 // monotonic nanoseconds since epoch before which nothing passes
}

// epoch is where rateLimit's monotonic clock starts.
var epoch = time.Now()

func (r *rateLimit) allow() bool {
	now := int64(time.Since(epoch))
	next := r.next.Load()
	return now >= next && r.next.CompareAndSwap(next, now+int64(refuseWarnInterval))
}

// admitNode checks the node a request carries (nil: none, which only a
// delta request after the first may omit): a stream's requests all name
// the node of its first, so that the stream puts one node id in the cache,
// the one leave clears. go-control-plane's servers call the request
// callbacks before they hand a request to the cache, so a refused id never
// reaches it.
func (s *Server) admitNode(k streamKey, node *core.Node) error {
	if node == nil {
		return nil
	}
	id := node.GetId()
	s.mu.Lock()
	st := s.streams[k]
	s.mu.Unlock()
	if st != nil && id != st.node {
		return s.refuse(refusedNodeID, codes.InvalidArgument, "xds: node.id %q differs from the stream's first, %q", id, st.node)
	}
	return nil
}

// admitSotW checks a SotW request before the tracker sees it.
func (s *Server) admitSotW(k streamKey, req *discovery.DiscoveryRequest) error {
	return s.admitNode(k, req.GetNode())
}

// admitDelta checks a delta request before the tracker sees it.
func (s *Server) admitDelta(k streamKey, req *discovery.DeltaDiscoveryRequest) error {
	return s.admitNode(k, req.GetNode())
}
