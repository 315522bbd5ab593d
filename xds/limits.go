package xds

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// This file bounds what ADS clients can make the Server hold. Everything a
// client sends is bounded here or refused: the connections it opens, the
// streams on each and in all, the nodes they name, the size of a request,
// of its node and of its node id, the resource names it lists, and the NACK
// text kept and logged. A refusal is counted in realipd_xds_refused_total
// by reason and logged at warning level at most once a minute per reason;
// a refused stream ends with a gRPC status saying why.
//
// What one ADS stream holds beyond its fixed cost (a few tens of KB,
// goroutine stacks included) is then its node (at most maxNodeBytes, kept
// by go-control-plane), the served names it subscribes to and, per node and
// type, at most maxNACKBytes of NACK text; the cache keeps of each request
// only what it answers from (see parkingCache). A request being handled
// is at most maxRequestBytes.

// The default Limits: generous for the fan-out realipd supports (its
// fan-out benchmark serves 5000 nodes, each with its own connection and
// stream), with room for a reconnecting node's old connection and stream
// to linger until keepalive finds them dead. One realipd is normally the
// sidecar of one Envoy.
const (
	DefaultMaxConnections          = 10_000
	DefaultMaxStreamsPerConnection = 8
	DefaultMaxStreams              = 10_000
	DefaultMaxNodes                = 10_000
)

// Limits bound the ADS clients of a Server; a zero field takes its default.
type Limits struct {
	// MaxConnections bounds the open connections of all the Server's
	// listeners (gRPC health checks and reflection included). A
	// connection over the limit is closed as soon as it is accepted.
	MaxConnections int
	// MaxStreamsPerConnection bounds the ADS streams (SotW and delta) of
	// one connection. Envoy opens one; go-control-plane's client one per
	// type. A stream over the limit ends with ResourceExhausted. The
	// HTTP/2 transport allows 16 more streams than this per connection,
	// for health checks and reflection; a gRPC client waits for one of
	// those to end before it opens another.
	MaxStreamsPerConnection int
	// MaxStreams bounds the streams of all connections: ADS, and the
	// health Watch and reflection streams. A stream over it ends with
	// ResourceExhausted.
	MaxStreams int
	// MaxNodes bounds the distinct node ids with an open stream; the first
	// request of a new node over it ends its stream with
	// ResourceExhausted.
	MaxNodes int
}

// withDefaults returns l with its zero fields set to the defaults.
func (l Limits) withDefaults() Limits {
	if l.MaxConnections <= 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.MaxStreamsPerConnection <= 0 {
		l.MaxStreamsPerConnection = DefaultMaxStreamsPerConnection
	}
	if l.MaxStreams <= 0 {
		l.MaxStreams = DefaultMaxStreams
	}
	if l.MaxNodes <= 0 {
		l.MaxNodes = DefaultMaxNodes
	}
	return l
}

// The fixed bounds of what a request carries.
const (
	// maxRequestBytes bounds a request message (gRPC's MaxRecvMsgSize; a
	// larger one ends the stream with ResourceExhausted). What Envoy sends
	// realipd is its node on the first request of a stream, a type URL, a
	// version, a nonce and, in a NACK, a message about at most the five
	// resources realipd serves: a few KB, tens of KB for the largest node
	// metadata seen in meshes. 1 MiB is far above that and a quarter of
	// gRPC's default.
	maxRequestBytes = 1 << 20
	// maxNodeBytes bounds the node a request carries (its wire size):
	// go-control-plane keeps a stream's node for the stream's life. Node
	// metadata in real Envoy bootstraps is a few KB.
	maxNodeBytes = 64 << 10
	// maxNodeIDBytes bounds a node id. Envoy node ids are short; a
	// Kubernetes-style "sidecar~IP~pod.namespace~domain" stays under 512.
	maxNodeIDBytes = 1 << 10
	// maxResourceNames bounds each list of resource names in a request:
	// SotW resource_names, delta resource_names_subscribe,
	// resource_names_unsubscribe and initial_resource_versions. realipd
	// serves five resources; Envoy subscribes to listeners and clusters by
	// wildcard (no names, or "*").
	maxResourceNames = 64
	// maxNACKBytes bounds the NACK text (error_detail.message) kept for
	// /debug/xds and logged; the rest is cut with a marker.
	maxNACKBytes = 4 << 10
	// transportExtraStreams are the HTTP/2 streams a connection may have
	// beyond its ADS streams (health checks, reflection).
	transportExtraStreams = 16
)

// refusal is why a client was refused: the reason label of
// realipd_xds_refused_total.
type refusal int

