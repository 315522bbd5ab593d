// Package listenaddr opens the listen addresses of realipd's gRPC roles
// (extproc.listen, xds.listen): TCP "host:port" or "unix:///path", a stale
// unix socket file replaced. It is shared by the roles, which may not import
// one another, and imports the standard library only.
package listenaddr

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// Listen opens the listener for addr: TCP "host:port" or "unix:///path". A
// stale unix socket file (one nobody accepts on) is removed first; a live
// one, or a path that is not a socket, is an error. Errors start with
// "listen" and name addr; callers add their role.
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if path == "" || !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("listen %q: want unix:///absolute/path", addr)
		}
		if err := removeStaleSocket(path); err != nil {
			return nil, err
		}
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("listen %q: %w", addr, err)
		}
		return ln, nil
	}
	if strings.Contains(addr, "://") {
		return nil, fmt.Errorf("listen %q: want host:port or unix:///path", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %q: %w", addr, err)
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
		return fmt.Errorf("listen unix://%s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("listen unix://%s: the path exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("listen unix://%s: another process is listening there", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("listen unix://%s: remove the stale socket: %w", path, err)
	}
	return nil
}

// String names ln's address as a listen address is written: "unix:///path"
// or "host:port".
func String(ln net.Listener) string {
	a := ln.Addr()
	if a.Network() == "unix" {
		return "unix://" + a.String()
	}
	return a.String()
}

// Reason says in words why opening a listen address failed, for the one
// line a role that cannot start prints: the common system call errors are
// named with what to do about them; other errors are returned as they are.
func Reason(err error) string {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return "the address is already in use (another process listens on it: another realipd?)"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "the address is not one of this host's"
	case errors.Is(err, syscall.EACCES):
		return "permission denied (a port below 1024 needs CAP_NET_BIND_SERVICE or root; a unix socket needs a writable directory)"
	}
	return err.Error()
}
