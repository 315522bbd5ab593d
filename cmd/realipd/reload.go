package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/policies"
)

// errShuttingDown fails a reload that races with shutdown.
var errShuttingDown = errors.New("serve is shutting down")

// A reloadTarget is the part of a role that takes a new configuration while
// serving. It builds what cfg needs without changing what serves (it may
// start plugin processes) and returns it staged. A reload commits the
// targets' stages only when every target staged its part, and aborts them
// otherwise.
type reloadTarget struct {
	name  string
	stage func(ctx context.Context, cfg *config.Config) (staged, error)
	// rejected, if set, hears of every rejected reload with its problems
	// (a *config.ValidationError when they have key paths).
	rejected func(err error)
}

// staged is one target's part of a reload, built and not yet in force.
type staged struct {
	// commit puts it in force. It fails only on what staging could not
	// check, and then discards it.
	commit func() error
	// abort discards it (stops what staging started).
	abort func()
}

// reloader reloads the configuration file into the running roles: on a
// change of the file or a SIGHUP it reads the file once it has settled
// (config.Settler), checks it, and when it is valid and changes only
// keys that can change while serving (config.ChangedRestartKeys), it
// stages every target and commits them. Otherwise the last good
// configuration keeps serving. It is safe for concurrent use; reloads run
// one at a time.
type reloader struct {
	path    string
	log     *slog.Logger
	current *atomic.Pointer[config.Config] // the configuration in force
	targets []reloadTarget
	m       *reloadMetrics
	// settler reads the file once two reads agree (its zero value waits
	// config.DefaultSettle between them).
	settler config.Settler

	mu sync.Mutex // one reload at a time
}

// reloadMetrics count reloads; the first load counts as an applied one.
type reloadMetrics struct {
	applied, rejected prometheus.Counter
	lastSuccess       prometheus.Gauge
	lastOK            prometheus.Gauge
}

func newReloadMetrics(reg prometheus.Registerer) (*reloadMetrics, error) {
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "realipd_config_reloads_total",
		Help: "Configuration reloads (file changes and SIGHUP) by result: applied, or rejected (invalid, empty or not a regular file, a restart-only key changed, a plugin failed to start) with the last good configuration kept.",
	}, []string{"result"})
	lastSuccess := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "realipd_config_last_reload_success_timestamp_seconds",
		Help: "When the configuration in force was loaded (at start or by the last applied reload), in seconds since the Unix epoch.",
	})
	lastOK := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "realipd_config_last_reload_successful",
		Help: "1 if the last configuration load or reload was applied, 0 if it was rejected.",
	})
	for _, c := range []prometheus.Collector{reloads, lastSuccess, lastOK} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register reload metrics: %w", err)
		}
	}
	m := &reloadMetrics{
		applied:     reloads.WithLabelValues("applied"),
		rejected:    reloads.WithLabelValues("rejected"),
		lastSuccess: lastSuccess,
		lastOK:      lastOK,
	}
	m.lastSuccess.SetToCurrentTime()
	m.lastOK.Set(1)
	return m, nil
}

// reload loads the file and applies it if it is valid and can be applied
// while serving; it reports whether the configuration in force is the
// file's. why says what asked for the reload, for the logs. When ctx ends
// (serve is stopping) while the file is being read or settling, the reload
// is abandoned at once.
func (r *reloader) reload(ctx context.Context, why string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	log := r.log.With("file", r.path, "trigger", why)

	data, err := r.settler.Read(ctx, r.path)
	if ctx.Err() != nil {
		log.Info("configuration reload abandoned: serve is shutting down")
		return false
	}
	var cfg *config.Config
	if err == nil {
		cfg, err = config.ParseFile(data, r.path)
	}
	if err == nil {
		err = policies.Check(cfg.Policies)
	}
	if err != nil {
		logProblems(log, err)
		return r.reject(log, err)
	}
	old := r.current.Load()
	if reflect.DeepEqual(old, cfg) {
		log.Info("configuration reloaded: unchanged")
		return r.applied()
	}
	if keys := config.ChangedRestartKeys(old, cfg); len(keys) > 0 {
		ve := &config.ValidationError{File: r.path}
		for _, k := range keys {
			log.Error("configuration rejected", "key", k, "reason", "changing it needs a restart")
			ve.Errors = append(ve.Errors, config.FieldError{Path: k, Msg: "changing it needs a restart"})
		}
		return r.reject(log, ve)
	}

	stages := make([]staged, 0, len(r.targets))
	for _, t := range r.targets {
		s, err := t.stage(ctx, cfg)
		if err != nil {
			for _, s := range stages {
				s.abort()
			}
			if errors.Is(err, errShuttingDown) {
				log.Info("configuration reload abandoned: serve is shutting down")
				return false
			}
			logProblems(log.With("role", t.name), err)
			return r.reject(log, err)
		}
		stages = append(stages, s)
	}
	for i, s := range stages {
		if err := s.commit(); err != nil {
			for _, s := range stages[i+1:] {
				s.abort()
			}
			if errors.Is(err, errShuttingDown) {
				log.Info("configuration reload abandoned: serve is shutting down")
				return false
			}
			log.Error("configuration rejected", "role", r.targets[i].name, "error", err)
			if i > 0 {
				// Not expected: a commit fails only on what staging checks.
				log.Error("configuration partly applied", "roles_updated", i)
			}
			return r.reject(log, err)
		}
	}
	r.current.Store(cfg)
	ci := cfg.Trust.ClientIP()
	attrs := []any{"strategy", ci.Strategy.String(), "header", ci.Header,
		"trusted_cidrs", len(ci.TrustedCIDRs), "trusted_hops", ci.TrustedHops, "policies", len(cfg.Policies)}
	if diff := securityDiff(old, cfg); len(diff) > 0 {
		// Who is trusted and what is denied decide every request's
		// answer: a change of them is worth an operator's eye, the more
		// so when it was not meant (a file truncated to a few keys).
		log.Warn("configuration reloaded", append(attrs, diff...)...)
	} else {
		log.Info("configuration reloaded", attrs...)
	}
	return r.applied()
}

