package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/realipd/realipd/internal/config"
)

// serveFlags are the flags of serve.
type serveFlags struct{ config, logLevel, logFormat *string }

// serveFlagSet builds serve's FlagSet without running it.
func serveFlagSet() (*flag.FlagSet, serveFlags) {
	fs := newFlagSet("serve", "serve [--config FILE] [--log-level LEVEL] [--log-format FORMAT]", `
Run every role the configuration enables (ext_proc server, xDS control plane,
admin listener, native fallback listener, eBPF capture) in one process until
SIGTERM or SIGINT, then shut them down gracefully and exit 0. Without --config
the defaults apply: ext_proc on 127.0.0.1:9001, xDS on 127.0.0.1:18000, admin
on 127.0.0.1:9902, the native listener off. Logs go to stderr.

With --config, the file must be a regular file with at least one key (an
empty file is refused; {} means the defaults). It is reloaded when it
changes and on SIGHUP, once two reads agree. An invalid or empty file, or
one that changes a key needing a restart (listen addresses, enabled flags,
the admin, origdst and intercept sections, extproc.drain_timeout, xds.mode
and the capture ports), is rejected with every problem logged with its key
path, and the last good configuration keeps serving; a reload that changes
trust or the policies is logged at WARN. Write the file atomically (a
rename over it). A role that cannot start (an address in use, a missing
privilege, a plugin that fails its sha256 check) stops serve with exit 1
before anything serves.`, `
  realipd serve
  realipd serve --config /etc/realipd/realipd.yaml --log-format json
  realipd serve --config realipd.yaml --log-level debug`)
	var f serveFlags
	f.config = fs.String("config", "", "configuration `FILE` (default: built-in defaults)")
	f.logLevel = fs.String("log-level", "info", "log `LEVEL`: debug, info, warn or error")
	f.logFormat = fs.String("log-format", "text", "log `FORMAT`: text or json")
	return fs, f
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := serveFlagSet()
	path, level, format := f.config, f.logLevel, f.logFormat
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	logger, err := newLogger(stderr, *level, *format)
	if err != nil {
		return usageError("serve: %v", err)
	}
	cfg, err := loadOrDefault(ctx, *path)
	if err != nil {
		return failure(err)
	}
	source := *path
	if source == "" {
		source = "(built-in defaults)"
	}
	logger.Info("realipd starting", "version", versionString(), "config", source)
	ci := cfg.Trust.ClientIP()
	logger.Info("client IP resolution", "strategy", ci.Strategy.String(), "header", ci.Header,
		"trusted_cidrs", len(ci.TrustedCIDRs), "trust_sources", len(cfg.Trust.TrustedSources()), "trusted_hops", ci.TrustedHops,
		"policies", len(cfg.Policies), "list_sources", len(cfg.ListSources()))

	warnInterception(cfg, logger)

	s, err := buildRoles(cfg, logger)
	if err != nil {
		return failure(fmt.Errorf("serve: %w", err))
	}
	defer s.stop() // after the reloads: the list sources
	// Reloads run beside the roles and stop before serve returns.
	rctx, stopReloads := context.WithCancel(ctx)
	var waitReloads func()
	if *path != "" {
		timing := reloadTimingOf(ctx)
		r := s.reloader(*path, logger)
		r.settler = timing.settler
		waitReloads = watchConfig(rctx, r, reloadSignal(ctx), timing.debounce)
	} else {
		waitReloads = ignoreReloads(rctx, logger, reloadSignal(ctx))
	}
	defer waitReloads()
	defer stopReloads()
	grace := shutdownDrain(cfg) + 5*time.Second
	return runRoles(ctx, logger, s.roles, grace)
}

// loadOrDefault loads path, or validates the defaults when path is "". A
// file is refused when it is not a regular file or is empty (see
// config.LoadContext); ctx ends a read stuck in the file system.
func loadOrDefault(ctx context.Context, path string) (*config.Config, error) {
	if path != "" {
		return config.LoadContext(ctx, path)
	}
	cfg := config.Default()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q is not one of debug, info, warn, error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q is not one of text, json", format)
}

// warnInterception says, once at start, what in cfg would make the rules
// `realipd iptables --config` renders from the same file fail the roles
// that take the connections: a capture port no role listens on (the
// connections steered there are refused), or xds and the native listener
// in different modes (realipd iptables refuses the file).
func warnInterception(cfg *config.Config, logger *slog.Logger) {
	if _, err := cfg.IPTablesMode(); err != nil {
		logger.Warn("the interception rules: realipd iptables refuses this configuration", "error", err)
	}
	for _, p := range cfg.UnservedCapturePorts() {
		logger.Warn("the interception rules steer "+p.Direction+" connections to a port no role listens on: they will be refused",
			"port", p.Port, "key", p.Key, "fix", fmt.Sprintf("add \"0.0.0.0:%d\" to origdst.listen", p.Port))
	}
}
