//go:build !linux

package xds

import (
	"net"
	"time"
)

// setTCPUserTimeout does nothing where TCP_USER_TIMEOUT does not exist (gRPC
// does not set it there either).
func setTCPUserTimeout(*net.TCPConn, time.Duration) error { return nil }
