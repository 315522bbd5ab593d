// Package intercept steers traffic to realipd's capture ports so that Envoy's
// original_dst listener filter, or realipd's native listener, sees the
// connections with their original destination: iptables rules (REDIRECT and
// TPROXY, IPv4 and IPv6) rendered, applied and removed by realipd, and an
// eBPF capture (cgroup socket hooks) that needs no iptables and still
// answers getsockopt(SO_ORIGINAL_DST).
//
// It imports none of realipd's other roles (extproc, xds, origdst); they
// meet in cmd/realipd.
package intercept
