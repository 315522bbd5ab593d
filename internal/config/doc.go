// Package config loads and validates realipd's YAML configuration file.
//
// Every key has a default (Default returns them), so realipd runs with no
// file at all. Parse and Load read YAML (through sigs.k8s.io/yaml: YAML to
// JSON to encoding/json, with duplicate keys refused), apply it over the
// defaults — a key that is absent keeps its default — and reject unknown
// keys. Validate reports every problem at once in a *ValidationError, each
// with its key path (`trust.trusted_cidrs[1]: "10.0.0.0/33" is not a
// CIDR`).
//
// Validation also parses once what the hot paths need: Trust.ClientIP is a
// ready clientip.Config, Policy.DenyPrefixes and AllowPrefixes are
// netip.Prefix lists, OrigDst.ListenAddrs are netip.AddrPorts. These are
// valid only after Validate (which Parse and Load call) has succeeded. A
// Config is plain data: not safe for concurrent mutation; share it
// read-only once validated.
//
// Watch reports changes of a configuration file, watching its directory so
// that atomic renames and Kubernetes ConfigMap symlink swaps are seen; serve
// reloads on them. Load resolves relative plugin paths against the file's
// directory.
package config
