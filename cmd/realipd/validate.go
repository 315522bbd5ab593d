package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/policies"
)

// validateFlagSet builds validate's FlagSet without running it.
func validateFlagSet() (fs *flag.FlagSet, path *string) {
	fs = newFlagSet("validate", "validate --config FILE", `
Check a configuration file as serve would load it. Every error is listed
with its key path (for example trust.trusted_cidrs[1]) and the exit status
is 1; a valid file prints a one-line summary and exits 0. Besides the keys,
it checks that every plugin binary exists, is executable and matches its
sha256, then starts each plugin in the file's directory, hands it its
config and stops it, so that a config the plugin refuses (a list file that
does not exist) fails here as it would fail serve; and, when xds.enabled is
true, that the Envoy resources the xDS control plane would serve can be
built. It does not bind the listen addresses or attach the eBPF capture.`, `
  realipd validate --config /etc/realipd/realipd.yaml`)
	path = fs.String("config", "", "configuration `FILE` to check (required)")
	return fs, path
}

func runValidate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, path := validateFlagSet()
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if *path == "" {
		return usageError("validate: --config is required")
	}
	cfg, err := config.LoadContext(ctx, *path)
	if err != nil {
		return failure(err)
	}
	// Plugin binaries: present, executable, matching their sha256; then
	// started and configured as serve would, and stopped.
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	chain, err := policies.BuildWith(cfg.Policies, policies.Options{Logger: log})
	if err != nil {
		return failure(fmt.Errorf("%s: %w", *path, err))
	}
	if err := chain.Close(); err != nil {
		log.Warn("stopping the plugins started for the check", "error", err)
	}
	// The Envoy resources the xDS control plane would serve.
	if cfg.XDS.Enabled {
		if _, err := buildXDS(cfg); err != nil {
			return failure(fmt.Errorf("%s: %w", *path, err))
		}
	}
	fmt.Fprintf(stdout, "%s: OK (strategy %s; roles: %s; %d policies)\n",
		*path, cfg.Trust.Strategy, strings.Join(enabledRoles(cfg), ", "), len(cfg.Policies))
	return nil
}

// enabledRoles names the roles cfg enables, in start order.
func enabledRoles(cfg *config.Config) []string {
	var names []string
	for _, r := range []struct {
		name string
		on   bool
	}{
		{"admin", cfg.Admin.Enabled},
		{"extproc", cfg.ExtProc.Enabled},
		{"xds", cfg.XDS.Enabled},
		{"origdst", cfg.OrigDst.Enabled},
	} {
		if r.on {
			names = append(names, r.name)
		}
	}
	if len(names) == 0 {
		return []string{"none"}
	}
	return names
}
