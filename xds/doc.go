// Package xds is realipd's xDS control plane: it turns realipd's
// configuration into the Envoy resources of an iptables- or eBPF-intercepted
// sidecar — the virtual_outbound and virtual_inbound listeners (the
// original_dst listener filter; on the inbound side, for every HTTP port, the
// HTTP connection manager with ext_proc in front of the router), the
// ORIGINAL_DST passthrough clusters and the realipd_extproc cluster — and
// serves them to Envoy over ADS (state of the world and delta).
//
// The resources, their names and how they differ by mode and IP family are
// described for operators in README.md; testdata/golden holds the exact
// output for each case.
//
// Translation is pure: Build maps a Config to Resources and checks every
// resource, including what is packed inside typed_config, before anything is
// published. The server keeps the last good Resources serving when a new
// Config is rejected.
//
// The package imports go-control-plane, never realipd's other roles; the
// events other roles need ("node N ACKed a listener on port P") go through
// the Events interface, wired in cmd/realipd.
package xds
