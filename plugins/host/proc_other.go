//go:build !linux

package host

import "syscall"

// sysProcAttr returns nil: only Linux has a parent-death signal. Elsewhere a
// plugin outlives a realipd that is killed without a chance to Close.
func sysProcAttr() *syscall.SysProcAttr { return nil }
