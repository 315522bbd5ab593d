package origdst

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/realipd/realipd/sockowner"
)

// fakeClock is a Clock that moves only when Advance is called; the
// AfterFunc calls that come due run in Advance.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c  *fakeClock
	at time.Time
	f  func()
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	i := slices.Index(t.c.timers, t)
	if i < 0 {
		return false
	}
	t.c.timers = slices.Delete(t.c.timers, i, i+1)
	return true
}

// Advance moves the clock on by d and runs the timers that came due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*fakeTimer
	c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool {
		if t.at.After(c.now) {
			return false
		}
		due = append(due, t)
		return true
	})
	c.mu.Unlock()
	for _, t := range due {
		t.f()
	}
}

// pending returns how many timers are waiting.
func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// fakePorts is a portOps that records what the Handoff asks and fails
// the binds of the ports in fail; Envoy listens on the ports in envoy.
type fakePorts struct {
	mu      sync.Mutex
	calls   []string // "serve 15001", "release 15001"
	serving map[uint16]bool
	fail    map[uint16]error
	envoy   map[uint16]bool
	uids    []uint32 // the uids envoyListens was asked about
}

// testUID is the user Envoy runs as in these tests, and envoyPeer an ADS
// peer of that user.
const testUID = 1337

var envoyPeer = sockowner.Peer{UID: testUID, Known: true}

func (f *fakePorts) serve(port uint16) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprint("serve ", port))
	if err := f.fail[port]; err != nil {
		return err
	}
	f.serving[port] = true
	return nil
}

func (f *fakePorts) release(port uint16) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprint("release ", port))
	delete(f.serving, port)
	return nil
}

func (f *fakePorts) envoyListens(port uint16, uid uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.uids = append(f.uids, uid)
	if !f.envoy[port] {
		return fmt.Errorf("no socket of uid %d listens on :%d", uid, port)
	}
	return nil
}

// setEnvoy says whether Envoy listens on port.
func (f *fakePorts) setEnvoy(port uint16, listens bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.envoy[port] = listens
}

func (f *fakePorts) setFail(port uint16, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, port)
		return
	}
	f.fail[port] = err
}

func (f *fakePorts) took() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// handoffRig is a Handoff on a fake clock and fake ports, its loop
// running.
type handoffRig struct {
	h     *Handoff
	clock *fakeClock
	ports *fakePorts
	reg   *prometheus.Registry
}

const testGrace = 5 * time.Second

func newHandoffRig(t *testing.T, ports ...uint16) *handoffRig {
	t.Helper()
	r := startedRig(t, ports...)
	r.start(t)
	r.settle(t)
	return r
}

// startedRig builds the rig without starting the loop (start does).
func startedRig(t *testing.T, ports ...uint16) *handoffRig {
	t.Helper()
	r := &handoffRig{clock: newFakeClock(), reg: prometheus.NewRegistry()}
	r.ports = &fakePorts{serving: map[uint16]bool{}, fail: map[uint16]error{}, envoy: map[uint16]bool{}}
	for _, p := range ports {
		r.ports.serving[p] = true // bound at start
		r.ports.envoy[p] = true   // and Envoy listens there too, unless a test says otherwise
	}
	m, err := newHandoffMetrics(r.reg)
	if err != nil {
		t.Fatal(err)
	}
	uid := uint32(testUID)
	if r.h, err = newHandoff(ports, r.ports, HandoffOptions{Grace: testGrace, Clock: r.clock, EnvoyUID: &uid}, nil, m); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *handoffRig) start(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.h.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// settle waits until the loop has acted on every event so far.
func (r *handoffRig) settle(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.h.sync(ctx); err != nil {
		t.Fatalf("the handoff loop did not answer: %v", err)
	}
}

// advance moves the clock on and waits for the loop to act.
func (r *handoffRig) advance(t *testing.T, d time.Duration) {
	t.Helper()
	r.clock.Advance(d)
	r.settle(t)
}

// state says who holds each port: "native", "envoy n1,n2" or "none".
func (r *handoffRig) state(t *testing.T) map[uint16]string {
	t.Helper()
	out := map[uint16]string{}
	for _, p := range r.h.Ports() {
		s := p.Holder
		if len(p.Nodes) > 0 {
			s += " " + strings.Join(p.Nodes, ",")
		}
		out[p.Port] = s
	}
	return out
}

func (r *handoffRig) want(t *testing.T, step string, want map[uint16]string) {
	t.Helper()
	got := r.state(t)
	for p, w := range want {
		if got[p] != w {
			t.Errorf("%s: port %d: %q, want %q (all: %v)", step, p, got[p], w, got)
		}
	}
}

func (r *handoffRig) wantCalls(t *testing.T, step string, want ...string) {
	t.Helper()
	if got := r.ports.took(); !slices.Equal(got, want) {
		t.Errorf("%s: the handoff did %q, want %q", step, got, want)
	}
}

// metricValue returns the value of a realipd_origdst_ counter or gauge in
// reg, with the given label value (if any).
func metricValue(t testing.TB, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "realipd_origdst_"+name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetValue() == label }) {
				continue
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	return 0
}

