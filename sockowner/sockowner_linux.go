//go:build linux

package sockowner

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// The sock_diag wire format (linux/inet_diag.h): a request is a netlink
// header and an inet_diag_req_v2; every answer an inet_diag_msg.
const (
	sizeofNlMsghdr    = 16
	sizeofReqV2       = 56
	sizeofDiagMsg     = 72
	tcpListen         = 10         // TCP_LISTEN in include/net/tcp_states.h
	inetDiagNoCookie  = 0xffffffff // INET_DIAG_NOCOOKIE
	nlmFDumpInterrupt = 0x10       // NLM_F_DUMP_INTR
	recvTimeout       = 2 * time.Second
	maxDumpAttempts   = 3
)

var native = binary.NativeEndian

// request is one sock_diag question.
type request struct {
	v6     bool
	dump   bool
	states uint32
	src    netip.AddrPort // the socket's own address (exact lookups)
	dst    netip.AddrPort // its peer's
}

func (r request) marshal(seq uint32) []byte {
	b := make([]byte, sizeofNlMsghdr+sizeofReqV2)
	flags := uint16(unix.NLM_F_REQUEST)
	if r.dump {
		flags |= unix.NLM_F_DUMP
	}
	native.PutUint32(b[0:], uint32(len(b)))
	native.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	native.PutUint16(b[6:], flags)
	native.PutUint32(b[8:], seq)
	q := b[sizeofNlMsghdr:]
	q[0] = unix.AF_INET
	if r.v6 {
		q[0] = unix.AF_INET6
	}
	q[1] = unix.IPPROTO_TCP
	native.PutUint32(q[4:], r.states)
	id := q[8:]
	binary.BigEndian.PutUint16(id[0:], r.src.Port())
	binary.BigEndian.PutUint16(id[2:], r.dst.Port())
	putAddr(id[4:20], r.src.Addr())
	putAddr(id[20:36], r.dst.Addr())
	native.PutUint32(id[40:], inetDiagNoCookie)
	native.PutUint32(id[44:], inetDiagNoCookie)
	return b
}

// putAddr writes a as sock_diag wants it: an IPv4 address in the first four
// bytes, an IPv6 one in all sixteen.
func putAddr(dst []byte, a netip.Addr) {
	if !a.IsValid() {
		return
	}
	if a.Is4() {
		v := a.As4()
		copy(dst, v[:])
		return
	}
	v := a.As16()
	copy(dst, v[:])
}

// parseDiagMsg decodes one inet_diag_msg.
func parseDiagMsg(b []byte) (Socket, bool) {
	if len(b) < sizeofDiagMsg {
		return Socket{}, false
	}
	s := Socket{V6: b[0] == unix.AF_INET6}
	port := binary.BigEndian.Uint16(b[4:])
	var addr netip.Addr
	if s.V6 {
		addr = netip.AddrFrom16([16]byte(b[8:24])).Unmap()
	} else {
		addr = netip.AddrFrom4([4]byte(b[8:12]))
	}
	s.Addr = netip.AddrPortFrom(addr, port)
	s.UID = native.Uint32(b[64:])
	s.Inode = uint64(native.Uint32(b[68:]))
	return s, true
}

// errRetry is a dump the kernel says was interrupted by a change.
var errRetry = errors.New("dump interrupted")

// ask sends r and collects the sockets of the answer. An exact lookup
// that finds nothing returns none and no error.
func ask(r request) ([]Socket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(recvTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("netlink SO_RCVTIMEO: %w", err)
	}
	const seq = 1
	if err := unix.Sendto(fd, r.marshal(seq), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("netlink send: %w", err)
	}
	var out []Socket
	buf := make([]byte, 32<<10)
	interrupted := false
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		msgs := buf[:n]
		for len(msgs) >= sizeofNlMsghdr {
			l := int(native.Uint32(msgs[0:]))
			typ := native.Uint16(msgs[4:])
			flags := native.Uint16(msgs[6:])
			if l < sizeofNlMsghdr || l > len(msgs) {
				return nil, errors.New("netlink: malformed answer")
			}
			body := msgs[sizeofNlMsghdr:l]
			msgs = msgs[min(nlmAlign(l), len(msgs)):]
			if flags&nlmFDumpInterrupt != 0 {
				interrupted = true
			}
			switch typ {
			case unix.NLMSG_DONE:
				if interrupted {
					return nil, errRetry
				}
				return out, nil
			case unix.NLMSG_ERROR:
				if len(body) < 4 {
					return nil, errors.New("netlink: malformed error")
				}
				errno := -int32(native.Uint32(body))
				if errno == 0 {
					return out, nil // an ACK
				}
				if !r.dump && unix.Errno(errno) == unix.ENOENT {
					return nil, nil // no such socket
				}
				return nil, fmt.Errorf("sock_diag: %w", unix.Errno(errno))
			case unix.SOCK_DIAG_BY_FAMILY:
				if s, ok := parseDiagMsg(body); ok {
					out = append(out, s)
				}
				if !r.dump {
					return out, nil
				}
			}
		}
	}
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// dumpListening lists the listening TCP sockets of one family.
func dumpListening(v6 bool) ([]Socket, error) {
	var err error
	for range maxDumpAttempts {
		var out []Socket
		out, err = ask(request{v6: v6, dump: true, states: 1 << tcpListen})
		if !errors.Is(err, errRetry) {
			return out, err
		}
	}
	return nil, err
}

// lookupTCP finds the TCP socket whose local address is src and whose peer
// is dst.
func lookupTCP(src, dst netip.AddrPort) (Socket, bool, error) {
	if src.Addr().Is4() != dst.Addr().Is4() {
		return Socket{}, false, nil
	}
	out, err := ask(request{v6: src.Addr().Is6(), src: src, dst: dst})
	if err != nil {
		return Socket{}, false, fmt.Errorf("sockowner: look up the socket %v -> %v: %w", src, dst, err)
	}
	if len(out) == 0 {
		return Socket{}, false, nil
	}
	return out[0], true, nil
}

// unixPeer reads SO_PEERCRED.
func unixPeer(c *net.UnixConn) (Peer, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if serr != nil {
		return Peer{}, fmt.Errorf("sockowner: SO_PEERCRED: %w", serr)
	}
	return Peer{UID: cred.Uid, PID: cred.Pid, Known: true}, nil
}

func fdInode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("sockowner: fstat: %w", err)
	}
	return st.Ino, nil
}
