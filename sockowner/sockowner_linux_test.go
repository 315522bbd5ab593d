//go:build linux

package sockowner

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/netnstest"
)

// TestMain lets a test run this binary as a client of another user: with
// SOCKOWNER_TEST_DIAL=addr it connects there (tcp, or unix when addr is a
// path), says "connected" and holds the connection until stdin closes.
func TestMain(m *testing.M) {
	if addr := os.Getenv("SOCKOWNER_TEST_DIAL"); addr != "" {
		network := "tcp"
		if filepath.IsAbs(addr) {
			network = "unix"
		}
		c, err := net.DialTimeout(network, addr, 5*time.Second)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("connected")
		_, _ = io.Copy(io.Discard, os.Stdin)
		c.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// dialAs connects to addr from a process running as uid (and gid) and
// returns the server's end of the connection.
func dialAs(t *testing.T, ln net.Listener, uid uint32) net.Conn {
	t.Helper()
	addr := ln.Addr().String()
	cmd := exec.Command(netnstest.ExecutableForAnyone(t))
	cmd.Env = append(os.Environ(), "SOCKOWNER_TEST_DIAL="+addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if line != "connected\n" {
		t.Fatalf("the client as uid %d: %q", uid, line)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		netnstest.Unavailable(t, "needs root to run a client as another user")
	}
}

func TestListening(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "tcp6" {
				addr = "[::1]:0"
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Skipf("no %s loopback: %v", network, err)
			}
			defer ln.Close()
			bound := ln.Addr().(*net.TCPAddr).AddrPort()
			ino, err := Inode(ln.(*net.TCPListener))
			if err != nil || ino == 0 {
				t.Fatalf("Inode = %d, %v", ino, err)
			}
			// A connection on the same port is not listed: listening
			// sockets only.
			c, err := net.Dial(network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got, err := Listening(bound.Port())
			if err != nil {
				t.Fatal(err)
			}
			want := []Socket{{Addr: netip.AddrPortFrom(bound.Addr().Unmap(), bound.Port()), V6: network == "tcp6", UID: uint32(os.Geteuid()), Inode: ino}}
			if !slices.Equal(got, want) {
				t.Errorf("Listening(%d) = %+v, want %+v", bound.Port(), got, want)
			}
			ln.Close()
			if got, err := Listening(bound.Port()); err != nil || len(got) != 0 {
				t.Errorf("after Close: Listening(%d) = %+v, %v, want none", bound.Port(), got, err)
			}
		})
	}
}

// TestPeerOfTCP: the owner of the client's socket on loopback is the
// client's user, whoever the server runs as.
func TestPeerOfTCP(t *testing.T) {
	needRoot(t)
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		for _, uid := range []uint32{0, 65534} {
			c := dialAs(t, ln, uid)
			p, err := PeerOf(c)
			if err != nil || p != (Peer{UID: uid, Known: true}) {
				t.Errorf("%s from uid %d: PeerOf = %+v, %v", addr, uid, p, err)
			}
		}
	}
}

// TestPeerOfDualStack: an IPv4 client of a dual-stack [::] listener is
// found although the server's socket sees it as IPv4-mapped.
func TestPeerOfDualStack(t *testing.T) {
	needRoot(t)
	ln, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	cmd := exec.Command(netnstest.ExecutableForAnyone(t))
	cmd.Env = append(os.Environ(), fmt.Sprintf("SOCKOWNER_TEST_DIAL=127.0.0.1:%d", port))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "connected\n" {
		t.Fatalf("client: %q", line)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p, err := PeerOf(c); err != nil || p != (Peer{UID: 65534, Known: true}) {
		t.Errorf("PeerOf = %+v, %v; want uid 65534", p, err)
	}
}

func TestPeerOfUnix(t *testing.T) {
	needRoot(t)
	path := filepath.Join(netnstest.PublicDir(t), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.Chmod(path, 0o777); err != nil {
		t.Fatal(err)
	}
	c := dialAs(t, ln, 65534)
	p, err := PeerOf(c)
	if err != nil || !p.Known || p.UID != 65534 || p.PID <= 0 {
		t.Errorf("PeerOf = %+v, %v; want uid 65534 with a pid", p, err)
	}
}

// TestPeerOfOtherNamespace: a TCP peer in another network namespace is
// not this namespace's to name: unknown, not an error, never a guess.
func TestPeerOfOtherNamespace(t *testing.T) {
	a, b := netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, a, b, []string{"10.78.0.1/24"}, []string{"10.78.0.2/24"})
	var ln net.Listener
	a.Must(t, func() (err error) {
		ln, err = net.Listen("tcp", "10.78.0.1:0")
		return err
	})
	defer ln.Close()
	var client net.Conn
	b.Must(t, func() (err error) {
		client, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	})
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var p Peer
	a.Must(t, func() (err error) {
		p, err = PeerOf(c)
		return err
	})
	if p.Known {
		t.Errorf("PeerOf a peer in another namespace = %+v, want unknown", p)
	}
}