func (r *handoffRig) wantMetric(t *testing.T, name, label string, want float64) {
	t.Helper()
	if got := metricValue(t, r.reg, name, label); got != want {
		t.Errorf("realipd_origdst_%s{%s} = %v, want %v", name, label, got, want)
	}
}

// TestHandoffACK: a node's ACK of a listener on a capture port hands that
// port to Envoy at once; the other port stays native; both are ready.
func TestHandoffACK(t *testing.T) {
	r := newHandoffRig(t, 15001, 15006)
	r.want(t, "start", map[uint16]string{15001: "native", 15006: "native"})
	if err := r.h.Ready(t.Context()); err != nil {
		t.Errorf("Ready at start: %v", err)
	}
	r.h.ListenerACKed("n1", envoyPeer, 15001)
	r.settle(t)
	r.want(t, "ACK", map[uint16]string{15001: "envoy n1", 15006: "native"})
	r.wantCalls(t, "ACK", "release 15001")
	r.wantMetric(t, "handoffs_total", "envoy", 1)
	r.wantMetric(t, "handoffs_total", "native", 0)
	r.wantMetric(t, "ports", "native", 1)
	r.wantMetric(t, "ports", "envoy", 1)
	r.wantMetric(t, "ports", "none", 0)
	if err := r.h.Ready(t.Context()); err != nil {
		t.Errorf("Ready with a port held by Envoy: %v", err)
	}
	if n := r.clock.pending(); n != 1 {
		t.Errorf("%d timers pending, want 1: the next check of Envoy's socket", n)
	}
}

// TestHandoffGrace: a node that is gone still holds its ports until the
// grace has passed; then they are bound again.
func TestHandoffGrace(t *testing.T) {
	r := newHandoffRig(t, 15001, 15006)
	r.h.ListenerACKed("n1", envoyPeer, 15001)
	r.h.ListenerACKed("n1", envoyPeer, 15006)
	r.h.NodeGone("n1")
	r.settle(t)
	r.want(t, "gone", map[uint16]string{15001: "envoy n1", 15006: "envoy n1"})
	r.advance(t, testGrace-time.Millisecond)
	r.want(t, "gone, grace not over", map[uint16]string{15001: "envoy n1", 15006: "envoy n1"})
	r.wantCalls(t, "grace not over", "release 15001", "release 15006")
	r.advance(t, time.Millisecond)
	r.want(t, "grace over", map[uint16]string{15001: "native", 15006: "native"})
	r.wantCalls(t, "grace over", "release 15001", "release 15006", "serve 15001", "serve 15006")
	r.wantMetric(t, "handoffs_total", "native", 2)
	r.wantMetric(t, "ports", "native", 2)
	if n := r.clock.pending(); n != 0 {
		t.Errorf("%d timers pending after the grace", n)
	}
}

// TestHandoffGraceTimer: the loop wakes by itself when the grace ends
// (the timer it armed), without any other event.
func TestHandoffGraceTimer(t *testing.T) {
	r := newHandoffRig(t, 15001)
	r.h.ListenerACKed("n1", envoyPeer, 15001)
	r.h.NodeGone("n1")
	r.settle(t)
	r.clock.Advance(testGrace)
	deadline := time.Now().Add(10 * time.Second)
	for r.state(t)[15001] != "native" {
		if time.Now().After(deadline) {
			t.Fatalf("the port was not bound again when the grace ended: %v", r.state(t))
		}
		time.Sleep(time.Millisecond) // polling the published state
	}
}

