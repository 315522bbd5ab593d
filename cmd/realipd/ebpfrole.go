package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/realipd/realipd/intercept"
	"github.com/realipd/realipd/internal/config"
)

// ebpfOptions turns intercept.ebpf into the capture's options.
func ebpfOptions(cfg *config.Config) intercept.EBPFOptions {
	e := cfg.Intercept.EBPF
	ports := make([]uint16, len(e.InboundPorts))
	for i, p := range e.InboundPorts {
		ports[i] = uint16(p)
	}
	return intercept.EBPFOptions{
		Cgroup:           e.Cgroup,
		GetsockoptCgroup: e.GetsockoptCgroup,
		OutboundPort:     uint16(cfg.OutboundCapturePort()),
		ExcludeMark:      uint32(e.ExcludeMark),
		InboundPorts:     ports,
		Pin:              e.Pin,
	}
}

// ebpfRuntime is the attached capture of the ebpf role.
type ebpfRuntime struct {
	log *slog.Logger

	mu      sync.Mutex
	capture *intercept.EBPFCapture // nil once closed
}

// ebpfRole attaches the eBPF capture of intercept.ebpf now, so that a
// kernel or a process that cannot run it stops serve before anything
// starts, and returns the role, which holds it until shutdown and then
// detaches it (unless it is pinned: then it stays for the next start or
// for 'realipd ebpf detach'). The returned close detaches it when serve
// gives up before the role runs. Its metrics are registered in reg.
func ebpfRole(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer) (role, func(), error) {
	rt := &ebpfRuntime{log: logger.With("role", "ebpf")}
	opts := ebpfOptions(cfg)
	c, err := intercept.AttachEBPF(opts)
	if err != nil {
		return role{}, nil, fmt.Errorf("the ebpf role cannot start: %w", err)
	}
	rt.capture = c
	if err := registerEBPFMetrics(reg, rt); err != nil {
		rt.close()
		return role{}, nil, err
	}
	rt.log.Info("eBPF capture attached", "cgroup", opts.Cgroup, "getsockopt_cgroup", cfg.Intercept.EBPF.EffectiveGetsockoptCgroup(),
		"outbound_port", opts.OutboundPort, "exclude_mark", opts.ExcludeMark, "pinned", c.Pinned(), "links", len(c.Links()))
	if len(opts.InboundPorts) > 0 {
		// The sockmap waits for an inbound capture socket
		// (origdst.Listener is a syscall.Conn for SetInboundListener).
		// serve registers none yet: the native listener would have to
		// reach the application over loopback, which sk_lookup leaves
		// alone, rather than at the original destination, which it would
		// steer back. Until one is registered nothing is steered.
		rt.log.Warn("inbound steering attached, but no inbound capture socket is registered yet: connections to the inbound ports go where they would without realipd",
			"inbound_ports", opts.InboundPorts)
	}
	return role{name: "ebpf", run: func(ctx context.Context) error {
		<-ctx.Done()
		rt.close()
		return nil
	}}, rt.close, nil
}

// close detaches the capture (or, pinned, lets go of it); a second call
// does nothing.
func (rt *ebpfRuntime) close() {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.capture == nil {
		return
	}
	pinned := rt.capture.Pinned()
	if err := rt.capture.Close(); err != nil {
		rt.log.Error("detaching the eBPF capture", "err", err)
	} else if pinned {
		rt.log.Info("eBPF capture left attached (pinned); 'realipd ebpf detach' removes it")
	} else {
		rt.log.Info("eBPF capture detached")
	}
	rt.capture = nil
}

// counters reads the capture's counters; ok is false once it is closed.
func (rt *ebpfRuntime) counters() (c intercept.EBPFCounters, ok bool, err error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.capture == nil {
		return c, false, nil
	}
	c, err = rt.capture.Counters()
	return c, true, err
}

var (
	ebpfAttachedDesc = prometheus.NewDesc("realipd_ebpf_attached",
		"1 while this process holds the eBPF capture attached, 0 after it has detached or let go of it.", nil, nil)
	ebpfCapturedDesc = prometheus.NewDesc("realipd_ebpf_captured_connections_total",
		"TCP connects of the captured cgroup sent to the outbound capture port.", nil, nil)
	ebpfExcludedDesc = prometheus.NewDesc("realipd_ebpf_excluded_connections_total",
		"TCP connects left alone because their socket carries intercept.ebpf.exclude_mark.", nil, nil)
	ebpfLookupsDesc = prometheus.NewDesc("realipd_ebpf_original_dst_lookups_total",
		"getsockopt(SO_ORIGINAL_DST) calls on TCP sockets: answered from the capture's record, or missed (no record; the kernel's own answer stands).", []string{"result"}, nil)
	ebpfSteeredDesc = prometheus.NewDesc("realipd_ebpf_inbound_steered_total",
		"Inbound connections steered to the inbound capture socket by sk_lookup.", nil, nil)
)

// registerEBPFMetrics registers the ebpf role's metrics, read from rt, in
// reg. Every metric of the role is registered here, so that
// docs/metrics.md's test, which cannot attach a capture, sees them all.
func registerEBPFMetrics(reg prometheus.Registerer, rt *ebpfRuntime) error {
	return reg.Register(ebpfCollector{rt})
}

// ebpfCollector exports the capture's BPF counters, read at each scrape.
// With a pinned capture they count since it was first attached.
type ebpfCollector struct{ rt *ebpfRuntime }

func (ebpfCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{ebpfAttachedDesc, ebpfCapturedDesc, ebpfExcludedDesc, ebpfLookupsDesc, ebpfSteeredDesc} {
		ch <- d
	}
}

func (e ebpfCollector) Collect(ch chan<- prometheus.Metric) {
	c, ok, err := e.rt.counters()
	attached := 0.0
	if ok {
		attached = 1
	}
	ch <- prometheus.MustNewConstMetric(ebpfAttachedDesc, prometheus.GaugeValue, attached)
	if !ok {
		return
	}
	if err != nil {
		ch <- prometheus.NewInvalidMetric(ebpfCapturedDesc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(ebpfCapturedDesc, prometheus.CounterValue, float64(c.Captured))
	ch <- prometheus.MustNewConstMetric(ebpfExcludedDesc, prometheus.CounterValue, float64(c.Excluded))
	ch <- prometheus.MustNewConstMetric(ebpfLookupsDesc, prometheus.CounterValue, float64(c.Answered), "answered")
	ch <- prometheus.MustNewConstMetric(ebpfLookupsDesc, prometheus.CounterValue, float64(c.Missed), "missed")
	ch <- prometheus.MustNewConstMetric(ebpfSteeredDesc, prometheus.CounterValue, float64(c.Steered))
}
