package origdst

import (
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/decide"
)

// Why a connection was refused (the reason label of
// realipd_origdst_connections_refused_total).
type refusal uint8

const (
	refusedNotRedirected refusal = iota // ErrNotRedirected
	refusedPolicyDeny                   // a policy, or trust.on_unresolved: deny
	refusedProxyHeader                  // a PROXY header missing, malformed, or from an untrusted peer
	refusedLimit                        // MaxConnections reached
	refusedLookupError                  // the original destination could not be read
	refusedDialError                    // the original destination could not be reached
	numRefusals
)

var refusalNames = [numRefusals]string{"not_redirected", "policy_deny", "proxy_header", "limit", "lookup_error", "dial_error"}

func (r refusal) String() string { return refusalNames[r] }

// Why a proxied connection was cut (realipd_origdst_connections_cut_total).
type cutReason uint8

const (
	cutIdle  cutReason = iota + 1 // IdleTimeout with no byte either way
	cutDrain                      // still open at the end of the drain
)

func (c cutReason) String() string {
	if c == cutIdle {
		return "idle_timeout"
	}
	return "drain"
}

type metrics struct {
	accepted prometheus.Counter
	// refused by reason, for every reason but policy_deny, which is
	// counted by policy (refusedBy).
	refused      [numRefusals]prometheus.Counter
	refusedBy    *prometheus.CounterVec // reason, policy
	active       prometheus.Gauge
	listeners    prometheus.Gauge
	bytesUp      prometheus.Counter // client → upstream
	bytesDown    prometheus.Counter // upstream → client
	dialErrors   *prometheus.CounterVec
	lookupErrors *prometheus.CounterVec
	cut          *prometheus.CounterVec
	policyErrors *prometheus.CounterVec
	setup        prometheus.Histogram

	httpAllowed        prometheus.Counter
	httpRequests       *prometheus.CounterVec // decision, policy
	httpUnresolved     *prometheus.CounterVec
	httpUpstreamErrors prometheus.Counter
	httpLoopServed     prometheus.Counter

	handoff *handoffMetrics // a Handoff's (fallback: auto); zero without one
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "realipd", "origdst"
	accepted := prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "connections_accepted_total",
		Help: "TCP connections accepted on the capture listeners, refused ones included."})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "connections_refused_total",
		Help: "Connections closed without being proxied, by reason: not_redirected (the original destination is a capture address), policy_deny (with the deciding policy: a policies entry's name, or trust.on_unresolved), proxy_header (a PROXY header missing from a trusted peer, malformed, or sent by an untrusted one), limit (max_connections), lookup_error (no original destination), dial_error (the original destination did not answer)."},
		[]string{"reason", "policy"})
	active := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "active_connections",
		Help: "Connections being set up or proxied."})
	listeners := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "listeners",
		Help: "Capture listeners bound and accepting."})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "bytes_total",
		Help: "Bytes proxied, by direction: upstream (client to original destination) or downstream."},
		[]string{"direction"})
	dialErrors := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "dial_errors_total",
		Help: "Failed connections to original destinations, by reason: timeout (dial_timeout), refused, unreachable, other."},
		[]string{"reason"})
	lookupErrors := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "original_dst_lookup_errors_total",
		Help: "Accepted connections whose original destination could not be read, by reason: no_conntrack (ENOENT), not_supported (ENOPROTOOPT), other."},
		[]string{"reason"})
	cut := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "connections_cut_total",
		Help: "Proxied connections closed by realipd, by reason: idle_timeout, or drain (still open at the end of drain_timeout)."},
		[]string{"reason"})
	policyErrors := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "policy_errors_total",
		Help: "Policy errors settled by the policy's on_error, by policy."},
		[]string{"policy"})
	setup := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "connection_setup_seconds",
		Help:    "From accept to the upstream connection established (PROXY header, policies and dial included).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}})
	httpRequests := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "http_requests_total",
		Help: "Requests of the HTTP ports (origdst.http_ports) decided on, by decision: allow (forwarded) or deny (answered with the deny status), and on deny the deciding policy (a policies entry's name, trust.on_unresolved, or http_refused: a request Envoy's HTTP connection manager would refuse)."},
		[]string{"decision", "policy"})
	httpUnresolved := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "http_unresolved_total",
		Help: "Requests of the HTTP ports whose client IP is unresolved (trust.on_unresolved applies), by the resolution's reason."},
		[]string{"reason"})
	httpUpstreamErrors := prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "http_upstream_errors_total",
		Help: "Allowed requests of the HTTP ports that could not be forwarded to the original destination (answered 503 unless the client left)."})
	httpLoopServed := prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "http_event_loop_requests_total",
		Help: "Allowed requests of the HTTP ports that an event loop forwarded and answered in place; the others of http_requests_total{decision=\"allow\"} went through the connection's goroutine (a body, a plugin policy, a new upstream connection, a response in pieces)."})
	m := &metrics{
		httpLoopServed:     httpLoopServed,
		httpAllowed:        httpRequests.WithLabelValues("allow", ""),
		httpRequests:       httpRequests,
		refusedBy:          refused,
		httpUnresolved:     httpUnresolved,
		httpUpstreamErrors: httpUpstreamErrors,
		accepted:           accepted, active: active, listeners: listeners,
		bytesUp: bytes.WithLabelValues("upstream"), bytesDown: bytes.WithLabelValues("downstream"),
		dialErrors: dialErrors, lookupErrors: lookupErrors, cut: cut, policyErrors: policyErrors, setup: setup,
	}
	for r := range numRefusals {
		if r != refusedPolicyDeny {
			m.refused[r] = refused.WithLabelValues(r.String(), "")
		}
	}
	for _, l := range []string{"timeout", "refused", "unreachable", "other"} {
		dialErrors.WithLabelValues(l)
	}
	for _, l := range []string{"no_conntrack", "not_supported", "other"} {
		lookupErrors.WithLabelValues(l)
	}
	for _, c := range []cutReason{cutIdle, cutDrain} {
		cut.WithLabelValues(c.String())
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{accepted, refused, active, listeners, bytes, dialErrors, lookupErrors, cut, policyErrors, setup, httpRequests, httpUnresolved, httpUpstreamErrors, httpLoopServed} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("origdst: register metrics: %w", err)
			}
		}
	}
	var err error
	if m.handoff, err = newHandoffMetrics(reg); err != nil {
		return nil, err
	}
	return m, nil
}

