// Package policies builds the policy chain of realipd's configuration (the
// policies list) into a *plugins.Chain. The entries are checked and their
// CIDRs parsed by the configuration's validation (config.ValidatePolicies),
// once, at load, so that no request re-parses configuration strings; this
// package adds what only starting them can tell (the plugin binaries).
//
// A list of policies whose cidr lists come from list sources gets a new
// chain whenever a list changes, with the same plugin processes: Start
// starts the plugins once, and every Chains.Build shares them (each chain
// holds a reference on each plugin, and a plugin stops when the last chain
// holding it is closed).
package policies

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/listsource"
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
	_, err := start(list, Options{}, false)
	return err
}

// BuildWith is Build with Options for plugin policies. It starts every
// plugin (failing with the entry's key path when one cannot start or rejects
// its config, after stopping those already started); the Chain's Close stops
// them. The cidr policies' list sources contribute nothing (see Start).
func BuildWith(list []config.Policy, opts Options) (*plugins.Chain, error) {
	c, err := Start(list, opts)
	if err != nil {
		return nil, err
	}
	defer c.Release()
	return c.Build(nil)
}

// Build turns the configured policies into a Chain evaluated in list order.
// It reports every invalid entry at once, each with its key path
// (policies[i].field). A nil or empty list gives an empty Chain, which allows
// every request. The caller owns the Chain: when it is replaced while
// serving, the caller retires it (plugins.Chain.Retire), otherwise closes it.
func Build(list []config.Policy) (*plugins.Chain, error) {
	return BuildWith(list, Options{})
}

// ErrStopped is the error of Chains.Build once every chain it built is
// closed and Release was called: the plugins are stopped.
var ErrStopped = errors.New("policies: the plugins are stopped")

// Chains builds the chains of one policies list, its plugins started once
// (Start) and shared by every chain built. It is safe for concurrent use.
type Chains struct {
	list    []config.Policy
	entries []chainEntry // by list index

	mu    sync.Mutex
	cidrs map[int]builtCIDR // the last cidr policy built per entry
}

// chainEntry is one checked entry.
type chainEntry struct {
	name    string
	onError plugins.ErrorAction
	plugin  *sharedPlugin // nil for a cidr policy
}

// builtCIDR is a cidr policy built from the lists of its sources: reused
// while they are the same lists.
type builtCIDR struct {
	lists  []*listsource.List
	policy *plugins.CIDR
}

// Start checks list and starts its plugins (failing with the entry's key
// path when one cannot start or rejects its config, after stopping those
// already started). The plugins stop once Release was called and every
// chain Build made is closed.
func Start(list []config.Policy, opts Options) (*Chains, error) {
	return start(list, opts, true)
}

