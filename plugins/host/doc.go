// Package host runs out-of-process IP policies: programs built with package
// sdk, started and supervised with hashicorp/go-plugin over gRPC.
//
// A Host is a plugins.Policy backed by one plugin process. New checks the
// binary (path, executable bit, sha256), starts it (handshake with a fixed
// magic cookie and protocol version, gRPC only, automatic mutual TLS, a
// start timeout), hands it its configuration and learns which request
// inputs it reads. Decide then calls the plugin with a per-call deadline;
// decisions the plugin marks cacheable are kept in an LRU keyed on the
// inputs the plugin declared.
//
// Every start, restarts included, verifies the binary again. On Linux the
// plugin runs from a sealed in-memory copy (a memfd) whose sha256 was
// checked, so the bytes that run are the bytes verified even if the file is
// replaced during the start; elsewhere the file is checked and then run by
// its path.
//
// Errors are returned, never turned into decisions: the caller (the policy
// chain) applies the entry's on_error. Decide never blocks longer than the
// configured timeout. While the plugin is down, Decide fails at once with
// ErrUnavailable (cached decisions are still served).
//
// A supervisor goroutine watches the process (exit, the gRPC connection's
// state, a periodic health ping) and restarts a dead or unresponsive plugin
// with exponential backoff, each time with a new go-plugin Client and the
// same configuration. On Linux a plugin receives SIGKILL when realipd dies.
// Plugin logs (hclog JSON on the plugin's stderr) are re-logged through the
// Host's slog.Logger at their own level. Close kills the plugin.
//
// A Host is safe for concurrent use.
package host
