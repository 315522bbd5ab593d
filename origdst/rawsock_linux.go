package origdst

import (
	"io"
	"syscall"
	"unsafe"
)

// rawSocket reads and writes a connected socket with raw system calls.
// The socket is non-blocking, so neither call ever blocks (a call that
// would block returns EAGAIN, and the wait is Go's poller's): made raw,
// the goroutine keeps its P through the call, where a plain Read or Write
// tells the runtime it may block, which on a busy machine hands the P to
// another thread and wakes it — a thread switch that costs more than the
// call itself (docs/performance.md). One is made per socket; it is not
// safe for concurrent use, and deadlines and Close work as on the
// connection.
type rawSocket struct {
	rc                    syscall.RawConn
	readFn, writeFn       func(fd uintptr) bool // bound once: no allocation per call
	readNowFn, writeNowFn func(fd uintptr)      // the same, for readNow and writeNow
	p                     []byte
	n                     int
	err                   error
}

func newRawSocket(rc syscall.RawConn) *rawSocket {
	s := &rawSocket{rc: rc}
	s.readFn, s.writeFn = s.tryRead, s.tryWrite
	s.readNowFn, s.writeNowFn = s.readOnce, s.writeWhatFits
	return s
}

// readNow reads what is there, at most len(p), without waiting: n > 0
// bytes, or 0 and io.EOF, or 0 and syscall.EAGAIN when nothing is there
// yet, or another error (net.ErrClosed once the socket is closed).
func (s *rawSocket) readNow(p []byte) (int, error) {
	s.p, s.n, s.err = p, 0, nil
	return s.finish(s.rc.Control(s.readNowFn), true)
}

// finish ends a call that ran with s.p: err is the RawConn's (a closed
// socket), else the system call's; a read (eof) of nothing is io.EOF.
func (s *rawSocket) finish(err error, eof bool) (int, error) {
	s.p = nil
	if err == nil {
		err = s.err
	}
	if eof && err == nil && s.n == 0 {
		err = io.EOF
	}
	return s.n, err
}

func (s *rawSocket) readOnce(fd uintptr) {
	for {
		n, e := rawRead(fd, s.p)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			s.err = e
			return
		}
		s.n = n
		return
	}
}

// writeNow writes as much of p as the socket takes without waiting: all
// of it with a nil error, or the first n bytes and syscall.EAGAIN (the
// socket is full) or another error.
func (s *rawSocket) writeNow(p []byte) (int, error) {
	s.p, s.n, s.err = p, 0, nil
	return s.finish(s.rc.Control(s.writeNowFn), false)
}

func (s *rawSocket) writeWhatFits(fd uintptr) {
	if s.tryWrite(fd) || s.err != nil {
		return
	}
	s.err = syscall.EAGAIN
}

// Write writes all of p, waiting for room as often as needed.
func (s *rawSocket) Write(p []byte) (int, error) {
	s.p, s.n, s.err = p, 0, nil
	return s.finish(s.rc.Write(s.writeFn), false)
}

func (s *rawSocket) tryWrite(fd uintptr) bool {
	for len(s.p) > 0 {
		// write(2), as the net package writes: the runtime takes no
		// action on the SIGPIPE of a socket's broken pipe; the call
		// fails with EPIPE.
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(s.p))), uintptr(len(s.p)))
		switch e {
		case 0:
			s.n += int(n)
			s.p = s.p[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.err = e
			return true
		}
	}
	return true
}

// Read reads what is there, at most len(p), waiting for it if nothing is;
// 0 bytes is io.EOF.
func (s *rawSocket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.p, s.n, s.err = p, 0, nil
	return s.finish(s.rc.Read(s.readFn), true)
}

func (s *rawSocket) tryRead(fd uintptr) bool {
	for {
		n, e := rawRead(fd, s.p)
		switch e {
		case 0:
			s.n = n
			return true
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.err = e
			return true
		}
	}
}

// rawRead is read(2) without telling the runtime: for a non-blocking
// socket only.
func rawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(n), e
}
