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

	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/sockowner"
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

// DefaultVerifyEvery is how often a claimed port is checked against the
// kernel's listening sockets (HandoffOptions.VerifyEvery).
const DefaultVerifyEvery = 250 * time.Millisecond

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
	// EnvoyUID is the user Envoy runs as: only a listener ACK from an ADS
	// peer the kernel names as this user is a claim on a port, and a claim
	// is honoured only while a listening socket of this user, not the
	// native listener's, is bound to every capture address of the port.
	// nil is realipd's own effective uid: the kernel lets a socket share a
	// port the native listener holds only when both belong to the same
	// user (SO_REUSEPORT), so that is the only user Envoy can run as for a
	// handoff to work at all.
	EnvoyUID *uint32
	// VerifyEvery is how often a claimed port is checked against the
	// kernel's listening sockets (default DefaultVerifyEvery): the native
	// listener takes a port back that often after Envoy's socket is gone.
	VerifyEvery time.Duration
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
	// Claimed are the nodes that claim the port (a listener ACK from
	// Envoy's user) while the native listener still holds it, and Waiting
	// why: no socket of Envoy's user listens on every capture address of
	// the port yet (or any more).
	Claimed []string
	Waiting string
}

// Handoff runs a Server with origdst.fallback: auto: it hands each capture
// port over to Envoy when an Envoy node ACKs a listener on it and Envoy's
// socket really listens there, and takes it back when that socket is gone
// or every such node has been gone for the grace period.
//
// Its ListenerACKed and NodeGone methods have the signature of xds.Events
// (the caller composes them into the xDS server's events; origdst does not
// import xds). They never block: they record the event and wake the
// Handoff's own goroutine, which binds and closes the listeners.
//
// An ACK is a claim, not a fact: anyone who reaches the xDS listener can
// send one, under any node id. A claim counts only when the kernel names
// its ADS peer as Envoy's user (HandoffOptions.EnvoyUID); others are
// ignored and counted. A port is claimed while at least one node that
// ACKed a listener on it is connected, or has been gone (NodeGone) for
// less than the grace; a node that ACKs the port again within the grace
// keeps its claim. A claim is honoured only while a listening socket of
// Envoy's user, other than the native listener's, is bound to every
// capture address of the port, checked every VerifyEvery: until then the
// native listener keeps serving the port (and /config_dump says why);
// once Envoy holds it, the native listener's sockets are parked (see
// Listener.park: they stop accepting, the connections they had accepted
// go on, and the port stays closed to every other user); the moment
// Envoy's socket is gone they listen again. ACKs repeat with every listener
// version and are idempotent; ACKs of ports that are not capture ports are
// ignored. Once no node claims a port, the native listener serves it
// again; a failure to do so is logged and counted, the port is not ready,
// and it is retried with backoff.
type Handoff struct {
	srv    *Server // nil when ops is a test's
	ops    portOps
	grace  time.Duration
	verify time.Duration
	uid    uint32 // Envoy's user
	clock  Clock
	log    *slog.Logger
	m      *handoffMetrics
	warn   decide.Every // the warnings about refused claims

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

// handoffPort is the state of one capture port: native (the native
// listener accepts on it), Envoy's (native false, err nil: the claim was
// verified), or none (native false, err set: the native listener could
// not take it back; retrying).
type handoffPort struct {
	num    uint16
	native bool // its listeners accept
	// waiting is why the claims on a native port are not honoured yet
	// (Envoy's socket is not there); "" when none is claimed.
	waiting string
	// holds are the nodes that ACKed a listener on the port, each with
	// the end of its grace: zero while the node is connected.
	holds   map[string]time.Time
	err     error // the last failure to bind it again
	retryAt time.Time
	backoff time.Duration
}

// portOps serves and releases the listeners of a capture port, and checks
// that Envoy listens there.
type portOps interface {
	// serve makes the native listener accept on every capture address of
	// port: its parked listeners listen again, or new ones are bound (with
	// SO_REUSEPORT); all or none.
	serve(port uint16) error
	// release parks the listeners of port (they stop accepting, their
	// connections go on); all or none.
	release(port uint16) error
	// envoyListens returns nil when a socket of uid, not the native
	// listener's, listens on every capture address of port, and otherwise
	// says what is missing.
	envoyListens(port uint16, uid uint32) error
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
	if opts.VerifyEvery <= 0 {
		opts.VerifyEvery = DefaultVerifyEvery
	}
	uid := uint32(os.Geteuid())
	if opts.EnvoyUID != nil {
		uid = *opts.EnvoyUID
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handoff{
		ops: ops, grace: opts.Grace, verify: opts.VerifyEvery, uid: uid, clock: opts.Clock, log: log, m: m,
		warn:  decide.Every{Interval: time.Minute},
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
// xds.Events): a claim on the port when the kernel names peer as Envoy's
// user, ignored (and counted) otherwise. It never blocks.
func (h *Handoff) ListenerACKed(node string, peer sockowner.Peer, port uint32) {
	if !peer.Known || peer.UID != h.uid {
		h.m.claimsRefused[claimRefusedPeer].Inc()
		if h.warn.Allow() {
			h.log.Warn("origdst: ignored a listener ACK from an ADS peer that is not Envoy's user: only Envoy's user can take a capture port",
				"node", node, "peer", peer.String(), "port", port, "envoy_uid", h.uid)
		}
		return
	}
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
// native listener or held by an Envoy whose listening socket is there; an
// error before Serve runs, while a port is served by neither (Envoy's
// socket is gone and the native listener could not take the port back),
// and while draining.
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
			return fmt.Errorf("origdst: port %d: served by neither Envoy nor the native listener, which could not take it back: %s", p.Port, p.Error)
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

// reconcile ends the graces that are over, hands over the ports whose
// claims are verified, takes back the others; it returns when it must run
// again (the next verification, the end of the next grace or the next
// retry), or zero.
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
		claimed := len(p.holds) > 0
		switch {
		case claimed && p.native:
			err := h.ops.envoyListens(p.num, h.uid)
			if err == nil {
				err = h.ops.release(p.num)
			}
			if err != nil {
				if p.waiting != err.Error() {
					h.log.Info("origdst: an Envoy node claims the port, and the native listener keeps it until Envoy listens there",
						"port", p.num, "nodes", sortedNodes(p.holds), "reason", err.Error())
				}
				p.waiting = err.Error()
				break
			}
			p.native, p.waiting = false, ""
			h.m.handoffs[toEnvoy].Inc()
			h.log.Info("origdst: an Envoy listens on the port: the native listener stopped accepting on it; its connections finish", "port", p.num, "nodes", sortedNodes(p.holds))
		case claimed:
			err := h.ops.envoyListens(p.num, h.uid)
			if err == nil {
				p.err, p.retryAt, p.backoff, p.waiting = nil, time.Time{}, 0, ""
				break
			}
			if p.err == nil {
				h.m.claimsRefused[claimRefusedSocket].Inc()
				h.log.Warn("origdst: Envoy no longer listens on the port it holds: the native listener takes it back",
					"port", p.num, "nodes", sortedNodes(p.holds), "reason", err.Error())
			}
			p.waiting = err.Error()
			h.takeBack(p, now)
		case !p.native && !now.Before(p.retryAt):
			h.takeBack(p, now)
		case p.native:
			p.waiting = ""
		}
		if claimed {
			soonest(now.Add(h.verify))
		}
		if !p.native && p.err != nil {
			soonest(p.retryAt)
		}
		for _, until := range p.holds {
			soonest(until)
		}
	}
	return next
}

// takeBack makes the native listener serve p again, or schedules a retry.
func (h *Handoff) takeBack(p *handoffPort, now time.Time) {
	if now.Before(p.retryAt) {
		return
	}
	if err := h.ops.serve(p.num); err != nil {
		p.err = err
		p.backoff = min(max(2*p.backoff, rebindBackoffMin), rebindBackoffMax)
		p.retryAt = now.Add(p.backoff)
		h.m.bindFailures.Inc()
		addr, reason := bindFailure(p.num, err)
		h.log.Warn("origdst: the native listener cannot serve the port again; retrying",
			"address", addr, "reason", reason, "retry_in", p.backoff)
		return
	}
	p.native = true
	p.err, p.retryAt, p.backoff = nil, time.Time{}, 0
	h.m.handoffs[toNative].Inc()
	h.log.Info("origdst: the native listener accepts on the port again", "port", p.num, "fallback_grace", h.grace)
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
			if len(p.holds) > 0 {
				ps.Claimed, ps.Waiting = sortedNodes(p.holds), p.waiting
			}
			count[holderNative]++
		case p.err == nil:
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

// serverPorts serves, parks and checks a Server's listeners, port by
// port. Only the Handoff's loop (and Serve, before it) uses it.
type serverPorts struct {
	srv *Server
	idx map[uint16][]int       // the Options.Listen indexes of each port
	lns map[uint16][]*Listener // the listeners of each port, accepting or parked
	// listening lists the sockets listening on a port (tests replace it).
	listening func(port uint16) ([]sockowner.Socket, error)
}

func (sp *serverPorts) serve(port uint16) error {
	if lns := sp.lns[port]; len(lns) > 0 {
		// Parked: listen again on the same sockets, which never gave the
		// address up.
		for i, ln := range lns {
			if err := sp.srv.resumeListener(ln); err != nil {
				for _, l := range lns[:i] {
					_ = sp.srv.parkListener(l)
				}
				return &BindError{Index: sp.idx[port][i], ListenError: &ListenError{Addr: ln.AddrPort(), Err: err}}
			}
		}
		return nil
	}
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

func (sp *serverPorts) release(port uint16) error {
	lns := sp.lns[port]
	for i, ln := range lns {
		if err := sp.srv.parkListener(ln); err != nil {
			for _, l := range lns[:i] {
				_ = sp.srv.resumeListener(l)
			}
			return err
		}
	}
	return nil
}

// envoyListens checks the kernel's listening sockets on port: one of uid
// must be bound to each capture address of the port, and be none of the
// native listener's own.
func (sp *serverPorts) envoyListens(port uint16, uid uint32) error {
	list := sp.listening
	if list == nil {
		list = sockowner.Listening
	}
	var socks []sockowner.Socket
	var err error
	ask := func() { socks, err = list(port) }
	if sp.srv.listenOn != nil {
		sp.srv.listenOn(ask) // in the listeners' network namespace
	} else {
		ask()
	}
	if err != nil {
		return err
	}
	own := map[uint64]bool{}
	for _, ln := range sp.lns[port] {
		if ino, err := ln.Inode(); err == nil {
			own[ino] = true
		}
	}
	for _, i := range sp.idx[port] {
		addr := sp.srv.opts.Listen[i]
		found := false
		for _, s := range socks {
			if s.Addr == addr && s.V6 == addr.Addr().Is6() && s.UID == uid && !own[s.Inode] {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("no socket of uid %d other than the native listener's listens on %s", uid, addr)
		}
	}
	return nil
}