const (
	refusedConnections          refusal = iota // a connection over Limits.MaxConnections
	refusedStreamsPerConnection                // an ADS stream over Limits.MaxStreamsPerConnection
	refusedStreams                             // a stream over Limits.MaxStreams
	refusedNodes                               // a new node over Limits.MaxNodes
	refusedNodeID                              // a node id missing, too long, or not the stream's first
	refusedNodeSize                            // a node over maxNodeBytes
	refusedResourceNames                       // too many resource names, or names not served
	refusedRequestSize                         // a request over maxRequestBytes
	refusedTypeURL                             // a type URL that is not an xDS resource type
	numRefusals
)

// refusalReasons are the reason labels, by refusal.
var refusalReasons = [numRefusals]string{
	refusedConnections:          "connections",
	refusedStreamsPerConnection: "streams_per_connection",
	refusedStreams:              "streams",
	refusedNodes:                "nodes",
	refusedNodeID:               "node_id",
	refusedNodeSize:             "node_size",
	refusedResourceNames:        "resource_names",
	refusedRequestSize:          "request_size",
	refusedTypeURL:              "type_url",
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

// clip returns s cut to at most max bytes (on a rune boundary) followed by
// "…[truncated N bytes]", N the bytes cut; s itself when it fits.
func clip(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("…[truncated %d bytes]", len(s)-cut)
}

// admitNode checks the node a request carries (nil: none, which only a
// delta request after the first may omit): its id and size are bounded,
// and a stream's requests all name the node of its first, so that the
// stream puts one node id in the cache, the one leave clears.
// go-control-plane's servers call the request callbacks before they hand a
// request to the cache, so a refused id never reaches it.
func (s *Server) admitNode(k streamKey, node *core.Node) error {
	if node == nil {
		return nil
	}
	id := node.GetId()
	if len(id) > maxNodeIDBytes {
		return s.refuse(refusedNodeID, codes.InvalidArgument, "xds: node.id is %d bytes, more than %d", len(id), maxNodeIDBytes)
	}
	if n := proto.Size(node); n > maxNodeBytes {
		return s.refuse(refusedNodeSize, codes.InvalidArgument, "xds: node %q is %d bytes, more than %d", id, n, maxNodeBytes)
	}
	s.mu.Lock()
	st := s.streams[k]
	s.mu.Unlock()
	if st != nil && id != st.node {
		return s.refuse(refusedNodeID, codes.InvalidArgument, "xds: node.id %q differs from the stream's first, %q", id, st.node)
	}
	return nil
}

// admitNames checks the resource names a request subscribes to: at most
// maxResourceNames, each "*" (wildcard) or the name of a resource of
// typeURL in the version served. Envoy subscribes to realipd's listeners
// and clusters by wildcard; a SotW request for a name not served would
// never be answered (the snapshot cache answers an ADS request only when
// it names every resource of its type). Requests for types no stream may
// use are left to onRequest.
func (s *Server) admitNames(typeURL, list string, names []string) error {
	if len(names) == 0 || s.m.of(typeURL) == nil {
		return nil
	}
	if len(names) > maxResourceNames {
		return s.refuse(refusedResourceNames, codes.InvalidArgument, "xds: %s names %d resources, more than %d", list, len(names), maxResourceNames)
	}
	s.mu.Lock()
	served := servedItems(s.snap, typeURL)
	s.mu.Unlock()
	for _, name := range names {
		if _, ok := served[name]; !ok && name != "*" {
			return s.refuse(refusedResourceNames, codes.InvalidArgument, "xds: %s names %q, which is not a %s served",
				list, clip(name, 128), typeURL)
		}
	}
	return nil
}

// servedItems returns the resources of typeURL in snap, by name (nil
// before the first version). The snapshot is immutable once published.
func servedItems(snap *cache.Snapshot, typeURL string) map[string]types.ResourceWithTTL {
	t := cache.GetResponseType(typeURL)
	if snap == nil || int(t) >= len(snap.Resources) {
		return nil
	}
	return snap.Resources[t].Items
}

// admitSotW checks a SotW request before the tracker sees it.
func (s *Server) admitSotW(k streamKey, req *discovery.DiscoveryRequest) error {
	if err := s.admitNode(k, req.GetNode()); err != nil {
		return err
	}
	return s.admitNames(req.GetTypeUrl(), "resource_names", req.GetResourceNames())
}

// admitDelta checks a delta request before the tracker sees it. The names
// it unsubscribes from and its initial_resource_versions (the resources a
// reconnecting Envoy has, which may be a previous version's) are only
// counted: the delta server tells the client which of them are gone.
func (s *Server) admitDelta(k streamKey, req *discovery.DeltaDiscoveryRequest) error {
	if err := s.admitNode(k, req.GetNode()); err != nil {
		return err
	}
	if n := len(req.GetResourceNamesUnsubscribe()); n > maxResourceNames {
		return s.refuse(refusedResourceNames, codes.InvalidArgument, "xds: resource_names_unsubscribe names %d resources, more than %d", n, maxResourceNames)
	}
	if n := len(req.GetInitialResourceVersions()); n > maxResourceNames {
		return s.refuse(refusedResourceNames, codes.InvalidArgument, "xds: initial_resource_versions names %d resources, more than %d", n, maxResourceNames)
	}
	return s.admitNames(req.GetTypeUrl(), "resource_names_subscribe", req.GetResourceNamesSubscribe())
}

// limitListener closes the connections accepted over Limits.MaxConnections
// (counted across the Server's listeners) at once, and counts them.
type limitListener struct {
	net.Listener
	s *Server
}

func (l limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.s.conns.Add(1) > int64(l.s.limits.MaxConnections) {
			l.s.conns.Add(-1)
			l.s.refuse(refusedConnections, codes.ResourceExhausted, "xds: connection from %s refused: %d connections open",
				c.RemoteAddr(), l.s.limits.MaxConnections)
			c.Close()
			continue
		}
		// The wrapper hides the *net.TCPConn from gRPC, which would set
		// TCP_USER_TIMEOUT to the keepalive timeout on it: set it here.
		if tc, ok := c.(*net.TCPConn); ok {
			if err := setTCPUserTimeout(tc, keepaliveTimeout); err != nil {
				l.s.log.Debug("xds: set TCP_USER_TIMEOUT", "error", err)
			}
		}
		return &limitConn{Conn: c, s: l.s}, nil
	}
}

