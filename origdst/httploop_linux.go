//go:build linux

package origdst

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/origdst/internal/h1"
)

// The HTTP mode's event loops. A kept-alive connection that waits for its
// next request waits in one of them (Options.HTTPEventLoops), not in Go's poller
// on its own: a loop is a goroutine with an epoll set of its connections'
// sockets, which waits in Go's poller for the set (one wait for all of
// them), then takes every ready socket the kernel reports, in that order,
// and serves, in place, the requests that need nothing that could wait —
// a whole head without a body, decided by policies that answer from memory
// (plugins.Immediate), forwarded on the connection's own fresh upstream
// connection, answered by a response that came whole — writing only what
// the sockets take at once. Anything else goes back to the connection's
// goroutine at the point the loop reached (loopBack), and the goroutine
// goes on as if it had done the first steps itself.
//
// Why: with a goroutine per connection, each request wakes its goroutine
// twice through Go's scheduler, and on a machine whose CPUs are shared with
// the client and the application, the scheduler's threads end up taking
// turns on one CPU, a clock tick each: a request whose goroutine is queued
// on a thread that lost its CPU waits ~4 ms, the p99 of the benchmark
// (docs/performance.md). A loop is woken once for a batch of ready
// sockets and sleeps when there are none, as HAProxy's and nginx's threads
// do.
//
// The connection's goroutine stays, parked on a channel: it owns the
// connection's life (accounting, the close), and takes the connection back
// for anything slow. Only one side has the connection at a time: the
// goroutine gives it to the loop with post and waits on hc.back; the loop
// gives it back by sending there. A cut or the drain asks the loop to give
// it back (reclaim), since a closed socket leaves an epoll set without an
// event.

// httpLoop is one event loop.
type httpLoop struct {
	srv    *Server
	ep     *os.File        // the epoll set: each connection's two sockets, and wakeFD
	epfd   int             // ep's descriptor, open while the loop runs
	epRC   syscall.RawConn // ep's, to wait in Go's poller
	wakeFD int             // an eventfd: the inbox has messages

	mu      sync.Mutex
	inbox   []loopMsg // guarded by mu
	stopped bool      // guarded by mu: wakeFD is closed, or about to be

	// The loop's goroutine's own.
	conns  map[int32]*httpConn // by key (loopKey)
	nextID int32
	events []unix.EpollEvent
	ready  int                // events[:ready] came from the last epoll_wait
	pollFn func(uintptr) bool // l.poll, bound once
	done   chan struct{}
}

// loopMsg is a message to a loop: a connection to wait there, a
// connection to give back, or the end of the loop.
type loopMsg struct {
	hc      *httpConn
	reclaim bool // give hc back: at once when cut, when it waits for a request otherwise (the drain)
	cut     bool
	stop    bool
}

// loopState is what a loop keeps of a connection while it has it.
type loopState struct {
	loopKey        int32
	awaiting       bool // the request went out; the loop waits for the response
	clientReady    bool // the client's socket may have something to read (an edge came, no EAGAIN since)
	upReady        bool // the same for the upstream's
	clientHup      bool // the client's last edge said it shut down or failed: read until EAGAIN
	upHup          bool // the same for the upstream
	upRegistered   bool // up is in the epoll set
	clientInEpoll  bool
	upRegisteredRC syscall.RawConn
}

// An epoll event's data is a connection's key, times two, plus one for
// its upstream socket; 0 is the loop's eventfd.
const wakeKey = 0

// startHTTPLoops starts n loops.
func startHTTPLoops(srv *Server, n int) ([]*httpLoop, error) {
	loops := make([]*httpLoop, 0, n)
	for range n {
		l, err := newHTTPLoop(srv)
		if err != nil {
			stopHTTPLoops(loops)
			return nil, err
		}
		loops = append(loops, l)
		go l.run()
	}
	return loops, nil
}