// TestHandoffReACK: a node that comes back and ACKs again within the
// grace keeps the port; when it goes again, the grace starts anew.
func TestHandoffReACK(t *testing.T) {
	r := newHandoffRig(t, 15001)
	r.h.ListenerACKed("n1", envoyPeer, 15001)
	r.h.NodeGone("n1")
	r.settle(t)
	r.advance(t, testGrace/2)
	r.h.ListenerACKed("n1", envoyPeer, 15001)
	r.settle(t)
	r.advance(t, testGrace)
	r.want(t, "back within the grace", map[uint16]string{15001: "envoy n1"})
	r.h.NodeGone("n1")
	r.settle(t)
	r.advance(t, testGrace-time.Millisecond)
	r.want(t, "gone again", map[uint16]string{15001: "envoy n1"})
	r.advance(t, time.Millisecond)
	r.want(t, "gone for the grace", map[uint16]string{15001: "native"})
	r.wantCalls(t, "", "release 15001", "serve 15001")
	r.wantMetric(t, "handoffs_total", "envoy", 1)
	r.wantMetric(t, "handoffs_total", "native", 1)
}

// TestHandoffTwoNodes: a port held by two nodes comes back only when both
// have been gone for the grace.
func TestHandoffTwoNodes(t *testing.T) {
	r := newHandoffRig(t, 15001)
	r.h.ListenerACKed("n2", envoyPeer, 15001)
	r.h.ListenerACKed("n1", envoyPeer, 15001)
	r.settle(t)
	r.want(t, "both", map[uint16]string{15001: "envoy n1,n2"})
	r.h.NodeGone("n1")
	r.settle(t)
	r.advance(t, 2*testGrace)
	r.want(t, "n1 gone", map[uint16]string{15001: "envoy n2"})
	r.h.NodeGone("n2")
	r.settle(t)
	r.advance(t, testGrace/2)
	r.want(t, "n2 gone, in its grace", map[uint16]string{15001: "envoy n2"})
	r.advance(t, testGrace/2)
	r.want(t, "both gone", map[uint16]string{15001: "native"})
	r.wantCalls(t, "", "release 15001", "serve 15001")
}

// TestHandoffIgnoresOtherPorts: ACKs of ports that are not captured (an
// HTTP port, a port number out of range) change nothing, and neither does
// the NodeGone of a node that held nothing.
func TestHandoffIgnoresOtherPorts(t *testing.T) {
	r := newHandoffRig(t, 15001, 15006)
	r.h.ListenerACKed("n1", envoyPeer, 8080)
	r.h.ListenerACKed("n1", envoyPeer, 15001+1<<16)
	r.h.NodeGone("n1")
	r.settle(t)
	r.advance(t, testGrace)
	r.want(t, "", map[uint16]string{15001: "native", 15006: "native"})
	r.wantCalls(t, "")
	r.wantMetric(t, "handoffs_total", "envoy", 0)
}

// TestHandoffIdempotent: the ACKs of every listener version repeat the
// same (node, port): one handoff, one rebind.
func TestHandoffIdempotent(t *testing.T) {
	r := newHandoffRig(t, 15001)
	for range 3 {
		r.h.ListenerACKed("n1", envoyPeer, 15001)
		r.settle(t)
	}
	r.h.ListenerACKed("n1", envoyPeer, 15001)
	r.h.ListenerACKed("n1", envoyPeer, 15001)
	r.h.NodeGone("n1")
	r.settle(t)
	r.advance(t, testGrace)
	r.want(t, "", map[uint16]string{15001: "native"})
	r.wantCalls(t, "", "release 15001", "serve 15001")
	r.wantMetric(t, "handoffs_total", "envoy", 1)
	r.wantMetric(t, "handoffs_total", "native", 1)
}

// TestHandoffEventsBeforeServe: events that come before the loop runs
// are applied when it starts; Ready is an error until then.
func TestHandoffEventsBeforeServe(t *testing.T) {
	r := startedRig(t, 15001)
	if err := r.h.Ready(t.Context()); err == nil || !strings.Contains(err.Error(), "not serving yet") {
		t.Errorf("Ready before the loop runs = %v", err)
	}
	// The events come on the xDS server's goroutine, which must never
	// wait: many before the loop runs, none of them blocking.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			r.h.ListenerACKed("n0", envoyPeer, 15001)
			r.h.NodeGone("n0")
		}
		r.h.ListenerACKed("n1", envoyPeer, 15001)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ListenerACKed and NodeGone blocked before the loop ran")
	}
	r.start(t)
	r.settle(t)
	// n0 is gone but in its grace; n1 holds the port on its own after it.
	r.want(t, "", map[uint16]string{15001: "envoy n0,n1"})
	r.advance(t, testGrace)
	r.want(t, "", map[uint16]string{15001: "envoy n1"})
}

