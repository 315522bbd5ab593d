// Package policies builds the policy chain of realipd's configuration (the
// policies list) into a *plugins.Chain: it parses each entry once, at load,
// so that no request re-parses configuration strings.
package policies

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

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
	var errs []error
	var pending []pendingPlugin
	entries := make([]plugins.ChainEntry, 0, len(list))
	seen := make(map[string]int, len(list))
	for i, p := range list {
		path := fmt.Sprintf("policies[%d]", i)
		if p.Name == "" {
			errs = append(errs, fmt.Errorf("policies: %s.name: required", path))
		} else if j, dup := seen[p.Name]; dup {
			errs = append(errs, fmt.Errorf("policies: %s.name: %q already used by policies[%d]", path, p.Name, j))
		} else {
			seen[p.Name] = i
		}
		onErr, err := plugins.ParseErrorAction(p.OnError)
		if err != nil {
			errs = append(errs, fmt.Errorf("policies: %s.on_error: %q: want allow or deny", path, p.OnError))
		}
		var pol plugins.Policy
		switch p.Type {
		case "cidr":
			allow, aerrs := parsePrefixes(path+".allow", p.Allow)
			deny, derrs := parsePrefixes(path+".deny", p.Deny)
			errs = append(errs, aerrs...)
			errs = append(errs, derrs...)
			if len(p.Allow) == 0 && len(p.Deny) == 0 {
				errs = append(errs, fmt.Errorf("policies: %s: type cidr needs allow or deny", path))
			}
			pol = plugins.NewCIDR(allow, deny)
		case "plugin":
			hc := host.Config{
				Name:       p.Name,
				Path:       p.Path,
				SHA256:     p.SHA256,
				Settings:   p.Config,
				Timeout:    p.Timeout.Duration,
				CacheTTL:   p.CacheTTL.Duration,
				Logger:     opts.Logger,
				Registerer: opts.Registerer,
			}
			if err := host.Check(hc); err != nil {
				errs = append(errs, fmt.Errorf("policies: %s: %w", path, err))
				break
			}
			// The entry's Policy is filled in once every entry checked out.
			pending = append(pending, pendingPlugin{entry: len(entries), path: path, cfg: hc})
			entries = append(entries, plugins.ChainEntry{Name: p.Name, OnError: onErr})
		case "":
			errs = append(errs, fmt.Errorf("policies: %s.type: required (cidr or plugin)", path))
		default:
			errs = append(errs, fmt.Errorf("policies: %s.type: unknown type %q (want cidr or plugin)", path, p.Type))
		}
		if pol != nil {
			entries = append(entries, plugins.ChainEntry{Name: p.Name, Policy: pol, OnError: onErr})
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

// parsePrefixes parses CIDRs; a bare IP means that single address. As in
// internal/config, a CIDR with address bits set past its length is refused
// as a likely typo.
func parsePrefixes(path string, list []string) ([]netip.Prefix, []error) {
	var errs []error
	out := make([]netip.Prefix, 0, len(list))
	for i, s := range list {
		s = strings.TrimSpace(s)
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("policies: %s[%d]: %q is not a CIDR prefix", path, i, s))
				continue
			}
			if p != p.Masked() {
				errs = append(errs, fmt.Errorf("policies: %s[%d]: %q has address bits set past /%d (did you mean %s?)", path, i, s, p.Bits(), p.Masked()))
				continue
			}
			out = append(out, p)
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			errs = append(errs, fmt.Errorf("policies: %s[%d]: %q is not an IP address or CIDR prefix", path, i, s))
			continue
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, errs
}
