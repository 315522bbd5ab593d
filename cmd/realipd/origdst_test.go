package main

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/origdst"
	"github.com/realipd/realipd/sockowner"
)

// TestServeOrigDstFallbackNever: fallback never runs the role idle, ready,
// without binding.
func TestServeOrigDstFallbackNever(t *testing.T) {
	cfg := config.Default()
	cfg.ExtProc.Enabled, cfg.XDS.Enabled, cfg.Admin.Enabled = false, false, false
	cfg.OrigDst.Enabled, cfg.OrigDst.Fallback = true, "never"
	cfg.OrigDst.Listen = []string{"192.0.2.1:1"} // not an address of this host: binding it would fail
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := buildRoles(&cfg, discardLogger())
	if err != nil {
		t.Fatalf("buildRoles: %v", err)
	}
	if len(s.roles) != 1 || s.roles[0].name != "origdst" || len(s.targets) != 1 || s.targets[0].name != "policies" {
		t.Fatalf("roles %v, targets %v", s.roles, s.targets)
	}
	if d := s.configDump().(configDump).OrigDst; d == nil || d.Fallback != "never" || d.Ports != nil {
		t.Errorf("config dump origdst = %+v, want fallback never", d)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.roles[0].run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("idle role: %v", err)
	}
}

// eventRecorder is an xds.Events that records what it hears.
type eventRecorder struct{ got []string }

func (r *eventRecorder) ListenerACKed(node string, peer sockowner.Peer, port uint32) {
	r.got = append(r.got, fmt.Sprintf("ack %s %s %d", node, peer, port))
}

func (r *eventRecorder) NodeGone(node string) { r.got = append(r.got, "gone "+node) }

// TestXDSEventsFanOut: every listener of the control plane's events hears
// each of them, in order.
func TestXDSEventsFanOut(t *testing.T) {
	var e xdsEvents
	a, b := &eventRecorder{}, &eventRecorder{}
	e.add(a)
	e.add(b)
	e.ListenerACKed("n1", sockowner.Peer{UID: 101, Known: true}, 15001)
	e.NodeGone("n1")
	want := []string{"ack n1 uid=101 15001", "gone n1"}
	if !slices.Equal(a.got, want) || !slices.Equal(b.got, want) {
		t.Errorf("heard %q and %q, want %q each", a.got, b.got, want)
	}
}

// TestBuildRolesWiresHandoff: with fallback auto, the xDS role's events
// reach the native listener's handoff, whose state /config_dump shows.
func TestBuildRolesWiresHandoff(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the origdst role checks at start that it may set SO_MARK (CAP_NET_ADMIN)")
	}
	cfg := config.Default()
	cfg.ExtProc.Enabled, cfg.Admin.Enabled = false, false
	cfg.XDS.Listen = "127.0.0.1:0"
	cfg.OrigDst.Enabled, cfg.OrigDst.Fallback = true, "auto"
	cfg.OrigDst.Listen = []string{"127.0.0.1:0"} // port 0: no ACK can name it, so it stays native
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := buildRoles(&cfg, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range s.roles {
		names = append(names, r.name)
	}
	if !slices.Equal(names, []string{"xds", "origdst"}) || s.xdsEvents == nil {
		t.Fatalf("roles %v, events %v", names, s.xdsEvents)
	}
	heard := s.xdsEvents.listeners()
	if len(heard) != 2 {
		t.Fatalf("the xDS events have %d listeners, want the log and the handoff", len(heard))
	}
	h, ok := heard[1].(*origdst.Handoff)
	if !ok {
		t.Fatalf("the second listener is %T, want *origdst.Handoff", heard[1])
	}
	got := s.configDump().(configDump).OrigDst
	if want := (&origdstDump{Fallback: "auto", Ports: map[string]origdstPortDump{"0": {Holder: "native"}}}); !reflect.DeepEqual(got, want) {
		t.Errorf("config dump origdst = %+v, want %+v", got, want)
	}
	if len(h.Ports()) != 1 {
		t.Errorf("handoff ports %v", h.Ports())
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- runRoles(ctx, discardLogger(), s.roles, 10*time.Second) }()
	deadline := time.Now().Add(10 * time.Second)
	for h.Ready(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v", h.Ready(ctx))
		}
		time.Sleep(5 * time.Millisecond) // polling an observable state
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}
