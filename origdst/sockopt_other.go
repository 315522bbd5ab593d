//go:build !linux

package origdst

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
)

// Capture listeners need Linux (SO_ORIGINAL_DST, IP_TRANSPARENT, SO_MARK):
// elsewhere Listen fails with errors.ErrUnsupported.

func listenSupported() error { return errors.ErrUnsupported }

func originalDst(*net.TCPConn, bool) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.ErrUnsupported
}

func setTransparent(int, bool) error { return errors.ErrUnsupported }

func setReusePort(int) error { return errors.ErrUnsupported }

func setMark(int, uint32) error { return errors.ErrUnsupported }

func probeMark(uint32) error { return errors.ErrUnsupported }

type dataWaiter struct{}

func newDataWaiter(syscall.RawConn) *dataWaiter { return &dataWaiter{} }

func (*dataWaiter) wait() (int, error) { return 0, errors.ErrUnsupported }

func (*dataWaiter) quiet() bool { return false }

func stopListening(int) error { return errors.ErrUnsupported }

func listenAgain(int) error { return errors.ErrUnsupported }

type bufferedReader struct{}

func newBufferedReader(syscall.RawConn, *buffer) *bufferedReader { return &bufferedReader{} }

func (*bufferedReader) read() (int, error) { return 0, errors.ErrUnsupported }

type rawSocket struct{}

func newRawSocket(syscall.RawConn) *rawSocket { return &rawSocket{} }

func (*rawSocket) Read([]byte) (int, error) { return 0, errors.ErrUnsupported }

func (*rawSocket) Write([]byte) (int, error) { return 0, errors.ErrUnsupported }

// httpLoop is the HTTP mode's event loop, on Linux only; elsewhere the
// connections wait in goroutines.
type httpLoop struct{}

type loopState struct{}

func startHTTPLoops(*Server, int) ([]*httpLoop, error) { return nil, nil }

func stopHTTPLoops([]*httpLoop) {}

func (*httpConn) waitInLoop() loopBack { return backEnd }

func (*httpConn) reclaim(bool) {}
