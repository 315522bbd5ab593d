package origdst

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/realipd/realipd/sockowner"
)

// Mode is how connections reach a capture listener, and so where their
// original destination is read.
type Mode string

// The modes, spelt as in the configuration (origdst.mode).
const (
	// ModeRedirect: iptables REDIRECT (nat) or the eBPF connect hooks
	// rewrote the destination to the capture address; the original one is
	// read back with getsockopt(SO_ORIGINAL_DST).
	ModeRedirect Mode = "redirect"
	// ModeTProxy: iptables TPROXY (mangle) or the eBPF sk_lookup steering
	// handed the connection to a transparent socket without rewriting
	// anything; the original destination is the accepted socket's local
	// address.
	ModeTProxy Mode = "tproxy"
)

// ParseMode parses a mode as the configuration spells it.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeRedirect, ModeTProxy:
		return m, nil
	}
	return "", fmt.Errorf("origdst: mode %q: want redirect or tproxy", s)
}

// ErrNotRedirected is the error of a connection whose original destination
// is a capture address: it came to the capture port directly, or it is
// realipd's own upstream connection coming back (a loop). Such a
// connection is closed at once, before any byte is read or written.
var ErrNotRedirected = errors.New("origdst: the connection was not redirected: its original destination is a capture address (a direct connection to the capture port, or a loop)")

// LookupError is the error of a connection whose original destination
// could not be read. Err is the system call's error (unix.ENOENT,
// unix.ENOPROTOOPT...).
type LookupError struct {
	Err error
}

func (e *LookupError) Error() string {
	switch {
	case errors.Is(e.Err, syscall.ENOENT):
		return "origdst: the connection has no original destination: conntrack has no entry for it (it was not redirected by iptables REDIRECT, or nf_conntrack does not track it)"
	case errors.Is(e.Err, syscall.ENOPROTOOPT):
		return "origdst: the kernel does not answer SO_ORIGINAL_DST on this socket (nf_conntrack is not loaded for its family: is the REDIRECT rule installed?)"
	case errors.Is(e.Err, errors.ErrUnsupported):
		return "origdst: reading the original destination needs Linux"
	}
	return fmt.Sprintf("origdst: reading the original destination: %v", e.Err)
}

func (e *LookupError) Unwrap() error { return e.Err }

// ListenConfig says how to open a capture listener.
type ListenConfig struct {
	// Mode says where the original destination is read. In ModeTProxy the
	// socket is made transparent (IP_TRANSPARENT or IPV6_TRANSPARENT, set
	// before bind), which needs CAP_NET_ADMIN.
	Mode Mode
	// V6Only makes an IPv6 wildcard socket ([::]:P) IPv6-only
	// (IPV6_V6ONLY), for when an IPv4 listener has the same port.
	// Without it a [::]:P socket takes IPv4 connections too, as
	// IPv4-mapped peers; a socket on a specific IPv6 address is always
	// IPv6-only.
	V6Only bool
	// Captures are more capture addresses (the server's other listeners):
	// a connection whose original destination is one of them, or the
	// listener's own address, is not redirected (ErrNotRedirected).
	Captures []netip.AddrPort
	// Refused, when set, hears of every connection Accept closed because
	// its original destination could not be read (*LookupError) or was a
	// capture address (ErrNotRedirected). It is called on the accepting
	// goroutine and must be quick.
	Refused func(peer netip.AddrPort, err error)
	// ReusePort sets SO_REUSEPORT before bind, so that another socket
	// with SO_REUSEPORT can bind the same address while this one is open
	// (Envoy's listeners set it by default on Linux). The kernel lets
	// only sockets of the same effective UID share a port this way.
	ReusePort bool
}

// ListenError is the error of a capture listener that could not be
// opened, with a reason fit for an operator.
type ListenError struct {
	Addr netip.AddrPort
	// Transparent is true when making the socket transparent failed (the
	// mode needs a privilege the process lacks), false when binding or
	// listening did.
	Transparent bool
	Err         error
}

func (e *ListenError) Error() string {
	return fmt.Sprintf("origdst: listen %s: %s", e.Addr, e.Reason())
}

// Reason is the error without the address: why the listener could not be
// opened.
func (e *ListenError) Reason() string {
	switch {
	case errors.Is(e.Err, errors.ErrUnsupported):
		return "capture listeners need Linux"
	case e.Transparent && (errors.Is(e.Err, syscall.EPERM) || errors.Is(e.Err, syscall.EACCES)):
		return "mode tproxy needs CAP_NET_ADMIN to make the socket transparent (IP_TRANSPARENT): run realipd as root or grant it the capability"
	case e.Transparent:
		return fmt.Sprintf("cannot make the socket transparent (IP_TRANSPARENT): %v", errnoOf(e.Err))
	case errors.Is(e.Err, syscall.EADDRINUSE):
		return "the address is already in use (another process listens on it: Envoy, or another realipd?)"
	case errors.Is(e.Err, syscall.EADDRNOTAVAIL):
		return "the address is not one of this host's"
	case errors.Is(e.Err, syscall.EACCES):
		return "binding a port below 1024 needs CAP_NET_BIND_SERVICE (or root)"
	}
	return errnoOf(e.Err).Error()
}