// limitConn is an accepted connection; closing it frees its place.
type limitConn struct {
	net.Conn
	s    *Server
	once sync.Once
}

func (c *limitConn) Close() error {
	c.once.Do(func() { c.s.conns.Add(-1) })
	return c.Conn.Close()
}

// NetConn returns the connection it wraps, so that the peer's credentials
// can be read from the socket (peer.go).
func (c *limitConn) NetConn() net.Conn { return c.Conn }

// connTagger is the gRPC stats handler that gives every connection the
// counter of its ADS streams, found in each stream's context.
type connTagger struct{}

type connStreamsKey struct{}

func (connTagger) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, connStreamsKey{}, new(atomic.Int64))
}
func (connTagger) HandleConn(context.Context, stats.ConnStats)                     {}
func (connTagger) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (connTagger) HandleRPC(context.Context, stats.RPCStats)                       {}

// adsMethodPrefix starts the full method names of the ADS streams.
const adsMethodPrefix = "/" + ServiceName + "/"

// limitStreams is the stream interceptor that bounds the streams of the
// Server and the ADS streams of a connection, and counts the ADS requests
// refused for their size.
func (s *Server) limitStreams(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if s.streamsOpen.Add(1) > int64(s.limits.MaxStreams) {
		s.streamsOpen.Add(-1)
		return s.refuse(refusedStreams, codes.ResourceExhausted, "xds: %d streams are open already", s.limits.MaxStreams)
	}
	defer s.streamsOpen.Add(-1) // after the connection's count: when it is 0, so are they
	if !strings.HasPrefix(info.FullMethod, adsMethodPrefix) {
		return handler(srv, ss)
	}
	if perConn, ok := ss.Context().Value(connStreamsKey{}).(*atomic.Int64); ok {
		if perConn.Add(1) > int64(s.limits.MaxStreamsPerConnection) {
			perConn.Add(-1)
			return s.refuse(refusedStreamsPerConnection, codes.ResourceExhausted,
				"xds: this connection has %d ADS streams open already", s.limits.MaxStreamsPerConnection)
		}
		defer perConn.Add(-1)
	}
	return handler(srv, sizeCountingStream{ServerStream: ss, s: s})
}

// sizeCountingStream counts the requests gRPC refuses for their size (it
// has sent the client ResourceExhausted already).
type sizeCountingStream struct {
	grpc.ServerStream
	s *Server
}

func (ss sizeCountingStream) RecvMsg(m any) error {
	err := ss.ServerStream.RecvMsg(m)
	if err != nil && status.Code(err) == codes.ResourceExhausted {
		ss.s.refuse(refusedRequestSize, codes.ResourceExhausted, "xds: %v", status.Convert(err).Message())
	}
	return err
}
