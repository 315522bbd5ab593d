package origdst

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST
// (linux/netfilter_ipv6/ip6_tables.h), which x/sys/unix does not define; it
// has the value of SO_ORIGINAL_DST, at SOL_IPV6.
const ip6tSOOriginalDst = 80

func listenSupported() error { return nil }

// originalDst reads SO_ORIGINAL_DST of an accepted connection: at SOL_IP
// when its local address is IPv4 (also an IPv4-mapped one on an IPv6
// socket: the kernel keeps the IPv4 addresses of such a connection and
// answers from the IPv4 conntrack), at SOL_IPV6 (IP6T_SO_ORIGINAL_DST)
// otherwise. The kernel writes a sockaddr_in or a sockaddr_in6 whose port
// is in network byte order; IPv6MTUInfo is only a 32-byte buffer that
// holds either. It goes through SyscallConn().Control, so the socket stays
// in Go's netpoller (conn.File would dup it and make it blocking).
func originalDst(c *net.TCPConn, v4 bool) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		ap   netip.AddrPort
		serr error
	)
	err = rc.Control(func(fd uintptr) {
		level, opt := unix.SOL_IPV6, ip6tSOOriginalDst
		if v4 {
			level, opt = unix.SOL_IP, unix.SO_ORIGINAL_DST
		}
		info, err := unix.GetsockoptIPv6MTUInfo(int(fd), level, opt)
		if err != nil {
			serr = err
			return
		}
		raw := (*[unsafe.Sizeof(*info)]byte)(unsafe.Pointer(info))
		port := uint16(raw[2])<<8 | uint16(raw[3])
		switch info.Addr.Family {
		case unix.AF_INET:
			ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte(raw[4:8])), port)
		case unix.AF_INET6:
			a := netip.AddrFrom16([16]byte(raw[8:24]))
			ap = netip.AddrPortFrom(a.Unmap(), port)
		default:
			serr = unix.EAFNOSUPPORT
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	return ap, serr
}

// setTransparent sets IP_TRANSPARENT (IPV6_TRANSPARENT on an IPv6
// socket), which lets the socket accept connections to addresses that are
// not local (TPROXY) and needs CAP_NET_ADMIN.
func setTransparent(fd int, v6 bool) error {
	if v6 {
		return unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
	}
	return unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
}

// setReusePort sets SO_REUSEPORT: sockets of the same effective UID that
// all set it may bind the same address, and the kernel spreads the
// incoming connections between them.
func setReusePort(fd int) error {
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
}

// setMark sets SO_MARK (CAP_NET_ADMIN), which the interception rules use
// to leave realipd's own upstream connections alone.
func setMark(fd int, mark uint32) error {
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark))
}

// probeMark sets SO_MARK on a socket of its own, to learn whether the
// process may.
func probeMark(mark uint32) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return setMark(fd, mark)
}

// dataWaiter waits until a socket has data or is at EOF, without reading
// anything (so that a connection waiting holds no buffer), and says how
// many bytes it can read now: 0 at EOF. It asks the kernel (SIOCINQ), and
// when that says 0, peeks at one byte to tell "nothing yet" (wait: Go's
// netpoller parks the goroutine) from EOF. One is made per socket, so
// that waiting allocates nothing. It is not safe for concurrent use.
type dataWaiter struct {
	rc      syscall.RawConn
	check   func(fd uintptr) bool // w.poll, bound once
	peekNow func(fd uintptr)      // w.peekQuiet, bound once
	avail   int
	err     error
	isQuiet bool
	peek    [1]byte
}

func newDataWaiter(rc syscall.RawConn) *dataWaiter {
	w := &dataWaiter{rc: rc}
	w.check = w.poll
	w.peekNow = w.peekQuiet
	return w
}

// quiet reports whether the socket has nothing to read and is not at EOF,
// now, without waiting: a kept-alive connection the peer has neither
// closed nor sent anything on.
func (w *dataWaiter) quiet() bool {
	w.isQuiet = false
	if err := w.rc.Control(w.peekNow); err != nil {
		return false
	}
	return w.isQuiet
}

func (w *dataWaiter) peekQuiet(fd uintptr) {
	for {
		_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&w.peek[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		w.isQuiet = errno == unix.EAGAIN
		return
	}
}

// wait waits for data or EOF; see dataWaiter.
func (w *dataWaiter) wait() (avail int, err error) {
	w.avail, w.err = 0, nil
	err = w.rc.Read(w.check)
	if err == nil {
		err = w.err
	}
	return w.avail, err
}

// poll is the readiness check of wait: true when done.
func (w *dataWaiter) poll(fd uintptr) bool {
	for {
		n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if err != nil {
			w.err = err
			return true
		}
		if n > 0 {
			w.avail = n
			return true
		}
		// recvfrom(MSG_PEEK) without x/sys's Sockaddr, which allocates.
		m, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&w.peek[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN:
			return false // nothing yet: wait for readability
		case errno != 0:
			w.err = errno
			return true
		case m == 0:
			return true // EOF
		}
		// Data arrived between the two calls: ask again.
	}
}

// stopListening makes a listening TCP socket stop listening while it stays
// bound (shutdown(SHUT_RD) disconnects it: tcp_disconnect), with
// SO_REUSEADDR cleared so that only a socket of the same user with
// SO_REUSEPORT may bind its address meanwhile (see Listener.park).
func stopListening(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 0); err != nil {
		return fmt.Errorf("SO_REUSEADDR: %w", err)
	}
	if err := unix.Shutdown(fd, unix.SHUT_RD); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// listenAgain makes a socket stopListening parked listen again, with the
// largest backlog the kernel allows (net.core.somaxconn caps it), as Go's
// own listeners do.
func listenAgain(fd int) error {
	if err := unix.Listen(fd, 65535); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return nil
}

// bufferedReader reads a socket into a buffer it takes from a pool only
// when there is something to read: a connection that waits for its next
// request holds no buffer, yet reading costs the same system calls as a
// plain Read (a read that finds nothing, the wait, the read). One is made
// per socket; it is not safe for concurrent use.
type bufferedReader struct {
	rc    syscall.RawConn
	check func(fd uintptr) bool // r.try, bound once
	buf   *buffer
	n     int
	err   error
}

func newBufferedReader(rc syscall.RawConn, buf *buffer) *bufferedReader {
	r := &bufferedReader{rc: rc, buf: buf}
	r.check = r.try
	return r
}

// read waits until the socket has data, then reads what is there into the
// buffer (taking one from the pool if it holds none); n == 0 with a nil
// error is EOF.
func (r *bufferedReader) read() (n int, err error) {
	r.n, r.err = 0, nil
	err = r.rc.Read(r.check)
	if err == nil {
		err = r.err
	}
	return r.n, err
}

// try is the readiness check of read: true when done.
func (r *bufferedReader) try(fd uintptr) bool {
	held := r.buf.b != nil
	r.buf.hold()
	room := r.buf.room(false)
	for {
		n, err := rawRead(fd, room)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if !held && r.buf.empty() {
				r.buf.release() // wait without it
			}
			return false
		case err != 0:
			r.err = err
			return true
		}
		r.buf.w += n
		r.n = n
		return true
	}
}
