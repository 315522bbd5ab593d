// Package netnstest holds what the tests that need a real kernel share:
// network namespaces made with `ip netns add` and deleted when the test
// ends, code run inside one on an OS thread that joined it, veth pairs
// between two of them, and the skip that becomes a failure when
// REALIPD_REQUIRE_NETNS=1 (CI). Linux only; it needs root, ip(8) and the
// iptables tools.
package netnstest