func newHTTPLoop(srv *Server) (*httpLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("origdst: epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("origdst: eventfd: %w", err)
	}
	l := &httpLoop{srv: srv, epfd: epfd, wakeFD: wake, conns: map[int32]*httpConn{}, events: make([]unix.EpollEvent, 256), done: make(chan struct{})}
	l.pollFn = l.poll
	// Non-blocking, the epoll set joins Go's poller, which reports it
	// readable when it has events.
	err = unix.SetNonblock(epfd, true)
	if err == nil {
		err = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeKey})
	}
	if err == nil {
		l.ep = os.NewFile(uintptr(epfd), "epoll")
		l.epRC, err = l.ep.SyscallConn()
	}
	if err != nil {
		if l.ep != nil {
			l.ep.Close()
		} else {
			unix.Close(epfd)
		}
		unix.Close(wake)
		return nil, fmt.Errorf("origdst: event loop: %w", err)
	}
	return l, nil
}

// stopHTTPLoops ends the loops and waits for them; they must hold no
// connection (the serving session's connections are all closed).
func stopHTTPLoops(loops []*httpLoop) {
	for _, l := range loops {
		l.post(loopMsg{stop: true})
	}
	for _, l := range loops {
		<-l.done
	}
}

// post sends m to the loop; false, and nothing sent, once the loop is
// told to stop or has failed.
func (l *httpLoop) post(m loopMsg) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return false
	}
	l.stopped = m.stop
	wake := len(l.inbox) == 0
	l.inbox = append(l.inbox, m)
	if wake {
		// Under mu: the loop closes wakeFD under mu.
		one := [8]byte{1}
		for {
			_, err := unix.Write(l.wakeFD, one[:])
			if err != unix.EINTR {
				break // EAGAIN: the counter is full, the loop is woken anyway
			}
		}
	}
	return true
}

// poll takes the ready events of the epoll set without waiting (the wait
// is Go's poller's); true when some came, or an error.
func (l *httpLoop) poll(fd uintptr) bool {
	// epoll_pwait without a signal mask: epoll_wait, on every architecture
	// (arm64 has no epoll_wait).
	r, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, fd, uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), 0, 0, 0)
	switch e {
	case 0:
		l.ready = int(r)
		return r > 0
	case syscall.EINTR:
		l.ready = 0
		return false
	}
	panic(fmt.Sprintf("origdst: epoll_wait: %v", e)) // EBADF, EFAULT, EINVAL: a bug
}

// run is the loop: it waits for ready sockets and messages, and serves
// them in the order they come.
func (l *httpLoop) run() {
	defer close(l.done)
	defer func() {
		l.ep.Close()
		l.mu.Lock()
		l.stopped = true
		unix.Close(l.wakeFD)
		l.mu.Unlock()
	}()
	var inbox []loopMsg
	for {
		if err := l.epRC.Read(l.pollFn); err != nil {
			// Cannot happen to an open epoll set. The connections it
			// holds, and those on their way in, end; from now on post
			// fails, and the others wait in their goroutines
			// (waitInLoop).
			l.srv.log.Error("origdst: an HTTP event loop failed; its connections end, the others wait in goroutines", "error", err)
			l.mu.Lock()
			l.stopped = true
			pending := l.inbox
			l.inbox = nil
			l.mu.Unlock()
			l.giveBackAll()
			for _, m := range pending {
				if m.hc != nil && !m.reclaim { // a connection the loop never took
					m.hc.inLoop.Store(false)
					m.hc.back <- backEnd
				}
			}
			return
		}
		events := l.events[:l.ready]
		for i := range events {
			key := events[i].Fd
			if key == wakeKey {
				var buf [8]byte
				_, _ = unix.Read(l.wakeFD, buf[:])
				l.mu.Lock()
				inbox, l.inbox = l.inbox, inbox[:0]
				l.mu.Unlock()
				for j, m := range inbox {
					switch {
					case m.stop:
						l.giveBackAll()
						return
					case m.reclaim:
						hc := m.hc
						// The drain ends a connection that waits for
						// a request; one at work ends after its
						// response (awaitResponse).
						if l.conns[hc.loopKey] == hc && (m.cut || !hc.awaiting && hc.in.empty()) {
							l.giveBack(hc, backEnd)
						}
					default:
						l.add(m.hc)
					}
					inbox[j] = loopMsg{}
				}
				continue
			}
			hc := l.conns[key>>1]
			if hc == nil {
				continue // given back since the event came
			}
			hup := events[i].Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
			if key&1 == 0 {
				hc.clientReady, hc.clientHup = true, hup
			} else {
				hc.upReady, hc.upHup = true, hup
			}
			l.serve(hc)
		}
	}
}

