package origdst

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Clock is the time a Handoff runs on: the real one (time.Now,
// time.AfterFunc) unless a test gives its own.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f on a goroutine of its own once d has passed,
	// unless the returned Timer is stopped first.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending call of Clock.AfterFunc.
type Timer interface {
	// Stop prevents the call if it has not started; it reports whether
	// it did.
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time                            { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// The holder of a capture port (PortState.Holder).
const (
	HolderNative = "native" // the native listener accepts on it
	HolderEnvoy  = "envoy"  // an Envoy node holds it: the native listener does not listen
	HolderNone   = "none"   // no Envoy holds it and binding it again failed (retrying)
)

// Backoff of the retries when binding a port again fails.
const (
	rebindBackoffMin = 250 * time.Millisecond
	rebindBackoffMax = 30 * time.Second
)

// HandoffOptions are the settings of a Handoff.
type HandoffOptions struct {
	// Grace is how long a node whose ADS stream is gone still holds the
	// ports it ACKed (origdst.fallback_grace): a node that comes back and
	// ACKs again within it keeps them, and the native listener binds a
	// port again only once every node that held it has been gone for
	// that long. 0 binds again at once.
	Grace time.Duration
	// Clock is the time the grace and the retries are measured on; nil is
	// the real clock.
	Clock Clock
}

// PortState is what a Handoff says about one capture port.
type PortState struct {
	Port uint16
	// Holder is HolderNative, HolderEnvoy or HolderNone.
	Holder string
	// Nodes are the Envoy nodes holding the port, connected or gone for
	// less than the grace, sorted; none unless Holder is HolderEnvoy.
	Nodes []string
	// Error is why binding the port again failed (Holder HolderNone).
	Error string
}

// Handoff runs a Server with origdst.fallback: auto: it hands each capture
// port over to Envoy when an Envoy node ACKs a listener on it, and takes it
// back when every such node has been gone for the grace period.
//
// Its ListenerACKed and NodeGone methods have the signature of xds.Events
// (the caller composes them into the xDS server's events; origdst does not
// import xds). They never block: they record the event and wake the
// Handoff's own goroutine, which binds and closes the listeners.
//
// A port is held by Envoy while at least one node that ACKed a listener on
// it is connected, or has been gone (NodeGone) for less than the grace; a
// node that ACKs the port again within the grace keeps holding it. While
// held, the native listener does not listen on it: its listeners were
// closed when it was handed over (the connections they had accepted go on
// until they end). ACKs repeat with every listener version and are
// idempotent; ACKs of ports that are not capture ports are ignored. Once no
// node holds a port, every capture address with that port is bound again
// (with SO_REUSEPORT); a failure is logged and counted, the port is not
// ready, and binding is retried with backoff.
type Handoff struct {
	srv   *Server // nil when ops is a test's
	ops   portOps
	grace time.Duration
	clock Clock
	log   *slog.Logger
	m     *handoffMetrics

	mu      sync.Mutex
	queue   []handoffEvent
	view    []PortState // published by the loop, in port order
	running bool        // the loop runs
	wake    chan struct{}
	syncc   chan chan struct{} // tests: answered once the events queued before are applied

	// Owned by the loop (and by Serve before the loop starts).
	ports []*handoffPort // in port order
	byNum map[uint16]*handoffPort
}

// handoffEvent is one call of ListenerACKed (gone false) or NodeGone.
type handoffEvent struct {
	node string
	port uint32
	gone bool
	at   time.Time
}

// handoffPort is the state of one capture port.
type handoffPort struct {
	num    uint16
	native bool // its listeners accept
	// holds are the nodes that ACKed a listener on the port, each with
	// the end of its grace: zero while the node is connected.
	holds   map[string]time.Time
	err     error // the last failure to bind it again
	retryAt time.Time
	backoff time.Duration
}

// portOps binds and closes the listeners of a capture port.
type portOps interface {
	// serve binds every capture address of port (SO_REUSEPORT) and
	// serves it; all or none.
	serve(port uint16) error
	// release closes the listeners of port; their connections go on.
	release(port uint16)
}

// NewHandoff builds the Handoff of srv, whose capture ports are those of
// its Options.Listen. It registers its metrics with the server's
// Registerer; it binds nothing (see Bind and Serve).
func NewHandoff(srv *Server, opts HandoffOptions) (*Handoff, error) {
	m := srv.m.handoff
	ops := &serverPorts{srv: srv, idx: map[uint16][]int{}, lns: map[uint16][]*Listener{}}
	var ports []uint16
	for i, a := range srv.opts.Listen {
		ops.idx[a.Port()] = append(ops.idx[a.Port()], i)
		if !slices.Contains(ports, a.Port()) {
			ports = append(ports, a.Port())
		}
	}
	h, err := newHandoff(ports, ops, opts, srv.log, m)
	if err != nil {
		return nil, err
	}
	h.srv = srv
	return h, nil
}

func newHandoff(ports []uint16, ops portOps, opts HandoffOptions, log *slog.Logger, m *handoffMetrics) (*Handoff, error) {
	if opts.Grace < 0 {
		return nil, errors.New("origdst: negative fallback grace")
	}
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handoff{
		ops: ops, grace: opts.Grace, clock: opts.Clock, log: log, m: m,
		wake:  make(chan struct{}, 1),
		syncc: make(chan chan struct{}),
		byNum: map[uint16]*handoffPort{},
	}
	for _, p := range ports {
		hp := &handoffPort{num: p, native: true, holds: map[string]time.Time{}}
		h.ports = append(h.ports, hp)
		h.byNum[p] = hp
	}
	slices.SortFunc(h.ports, func(a, b *handoffPort) int { return cmp.Compare(a.num, b.num) })
	h.publish()
	return h, nil
}

// Bind opens every capture address as Server.Bind does (all or none, a
// *BindError naming the address), with SO_REUSEPORT, so that an Envoy
// running as the same user can bind the ports too while the native
// listener still holds them.
func (h *Handoff) Bind(ctx context.Context) ([]*Listener, error) {
	lns, err := h.srv.bind(ctx, h.srv.all(), true)
	if err == nil && !migratesRequests() {
		h.log.Info("origdst: net.ipv4.tcp_migrate_req is not 1: when a capture port is handed to Envoy, the connections still in the native listener's accept queue are reset; with it set to 1 (Linux 5.14 and later) the kernel moves them to Envoy's socket")
	}
	return lns, err
}

// migratesRequests reports whether the kernel moves the connections of a
// closing listener's accept queue to another socket of its SO_REUSEPORT
// group (net.ipv4.tcp_migrate_req, in this network namespace); false
// when it does not or cannot say.
func migratesRequests() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// Serve serves lns, the listeners Bind returned, and hands the ports over
// and back as the events say, until ctx ends; then the server drains as in
// Server.ServeListeners (every listener still open closes, the connections
// have DrainTimeout to finish). Events that came before Serve are applied
// when it starts. It must not overlap ServeListeners.
func (h *Handoff) Serve(ctx context.Context, lns []*Listener) error {
	ops := h.ops.(*serverPorts)
	if len(lns) != len(h.srv.opts.Listen) {
		for _, l := range lns {
			l.Close()
		}
		return fmt.Errorf("origdst: Handoff.Serve got %d listeners for %d capture addresses", len(lns), len(h.srv.opts.Listen))
	}
	end, err := h.srv.begin(ctx)
	if err != nil {
		for _, l := range lns {
			l.Close()
		}
		return err
	}
	// Every port starts served by lns (also when Serve runs again after
	// it returned); what nodes hold is kept.
	clear(ops.lns)
	for _, p := range h.ports {
		p.native, p.err, p.retryAt, p.backoff = true, nil, time.Time{}, 0
	}
	for i, ln := range lns {
		port := h.srv.opts.Listen[i].Port()
		ops.lns[port] = append(ops.lns[port], ln)
		h.srv.serveListener(ln) // cannot fail: the session is not draining yet
	}
	h.run(ctx)
	return end()
}

// ListenerACKed records that node has ACKed a listener on port (see
// xds.Events). It never blocks.
func (h *Handoff) ListenerACKed(node string, port uint32) {
	h.push(handoffEvent{node: node, port: port, at: h.clock.Now()})
}

// NodeGone records that node's last ADS stream is gone (see xds.Events):
// the ports it holds are released once the grace has passed, unless it
// ACKs them again before. It never blocks.
func (h *Handoff) NodeGone(node string) {
	h.push(handoffEvent{node: node, gone: true, at: h.clock.Now()})
}

func (h *Handoff) push(ev handoffEvent) {
	h.mu.Lock()
	h.queue = append(h.queue, ev)
	h.mu.Unlock()
	h.signal()
}

// signal wakes the loop.
func (h *Handoff) signal() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// Ports returns the state of every capture port, in port order.
func (h *Handoff) Ports() []PortState {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := slices.Clone(h.view)
	for i := range out {
		out[i].Nodes = slices.Clone(out[i].Nodes)
	}
	return out
}

// Ready reports nil while every capture port is either served by the
// native listener or held by an Envoy node; an error before Serve runs,
// while a port could not be bound again, and while draining.
func (h *Handoff) Ready(context.Context) error {
	if h.srv != nil && h.srv.isDraining() {
		return errors.New("origdst: draining")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.running {
		return errors.New("origdst: not serving yet")
	}
	for _, p := range h.view {
		if p.Holder == HolderNone {
			return fmt.Errorf("origdst: port %d: no Envoy holds it and the native listener could not bind it again: %s", p.Port, p.Error)
		}
	}
	return nil
}

// run is the loop: it applies the events, binds and closes the ports'
// listeners, and sleeps until the next event, the end of a grace or a
// retry, until ctx ends.
func (h *Handoff) run(ctx context.Context) {
	h.mu.Lock()
	h.running = true
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.running = false
		h.mu.Unlock()
	}()
	var (
		timer  Timer
		synced []chan struct{}
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if ctx.Err() != nil {
			// The drain closes every listener: bind nothing more (the
			// select below may have picked a wake over the end).
			for _, c := range synced {
				close(c)
			}
			return
		}
		h.mu.Lock()
		evs := h.queue
		h.queue = nil
		h.mu.Unlock()
		for _, ev := range evs {
			h.apply(ev)
		}
		now := h.clock.Now()
		next := h.reconcile(now)
		h.publish()
		if timer != nil {
			timer.Stop()
			timer = nil
		}
		if !next.IsZero() {
			timer = h.clock.AfterFunc(max(next.Sub(now), 0), h.signal)
		}
		for _, c := range synced {
			close(c)
		}
		synced = synced[:0]
		select {
		case <-ctx.Done():
			return
		case <-h.wake:
		case c := <-h.syncc:
			synced = append(synced, c)
		}
	}
}

// sync returns once the loop has applied every event queued before the
// call and acted on them (tests).
func (h *Handoff) sync(ctx context.Context) error {
	c := make(chan struct{})
	select {
	case h.syncc <- c:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// apply records one event.
func (h *Handoff) apply(ev handoffEvent) {
	if ev.gone {
		for _, p := range h.ports {
			if until, ok := p.holds[ev.node]; ok && until.IsZero() {
				p.holds[ev.node] = ev.at.Add(h.grace)
			}
		}
		return
	}
	if ev.port > 0xffff {
		return
	}
	p := h.byNum[uint16(ev.port)]
	if p == nil {
		return // not a capture port
	}
	p.holds[ev.node] = time.Time{}
}

// reconcile ends the graces that are over, hands over the ports that a
// node holds and takes back the others; it returns when it must run again
// (the end of the next grace or the next retry), or zero.
func (h *Handoff) reconcile(now time.Time) (next time.Time) {
	soonest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, p := range h.ports {
		for node, until := range p.holds {
			if !until.IsZero() && !now.Before(until) {
				delete(p.holds, node)
			}
		}
		held := len(p.holds) > 0
		switch {
		case held && p.native:
			h.ops.release(p.num)
			p.native = false
			h.m.handoffs[toEnvoy].Inc()
			h.log.Info("origdst: an Envoy holds the port: the native listener stopped accepting on it; its connections finish", "port", p.num, "nodes", sortedNodes(p.holds))
		case held:
			p.err, p.retryAt, p.backoff = nil, time.Time{}, 0
		case !p.native && !now.Before(p.retryAt):
			if err := h.ops.serve(p.num); err != nil {
				p.err = err
				p.backoff = min(max(2*p.backoff, rebindBackoffMin), rebindBackoffMax)
				p.retryAt = now.Add(p.backoff)
				h.m.bindFailures.Inc()
				addr, reason := bindFailure(p.num, err)
				h.log.Warn("origdst: no Envoy holds the port, and the native listener cannot bind it again; retrying",
					"address", addr, "reason", reason, "retry_in", p.backoff)
				break
			}
			p.native = true
			p.err, p.retryAt, p.backoff = nil, time.Time{}, 0
			h.m.handoffs[toNative].Inc()
			h.log.Info("origdst: no Envoy holds the port any more: the native listener accepts on it again", "port", p.num, "fallback_grace", h.grace)
		}
		if !p.native && !held {
			soonest(p.retryAt)
		}
		for _, until := range p.holds {
			soonest(until)
		}
	}
	return next
}

// bindFailure returns the address and the reason of a failure to bind a
// port again.
func bindFailure(port uint16, err error) (addr, reason string) {
	if be, ok := errors.AsType[*BindError](err); ok && be.ListenError != nil {
		return be.Addr.String(), be.Reason()
	}
	return ":" + strconv.Itoa(int(port)), err.Error()
}

// publish makes the loop's state what Ports and Ready see, and sets the
// ports gauge.
func (h *Handoff) publish() {
	view := make([]PortState, len(h.ports))
	var count [numHolders]int
	for i, p := range h.ports {
		ps := PortState{Port: p.num}
		switch {
		case p.native:
			ps.Holder = HolderNative
			count[holderNative]++
		case len(p.holds) > 0:
			ps.Holder = HolderEnvoy
			ps.Nodes = sortedNodes(p.holds)
			count[holderEnvoy]++
		default:
			ps.Holder = HolderNone
			if p.err != nil {
				_, ps.Error = bindFailure(p.num, p.err)
			}
			count[holderNone]++
		}
		view[i] = ps
	}
	for k, n := range count {
		h.m.ports[k].Set(float64(n))
	}
	h.mu.Lock()
	h.view = view
	h.mu.Unlock()
}

func sortedNodes(holds map[string]time.Time) []string {
	return slices.Sorted(maps.Keys(holds))
}

// serverPorts binds and closes a Server's listeners, port by port. Only
// the Handoff's loop (and Serve, before it) uses it.
type serverPorts struct {
	srv *Server
	idx map[uint16][]int       // the Options.Listen indexes of each port
	lns map[uint16][]*Listener // the listeners of the ports served
}

func (sp *serverPorts) serve(port uint16) error {
	lns, err := sp.srv.bind(context.Background(), sp.idx[port], true)
	if err != nil {
		return err
	}
	for i, ln := range lns {
		if err := sp.srv.serveListener(ln); err != nil {
			for _, l := range lns[i+1:] {
				l.Close()
			}
			for _, l := range lns[:i] {
				sp.srv.closeListener(l)
			}
			return err
		}
	}
	sp.lns[port] = lns
	return nil
}

func (sp *serverPorts) release(port uint16) {
	for _, ln := range sp.lns[port] {
		sp.srv.closeListener(ln)
	}
	delete(sp.lns, port)
}
