// # Serving
//
// A Server serves the Resources over the envoy.service.discovery.v3
// AggregatedDiscoveryService, state of the world (StreamAggregatedResources)
// and delta (DeltaAggregatedResources), with go-control-plane's server over
// its snapshot cache in ADS mode, plus grpc.health.v1 and server reflection,
// on TCP or a unix socket (Listen). SetResources publishes a version: every
// connected node gets it, and a node that connects later gets the current
// one on its first request. A node is its node.id, which the first request
// of every stream must carry, and every later request that carries a node
// must repeat; its snapshot and state are dropped when its last stream
// closes. Requests for type URLs go-control-plane does not know end their
// stream (InvalidArgument).
//
// Bounds: what ADS clients can make the Server hold is bounded, and a
// client over a bound is refused, counted in realipd_xds_refused_total by
// reason and warned about at most once a minute per reason (see limits.go
// for the reasons behind each number):
//
//	connections             Limits.MaxConnections open connections (default
//	                        10,000); one more is closed once accepted
//	streams_per_connection  Limits.MaxStreamsPerConnection ADS streams on a
//	                        connection (8; Envoy opens one); HTTP/2 allows 16
//	                        more streams for health checks and reflection
//	streams                 Limits.MaxStreams streams in all (10,000): ADS,
//	                        health Watch, reflection
//	nodes                   Limits.MaxNodes distinct node ids connected (10,000)
//	node_id                 a node.id missing on a stream's first request,
//	                        over 1 KiB, or not the stream's first
//	node_size               a node over 64 KiB (its metadata included)
//	request_size            a request over 1 MiB
//	resource_names          over 64 names in a list of a request, or a name
//	                        subscribed to that is neither "*" nor served
//	type_url                a type URL that is not an xDS resource type
//
// A refused stream ends with InvalidArgument or ResourceExhausted and a
// message saying which bound. A NACK's message is kept and logged cut to
// 4 KiB, with "…[truncated N bytes]".
//
// Order: clusters are sent before listeners. The cache answers a version's
// open watches in type order (clusters first) and the SotW server runs in
// go-control-plane's ordered ADS mode, where a stream's responses leave in
// the order the cache produced them (delta streams always do). A response a
// request asks for is sent at once: Envoy asks for listeners only once its
// clusters are initialised, and ACKs in the order it was sent.
//
// NACK: a version a node rejected is not sent to it again on that stream;
// the watch is held until a new version exists, which is sent as soon as it
// is published (at once if it already was).
//
// /debug/xds (DebugHandler) answers JSON with these stable fields:
//
//	version          the version being served ("" before the first SetResources)
//	published_at     when it was published (RFC 3339; absent before)
//	last_rejected    the last configuration the xDS resources could not be
//	                 built from (see Rejected): {path, reason, time}; absent
//	                 when none was
//	nodes            by node id, the connected nodes:
//	  streams        its open ADS streams (SotW and delta)
//	  peers          who opened them, as the kernel says: "uid=N" (with
//	                 ",pid=P" on a unix socket) or "unknown" (a TCP peer
//	                 outside this network namespace), sorted
//	  types          by type URL:
//	    last_sent_version   the version of the last response sent (for
//	                        delta, its system_version_info)
//	    last_acked_version  the last version the node ACKed ("" if none)
//	    last_nack           the last NACK: {version, error, time}; absent if none
//
// Metrics (namespace realipd, subsystem xds):
//
//	realipd_xds_streams_active{protocol}    open ADS streams (sotw, delta)
//	realipd_xds_nodes_connected             nodes with an open stream
//	realipd_xds_responses_total{type_url}   responses sent
//	realipd_xds_acks_total{type_url}        responses ACKed
//	realipd_xds_nacks_total{type_url}       responses NACKed
//	realipd_xds_config_rejected_total       configurations rejected (Rejected)
//	realipd_xds_snapshots_published_total   versions published
//	realipd_xds_snapshot_info{version}      1 for the version served
//	realipd_xds_refused_total{reason}       clients refused by a bound (Bounds)
//
// Events (Options.Events) tells other roles that a node ACKed a listener on
// a port and that a node is gone; see Events for when and from where they
// are called.
package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/protobuf/proto"

	"github.com/realipd/realipd/grpcserve"
	"github.com/realipd/realipd/sockowner"
)

