// Package policies builds the policy chain of realipd's configuration (the
// policies list) into a *plugins.Chain. The entries are checked and their
// CIDRs parsed by the configuration's validation (config.ValidatePolicies),
// once, at load, so that no request re-parses configuration strings; this
// package adds what only starting them can tell (the plugin binaries).
package policies

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/plugins"
	"github.com/realipd/realipd/plugins/host"
)

// Options carries what plugin policies need. The zero Options discards
// plugin logs and keeps plugin metrics unregistered.
type Options struct {
	Logger     *slog.Logger          // plugin hosts and the plugins' own logs
	Registerer prometheus.Registerer // realipd_plugin_* metrics
}

// Check reports every error Build would report without starting any plugin:
// the entries' fields, and for plugin policies the binary (exists, is
// executable, matches sha256). `realipd validate` uses it.
func Check(list []config.Policy) error {
	_, err := build(list, Options{}, false)
	return err
}

// BuildWith is Build with Options for plugin policies. It starts every
// plugin (failing with the entry's key path when one cannot start or rejects
// its config, after stopping those already started); the Chain's Close stops
// them.
func BuildWith(list []config.Policy, opts Options) (*plugins.Chain, error) {
	return build(list, opts, true)
}

// Build turns the configured policies into a Chain evaluated in list order.
// It reports every invalid entry at once, each with its key path
// (policies[i].field). A nil or empty list gives an empty Chain, which allows
// every request. The caller owns the Chain: when it is replaced while
// serving, the caller retires it (plugins.Chain.Retire), otherwise closes it.
func Build(list []config.Policy) (*plugins.Chain, error) {
	return build(list, Options{}, true)
}

// pendingPlugin is a plugin entry checked but not started yet.
type pendingPlugin struct {
	entry int // index in entries
	path  string
	cfg   host.Config
}

func build(list []config.Policy, opts Options, start bool) (*plugins.Chain, error) {
	// The entries' fields are checked, and their CIDRs parsed, once: by the
	// configuration's own validation.
	if err := config.ValidatePolicies(list); err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	var errs []error
	var pending []pendingPlugin
	entries := make([]plugins.ChainEntry, 0, len(list))
	for i, p := range list {
		path := fmt.Sprintf("policies[%d]", i)
		onErr, err := plugins.ParseErrorAction(p.OnError)
		if err != nil {
			errs = append(errs, fmt.Errorf("policies: %s.on_error: %w", path, err))
			continue
		}
		switch p.Type {
		case "cidr":
			entries = append(entries, plugins.ChainEntry{Name: p.Name, Policy: plugins.NewCIDR(p.AllowPrefixes(), p.DenyPrefixes()), OnError: onErr})
		case "plugin":
			hc := host.Config{
				Name:       p.Name,
				Path:       p.Path,
				SHA256:     p.SHA256,
				Settings:   p.Config,
				Dir:        p.Dir(),
				Timeout:    p.Timeout.Duration,
				CacheTTL:   p.CacheTTL.Duration,
				Logger:     opts.Logger,
				Registerer: opts.Registerer,
			}
			if err := host.Check(hc); err != nil {
				errs = append(errs, fmt.Errorf("policies: %s: %w", path, err))
				continue
			}
			// The entry's Policy is filled in once every entry checked out.
			pending = append(pending, pendingPlugin{entry: len(entries), path: path, cfg: hc})
			entries = append(entries, plugins.ChainEntry{Name: p.Name, OnError: onErr})
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if !start {
		return nil, nil
	}
	started := make([]*host.Host, 0, len(pending))
	for _, pp := range pending {
		h, err := host.New(pp.cfg)
		if err != nil {
			for _, h := range started {
				h.Close()
			}
			return nil, fmt.Errorf("policies: %s: %w", pp.path, err)
		}
		started = append(started, h)
		entries[pp.entry].Policy = h
	}
	chain, err := plugins.NewChain(entries...)
	if err != nil {
		for _, h := range started {
			h.Close()
		}
		return nil, fmt.Errorf("policies: %w", err)
	}
	return chain, nil
}