// The to label of realipd_origdst_handoffs_total.
const (
	toEnvoy = iota
	toNative
)

// The holder label of realipd_origdst_ports (PortState.Holder).
const (
	holderNative = iota
	holderEnvoy
	holderNone
	numHolders
)

var holderNames = [numHolders]string{HolderNative, HolderEnvoy, HolderNone}

// handoffMetrics are the metrics of a Handoff (fallback: auto),
// registered with the server's, so that every fallback exposes them.
type handoffMetrics struct {
	handoffs     [2]prometheus.Counter
	ports        [numHolders]prometheus.Gauge
	bindFailures prometheus.Counter
	// claimsRefused[claimRefusedPeer]: ACKs from a peer that is not
	// Envoy's user; [claimRefusedSocket]: a held port whose Envoy socket
	// was gone, taken back.
	claimsRefused [2]prometheus.Counter
}

// The reason label of realipd_origdst_handoff_claims_refused_total.
const (
	claimRefusedPeer   = iota // "peer"
	claimRefusedSocket        // "socket_gone"
)

func newHandoffMetrics(reg prometheus.Registerer) (*handoffMetrics, error) {
	const ns, sub = "realipd", "origdst"
	handoffs := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "handoffs_total",
		Help: "Capture ports handed over (fallback: auto), by the side that took them: envoy (a node of Envoy's user ACKed a listener on the port and Envoy's socket listens there; the native listener stopped accepting on it) or native (Envoy's socket was gone, or every node holding it had been gone for fallback_grace; the native listener accepts on it again)."},
		[]string{"to"})
	ports := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "ports",
		Help: "Capture ports (fallback: auto) by holder: native (the native listener accepts on them), envoy (an Envoy node holds them and its socket listens there), none (neither: the native listener could not take them back; retrying)."},
		[]string{"holder"})
	bindFailures := prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "bind_failures_total",
		Help: "Failures of the native listener to serve a capture port again after Envoy held it (fallback: auto); each is retried with backoff."})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "handoff_claims_refused_total",
		Help: "Claims on a capture port not honoured (fallback: auto), by reason: peer (a listener ACK from an ADS peer that is not Envoy's user: ignored), socket_gone (Envoy held the port and its listening socket was gone: the native listener took the port back)."},
		[]string{"reason"})
	m := &handoffMetrics{
		handoffs:      [2]prometheus.Counter{handoffs.WithLabelValues("envoy"), handoffs.WithLabelValues("native")},
		bindFailures:  bindFailures,
		claimsRefused: [2]prometheus.Counter{refused.WithLabelValues("peer"), refused.WithLabelValues("socket_gone")},
	}
	for k := range numHolders {
		m.ports[k] = ports.WithLabelValues(holderNames[k])
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{handoffs, ports, bindFailures, refused} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("origdst: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// denyCounters are the counters of the denies by each policy that can
// deny with one Decider (decide.Decider.PolicyNames, and on the HTTP
// ports http_refused). They are made once per Decider, so that no request
// looks a series up; the policy names come from the configuration, which
// bounds them.
type denyCounters struct {
	tcp  map[string]prometheus.Counter // connections_refused_total{reason="policy_deny"}
	http map[string]prometheus.Counter // http_requests_total{decision="deny"}; nil without HTTP ports
	// The Decider's header names: the one its resolver reads,
	// lower-case ("" for none), and the client-IP header as net/http
	// spells it (canonical), which the HTTP mode writes.
	headerName, clientIPHeader string
}

// countersKey names the server's counters of one Decider (countersOf).
var countersKey = decide.NewLocalKey("origdst counters")

// countersOf returns the deny counters of d.
func (srv *Server) countersOf(d *decide.Decider) *denyCounters {
	return d.Local(countersKey, func(d *decide.Decider) any {
		names := d.PolicyNames()
		c := &denyCounters{tcp: make(map[string]prometheus.Counter, len(names)), clientIPHeader: textproto.CanonicalMIMEHeaderKey(d.ClientIPHeader())}
		c.headerName = d.Resolver().Header()
		for _, n := range names {
			c.tcp[n] = srv.m.refusedBy.WithLabelValues(refusedPolicyDeny.String(), n)
		}
		if len(srv.httpPorts) > 0 {
			c.http = make(map[string]prometheus.Counter, len(names)+1)
			for _, n := range append(names, decide.PolicyHTTPRefused) {
				c.http[n] = srv.m.httpRequests.WithLabelValues("deny", n)
			}
		}
		return c
	}).(*denyCounters)
}

// deniedTCP counts a connection denied by policy.
func (m *metrics) deniedTCP(d *denyCounters, policy string) {
	if c, ok := d.tcp[policy]; ok {
		c.Inc()
		return
	}
	m.refusedBy.WithLabelValues(refusedPolicyDeny.String(), policy).Inc() // not reached: a Decider names its own policies
}

// deniedHTTP counts a request of the HTTP ports denied by policy.
func (m *metrics) deniedHTTP(d *denyCounters, policy string) {
	if c, ok := d.http[policy]; ok {
		c.Inc()
		return
	}
	m.httpRequests.WithLabelValues("deny", policy).Inc()
}

// dialReason is the reason label of a dial error.
func dialReason(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	return "other"
}

// lookupReason is the reason label of a lookup error.
func lookupReason(err error) string {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return "no_conntrack"
	case errors.Is(err, syscall.ENOPROTOOPT):
		return "not_supported"
	}
	return "other"
}