// add takes hc, which its goroutine gave the loop.
func (l *httpLoop) add(hc *httpConn) {
	for {
		l.nextID++
		if l.nextID <= 0 || l.nextID >= 1<<30 {
			l.nextID = 1
		}
		if l.conns[l.nextID] == nil {
			break
		}
	}
	hc.loopState = loopState{loopKey: l.nextID}
	l.conns[hc.loopKey] = hc
	if l.srv.httpDraining.Load() {
		l.giveBack(hc, backEnd)
		return
	}
	// Edge-triggered: an edge comes when data arrives (and at once, when
	// some is there as the socket is added); the loop reads until EAGAIN
	// before it waits for the next.
	if !l.register(hc.clientRC, hc.loopKey<<1) {
		l.giveBack(hc, backEnd)
		return
	}
	hc.clientInEpoll = true
	if !l.register(hc.upRC, hc.loopKey<<1|1) {
		l.giveBack(hc, backEnd) // cut
		return
	}
	hc.upRegistered, hc.upRegisteredRC = true, hc.upRC
	// What came on the upstream connection before the loop had it would
	// come as an edge, but maybe after the client's next request in the
	// same batch: looked at now (one system call per entry in the loop).
	hc.upReady = !hc.upWaiter.quiet()
	l.serve(hc) // what came before the loop had it
}

// register adds a socket to the epoll set; false when it is closed.
func (l *httpLoop) register(rc syscall.RawConn, key int32) bool {
	var err error
	cerr := rc.Control(func(fd uintptr) {
		err = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, int(fd), &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: key})
	})
	return cerr == nil && err == nil
}

