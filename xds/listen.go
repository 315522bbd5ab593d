package xds

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// Listen opens the listener for an xds.listen address: TCP "host:port" or
// "unix:///path". A stale unix socket file (one nobody accepts on) is removed
// first; a live one, or a path that is not a socket, is an error.
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if path == "" || !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("xds: listen %q: want unix:///absolute/path", addr)
		}
		if err := removeStaleSocket(path); err != nil {
			return nil, err
		}
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("xds: listen %q: %w", addr, err)
		}
		return ln, nil
	}
	if strings.Contains(addr, "://") {
		return nil, fmt.Errorf("xds: listen %q: want host:port or unix:///path", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("xds: listen %q: %w", addr, err)
	}
	return ln, nil
}

// removeStaleSocket removes path if it is a unix socket no one listens on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("xds: stat %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("xds: listen unix://%s: the path exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("xds: listen unix://%s: another process is listening there", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("xds: remove stale socket %s: %w", path, err)
	}
	return nil
}

// addrString names ln's address as xds.listen spells it.
func addrString(ln net.Listener) string {
	a := ln.Addr()
	if a.Network() == "unix" {
		return "unix://" + a.String()
	}
	return a.String()
}