// ServiceName is the gRPC service the Server implements; grpc.health.v1
// reports its status under this name and under "".
const ServiceName = "envoy.service.discovery.v3.AggregatedDiscoveryService"

// DefaultDrainTimeout bounds a graceful drain when Options.DrainTimeout is 0.
const DefaultDrainTimeout = 10 * time.Second

// Options are the fixed parts of a Server.
type Options struct {
	// Logger receives the server's logs, and go-control-plane's at debug
	// level; nil discards them.
	Logger *slog.Logger
	// Registerer receives the server's metrics; nil keeps them unregistered.
	Registerer prometheus.Registerer
	// Events receives the events other roles need; nil: none.
	Events Events
	// DrainTimeout bounds the graceful drain when Serve's ctx ends (default
	// DefaultDrainTimeout); streams still open after it are cut.
	DrainTimeout time.Duration
	// ServerOptions are appended to the gRPC server's options (tests, tuning).
	ServerOptions []grpc.ServerOption
	// Limits bound what ADS clients can make the Server hold (zero fields:
	// the defaults).
	Limits Limits
}

// Server is realipd's ADS server. It is safe for concurrent use; one Server
// may Serve several listeners, which share its resources and nodes.
type Server struct {
	log          *slog.Logger
	gcpLog       gcpLogger
	m            *metrics
	events       eventQueue
	cache        cache.SnapshotCache
	drainTimeout time.Duration
	serverOpts   []grpc.ServerOption
	serving      atomic.Int32  // listeners serving and not draining
	listeners    atomic.Uint32 // ServeListener calls, for stream keys
	limits       Limits
	conns        atomic.Int64 // open connections (limitListener)
	streamsOpen  atomic.Int64 // open streams (limitStreams)
	refuseWarn   [numRefusals]rateLimit

	// pubMu serialises what gives nodes their snapshot: SetResources, a
	// node's first stream (join) and its last (leave). So a node never gets
	// an older snapshot after a newer one, and a cleared node is not set
	// again. It is taken before mu.
	pubMu sync.Mutex
	snap  *cache.Snapshot // guarded by pubMu (and written under mu)

	mu        sync.Mutex
	version   string
	published time.Time
	recent    []versionPorts // listener ports of the last versions, newest last
	rejected  *rejection
	streams   map[streamKey]*streamState
	peers     map[streamKey]sockowner.Peer // streams opened and not yet joined
	nodes     map[string]*nodeState
}

// versionPorts are the listener ports of one published version.
type versionPorts struct {
	version string
	ports   []uint32
}

// recentVersions is how many versions' listener ports are kept: an ACK
// names its version by the response it answers, which is sent when its
// version is the newest, or was a moment ago.
const recentVersions = 16

// rejection is the last configuration Rejected was told about.
type rejection struct {
	path, reason string
	at           time.Time
}

// New builds a Server. It serves nothing until SetResources has been called;
// nodes that connect before wait for the first version.
func New(opts Options) (*Server, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{
		log:          log,
		gcpLog:       gcpLogger{log: log},
		m:            m,
		events:       eventQueue{ev: opts.Events},
		drainTimeout: opts.DrainTimeout,
		serverOpts:   opts.ServerOptions,
		limits:       opts.Limits.withDefaults(),
		streams:      make(map[streamKey]*streamState),
		peers:        make(map[streamKey]sockowner.Peer),
		nodes:        make(map[string]*nodeState),
	}
	if s.drainTimeout <= 0 {
		s.drainTimeout = DefaultDrainTimeout
	}
	s.cache = cache.NewSnapshotCache(true, cache.IDHash{}, s.gcpLog)
	return s, nil
}

