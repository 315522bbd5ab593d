package xds

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLimitListenerKeepsTCPUserTimeout: gRPC sets TCP_USER_TIMEOUT (the
// keepalive timeout) only on a *net.TCPConn, which limitListener's
// connections hide: limitListener sets it.
func TestLimitListenerKeepsTCPUserTimeout(t *testing.T) {
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := limitListener{Listener: inner, s: s}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*limitConn).Conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	}); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if got != int(keepaliveTimeout.Milliseconds()) {
		t.Errorf("TCP_USER_TIMEOUT %d ms, want %d", got, keepaliveTimeout.Milliseconds())
	}
	if n := s.conns.Load(); n != 1 {
		t.Errorf("%d connections counted, want 1", n)
	}
	c.Close()
	c.Close()
	if n := s.conns.Load(); n != 0 {
		t.Errorf("%d connections counted after Close (twice), want 0", n)
	}
}
