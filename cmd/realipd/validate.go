package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/policies"
	"github.com/realipd/realipd/listsource"
)

// validateFlagSet builds validate's FlagSet without running it.
func validateFlagSet() (fs *flag.FlagSet, path *string, offline *bool) {
	fs = newFlagSet("validate", "validate --config FILE [--offline]", `
Check a configuration file as serve would load it. Every error is listed
with its key path (for example trust.trusted_cidrs[1]) and the exit status
is 1; a valid file prints a one-line summary and exits 0. Besides the keys,
it checks that every plugin binary exists, is executable and matches its
sha256, then starts each plugin in the file's directory, hands it its
config and stops it, so that a config the plugin refuses (a list file that
does not exist) fails here as it would fail serve; and, when xds.enabled is
true, that the Envoy resources the xDS control plane would serve can be
built. Every list source is fetched (or its file read) and parsed as serve
would, without its cache, and its entries counted; with --offline nothing is
fetched: each source must have a usable list in trust.cache_dir (or its
file), as serve started without network would need. The cache is never
written. It does not bind the listen addresses or attach the eBPF capture.`, `
  realipd validate --config /etc/realipd/realipd.yaml
  realipd validate --config /etc/realipd/realipd.yaml --offline`)
	path = fs.String("config", "", "configuration `FILE` to check (required)")
	offline = fs.Bool("offline", false, "do not fetch the list sources: check that trust.cache_dir holds a usable list of each (files are read)")
	return fs, path, offline
}

func runValidate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, path, offline := validateFlagSet()
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
	// The list sources: fetched and parsed, or (offline) their caches.
	sources, err := checkListSources(ctx, cfg, *offline, log)
	if err != nil {
		return failure(fmt.Errorf("%s: %w", *path, err))
	}
	fmt.Fprintf(stdout, "%s: OK (strategy %s; roles: %s; %d policies%s)\n",
		*path, cfg.Trust.Strategy, strings.Join(enabledRoles(cfg), ", "), len(cfg.Policies), sources)
	return nil
}

// checkListSources fetches and parses every list source of cfg without
// its cache (or, offline, reads each one's cached list), and describes
// them for validate's summary: "; list sources: NAME N entries, ...".
func checkListSources(ctx context.Context, cfg *config.Config, offline bool, log *slog.Logger) (string, error) {
	specs := cfg.ListSources()
	if len(specs) == 0 {
		return "", nil
	}
	lists := map[string]*listsource.List{}
	if offline {
		var errs []error
		for _, spec := range specs {
			l, err := listsource.Cached(cfg.Trust.CacheDir, spec)
			if err != nil {
				errs = append(errs, fmt.Errorf("offline: %w", err))
				continue
			}
			lists[spec.Name] = l
		}
		if len(errs) > 0 {
			return "", errors.Join(errs...)
		}
	} else {
		// Every source must answer here, the optional ones too: the
		// point is to know that each can be fetched and parsed.
		for i := range specs {
			specs[i].Required = true
		}
		set := listsource.NewSet(listsource.Options{Logger: log})
		defer set.Close()
		st, err := set.Stage(ctx, specs)
		if err != nil {
			return "", err
		}
		for _, spec := range specs {
			lists[spec.Name] = st.List(spec.Name)
		}
	}
	parts := make([]string, len(specs))
	for i, spec := range specs {
		parts[i] = fmt.Sprintf("%s %d entries", spec.Name, lists[spec.Name].Len())
	}
	return "; list sources: " + strings.Join(parts, ", "), nil
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
