// Package kubernetes holds the Kubernetes manifests of realipd's example
// deployment (an application with Envoy and realipd as sidecars, iptables
// interception installed by an init container, both configurations in
// ConfigMaps) and the test that decodes every manifest strictly into the
// Kubernetes API types and checks how the pieces are wired together. The
// package has no Go API; see README.md.
package kubernetes