func start(list []config.Policy, opts Options, run bool) (*Chains, error) {
	// The entries' fields are checked, and their CIDRs parsed, once: by the
	// configuration's own validation.
	if err := config.ValidatePolicies(list); err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	var errs []error
	var pending []pendingPlugin
	c := &Chains{list: list, entries: make([]chainEntry, len(list)), cidrs: map[int]builtCIDR{}}
	for i, p := range list {
		path := fmt.Sprintf("policies[%d]", i)
		onErr, err := plugins.ParseErrorAction(p.OnError)
		if err != nil {
			errs = append(errs, fmt.Errorf("policies: %s.on_error: %w", path, err))
			continue
		}
		c.entries[i] = chainEntry{name: p.Name, onError: onErr}
		if p.Type != "plugin" {
			continue
		}
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
		pending = append(pending, pendingPlugin{entry: i, path: path, cfg: hc})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if !run {
		return nil, nil
	}
	var started []*host.Host
	for _, pp := range pending {
		h, err := host.New(pp.cfg)
		if err != nil {
			for _, h := range started {
				h.Close()
			}
			return nil, fmt.Errorf("policies: %s: %w", pp.path, err)
		}
		started = append(started, h)
		sp := &sharedPlugin{host: h}
		sp.refs.Store(1) // the Chains' own, until Release
		c.entries[pp.entry].plugin = sp
	}
	return c, nil
}

// Build returns a new chain of the list: its cidr policies with the CIDRs
// written in the file followed by the current lists of their sources
// (lists; nil: none), its plugin policies the plugins Start started. A
// cidr policy whose lists did not change since the last Build is the same
// policy (its prefix sets are not built again). The chain holds a
// reference on each plugin, released by its Close (or retirement). Build
// fails with ErrStopped once the plugins have stopped.
func (c *Chains) Build(lists config.Lists) (*plugins.Chain, error) {
	entries := make([]plugins.ChainEntry, len(c.entries))
	var refs []*pluginRef
	release := func() {
		for _, r := range refs {
			r.Close()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, e := range c.entries {
		entries[i] = plugins.ChainEntry{Name: e.name, OnError: e.onError}
		if e.plugin != nil {
			if !e.plugin.acquire() {
				release()
				return nil, ErrStopped
			}
			r := &pluginRef{sharedPlugin: e.plugin}
			refs = append(refs, r)
			entries[i].Policy = r
			continue
		}
		entries[i].Policy = c.cidrLocked(i, lists)
	}
	chain, err := plugins.NewChain(entries...)
	if err != nil {
		release()
		return nil, fmt.Errorf("policies: %w", err)
	}
	return chain, nil
}

// cidrLocked returns the cidr policy of entry i with the current lists.
func (c *Chains) cidrLocked(i int, lists config.Lists) *plugins.CIDR {
	p := c.list[i]
	var now []*listsource.List
	if lists != nil {
		for _, s := range slices.Concat(p.AllowSources(), p.DenySources()) {
			now = append(now, lists(s.Name))
		}
	}
	if b, ok := c.cidrs[i]; ok && slices.Equal(b.lists, now) {
		return b.policy
	}
	policy := plugins.NewCIDR(config.Expand(p.AllowPrefixes(), p.AllowSources(), lists), config.Expand(p.DenyPrefixes(), p.DenySources(), lists))
	c.cidrs[i] = builtCIDR{lists: now, policy: policy}
	return policy
}

// Release drops the references Start took: the plugins stop once every
// chain built is closed too (at once if none was built). Build fails
// afterwards unless a chain it built still holds the plugins. It is
// idempotent.
func (c *Chains) Release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		if e.plugin != nil && e.plugin.ownRef.CompareAndSwap(false, true) {
			e.plugin.release()
		}
	}
}

// sharedPlugin is a plugin process shared by the chains of one list: it
// stops when the last reference is released.
type sharedPlugin struct {
	host   *host.Host
	refs   atomic.Int64
	ownRef atomic.Bool // the Chains' reference was released
}

// acquire takes a reference unless the plugin has stopped.
func (s *sharedPlugin) acquire() bool {
	for {
		n := s.refs.Load()
		if n <= 0 {
			return false
		}
		if s.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release drops a reference, and stops the plugin with the last one.
func (s *sharedPlugin) release() error {
	if s.refs.Add(-1) == 0 {
		return s.host.Close()
	}
	return nil
}

// pluginRef is one chain's reference on a shared plugin: the policy in
// that chain, released once by the chain's Close.
type pluginRef struct {
	*sharedPlugin
	once sync.Once
}

// Decide implements plugins.Policy.
func (r *pluginRef) Decide(ctx context.Context, req *plugins.Request) (plugins.Decision, error) {
	return r.host.Decide(ctx, req)
}

// RequestHeaders implements plugins.HeaderInputs.
func (r *pluginRef) RequestHeaders() (names []string, all bool) { return r.host.RequestHeaders() }

// Close releases the chain's reference (once).
func (r *pluginRef) Close() error {
	var err error
	r.once.Do(func() { err = r.release() })
	return err
}

// pendingPlugin is a plugin entry checked but not started yet.
type pendingPlugin struct {
	entry int // index in the list
	path  string
	cfg   host.Config
}

var (
	_ plugins.Policy       = (*pluginRef)(nil)
	_ plugins.HeaderInputs = (*pluginRef)(nil)
)