func (e *ListenError) Unwrap() error { return e.Err }

// errnoOf returns the system call error inside err, or err.
func errnoOf(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

// transparentError marks a failure to set IP_TRANSPARENT in Control.
type transparentError struct{ err error }

func (e transparentError) Error() string { return e.err.Error() }
func (e transparentError) Unwrap() error { return e.err }

// Listen opens a capture listener on addr: a plain TCP socket (never
// MPTCP, so that the eBPF sk_lookup steering can take it). addr must be an
// IP address (a wildcard one included) and a port; port 0 takes a free one.
// An error is a *ListenError.
func (lc *ListenConfig) Listen(ctx context.Context, addr netip.AddrPort) (*Listener, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	fail := func(transparent bool, err error) (*Listener, error) {
		return nil, &ListenError{Addr: addr, Transparent: transparent, Err: err}
	}
	if err := listenSupported(); err != nil {
		return fail(false, err)
	}
	if lc.Mode != ModeRedirect && lc.Mode != ModeTProxy {
		return fail(false, fmt.Errorf("mode %q: want redirect or tproxy", lc.Mode))
	}
	if !addr.Addr().IsValid() || addr.Addr().Zone() != "" {
		return fail(false, fmt.Errorf("%v is not an IP address without zone", addr.Addr()))
	}
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6" // IPV6_V6ONLY
		if addr.Addr().IsUnspecified() && !lc.V6Only {
			network = "tcp" // a dual-stack [::] socket
		}
	}
	cfg := net.ListenConfig{}
	cfg.SetMultipathTCP(false)
	if lc.Mode == ModeTProxy || lc.ReusePort {
		cfg.Control = func(network, _ string, rc syscall.RawConn) error {
			var terr, rerr error
			err := rc.Control(func(fd uintptr) {
				if lc.Mode == ModeTProxy {
					terr = setTransparent(int(fd), network == "tcp6")
				}
				if lc.ReusePort && terr == nil {
					rerr = setReusePort(int(fd))
				}
			})
			switch {
			case err != nil:
				return err
			case terr != nil:
				return transparentError{terr}
			case rerr != nil:
				return fmt.Errorf("SO_REUSEPORT: %w", rerr)
			}
			return nil
		}
	}
	ln, err := cfg.Listen(ctx, network, addr.String())
	if err != nil {
		var te transparentError
		if errors.As(err, &te) {
			return fail(true, te.err)
		}
		return fail(false, err)
	}
	tl := ln.(*net.TCPListener)
	bound := tl.Addr().(*net.TCPAddr).AddrPort()
	l := &Listener{
		tcp:     tl,
		mode:    lc.Mode,
		addr:    netip.AddrPortFrom(bound.Addr().Unmap(), bound.Port()),
		refused: lc.Refused,
	}
	l.captures = append(l.captures, l.addr)
	for _, c := range lc.Captures {
		l.captures = append(l.captures, netip.AddrPortFrom(c.Addr().Unmap(), c.Port()))
	}
	return l, nil
}

// Listener is a capture listener: it accepts the connections steered to it
// and reads each one's original destination. It implements net.Listener
// (Accept returns *Conn) and syscall.Conn (for the eBPF sk_lookup
// steering's sockmap). Connections whose original destination cannot be
// read, or is a capture address, never leave Accept: they are closed at
// once and reported to ListenConfig.Refused.
type Listener struct {
	tcp      *net.TCPListener
	mode     Mode
	addr     netip.AddrPort   // as bound, unmapped
	captures []netip.AddrPort // addr first
	refused  func(netip.AddrPort, error)

	mu     sync.Mutex
	parked chan struct{} // non-nil while parked; closed by resume or Close
	closed bool
}

// Conn is an accepted connection with its original destination.
type Conn struct {
	*net.TCPConn
	// Accepted is when Accept took it from the kernel.
	Accepted time.Time
	dst      netip.AddrPort
}

// OriginalDst is where the client was connecting to (an IPv4 destination
// as an IPv4 address, also on an IPv6 socket).
func (c *Conn) OriginalDst() netip.AddrPort { return c.dst }

// Accept waits for the next redirected connection; see AcceptOrigDst.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.AcceptOrigDst()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// AcceptOrigDst waits for the next connection whose original destination
// it could read and that was redirected. Its errors are the listening
// socket's (net.ErrClosed after Close).
func (l *Listener) AcceptOrigDst() (*Conn, error) {
	for {
		c, err := l.tcp.AcceptTCP()
		if err != nil {
			if l.waitParked() {
				continue
			}
			return nil, err
		}
		at := time.Now()
		dst, err := l.OriginalDst(c)
		if err == nil {
			return &Conn{TCPConn: c, Accepted: at, dst: dst}, nil
		}
		peer := addrPortOf(c.RemoteAddr())
		abort(c)
		if l.refused != nil {
			l.refused(peer, err)
		}
	}
}

