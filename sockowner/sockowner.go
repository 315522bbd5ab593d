// Package sockowner asks the kernel who owns a socket: the local user at the
// other end of a connection (SO_PEERCRED on a unix socket; for TCP, the
// owner of the peer's socket when it is in this network namespace) and the
// owners of the TCP sockets listening on a port. It is how realipd tells an
// Envoy it may hand a capture port to from any other local process: node
// ids and xDS messages are whatever a client writes, the kernel's answer is
// not.
//
// The TCP answers come from the sock_diag netlink interface (the one ss(8)
// uses), which needs no privilege and sees the caller's network namespace
// only. Everything here is safe for concurrent use.
package sockowner

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
)

// Peer is the local user at the other end of a connection.
type Peer struct {
	// UID is the effective user id of the process that opened the peer's
	// socket (unix: that connected it), valid when Known.
	UID uint32
	// PID is the peer's process id on a unix socket; 0 otherwise.
	PID int32
	// Known is false when the kernel could not say: a TCP peer on another
	// host or in another network namespace, or a connection of another kind.
	Known bool
}

// String is "uid=N" (with ",pid=P" when known), or "unknown".
func (p Peer) String() string {
	if !p.Known {
		return "unknown"
	}
	s := "uid=" + strconv.FormatUint(uint64(p.UID), 10)
	if p.PID != 0 {
		s += ",pid=" + strconv.FormatInt(int64(p.PID), 10)
	}
	return s
}

// ErrUnsupported is returned where the kernel interfaces are not there (not
// Linux).
var ErrUnsupported = errors.New("sockowner: needs Linux")

// PeerOf returns the local user at the other end of c: from SO_PEERCRED for
// a *net.UnixConn; for a *net.TCPConn, the owner of the socket whose local
// address is c's remote address and whose remote address is c's local one,
// when there is such a socket in this network namespace. A peer the kernel
// cannot name is returned with Known false and a nil error; an error means
// the question could not be asked.
func PeerOf(c net.Conn) (Peer, error) {
	switch c := c.(type) {
	case *net.UnixConn:
		return unixPeer(c)
	case *net.TCPConn:
		local, ok1 := addrPort(c.LocalAddr())
		remote, ok2 := addrPort(c.RemoteAddr())
		if !ok1 || !ok2 {
			return Peer{}, nil
		}
		s, found, err := lookupTCP(remote, local)
		if err != nil || !found {
			return Peer{}, err
		}
		return Peer{UID: s.UID, Known: true}, nil
	}
	return Peer{}, nil
}

// Socket is a TCP socket as the kernel lists it.
type Socket struct {
	// Addr is the local address (unmapped: an IPv4 address for AF_INET, an
	// IPv6 one, "::" for the wildcard, for AF_INET6).
	Addr netip.AddrPort
	// V6 is true for an AF_INET6 socket.
	V6 bool
	// UID owns the socket (the effective uid of the process that made it).
	UID uint32
	// Inode is the socket's inode number (see Inode).
	Inode uint64
}

// Listening returns the TCP sockets of this network namespace listening on
// port, IPv4 and IPv6.
func Listening(port uint16) ([]Socket, error) {
	var out []Socket
	for _, v6 := range []bool{false, true} {
		all, err := dumpListening(v6)
		if err != nil {
			return nil, fmt.Errorf("sockowner: list listening sockets: %w", err)
		}
		for _, s := range all {
			if s.Addr.Port() == port {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// Inode returns the inode number of the socket behind sc (a listener or a
// connection), the number Listening reports, so that a process can tell its
// own sockets from others'.
func Inode(sc syscall.Conn) (uint64, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var ino uint64
	var serr error
	if err := rc.Control(func(fd uintptr) { ino, serr = fdInode(int(fd)) }); err != nil {
		return 0, err
	}
	return ino, serr
}

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.Addr().IsValid()
}