// securityDiff describes, as log attributes, what changed from a to b in
// the trust section and the policies: the trust keys changed, the strategy
// it was, the trusted CIDRs added and removed, the policies added, removed
// and changed (by name). It is empty when neither changed.
func securityDiff(a, b *config.Config) []any {
	var attrs []any
	var trustKeys []string
	ta, tb := reflect.ValueOf(a.Trust), reflect.ValueOf(b.Trust)
	for i := range ta.NumField() {
		f := ta.Type().Field(i)
		if f.IsExported() && !reflect.DeepEqual(ta.Field(i).Interface(), tb.Field(i).Interface()) {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			trustKeys = append(trustKeys, "trust."+name)
		}
	}
	if len(trustKeys) > 0 {
		attrs = append(attrs, "trust_changed", trustKeys)
		if a.Trust.Strategy != b.Trust.Strategy {
			attrs = append(attrs, "strategy_was", a.Trust.Strategy)
		}
		added, removed := setDiff(prefixStrings(a.Trust.TrustedCIDRs), prefixStrings(b.Trust.TrustedCIDRs))
		if len(added) > 0 || len(removed) > 0 {
			attrs = append(attrs, "trusted_cidrs_added", len(added), "trusted_cidrs_removed", len(removed))
		}
	}
	byName := func(list []config.Policy) map[string]config.Policy {
		m := make(map[string]config.Policy, len(list))
		for _, p := range list {
			m[p.Name] = p
		}
		return m
	}
	pa, pb := byName(a.Policies), byName(b.Policies)
	var added, removed, changed []string
	for _, p := range b.Policies {
		if old, ok := pa[p.Name]; !ok {
			added = append(added, p.Name)
		} else if !reflect.DeepEqual(old, p) {
			changed = append(changed, p.Name)
		}
	}
	for _, p := range a.Policies {
		if _, ok := pb[p.Name]; !ok {
			removed = append(removed, p.Name)
		}
	}
	order := func(list []config.Policy) []string {
		names := make([]string, len(list))
		for i, p := range list {
			names[i] = p.Name
		}
		return names
	}
	reordered := len(added) == 0 && len(removed) == 0 && !slices.Equal(order(a.Policies), order(b.Policies))
	for _, l := range []struct {
		key   string
		names []string
	}{{"policies_added", added}, {"policies_removed", removed}, {"policies_changed", changed}} {
		if len(l.names) > 0 {
			attrs = append(attrs, l.key, l.names)
		}
	}
	if reordered {
		attrs = append(attrs, "policies_order", order(b.Policies))
	}
	return attrs
}

// prefixStrings writes each CIDR or IP of a validated list in its canonical
// form (a bare IP as a single-address prefix), so that "192.0.2.7" and
// "192.0.2.7/32" are the same entry; a source is its mapping.
func prefixStrings(list []config.ListEntry) []string {
	out := make([]string, len(list))
	for i, e := range list {
		if e.Source != nil {
			b, _ := json.Marshal(e.Source)
			out[i] = "source " + string(b)
			continue
		}
		s := e.CIDR
		out[i] = s
		if p, err := netip.ParsePrefix(s); err == nil {
			out[i] = p.Masked().String()
		} else if a, err := netip.ParseAddr(s); err == nil {
			out[i] = netip.PrefixFrom(a, a.BitLen()).String()
		}
	}
	return out
}

