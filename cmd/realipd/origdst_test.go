package main

import (
	"context"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/config"
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
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.roles[0].run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("idle role: %v", err)
	}
}
