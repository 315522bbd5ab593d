package config

import (
	"path/filepath"
	"strings"
)

// EBPF configures the eBPF capture (intercept.ebpf): cgroup socket hooks
// that send the TCP connects of one cgroup to the outbound capture port and
// answer getsockopt(SO_ORIGINAL_DST) for them, and an sk_lookup program
// that steers inbound connections to realipd's inbound capture socket. No
// iptables rule is involved.
type EBPF struct {
	Enabled bool `json:"enabled"`
	// Cgroup is the cgroup v2 directory, relative to the cgroup2 mount,
	// whose TCP connects are captured ("/" is the whole hierarchy).
	Cgroup string `json:"cgroup"`
	// GetsockoptCgroup is the cgroup v2 directory (or an ancestor of it)
	// where the process that reads SO_ORIGINAL_DST (Envoy or realipd's
	// native listener) created its capture listener; "" means Cgroup,
	// which is right when that process runs in the captured cgroup, as in
	// a pod.
	GetsockoptCgroup string `json:"getsockopt_cgroup"`
	// ExcludeMark: connects from sockets with this SO_MARK are not
	// captured (the upstream dials of Envoy and of the native listener).
	ExcludeMark int `json:"exclude_mark"`
	// OutboundPort is the capture port on loopback; 0 means
	// xds.outbound_port (see OutboundCapturePort).
	OutboundPort int `json:"outbound_port"`
	// InboundPorts are the local TCP ports whose inbound connections the
	// sk_lookup program steers to the inbound capture socket.
	InboundPorts []int `json:"inbound_ports"`
	// Pin is a directory on a bpffs where the programs, links and maps are
	// pinned, so that the capture outlives the process that attached it
	// ("" : not pinned; detached when realipd exits).
	Pin string `json:"pin"`
}

// DefaultEBPFExcludeMark is intercept.ebpf.exclude_mark's default: the
// same mark as origdst.mark, the one realipd's own upstream dials carry.
const DefaultEBPFExcludeMark = 1338

func defaultEBPF() EBPF {
	return EBPF{ExcludeMark: DefaultEBPFExcludeMark, InboundPorts: []int{}}
}

// OutboundCapturePort is the port the eBPF capture sends outbound connects
// to: intercept.ebpf.outbound_port, or xds.outbound_port when that is 0.
func (c *Config) OutboundCapturePort() int {
	if c.Intercept.EBPF.OutboundPort != 0 {
		return c.Intercept.EBPF.OutboundPort
	}
	return c.XDS.OutboundPort
}

// EffectiveGetsockoptCgroup is the cgroup the getsockopt hook is attached to:
// intercept.ebpf.getsockopt_cgroup, or intercept.ebpf.cgroup when empty.
func (e EBPF) EffectiveGetsockoptCgroup() string {
	if e.GetsockoptCgroup != "" {
		return e.GetsockoptCgroup
	}
	return e.Cgroup
}

func (e *EBPF) validate(errs *errorList, path string, c *Config) {
	if e.Enabled && e.Cgroup == "" {
		errs.add(path+".cgroup", "required when %s.enabled is true (a cgroup v2 directory relative to the cgroup2 mount, like /kubepods.slice/...; / captures every process)", path)
	}
	validateCgroupPath(errs, path+".cgroup", e.Cgroup)
	validateCgroupPath(errs, path+".getsockopt_cgroup", e.GetsockoptCgroup)
	validateMark(errs, path+".exclude_mark", e.ExcludeMark)
	if e.OutboundPort != 0 {
		validatePort(errs, path+".outbound_port", e.OutboundPort)
	}
	validatePorts(errs, path+".inbound_ports", e.InboundPorts)
	if e.Pin != "" && (!filepath.IsAbs(e.Pin) || filepath.Clean(e.Pin) == "/") {
		errs.add(path+".pin", "%q is not an absolute directory path (a directory on a bpffs, like /sys/fs/bpf/realipd)", e.Pin)
	}
}

// validateCgroupPath checks a cgroup path relative to the cgroup2 mount:
// "" (not set), "/" or a clean path without "." or ".." elements, with or
// without the leading slash that /proc/PID/cgroup prints.
func validateCgroupPath(errs *errorList, path, p string) {
	if p == "" || p == "/" {
		return
	}
	rel := strings.TrimPrefix(p, "/")
	if rel == "" || filepath.Clean(rel) != strings.TrimSuffix(rel, "/") || strings.HasPrefix(filepath.Clean(rel), "..") || strings.ContainsRune(p, 0) {
		errs.add(path, "%q is not a clean cgroup path relative to the cgroup2 mount (no . or .. elements)", p)
	}
}