// SetResources publishes res as version to every connected node and to the
// nodes that connect later. res must hold the cluster (resource.ClusterType)
// and listener (resource.ListenerType) lists, possibly empty; it may hold
// other go-control-plane types. Every resource must be of its key's type,
// named, unique in its list and valid (ValidateAll), and the snapshot
// consistent (every EDS and RDS resource referenced is there). On error
// nothing changes and the last good version keeps serving.
//
// Publishing the version being served again is a no-op when the resources
// are the same, and an error when they differ (a node that has the version
// would never get them). res and its resources must not be modified after
// the call.
func (s *Server) SetResources(version string, res map[resource.Type][]types.Resource) error {
	snap, ports, err := newSnapshot(version, res)
	if err != nil {
		return err
	}
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	if s.snap != nil && version == s.version {
		if sameResources(s.snap, snap) {
			return nil
		}
		return fmt.Errorf("xds: version %q is already served with other resources", version)
	}
	s.mu.Lock()
	s.snap = snap
	s.version = version
	s.published = time.Now()
	s.recent = append(s.recent, versionPorts{version: version, ports: ports})
	if len(s.recent) > recentVersions {
		s.recent = slices.Delete(s.recent, 0, len(s.recent)-recentVersions)
	}
	nodes := slices.Collect(maps.Keys(s.nodes))
	s.mu.Unlock()
	s.m.setVersion(version)
	for _, node := range nodes {
		if err := s.cache.SetSnapshot(context.Background(), node, snap); err != nil {
			s.log.Warn("xds: set snapshot", "node", node, "version", version, "error", err)
		}
	}
	s.log.Info("xds: publishing", "version", version, "nodes", len(nodes))
	return nil
}

// Version returns the version being served, "" before the first
// SetResources.
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Rejected records that a configuration could not be turned into xDS
// resources: path is the key path of the offending setting, reason why. It
// counts realipd_xds_config_rejected_total and is shown as last_rejected on
// /debug/xds; the version being served does not change. cmd/realipd calls
// it when Build (or SetResources) fails.
func (s *Server) Rejected(path, reason string) {
	s.m.rejected.Inc()
	s.mu.Lock()
	s.rejected = &rejection{path: path, reason: reason, at: time.Now()}
	s.mu.Unlock()
}

// portsOf returns the listener ports of version, nil if it is not one of the
// recent versions. s.mu is held.
func (s *Server) portsOf(version string) []uint32 {
	for i := len(s.recent) - 1; i >= 0; i-- {
		if s.recent[i].version == version {
			return s.recent[i].ports
		}
	}
	s.log.Debug("xds: ACK of a version no longer known: no ListenerACKed events", "version", version)
	return nil
}

// requiredTypes are the types SetResources needs in every version.
var requiredTypes = []resource.Type{resource.ClusterType, resource.ListenerType}

// newSnapshot checks res and builds its snapshot and the listeners' ports.
func newSnapshot(version string, res map[resource.Type][]types.Resource) (*cache.Snapshot, []uint32, error) {
	if version == "" {
		return nil, nil, errors.New("xds: resources: empty version")
	}
	for _, t := range requiredTypes {
		if _, ok := res[t]; !ok {
			return nil, nil, fmt.Errorf("xds: resources: no %s list (an empty one serves none)", t)
		}
	}
	var ports []uint32
	for typeURL, list := range res {
		if cache.GetResponseType(typeURL) == types.UnknownType {
			return nil, nil, fmt.Errorf("xds: resources: unknown type %q", typeURL)
		}
		names := make(map[string]bool, len(list))
		for i, r := range list {
			if r == nil || !r.ProtoReflect().IsValid() {
				return nil, nil, fmt.Errorf("xds: resources: %s[%d] is nil", typeURL, i)
			}
			if got := resource.APITypePrefix + string(r.ProtoReflect().Descriptor().FullName()); got != typeURL {
				return nil, nil, fmt.Errorf("xds: resources: %s[%d] is a %s", typeURL, i, got)
			}
			name := cache.GetResourceName(r)
			if name == "" {
				return nil, nil, fmt.Errorf("xds: resources: %s[%d] has no name", typeURL, i)
			}
			if names[name] {
				return nil, nil, fmt.Errorf("xds: resources: %s %q is listed twice", typeURL, name)
			}
			names[name] = true
			if v, ok := r.(interface{ ValidateAll() error }); ok {
				if err := v.ValidateAll(); err != nil {
					return nil, nil, fmt.Errorf("xds: resources: %s %q: %w", typeURL, name, err)
				}
			}
			if l, ok := r.(*listenerv3.Listener); ok {
				ports = append(ports, listenerPorts(l)...)
			}
		}
	}
	snap, err := cache.NewSnapshot(version, res)
	if err != nil {
		return nil, nil, fmt.Errorf("xds: resources: %w", err)
	}
	if err := snap.Consistent(); err != nil {
		return nil, nil, fmt.Errorf("xds: resources: %w", err)
	}
	// The per-resource versions of delta xDS, computed once here rather
	// than lazily under the cache's lock; the snapshot is immutable after.
	if err := snap.ConstructVersionMap(); err != nil {
		return nil, nil, fmt.Errorf("xds: resources: %w", err)
	}
	slices.Sort(ports)
	return snap, slices.Compact(ports), nil
}

