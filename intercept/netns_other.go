//go:build !linux

package intercept

// HostNetns reports whether the calling thread is in the host's network
// namespace. Network namespaces exist on Linux only: elsewhere it reports
// false.
func HostNetns() (bool, error) { return false, nil }