// OriginalDst reads the original destination of c, a connection accepted
// on l (AcceptOrigDst does it for every connection): SO_ORIGINAL_DST in
// ModeRedirect, the local address in ModeTProxy. An error is a
// *LookupError or ErrNotRedirected.
func (l *Listener) OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	local := addrPortOf(c.LocalAddr())
	dst := local
	if l.mode == ModeRedirect {
		var err error
		if dst, err = originalDst(c, local.Addr().Is4()); err != nil {
			return netip.AddrPort{}, &LookupError{Err: err}
		}
		if dst == local {
			return netip.AddrPort{}, ErrNotRedirected
		}
	}
	if l.isCapture(dst) {
		return netip.AddrPort{}, ErrNotRedirected
	}
	return dst, nil
}

// isCapture reports whether dst is a capture address: one of the
// listeners' own, or, for a wildcard listener, its port on loopback (a
// redirected connection never has one, REDIRECT's own target aside) or, in
// ModeTProxy, on any address (TPROXY rules never take the capture ports).
func (l *Listener) isCapture(dst netip.AddrPort) bool {
	for _, c := range l.captures {
		switch {
		case c == dst:
			return true
		case c.Addr().IsUnspecified() && c.Port() == dst.Port() && (l.mode == ModeTProxy || dst.Addr().IsLoopback()):
			return true
		}
	}
	return false
}

// Close stops accepting; the connections already accepted stay open.
func (l *Listener) Close() error {
	l.mu.Lock()
	l.closed = true
	if l.parked != nil {
		close(l.parked)
		l.parked = nil
	}
	l.mu.Unlock()
	return l.tcp.Close()
}

// Parking is how the native listener lets Envoy have a capture port
// without giving the port up (origdst.fallback: auto). Closing the socket
// would leave the port free for an instant, or for good, to any local user
// that binds it first: a process of another user listening on 15001 would
// take every redirected connection past the policies. A parked socket
// stays bound but stops listening (shutdown(SHUT_RD) of a listening TCP
// socket), with SO_REUSEADDR cleared: the kernel then refuses the port to
// every socket but one of the same user with SO_REUSEPORT — Envoy's. The
// connections waiting in the accept queue are reset, or moved to Envoy's
// socket when net.ipv4.tcp_migrate_req is 1. Resuming listens again on the
// same socket, so taking the port back cannot fail because someone else
// took it meanwhile.

// park stops the listener listening while keeping its address; Accept
// waits until resume or Close.
func (l *Listener) park() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return net.ErrClosed
	}
	if l.parked != nil {
		return nil
	}
	rc, err := l.tcp.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = stopListening(int(fd)) }); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("origdst: park %s: %w", l.addr, serr)
	}
	l.parked = make(chan struct{})
	return nil
}

// resume makes a parked listener listen again.
func (l *Listener) resume() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return net.ErrClosed
	}
	if l.parked == nil {
		return nil
	}
	rc, err := l.tcp.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = listenAgain(int(fd)) }); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("origdst: listen again on %s: %w", l.addr, serr)
	}
	close(l.parked)
	l.parked = nil
	return nil
}

// isParked reports whether the listener is parked.
func (l *Listener) isParked() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.parked != nil
}

// waitParked waits, when the listener is parked, until it is resumed or
// closed, and reports whether Accept should try again (it was parked and
// is not closed).
func (l *Listener) waitParked() bool {
	l.mu.Lock()
	c := l.parked
	l.mu.Unlock()
	if c == nil {
		return false
	}
	<-c
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.closed
}

// Inode returns the listening socket's inode number, to tell it from
// another process's socket on the same port.
func (l *Listener) Inode() (uint64, error) { return sockowner.Inode(l.tcp) }

// Addr returns the listener's address (a *net.TCPAddr).
func (l *Listener) Addr() net.Addr { return l.tcp.Addr() }

// AddrPort returns the address the listener is bound to (the port the
// kernel picked, for port 0).
func (l *Listener) AddrPort() netip.AddrPort { return l.addr }

// Mode returns the listener's mode.
func (l *Listener) Mode() Mode { return l.mode }

// SyscallConn returns the listening socket, for the eBPF capture's
// inbound steering (intercept.EBPFCapture.SetInboundListener).
func (l *Listener) SyscallConn() (syscall.RawConn, error) { return l.tcp.SyscallConn() }

// addrPortOf returns the unmapped address of a *net.TCPAddr.
func addrPortOf(a net.Addr) netip.AddrPort {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// abort closes c with a reset (SO_LINGER 0): nothing is sent, and nothing
// lingers in TIME_WAIT.
func abort(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}