// TestHandoffRebindFails: a port that cannot be bound again is not
// ready, counted and retried with growing backoff on the clock until it
// binds; a node that ACKs it meanwhile holds it and the retries stop.
func TestHandoffRebindFails(t *testing.T) {
	r := newHandoffRig(t, 15001, 15006)
	inUse := &BindError{Index: 0, ListenError: &ListenError{Addr: netip.MustParseAddrPort("0.0.0.0:15001"), Err: fmt.Errorf("bind: %w", syscall.EADDRINUSE)}}
	r.ports.setFail(15001, inUse)
	r.h.ListenerACKed("n1", envoyPeer, 15001)
	r.h.NodeGone("n1")
	r.settle(t)
	r.advance(t, testGrace)
	r.want(t, "failed", map[uint16]string{15001: "none", 15006: "native"})
	err := r.h.Ready(t.Context())
	if err == nil || !strings.Contains(err.Error(), "port 15001") || !strings.Contains(err.Error(), "already in use") {
		t.Errorf("Ready after a failed rebind = %v", err)
	}
	if p := r.h.Ports()[0]; !strings.Contains(p.Error, "already in use") {
		t.Errorf("PortState.Error = %q", p.Error)
	}
	r.wantMetric(t, "bind_failures_total", "", 1)
	r.wantMetric(t, "ports", "none", 1)

	r.advance(t, rebindBackoffMin-time.Millisecond)
	r.wantMetric(t, "bind_failures_total", "", 1)
	r.advance(t, time.Millisecond)
	r.wantMetric(t, "bind_failures_total", "", 2)
	r.advance(t, 2*rebindBackoffMin-time.Millisecond) // the backoff doubled
	r.wantMetric(t, "bind_failures_total", "", 2)
	r.advance(t, time.Millisecond)
	r.wantMetric(t, "bind_failures_total", "", 3)

	r.ports.setFail(15001, nil)
	r.advance(t, 4*rebindBackoffMin)
	r.want(t, "bound at last", map[uint16]string{15001: "native"})
	if err := r.h.Ready(t.Context()); err != nil {
		t.Errorf("Ready once bound again: %v", err)
	}
	r.wantMetric(t, "handoffs_total", "native", 1)

	// Failing again; then a node ACKs: Envoy holds it, no more retries.
	r.h.ListenerACKed("n2", envoyPeer, 15001)
	r.h.NodeGone("n2")
	r.settle(t)
	r.ports.setFail(15001, errors.New("boom"))
	r.advance(t, testGrace)
	r.want(t, "failing again", map[uint16]string{15001: "none"})
	r.h.ListenerACKed("n2", envoyPeer, 15001)
	r.settle(t)
	r.want(t, "held", map[uint16]string{15001: "envoy n2"})
	if err := r.h.Ready(t.Context()); err != nil {
		t.Errorf("Ready once Envoy holds the port: %v", err)
	}
	before := len(r.ports.took())
	r.advance(t, rebindBackoffMax)
	if n := len(r.ports.took()) - before; n != 0 {
		t.Errorf("%d binds while Envoy holds the port", n)
	}
}

// TestHandoffBackoffBound: the retries never wait longer than
// rebindBackoffMax.
func TestHandoffBackoffBound(t *testing.T) {
	r := newHandoffRig(t, 15001)
	r.ports.setFail(15001, errors.New("boom"))
	r.h.ListenerACKed("n1", envoyPeer, 15001)
	r.h.NodeGone("n1")
	r.settle(t)
	r.advance(t, testGrace)
	for range 12 {
		r.advance(t, rebindBackoffMax)
	}
	r.wantMetric(t, "bind_failures_total", "", 13)
}

