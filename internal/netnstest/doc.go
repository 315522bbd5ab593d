// Package netnstest holds what the tests that need a real kernel share:
// network namespaces made with `ip netns add` and deleted when the test
// ends, whose addresses and links are usable when the helpers return (no
// test waits for duplicate address detection or a link event); code run
// inside one on an OS thread that joined it; veth pairs between two of
// them; cgroups made and removed for the eBPF capture's tests, and a
// client process born inside one that dials given addresses and reports
// what answered; and the skip that becomes a failure when
// REALIPD_REQUIRE_NETNS=1 (CI). Linux only; it needs root, ip(8) and the
// iptables tools.
package netnstest