// unregister removes a socket from the epoll set. A closed socket left it
// as it closed; Control does nothing then, so that the descriptor, maybe
// another socket's by now, is not touched.
func (l *httpLoop) unregister(rc syscall.RawConn) {
	_ = rc.Control(func(fd uintptr) {
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// giveBack gives hc back to its goroutine, which goes on from b.
func (l *httpLoop) giveBack(hc *httpConn, b loopBack) {
	if hc.clientInEpoll {
		l.unregister(hc.clientRC)
	}
	if hc.upRegistered {
		l.unregister(hc.upRegisteredRC)
	}
	delete(l.conns, hc.loopKey)
	hc.loopState = loopState{}
	hc.inLoop.Store(false)
	hc.back <- b
}

// giveBackAll gives every connection back, as the loop ends.
func (l *httpLoop) giveBackAll() {
	for _, hc := range l.conns {
		l.giveBack(hc, backEnd)
	}
}

// serve runs hc's steps until one must wait or hc goes back. A panic (a
// bug) costs the connection, not the loop.
func (l *httpLoop) serve(hc *httpConn) {
	defer func() {
		if r := recover(); r != nil {
			abort(hc.client)
			if hc.up != nil {
				abort(hc.up)
			}
			l.srv.log.Error("origdst: an HTTP event loop failed on a connection; the connection was reset", "peer", hc.peer, "panic", r, "stack", string(debug.Stack()))
			l.giveBack(hc, backEnd)
		}
	}()
	for {
		var b loopBack
		var wait bool
		if hc.awaiting {
			b, wait = l.awaitResponse(hc)
		} else {
			b, wait = l.nextRequest(hc)
		}
		switch {
		case wait:
			return
		case b != backNone:
			l.giveBack(hc, b)
			return
		}
	}
}

// backNone: the step went on in the loop.
const backNone loopBack = 255

// nextRequest reads, decides and sends the connection's next request; wait
// when it must wait for the client.
func (l *httpLoop) nextRequest(hc *httpConn) (b loopBack, wait bool) {
	srv := hc.srv
	if hc.in.empty() {
		if !hc.clientReady {
			return backNone, true
		}
		hc.in.hold()
		err := hc.readClient(hc.in.room(false))
		if errors.Is(err, syscall.EAGAIN) {
			hc.in.release() // wait without it
			return backNone, true
		}
		if err != nil {
			return backEnd, false // the client closed, or a reset, or a cut
		}
		hc.idle.Store(false)
	}
	if hc.upReady {
		// Bytes or a close came on the upstream connection while no
		// request was outstanding: whatever they are, they would be
		// taken for the next response. It carries no more requests
		// (upstreamReusable).
		hc.upStray = true
	}
	req := &hc.req
	if err := h1.ParseRequest(hc.in.data(), req); err != nil {
		// The rest of the head has yet to come (its wait is bounded by
		// the goroutine), or the head is malformed (the goroutine
		// answers).
		if room := hc.in.room(false); err == h1.ErrIncomplete && hc.clientReady && len(room) > 0 && hc.readClient(room) == nil {
			return backNone, false // parse again
		}
		return backRequest, false
	}
	if !hc.loopCanForward(req) {
		return backRequest, false
	}
	d, held := srv.cur.Acquire()
	if !d.Chain().Immediate() {
		// A policy of the chain may wait (a plugin): the goroutine
		// decides.
		if held {
			d.Release()
		}
		return backRequest, false
	}
	hc.isHead = bytesEqual(req.Method, "HEAD")
	local, res, o := hc.decideWith(d)
	if held {
		d.Release()
	}
	if o.Deny {
		hc.decided = decided{d: d, local: local, res: res, outcome: o}
		return backDecided, false
	}
	srv.m.httpAllowed.Inc()
	head := hc.rewriteHead(d, local, res, o.Headers, false)
	hc.replayable = replayableRequest(req)
	hc.in.consume(req.HeadLen)
	n, err := hc.upIO.writeNow(head)
	if n > 0 {
		hc.pc.touch()
	}
	if err != nil {
		// The upstream's socket is full, or the connection failed: the
		// goroutine sends the rest, or meets the error and retries.
		hc.unsent, hc.resumeAt = head[n:], sendRest
		return backExchange, false
	}
	hc.awaiting = true
	return backNone, false
}

// readClient reads what the client's socket has into room, the free end
// of hc.in, without waiting; syscall.EAGAIN when it has nothing.
func (hc *httpConn) readClient(room []byte) error {
	n, err := hc.clientIO.readNow(room)
	if errors.Is(err, syscall.EAGAIN) {
		hc.clientReady = false
	}
	if err != nil {
		return err
	}
	hc.in.w += n
	hc.pc.touch()
	if n < len(room) && !hc.clientHup {
		// The socket had no more: what comes next comes with an edge of
		// its own (a shutdown too: the edge says so).
		hc.clientReady = false
	}
	return nil
}

// loopCanForward reports whether the loop may forward req itself: a head
// without a body, nothing to refuse or upgrade, no 100-continue, on the
// connection's upstream connection while it is fresh and quiet (nothing
// came on it since its last response), not draining.
func (hc *httpConn) loopCanForward(req *h1.Request) bool {
	return !hasBody(req) && req.Upgrade == nil && !req.ExpectContinue && !bytesEqual(req.Method, "CONNECT") &&
		hc.up != nil && hc.upIn.empty() && !hc.upReady &&
		decide.Monotonic()-hc.upLastUsed < upstreamFreshFor &&
		!hc.srv.httpDraining.Load()
}

// awaitResponse reads the upstream's response and, when it came whole and
// plainly framed, writes it to the client; wait when it must wait for the
// upstream.
func (l *httpLoop) awaitResponse(hc *httpConn) (b loopBack, wait bool) {
	if !hc.upReady {
		return backNone, true
	}
	hc.upIn.hold()
	room := hc.upIn.room(true)
	if len(room) == 0 {
		hc.resumeAt = awaitResponse
		return backExchange, false
	}
	n, err := hc.upIO.readNow(room)
	if errors.Is(err, syscall.EAGAIN) {
		hc.upReady = false
		return backNone, true
	}
	if err != nil {
		// EOF or an error: the goroutine meets it again and retries or
		// answers 503.
		hc.resumeAt = awaitResponse
		return backExchange, false
	}
	hc.upIn.w += n
	hc.pc.touch()
	if n < len(room) && !hc.upHup {
		hc.upReady = false // as for the client (nextRequest)
	}
	resp := &hc.resp
	switch err := h1.ParseResponse(hc.upIn.data(), resp); {
	case err == h1.ErrIncomplete:
		return backNone, false // read on
	case err != nil, resp.Status < 200, hc.srv.httpDraining.Load():
		// Malformed, an interim answer or an upgrade, or the drain's
		// Connection: close to add: the goroutine relays it.
		hc.resumeAt = awaitResponse
		return backExchange, false
	}
	total := resp.HeadLen
	switch resp.BodyFraming(hc.isHead) {
	case h1.FramingNone:
	case h1.FramingLength:
		if int64(len(hc.upIn.data())-total) < resp.ContentLength {
			hc.resumeAt = awaitResponse // the body comes in pieces
			return backExchange, false
		}
		total += int(resp.ContentLength)
	default:
		hc.resumeAt = awaitResponse // chunked, or until the upstream closes
		return backExchange, false
	}
	hc.awaiting = false
	hc.upServed++
	hc.upLastUsed = decide.Monotonic()
	hc.srv.m.httpLoopServed.Inc() // before the client can see the response
	w, err := hc.clientIO.writeNow(hc.upIn.data()[:total])
	if w > 0 {
		hc.pc.touch()
		hc.upIn.consume(w)
	}
	if err != nil {
		// The client's socket is full (a client that does not read),
		// or the client is gone: the goroutine writes the rest, or
		// meets the error.
		hc.respLeft = total - w
		return backResponseRest, false
	}
	if !hc.afterResponse() {
		return backEnd, false
	}
	if hc.up == nil {
		// afterResponse closed it, which took it out of the epoll set.
		hc.upRegistered = false
	}
	if hc.in.empty() && !hc.goIdle() {
		return backEnd, false
	}
	return backNone, false
}

// waitInLoop waits for the next request in the connection's loop, which
// may serve it, and the ones after, itself; it returns where the loop gave
// the connection back.
func (hc *httpConn) waitInLoop() loopBack {
	if !hc.goIdle() {
		return backEnd
	}
	hc.inLoop.Store(true)
	if !hc.loop.post(loopMsg{hc: hc}) {
		// The loop failed (run): the connection waits in Go's poller.
		hc.inLoop.Store(false)
		if !hc.waitRequest() {
			return backEnd
		}
		return backRequest
	}
	b := <-hc.back
	hc.idle.Store(false)
	return b
}

// reclaim asks the loop to give hc back: at once when a cut closed its
// sockets (cut), when it waits for its next request otherwise (the
// drain); nothing when the loop has not got it.
func (hc *httpConn) reclaim(cut bool) {
	if hc.inLoop.Load() {
		hc.loop.post(loopMsg{hc: hc, reclaim: true, cut: cut})
	}
}