// listenerPorts returns the ports l binds: its address's and its additional
// addresses'.
func listenerPorts(l *listenerv3.Listener) []uint32 {
	var ports []uint32
	if p := l.GetAddress().GetSocketAddress().GetPortValue(); p != 0 {
		ports = append(ports, p)
	}
	for _, a := range l.GetAdditionalAddresses() {
		if p := a.GetAddress().GetSocketAddress().GetPortValue(); p != 0 {
			ports = append(ports, p)
		}
	}
	return ports
}

// sameResources reports whether a and b hold equal resources.
func sameResources(a, b *cache.Snapshot) bool {
	for t := range a.Resources {
		x, y := a.Resources[t].Items, b.Resources[t].Items
		if len(x) != len(y) {
			return false
		}
		for name, r := range x {
			o, ok := y[name]
			if !ok || !proto.Equal(r.Resource, o.Resource) {
				return false
			}
		}
	}
	return true
}

// Serve listens on addr (see Listen) and serves until ctx ends, then drains
// (see ServeListener).
func (s *Server) Serve(ctx context.Context, addr string) error {
	ln, err := Listen(addr)
	if err != nil {
		return err
	}
	return s.ServeListener(ctx, ln)
}

// ServeListener serves ADS (SotW and delta), grpc.health.v1 and server
// reflection on ln until ctx ends or serving fails; it closes ln. When ctx
// ends it drains: health turns NOT_SERVING, the listener closes, every
// connection gets a GOAWAY and the ADS streams end (status OK; Envoy keeps
// its configuration and reconnects with backoff); after the drain timeout
// what is left is cut. It returns nil after a drain.
func (s *Server) ServeListener(ctx context.Context, ln net.Listener) error {
	// go-control-plane's streams run until this context ends.
	streamCtx, endStreams := context.WithCancel(context.Background())
	defer endStreams()
	xs := serverv3.NewServer(streamCtx, parkingCache{SnapshotCache: s.cache, log: s.log}, callbacks{s: s, listener: s.listeners.Add(1)},
		sotw.WithOrderedADS(), sotw.WithLogger(s.gcpLog))

	// As go-control-plane's example server, keepalive pings find dead
	// Envoys. Pings from Envoy are accepted down to 5s (as for ext_proc),
	// below the 30s of the example, so an Envoy configured with a shorter
	// connection_keepalive is not sent away with too_many_pings. What
	// clients can make the server hold is bounded (see limits.go): the
	// connections (limitListener), the streams of a connection (HTTP/2's
	// limit, and limitStreams for ADS), the streams in all (limitStreams),
	// the size of a request.
	ln = limitListener{Listener: ln, s: s}
	opts := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(uint32(s.limits.MaxStreamsPerConnection + transportExtraStreams)),
		grpc.MaxRecvMsgSize(maxRequestBytes),
		grpc.StatsHandler(connTagger{}),
		grpc.StreamInterceptor(s.limitStreams),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    30 * time.Second,
			Timeout: keepaliveTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             5 * time.Second,
			PermitWithoutStream: true,
		}),
	}
	// Every connection is tagged with its peer as the kernel names it
	// (peer.go); the options the caller gives come after, and may replace
	// the credentials (tests).
	opts = append(opts, grpc.Creds(peerCredentials{}))
	opts = append(opts, s.serverOpts...)
	gs := grpc.NewServer(opts...)
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, xs)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)

	return grpcserve.Serve(ctx, gs, ln, grpcserve.Drain{
		Name:    "xds",
		Logger:  s.log,
		Health:  hs,
		Timeout: s.drainTimeout,
		Serving: &s.serving,
		// ADS streams never end on their own: once GracefulStop has begun
		// refusing new streams, end them, so that the drain finishes as
		// soon as their last responses are out.
		OnDrain: endStreams,
	})
}

// keepaliveTimeout is how long a keepalive ping, or data sent, may wait for
// its acknowledgement before the connection is closed.
const keepaliveTimeout = 5 * time.Second

