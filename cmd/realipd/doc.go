// Command realipd finds the real client IP of requests that reach Envoy
// through CDNs, load balancers and ingress hops, and the original
// destination of intercepted connections.
//
// Usage:
//
//	realipd serve     [--config FILE]   run every enabled role until SIGTERM/SIGINT; reload FILE on change or SIGHUP
//	realipd resolve   [--config FILE] --remote-addr ADDR [-H 'Name: value']... [flags]
//	realipd validate  --config FILE     list every configuration error with its key path
//	realipd bootstrap [--config FILE]   print the Envoy ADS bootstrap for realipd's xDS control plane
//	realipd iptables  [--mode redirect|tproxy] [--ipv6] [--apply [--host] | --remove] [--config FILE]
//	realipd ebpf      attach|detach|status [--config FILE] [--pin DIR]
//	realipd version   print the version, commit, build date and Go version
//
// docs/cli.md is the reference of every command and flag; `realipd help
// COMMAND` prints a command's flags and examples.
//
// main is thin: it installs the signal handling and calls run, which tests
// call in-process; SIGHUP reaches serve through run's context
// (withReloadSignal). Exit codes: 0 success, 1 failure, no result or invalid
// configuration, 2 bad command line.
package main
