package main

import (
	"context"
	"log/slog"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/listsource"
)

// listSources runs the list sources of the configuration in force
// (listsource.Set), counts what they do (realipd_list_source_*), and
// tells onChange when a list changed, from one goroutine and coalesced:
// one new Decider for a burst of changes.
type listSources struct {
	*listsource.Set
	m *listSourceMetrics

	changed chan struct{}
	stop    context.CancelFunc
	wg      sync.WaitGroup
}

// listSourceMetrics are the realipd_list_source_* metrics, labelled by the
// source's name (its key path, or its name: neither holds a credential),
// so bounded by the configuration.
type listSourceMetrics struct {
	mu    sync.Mutex
	known map[string]bool // the names with series

	entries     *prometheus.GaugeVec
	lastSuccess *prometheus.GaugeVec
	fetchErrors *prometheus.CounterVec
	refused     *prometheus.CounterVec
}

func newListSourceMetrics(reg prometheus.Registerer) (*listSourceMetrics, error) {
	m := &listSourceMetrics{
		known: map[string]bool{},
		entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "realipd_list_source_entries",
			Help: "Prefixes of each list source's list in force, merged (duplicates and prefixes inside others removed); 0 while it has none.",
		}, []string{"source"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "realipd_list_source_last_success_timestamp_seconds",
			Help: "When each list source's list was last fetched or confirmed (a 304; for a source of several documents, the oldest of them), in seconds since the Unix epoch; 0 while it has none.",
		}, []string{"source"}),
		fetchErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "realipd_list_source_fetch_errors_total",
			Help: "Fetches (or file reads) of a list source's document that failed, by reason: network, tls, timeout, status, read. The last good list keeps serving.",
		}, []string{"source", "reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "realipd_list_source_refused_total",
			Help: "Documents of a list source refused, by reason: parse, not_utf8, too_large, too_many, empty, shrink. The last good list keeps serving.",
		}, []string{"source", "reason"}),
	}
	for _, c := range []prometheus.Collector{m.entries, m.lastSuccess, m.fetchErrors, m.refused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// observe is the Set's Options.Observe.
func (m *listSourceMetrics) observe(name string, o listsource.Observation) {
	m.mu.Lock()
	m.known[name] = true
	m.mu.Unlock()
	switch {
	case o.FetchError != "":
		m.fetchErrors.WithLabelValues(name, o.FetchError).Inc()
	case o.Refused != "":
		m.refused.WithLabelValues(name, o.Refused).Inc()
	}
	m.entries.WithLabelValues(name).Set(float64(o.Entries))
	ts := 0.0
	if !o.LastSuccess.IsZero() {
		ts = float64(o.LastSuccess.UnixNano()) / 1e9
	}
	m.lastSuccess.WithLabelValues(name).Set(ts)
}

// keepOnly deletes the series of sources not named in names (removed by a
// reload, or staged by one that was rejected).
func (m *listSourceMetrics) keepOnly(names map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for name := range m.known {
		if !names[name] {
			delete(m.known, name)
			for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{m.entries, m.lastSuccess, m.fetchErrors, m.refused} {
				v.DeletePartialMatch(prometheus.Labels{"source": name})
			}
		}
	}
}

// newListSources returns the list sources of serve, not running any yet:
// the decisions stage the configuration's. cfg gives the cache directory
// (trust.cache_dir, relative to the file's directory already).
func newListSources(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer) (*listSources, error) {
	m, err := newListSourceMetrics(reg)
	if err != nil {
		return nil, err
	}
	ls := &listSources{m: m, changed: make(chan struct{}, 1)}
	log := logger.With("role", "list_sources")
	ls.Set = listsource.NewSet(listsource.Options{
		CacheDir: cfg.Trust.CacheDir,
		Logger:   log,
		Watch:    watchListFile(log),
		Changed: func(string) {
			select {
			case ls.changed <- struct{}{}:
			default:
			}
		},
		Observe: m.observe,
	})
	return ls, nil
}

// watchListFile watches a file source as the configuration file is
// watched (config.Watch: its directory, renames and ConfigMap swaps).
func watchListFile(log *slog.Logger) func(ctx context.Context, path string, changed func()) error {
	return func(ctx context.Context, path string, changed func()) error {
		_, err := config.Watch(ctx, path, config.WatchOptions{Logger: log}, func(config.Change) { changed() })
		return err
	}
}

// run calls onChange after the lists changed, until close.
func (ls *listSources) run(onChange func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ls.stop = cancel
	ls.wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-ls.changed:
				onChange()
			}
		}
	})
}

// close stops the sources and the goroutine of run.
func (ls *listSources) close() {
	if ls.stop != nil {
		ls.stop()
	}
	ls.Set.Close()
	ls.wg.Wait()
}

// names returns the names of specs.
func specNames(specs []listsource.Spec) map[string]bool {
	out := make(map[string]bool, len(specs))
	for _, s := range specs {
		out[s.Name] = true
	}
	return out
}