// Ready reports nil while the server serves on at least one listener and is
// not draining; it fits internal/admin's readiness checks.
func (s *Server) Ready(context.Context) error {
	if s.serving.Load() <= 0 {
		return errors.New("xds: not serving")
	}
	return nil
}

// parkingCache is the snapshot cache as go-control-plane's server sees it.
// It holds the watch of a SotW NACK instead of answering it with the
// version it rejects.
//
// A SotW NACK carries the version_info of the last version the node
// accepted and the response_nonce of the response it rejects. The snapshot
// cache compares only version_info with its version, so it answers a NACK
// at once with the rejected version again, which the node rejects again,
// in a loop. The rejected version is the one the stream's subscription
// records as last returned (go-control-plane's Subscription contract: for
// SotW, the version of the response each resource was last sent in; for
// clusters and listeners, which are sent in full, that is the rejected
// response's version). The watch is created for a request that claims that
// version, so the cache holds it until a new version is set, and answers at
// once if one already was. A NACK of a response without resources cannot
// be placed this way and is answered as go-control-plane does; realipd's
// versions always hold clusters and listeners.
//
// Delta needs no help: the delta server records the resources of every
// response it sends as the client's, so a NACK finds nothing to send until
// a resource changes.
//
// The cache keeps a request for as long as its watch is open, and the
// first request of a node for as long as the node is connected; it is
// handed only what it answers from (the node id, type URL, version,
// resource names and nonce), not the node's metadata or a NACK's message.
// The responses carry that request back to OnStreamResponse and
// OnStreamDeltaResponse.
type parkingCache struct {
	cache.SnapshotCache
	log *slog.Logger
}

// CreateWatch creates the watch of a SotW request (see parkingCache).
func (c parkingCache) CreateWatch(req *cache.Request, sub cache.Subscription, out chan cache.Response) (func(), error) {
	version := req.GetVersionInfo()
	if req.GetErrorDetail() != nil {
		v, ok := lastReturnedVersion(sub)
		switch {
		case !ok:
			c.log.Debug("xds: NACK of a response without resources: answered with the current version",
				"node", req.GetNode().GetId(), "type_url", req.GetTypeUrl())
		default:
			version = v
		}
	}
	return c.SnapshotCache.CreateWatch(&discovery.DiscoveryRequest{
		VersionInfo:   version,
		Node:          &core.Node{Id: req.GetNode().GetId()},
		ResourceNames: req.GetResourceNames(),
		TypeUrl:       req.GetTypeUrl(),
		ResponseNonce: req.GetResponseNonce(),
	}, sub, out)
}

// CreateDeltaWatch creates the watch of a delta request (see parkingCache).
func (c parkingCache) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, out chan cache.DeltaResponse) (func(), error) {
	return c.SnapshotCache.CreateDeltaWatch(&discovery.DeltaDiscoveryRequest{
		Node:          &core.Node{Id: req.GetNode().GetId()},
		TypeUrl:       req.GetTypeUrl(),
		ResponseNonce: req.GetResponseNonce(),
	}, sub, out)
}

// lastReturnedVersion returns the version of the last response the SotW
// subscription sub was sent: the version its returned resources share.
func lastReturnedVersion(sub cache.Subscription) (string, bool) {
	version, ok := "", false
	for _, v := range sub.ReturnedResources() {
		if ok && v != version {
			return "", false
		}
		version, ok = v, true
	}
	return version, ok
}

// gcpLogger adapts go-control-plane's logger onto slog, at debug level
// whatever go-control-plane's level (it is verbose, and what matters to an
// operator is logged by the Server itself); the original level is the
// go_control_plane_level attribute.
type gcpLogger struct{ log *slog.Logger }

func (l gcpLogger) Debugf(format string, args ...any) { l.logf("debug", format, args) }
func (l gcpLogger) Infof(format string, args ...any)  { l.logf("info", format, args) }
func (l gcpLogger) Warnf(format string, args ...any)  { l.logf("warn", format, args) }
func (l gcpLogger) Errorf(format string, args ...any) { l.logf("error", format, args) }

func (l gcpLogger) logf(level, format string, args []any) {
	if !l.log.Enabled(context.Background(), slog.LevelDebug) {
		return // go-control-plane logs on every watch: format nothing
	}
	l.log.Debug("xds: go-control-plane: "+fmt.Sprintf(format, args...), "go_control_plane_level", level)
}
