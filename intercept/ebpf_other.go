//go:build !linux

package intercept

import (
	"errors"
	"syscall"
)

// errEBPFNotLinux is what every eBPF function returns off Linux.
var errEBPFNotLinux = errors.New("ebpf: the eBPF capture needs Linux")

// EBPFCapture is an attached eBPF capture (Linux only).
type EBPFCapture struct{}

// AttachEBPF fails: the eBPF capture needs Linux.
func AttachEBPF(opts EBPFOptions) (*EBPFCapture, error) { return nil, errEBPFNotLinux }

// ProbeEBPF fails: the eBPF capture needs Linux.
func ProbeEBPF(inbound bool) error { return errEBPFNotLinux }

// DetachEBPF fails: the eBPF capture needs Linux.
func DetachEBPF(dir string) error { return errEBPFNotLinux }

// EBPFStatus fails: the eBPF capture needs Linux.
func EBPFStatus(dir string) (*EBPFState, error) { return nil, errEBPFNotLinux }

// SetInboundListener fails: the eBPF capture needs Linux.
func (c *EBPFCapture) SetInboundListener(l syscall.Conn) error { return errEBPFNotLinux }

// Counters fails: the eBPF capture needs Linux.
func (c *EBPFCapture) Counters() (EBPFCounters, error) { return EBPFCounters{}, errEBPFNotLinux }

// Links returns nothing off Linux.
func (c *EBPFCapture) Links() []EBPFLink { return nil }

// Pinned reports false off Linux.
func (c *EBPFCapture) Pinned() bool { return false }

// Close does nothing off Linux.
func (c *EBPFCapture) Close() error { return nil }
