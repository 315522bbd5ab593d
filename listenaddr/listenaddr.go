// Package listenaddr opens the listen addresses of realipd's gRPC roles
// (extproc.listen, xds.listen): TCP "host:port" or "unix:///path", a stale
// unix socket file replaced, a new one open to its owner alone or to one
// group (Options) from its first moment. It is shared by the roles, which
// may not import one another, and imports the standard library only.
package listenaddr

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options are what Listen does with a unix socket it makes; a TCP listener
// ignores them. The zero value is the safe one: the owner alone.
type Options struct {
	// Group, when not nil, is the group whose members may connect besides
	// the process's user: the socket file is given to that group with mode
	// 0660. The process must be a member of the group (its own group or a
	// supplementary one) unless it runs as root. nil: mode 0600, only the
	// process's user (and root) may connect.
	Group *int
}

// Listen opens the listener for addr: TCP "host:port" or "unix:///path". A
// stale unix socket file (one that refuses connections) is removed first;
// a live one, or a path that is not a socket, is an error. A unix socket's file
// has its mode and group (see Options) before anyone can connect to it,
// and closing the listener removes it. Errors start with "listen" and name
// addr; callers add their role.
func Listen(addr string, o Options) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if path == "" || !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("listen %q: want unix:///absolute/path", addr)
		}
		if err := removeStaleSocket(path); err != nil {
			return nil, err
		}
		return listenUnix(addr, path, o)
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

// listenUnix makes the socket in a new directory next to path that only
// this user may enter, gives it its mode and group there and then links it
// to path. Connecting needs write permission on the socket file, so made
// at path directly it would take connections, for a moment, with the
// permissions the umask gives; and a chmod or chown of path could follow
// a symbolic link that someone who may write path's directory put in the
// socket's place. Linking, unlike renaming, fails when anything took path
// meanwhile, so a live socket is never replaced.
func listenUnix(addr, path string, o Options) (_ net.Listener, err error) {
	if len(path) > maxPath {
		return nil, fmt.Errorf("listen %q: a unix socket path has at most %d bytes", addr, maxPath)
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".s") // mode 0700
	if err != nil {
		return nil, fmt.Errorf("listen %q: %w", addr, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	if len(tmp) > maxPath {
		return nil, fmt.Errorf("listen %q: the directory's path is too long: the socket is made first as %s, which has more than %d bytes", addr, tmp, maxPath)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen %q: %w", addr, err)
	}
	ln.SetUnlinkOnClose(false) // tmp goes with dir; path is unixListener's
	defer func() {
		if err != nil {
			ln.Close()
		}
	}()
	mode := os.FileMode(0o600)
	if o.Group != nil {
		if err := os.Lchown(tmp, -1, *o.Group); err != nil {
			return nil, fmt.Errorf("listen %q: give the socket to group %d: %w", addr, *o.Group, errno(err))
		}
		mode = 0o660
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return nil, fmt.Errorf("listen %q: chmod %o: %w", addr, mode, errno(err))
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("listen %q: the path was taken while the socket was being made: %w", addr, syscall.EADDRINUSE)
		}
		return nil, fmt.Errorf("listen %q: %w", addr, errno(err))
	}
	fi, err := os.Lstat(path)
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("listen %q: %w", addr, err)
	}
	return &unixListener{UnixListener: ln, addr: &net.UnixAddr{Name: path, Net: "unix"}, file: fi}, nil
}

// maxPath is the longest unix socket path: sun_path has 108 bytes, the
// terminating NUL included.
const maxPath = 107

// errno is the system call error inside err, without the paths the
// message would repeat (the directory the socket was made in is gone once
// Listen returns; the socket's path is in the message already).
func errno(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return fmt.Errorf("%s: %w", le.Op, le.Err)
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe.Err
	}
	return err
}

// unixListener is a unix socket listener made by listenUnix: its address
// is path, where it was linked, and Close removes path while it is still
// this socket's. The connections it accepts keep, as their local address,
// the name the socket was bound to in the private directory (the kernel's
// record of the bind), a path that no longer exists.
type unixListener struct {
	*net.UnixListener
	addr  *net.UnixAddr
	file  os.FileInfo
	close sync.Once
}

func (l *unixListener) Addr() net.Addr { return l.addr }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.close.Do(func() {
		if fi, err := os.Lstat(l.addr.Name); err == nil && os.SameFile(fi, l.file) {
			os.Remove(l.addr.Name)
		}
	})
	return err
}

// removeStaleSocket removes path if it is a unix socket no one listens on:
// one that refuses a connection. A socket that takes one, or that this
// user may not connect to or could not reach now (a full backlog), may be
// live and is left alone.
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
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("listen unix://%s: another process is listening there: %w", path, syscall.EADDRINUSE)
	case !errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("listen unix://%s: a socket is there and may be live (connecting to it: %w)", path, errno(err))
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
	case errors.Is(err, syscall.EPERM):
		return "operation not permitted (a unix socket's socket_group must be one of realipd's own groups: its group or a supplementary one)"
	}
	return err.Error()
}
