// Package ebpftest holds what the eBPF capture's tests share: a skip that
// becomes a failure when REALIPD_REQUIRE_NETNS=1, network namespaces and
// cgroups that a test creates and always removes, and a client process
// started inside a cgroup and a namespace that dials given addresses and
// reports what answered. Linux only; it needs root.
package ebpftest
