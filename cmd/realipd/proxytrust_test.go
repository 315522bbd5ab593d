package main

import (
	"context"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/config"
)

// TestProxyProtocolTrustWithAnyStrategy: with a strategy that does not
// read trust.trusted_cidrs, origdst.proxy_protocol still takes them as the
// peers whose PROXY header counts (the configuration allows exactly that
// combination), so the native listener builds.
func TestProxyProtocolTrustWithAnyStrategy(t *testing.T) {
	cfg := config.Default()
	cfg.ExtProc.Enabled, cfg.XDS.Enabled, cfg.Admin.Enabled = false, false, false
	cfg.Trust.Strategy, cfg.Trust.Header = "single_header", "X-Real-IP"
	cfg.Trust.TrustedCIDRs = config.CIDRs("10.0.0.0/8")
	cfg.OrigDst.Enabled, cfg.OrigDst.Fallback, cfg.OrigDst.ProxyProtocol = true, "never", true
	cfg.OrigDst.Listen = []string{"192.0.2.1:1"} // not an address of this host: binding it would fail
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := buildRoles(&cfg, discardLogger())
	if err != nil {
		t.Fatalf("buildRoles: %v", err)
	}
	defer s.stop()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.roles[0].run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("idle role: %v", err)
	}
}