// setDiff returns the entries of b not in a, and those of a not in b.
func setDiff(a, b []string) (added, removed []string) {
	for _, s := range b {
		if !slices.Contains(a, s) && !slices.Contains(added, s) {
			added = append(added, s)
		}
	}
	for _, s := range a {
		if !slices.Contains(b, s) && !slices.Contains(removed, s) {
			removed = append(removed, s)
		}
	}
	return added, removed
}

func (r *reloader) applied() bool {
	r.m.applied.Inc()
	r.m.lastSuccess.SetToCurrentTime()
	r.m.lastOK.Set(1)
	return true
}

func (r *reloader) reject(log *slog.Logger, err error) bool {
	for _, t := range r.targets {
		if t.rejected != nil {
			t.rejected(err)
		}
	}
	r.m.rejected.Inc()
	r.m.lastOK.Set(0)
	log.Error("configuration reload rejected; the last good configuration keeps serving")
	return false
}

// logProblems logs every problem of err at Error, one record each, with its
// key path when err is a *config.ValidationError.
func logProblems(log *slog.Logger, err error) {
	if ve, ok := errors.AsType[*config.ValidationError](err); ok {
		for _, fe := range ve.Errors {
			key := fe.Path
			if key == "" {
				key = "(document)"
			}
			log.Error("configuration rejected", "key", key, "reason", fe.Msg)
		}
		return
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			logProblems(log, e)
		}
		return
	}
	log.Error("configuration rejected", "error", err)
}

// watchConfig reloads the configuration of r on every change of its file
// and every SIGHUP on hup (nil: none) until ctx ends, then returns. The
// file watch is in place when it returns the wait function; wait returns
// once no reload runs any more: a reload in progress is abandoned when ctx
// ends, even one whose read of the file is stuck (the read is left behind).
func watchConfig(ctx context.Context, r *reloader, hup <-chan os.Signal, debounce time.Duration) (wait func()) {
	var wg sync.WaitGroup
	stopped, err := config.Watch(ctx, r.path, config.WatchOptions{Logger: r.log, Debounce: debounce}, func(c config.Change) {
		r.log.Info("configuration file changed", "file", r.path, "events", c.Events)
		r.reload(ctx, "file changed")
	})
	if err != nil {
		r.log.Warn("not watching the configuration file; reload it with SIGHUP", "file", r.path, "error", err)
	} else {
		r.log.Info("watching the configuration file", "file", r.path)
		wg.Go(func() { <-stopped })
	}
	onSignals(ctx, &wg, hup, func() { r.reload(ctx, "SIGHUP") })
	return wg.Wait
}

// onSignals calls fn for each signal on hup (nil: none) until ctx ends, in a
// goroutine counted in wg.
func onSignals(ctx context.Context, wg *sync.WaitGroup, hup <-chan os.Signal, fn func()) {
	if hup == nil {
		return
	}
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				fn()
			}
		}
	})
}

// reloadTimingKey is the context key of reloadTiming.
type reloadTimingKey struct{}

// reloadTiming tunes how serve notices and reads a changed file; the zero
// value takes the defaults (config.DefaultDebounce, config.DefaultSettle).
// Tests shorten them, and change the file between the reads.
type reloadTiming struct {
	debounce time.Duration  // quiet time that ends a burst of file events
	settler  config.Settler // reads the file once two reads agree
}

// withReloadTiming returns ctx carrying t for serve.
func withReloadTiming(ctx context.Context, t reloadTiming) context.Context {
	return context.WithValue(ctx, reloadTimingKey{}, t)
}

// reloadTimingOf returns the reloadTiming of ctx, or the zero one.
func reloadTimingOf(ctx context.Context) reloadTiming {
	t, _ := ctx.Value(reloadTimingKey{}).(reloadTiming)
	return t
}

// reloadSignalKey is the context key of reload requests (SIGHUP).
type reloadSignalKey struct{}

// withReloadSignal returns ctx carrying the channel on which main delivers
// SIGHUP: serve reloads its configuration file on each.
func withReloadSignal(ctx context.Context, hup <-chan os.Signal) context.Context {
	return context.WithValue(ctx, reloadSignalKey{}, hup)
}

// reloadSignal returns the channel of withReloadSignal, or nil.
func reloadSignal(ctx context.Context) <-chan os.Signal {
	hup, _ := ctx.Value(reloadSignalKey{}).(<-chan os.Signal)
	return hup
}

// ignoreReloads logs the SIGHUPs on hup (nil: none) that serve cannot act
// on, having no configuration file, until ctx ends. wait returns once it has
// stopped.
func ignoreReloads(ctx context.Context, log *slog.Logger, hup <-chan os.Signal) (wait func()) {
	var wg sync.WaitGroup
	onSignals(ctx, &wg, hup, func() {
		log.Warn("SIGHUP ignored: serve runs on the built-in defaults, there is no configuration file to reload")
	})
	return wg.Wait
}