func TestNewHandoff(t *testing.T) {
	srv, err := New(Options{Mode: ModeRedirect, Listen: aps("0.0.0.0:15001", "[::]:15001", "127.0.0.1:15006")}, current(t, Settings{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewHandoff(srv, HandoffOptions{Grace: -1}); err == nil {
		t.Error("a negative grace was accepted")
	}
	h, err := NewHandoff(srv, HandoffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := h.Ports()
	want := []PortState{{Port: 15001, Holder: HolderNative}, {Port: 15006, Holder: HolderNative}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Ports() = %v, want %v", got, want)
	}
	if idx := h.ops.(*serverPorts).idx; fmt.Sprint(idx) != "map[15001:[0 1] 15006:[2]]" {
		t.Errorf("the addresses of each port: %v", idx)
	}
	if err := h.Serve(t.Context(), nil); err == nil {
		t.Error("Serve without the listeners of Bind succeeded")
	}
}

// TestHandoffIgnoresOtherPeers: an ACK is a claim only from Envoy's user,
// as the kernel names the ADS peer; from anyone else (another user, a peer
// the kernel cannot name, whatever node id it writes) it changes nothing
// and is counted.
func TestHandoffIgnoresOtherPeers(t *testing.T) {
	r := newHandoffRig(t, 15001, 15006)
	r.h.ListenerACKed("definitely-not-envoy", sockowner.Peer{UID: 65534, Known: true}, 15001)
	r.h.ListenerACKed("n1", sockowner.Peer{}, 15006)
	r.h.ListenerACKed("n1", sockowner.Peer{UID: testUID}, 15006) // a uid the kernel did not vouch for
	r.settle(t)
	r.advance(t, time.Second)
	r.want(t, "", map[uint16]string{15001: "native", 15006: "native"})
	r.wantCalls(t, "")
	r.wantMetric(t, "handoff_claims_refused_total", "peer", 3)
	r.wantMetric(t, "handoffs_total", "envoy", 0)
	if p := r.h.Ports(); len(p[0].Claimed) != 0 || len(p[1].Claimed) != 0 {
		t.Errorf("claims recorded: %+v", p)
	}
}

// TestHandoffWaitsForEnvoysSocket: a claim from Envoy's user is honoured
// only once a socket of that user listens on the port; until then the
// native listener keeps serving it, says why, and checks again.
func TestHandoffWaitsForEnvoysSocket(t *testing.T) {
	r := newHandoffRig(t, 15001)
	r.ports.setEnvoy(15001, false)
	r.h.ListenerACKed("n1", envoyPeer, 15001)
	r.settle(t)
	r.want(t, "claimed, no socket", map[uint16]string{15001: "native"})
	p := r.h.Ports()[0]
	if !slices.Equal(p.Claimed, []string{"n1"}) || !strings.Contains(p.Waiting, "no socket of uid 1337") {
		t.Errorf("PortState = %+v, want the claim and why it waits", p)
	}
	if err := r.h.Ready(t.Context()); err != nil {
		t.Errorf("Ready while the native listener serves the port: %v", err)
	}
	r.advance(t, DefaultVerifyEvery)
	r.want(t, "still no socket", map[uint16]string{15001: "native"})
	r.wantCalls(t, "still no socket")
	r.ports.setEnvoy(15001, true)
	r.advance(t, DefaultVerifyEvery)
	r.want(t, "Envoy listens", map[uint16]string{15001: "envoy n1"})
	r.wantCalls(t, "Envoy listens", "release 15001")
	if p := r.h.Ports()[0]; p.Waiting != "" || len(p.Claimed) != 0 {
		t.Errorf("PortState once handed over = %+v", p)
	}
	for _, uid := range r.ports.uids {
		if uid != testUID {
			t.Errorf("envoyListens asked about uid %d, want %d", uid, testUID)
		}
	}
}

// TestHandoffTakesBackWhenEnvoysSocketIsGone: while Envoy holds a port
// its socket is checked every VerifyEvery; once it is gone the native
// listener serves the port again at the next check, whatever the node
// says, and hands it over again when the socket is back.
func TestHandoffTakesBackWhenEnvoysSocketIsGone(t *testing.T) {
	r := newHandoffRig(t, 15001)
	r.h.ListenerACKed("n1", envoyPeer, 15001)
	r.settle(t)
	r.want(t, "held", map[uint16]string{15001: "envoy n1"})
	r.ports.setEnvoy(15001, false)
	r.advance(t, DefaultVerifyEvery)
	r.want(t, "socket gone", map[uint16]string{15001: "native"})
	r.wantCalls(t, "socket gone", "release 15001", "serve 15001")
	r.wantMetric(t, "handoff_claims_refused_total", "socket_gone", 1)
	r.wantMetric(t, "handoffs_total", "native", 1)
	if err := r.h.Ready(t.Context()); err != nil {
		t.Errorf("Ready once taken back: %v", err)
	}
	r.ports.setEnvoy(15001, true)
	r.advance(t, DefaultVerifyEvery)
	r.want(t, "socket back", map[uint16]string{15001: "envoy n1"})
	r.wantCalls(t, "socket back", "release 15001", "serve 15001", "release 15001")

	// Gone, and the native listener cannot serve the port: not ready.
	r.ports.setEnvoy(15001, false)
	r.ports.setFail(15001, errors.New("boom"))
	r.advance(t, DefaultVerifyEvery)
	r.want(t, "neither", map[uint16]string{15001: "none"})
	if err := r.h.Ready(t.Context()); err == nil || !strings.Contains(err.Error(), "port 15001") {
		t.Errorf("Ready with the port served by neither = %v", err)
	}
}
