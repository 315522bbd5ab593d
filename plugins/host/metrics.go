package host

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are one policy's series of the plugin host's metrics.
type metrics struct {
	hits, misses   prometheus.Counter
	errUnavailable prometheus.Counter
	errTimeout     prometheus.Counter
	errPlugin      prometheus.Counter
	restarts       prometheus.Counter
	up             prometheus.Gauge
}

// newMetrics returns policy's series, registering the metric families on reg
// (when not nil) or reusing the families already registered there by another
// Host.
func newMetrics(reg prometheus.Registerer, policy string) *metrics {
	hits := counterVec(reg, "realipd_plugin_cache_hits_total", "Plugin decisions served from the decision cache.", "policy")
	misses := counterVec(reg, "realipd_plugin_cache_misses_total", "Plugin decisions not found in the decision cache.", "policy")
	errs := counterVec(reg, "realipd_plugin_errors_total", "Failed plugin decisions by kind (unavailable, timeout, plugin); the policy's on_error applied.", "policy", "kind")
	restarts := counterVec(reg, "realipd_plugin_restarts_total", "Plugin processes restarted after a crash or failed health check.", "policy")
	up := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "realipd_plugin_up", Help: "Plugin processes of the policy running and connected: 1 normally, 0 while it is down, briefly 2 while a reload retires the previous process."}, []string{"policy"})
	up = register(reg, up)
	return &metrics{
		hits:           hits.WithLabelValues(policy),
		misses:         misses.WithLabelValues(policy),
		errUnavailable: errs.WithLabelValues(policy, "unavailable"),
		errTimeout:     errs.WithLabelValues(policy, "timeout"),
		errPlugin:      errs.WithLabelValues(policy, "plugin"),
		restarts:       restarts.WithLabelValues(policy),
		up:             up.WithLabelValues(policy),
	}
}

func counterVec(reg prometheus.Registerer, name, help string, labels ...string) *prometheus.CounterVec {
	return register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels))
}

// register registers c on reg, or returns the equal collector registered
// before.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		// A conflicting definition under the same name: keep counting
		// unexported rather than fail the policy.
	}
	return c
}
