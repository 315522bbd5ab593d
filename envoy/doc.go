// Package envoy holds the Envoy configuration files shipped with realipd (a
// static bootstrap with the ext_proc filter over TCP and over a unix socket, and
// an ADS bootstrap for realipd's xDS control plane) and the tests that load every
// one of them into Envoy's Bootstrap proto and validate it, including every
// packed typed_config. The package has no Go API; see README.md.
package envoy
