package xds

import (
	"errors"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the xDS server's Prometheus collectors. The per-type counters
// are resolved once for every type URL go-control-plane knows (the only ones
// a stream may use, see Server.onRequest), so streams do no label lookups.
type metrics struct {
	streams    *prometheus.GaugeVec   // protocol: sotw, delta
	nodes      prometheus.Gauge       // nodes with at least one stream
	responses  *prometheus.CounterVec // type_url
	acks       *prometheus.CounterVec // type_url
	nacks      *prometheus.CounterVec // type_url
	rejected   prometheus.Counter
	published  prometheus.Counter
	snapshot   *prometheus.GaugeVec // version
	sotwActive prometheus.Gauge
	deltaActv  prometheus.Gauge
	refusedVec *prometheus.CounterVec // reason
	refused    [numRefusals]prometheus.Counter

	byType map[string]*typeCounters
}

// typeCounters are the counters of one type URL.
type typeCounters struct {
	responses, acks, nacks prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "realipd", Subsystem: "xds", Name: "streams_active",
			Help: "ADS streams currently open, by protocol (sotw, delta).",
		}, []string{"protocol"}),
		nodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "realipd", Subsystem: "xds", Name: "nodes_connected",
			Help: "Nodes (distinct node ids) with at least one open ADS stream.",
		}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "realipd", Subsystem: "xds", Name: "responses_total",
			Help: "Discovery responses sent, by type_url.",
		}, []string{"type_url"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "realipd", Subsystem: "xds", Name: "acks_total",
			Help: "Discovery responses acknowledged (ACK), by type_url.",
		}, []string{"type_url"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "realipd", Subsystem: "xds", Name: "nacks_total",
			Help: "Discovery responses rejected by the node (NACK, the request carries error_detail), by type_url.",
		}, []string{"type_url"}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "realipd", Subsystem: "xds", Name: "config_rejected_total",
			Help: "Configurations whose xDS resources could not be built or published; the last good resources keep serving.",
		}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "realipd", Subsystem: "xds", Name: "snapshots_published_total",
			Help: "Resource versions published to the connected nodes.",
		}),
		snapshot: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "realipd", Subsystem: "xds", Name: "snapshot_info",
			Help: "The resource version being served (value 1, the version in the label; no series before the first one).",
		}, []string{"version"}),
		refusedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "realipd", Subsystem: "xds", Name: "refused_total",
			Help: "ADS clients refused by a bound, by reason: connections, streams_per_connection, streams, nodes, node_id, node_size, resource_names, request_size, type_url.",
		}, []string{"reason"}),
		byType: make(map[string]*typeCounters, int(types.UnknownType)),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.streams, m.nodes, m.responses, m.acks, m.nacks, m.rejected, m.published, m.snapshot, m.refusedVec} {
			if err := reg.Register(c); err != nil {
				if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
					return nil, fmt.Errorf("xds: register metrics: %w (one Server per registry)", err)
				}
				return nil, fmt.Errorf("xds: register metrics: %w", err)
			}
		}
	}
	m.sotwActive = m.streams.WithLabelValues("sotw")
	m.deltaActv = m.streams.WithLabelValues("delta")
	for r := range numRefusals {
		m.refused[r] = m.refusedVec.WithLabelValues(r.String())
	}
	for t := types.ResponseType(0); t < types.UnknownType; t++ {
		url, err := cache.GetResponseTypeURL(t)
		if err != nil {
			continue
		}
		m.byType[url] = &typeCounters{
			responses: m.responses.WithLabelValues(url),
			acks:      m.acks.WithLabelValues(url),
			nacks:     m.nacks.WithLabelValues(url),
		}
	}
	return m, nil
}

// of returns the counters of typeURL, nil for a type URL no stream may use.
func (m *metrics) of(typeURL string) *typeCounters {
	return m.byType[typeURL]
}

// setVersion makes version the one series of realipd_xds_snapshot_info.
func (m *metrics) setVersion(version string) {
	m.snapshot.Reset()
	m.snapshot.WithLabelValues(version).Set(1)
	m.published.Inc()
}
