package extproc

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/clientip"
)

// metrics are the ext_proc server's Prometheus collectors. Counters used on
// every request are resolved to their label values once, so the hot path
// does no label lookups.
type metrics struct {
	requests     *prometheus.CounterVec // decision, strategy, policy
	failures     *prometheus.CounterVec // reason: unresolved requests
	policyErrors *prometheus.CounterVec // policy
	messages     *prometheus.CounterVec // phase
	mismatch     prometheus.Counter
	noPeer       prometheus.Counter
	malformed    prometheus.Counter
	latency      prometheus.Histogram
	streams      prometheus.Gauge

	failureBy [reasonCount]prometheus.Counter
	messageBy [phaseResponseTrailers + 1]prometheus.Counter
	observed  prometheus.Counter
}

// reasonCount bounds clientip.Reason values (ReasonBound is the last).
const reasonCount = int(clientip.ReasonBound) + 1

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "realipd", Subsystem: "extproc", Name: "requests_total",
			Help: "Request headers messages answered, by decision (allow, deny), strategy and, on deny, the deciding policy (a policies entry's name, or trust.on_unresolved).",
		}, []string{"decision", "strategy", "policy"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "realipd", Subsystem: "extproc", Name: "unresolved_total",
			Help: "Requests whose client IP is unresolved (no client IP; trust.on_unresolved decides), by reason: invalid, bound, no_peer (no usable peer or no source.address), too_few_entries, no_public_entry.",
		}, []string{"reason"}),
		policyErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "realipd", Subsystem: "extproc", Name: "policy_errors_total",
			Help: "Policy evaluations that failed and were settled by the policy's on_error action, by policy.",
		}, []string{"policy"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "realipd", Subsystem: "extproc", Name: "messages_total",
			Help: "ProcessingRequest messages received, by phase (observability: observability_mode messages, never answered).",
		}, []string{"phase"}),
		mismatch: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "realipd", Subsystem: "extproc", Name: "xff_mismatch_total",
			Help: "Requests whose last X-Forwarded-For entry is not the address Envoy appends (so nothing was removed before resolving): Envoy probably runs without use_remote_address: true.",
		}),
		noPeer: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "realipd", Subsystem: "extproc", Name: "missing_source_address_total",
			Help: "Request headers messages without the source.address attribute (unresolved; configure request_attributes: [source.address, destination.address]).",
		}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "realipd", Subsystem: "extproc", Name: "malformed_messages_total",
			Help: "ProcessingRequest messages that could not be decoded (the stream ends with InvalidArgument).",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "realipd", Subsystem: "extproc", Name: "processing_seconds",
			Help:    "Time spent handling one request headers message: decode, resolve, policies, encode.",
			Buckets: []float64{1e-6, 2e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 5e-3, 2e-2, 1e-1},
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "realipd", Subsystem: "extproc", Name: "streams_active",
			Help: "Process streams currently open.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.failures, m.policyErrors, m.messages, m.mismatch, m.noPeer, m.malformed, m.latency, m.streams} {
			if err := reg.Register(c); err != nil {
				var are prometheus.AlreadyRegisteredError
				if errors.As(err, &are) {
					return nil, fmt.Errorf("extproc: register metrics: %w (one Server per registry)", err)
				}
				return nil, fmt.Errorf("extproc: register metrics: %w", err)
			}
		}
	}
	for r := range reasonCount {
		m.failureBy[r] = m.failures.WithLabelValues(clientip.Reason(r).String())
	}
	for p := phaseRequestHeaders; p <= phaseResponseTrailers; p++ {
		m.messageBy[p] = m.messages.WithLabelValues(p.String())
	}
	m.messageBy[phaseNone] = m.messages.WithLabelValues("none")
	m.observed = m.messages.WithLabelValues("observability")
	return m, nil
}

// unresolved counts a request whose client IP is unresolved.
func (m *metrics) unresolved(r clientip.Reason) {
	if int(r) < reasonCount {
		m.failureBy[r].Inc()
		return
	}
	m.failures.WithLabelValues(r.String()).Inc()
}
