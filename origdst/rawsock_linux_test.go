package origdst

import (
	"bytes"
	"errors"
	"io"
	"os"
	"syscall"
	"testing"
	"time"
)

func rawSocketOf(t *testing.T, c interface {
	SyscallConn() (syscall.RawConn, error)
}) *rawSocket {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return newRawSocket(rc)
}

// TestRawSocketWritesAll: a write larger than the socket buffers waits
// for room on the poller (EAGAIN) as often as needed and delivers every
// byte in order; the reader, reading in small pieces with a rawSocket too,
// finds nothing to read now and then and waits for data on the poller.
func TestRawSocketWritesAll(t *testing.T) {
	a, b := tcpPair(t)
	if err := a.SetWriteBuffer(4096); err != nil {
		t.Fatal(err)
	}
	s, r := rawSocketOf(t, a), rawSocketOf(t, b)
	want := make([]byte, 1<<20)
	for i := range want {
		want[i] = byte(i * 7 / 3)
	}
	got := make(chan []byte, 1)
	go func() {
		var buf bytes.Buffer
		chunk := make([]byte, 1500)
		for {
			n, err := r.Read(chunk)
			buf.Write(chunk[:n])
			if err != nil {
				break
			}
		}
		got <- buf.Bytes()
	}()
	n, err := s.Write(want)
	if err != nil || n != len(want) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
	}
	a.CloseWrite()
	if g := <-got; !bytes.Equal(g, want) {
		t.Fatalf("the peer got %d bytes, not the %d written in order", len(g), len(want))
	}
}

// TestRawSocketReadWaits: a read returns what is there, and io.EOF once
// the peer has closed; a deadline ends a wait as on the connection itself.
func TestRawSocketReadWaits(t *testing.T) {
	a, b := tcpPair(t)
	s := rawSocketOf(t, a)
	go func() {
		b.Write([]byte("hello"))
		b.Close()
	}()
	buf := make([]byte, 64)
	var got []byte
	for {
		n, err := s.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if n == 0 {
			t.Fatal("Read returned 0 bytes without an error")
		}
	}
	if string(got) != "hello" {
		t.Fatalf("read %q, want %q", got, "hello")
	}

	c, _ := tcpPair(t)
	r := rawSocketOf(t, c)
	c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := r.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
}

// TestRawSocketWriteToReset: writing to a connection the peer reset fails
// with the errno (EPIPE or ECONNRESET, as isUpstreamGone expects), and no
// SIGPIPE ends the process.
func TestRawSocketWriteToReset(t *testing.T) {
	a, b := tcpPair(t)
	s := rawSocketOf(t, a)
	b.SetLinger(0)
	b.Close()
	var err error
	for range 100 { // over loopback the reset is there when Close returns; a write or two at most
		if _, err = s.Write([]byte("x")); err != nil {
			break
		}
	}
	if !isUpstreamGone(err) {
		t.Fatalf("Write to a reset connection: %v, want EPIPE or ECONNRESET", err)
	}
	// The reset is reported once (ECONNRESET); the next write reaches a
	// broken pipe, the case that raises SIGPIPE.
	if _, err := s.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("Write after the reset was reported: %v, want EPIPE", err)
	}
	a.Close()
	if _, err := s.Write([]byte("x")); err == nil {
		t.Fatal("Write on a closed connection succeeded")
	}
}

// TestRawSocketNoAllocation: a write and a read allocate nothing.
func TestRawSocketNoAllocation(t *testing.T) {
	a, b := tcpPair(t)
	sa, sb := rawSocketOf(t, a), rawSocketOf(t, b)
	msg, buf := []byte("GET / HTTP/1.1\r\n\r\n"), make([]byte, 64)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := sa.Write(msg); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(msg); {
			n, err := sb.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per write and read, want 0", allocs)
	}
}
