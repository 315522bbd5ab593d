// Package compose holds a Docker Compose example of realipd (Envoy with the
// shipped static ext_proc bootstrap, realipd and an echo server sharing one
// network namespace) and the test that checks the compose file, the files it
// mounts, Envoy's configuration and realipd's. The package has no Go API;
// see README.md.
package compose
