//go:build linux

package intercept

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/netnstest"
)

// echoLines answers each line it reads on a connection to ln with the
// same line, until the client closes.
func echoLines(t *testing.T, ln net.Listener) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				io.Copy(c, c)
			}()
		}
	}()
}

// lineConn is an open connection that exchanges lines.
type lineConn struct {
	c  net.Conn
	br *bufio.Reader
}

func openLines(t *testing.T, n *netnstest.Netns, addr string) *lineConn {
	t.Helper()
	var c net.Conn
	n.Must(t, func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 5 * time.Second}).Dial("tcp", addr)
		return err
	})
	t.Cleanup(func() { c.Close() })
	return &lineConn{c: c, br: bufio.NewReader(c)}
}

// roundTrip sends line and waits (3 s at most) for it to come back.
func (l *lineConn) roundTrip(line string) error {
	l.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintln(l.c, line); err != nil {
		return err
	}
	got, err := l.br.ReadString('\n')
	if err != nil {
		return err
	}
	if got = strings.TrimSpace(got); got != line {
		return fmt.Errorf("got %q back, want %q", got, line)
	}
	return nil
}

// TestApplyLeavesEstablishedConnectionsNetns: connections open before the
// rules are applied (an SSH session to the host, a download it runs) go
// on, inbound and outbound, in both modes: only a connection's opening
// SYN is ever steered. The namespace has no rule before, so conntrack
// meets those connections mid-stream; in tproxy mode their packets must
// not reach TPROXY either, which would drop them (their socket is not
// transparent). New connections are captured.
func TestApplyLeavesEstablishedConnectionsNetns(t *testing.T) {
	netnstest.Require(t)
	for _, mode := range []Mode{ModeRedirect, ModeTProxy} {
		for _, f := range families() {
			t.Run(fmt.Sprintf("%s-%v", mode, f), func(t *testing.T) {
				tp := newTopology(t, f)
				a, b := tp.a, tp.b
				echoLines(t, listen(t, a, tp.network, hostPort(tp.aIP, 2222), net.ListenConfig{}))
				echoLines(t, listen(t, b, tp.network, hostPort(tp.bIP, 443), net.ListenConfig{}))
				serve(t, listen(t, a, tp.network, hostPort(tp.any, 15001), net.ListenConfig{}), capture("outbound"))
				if mode == ModeTProxy {
					serve(t, listen(t, a, tp.network, hostPort(tp.any, 15006), net.ListenConfig{Control: transparent(f, 0)}), fixed("inbound"))
				} else {
					serve(t, listen(t, a, tp.network, hostPort(tp.any, 15006), net.ListenConfig{}), fixed("inbound"))
				}

				in := openLines(t, b, hostPort(tp.aIP, 2222)) // the peer's session with the pod
				out := openLines(t, a, hostPort(tp.bIP, 443)) // the pod's connection to the peer
				for what, c := range map[string]*lineConn{"inbound": in, "outbound": out} {
					if err := c.roundTrip("before"); err != nil {
						t.Fatalf("%s before apply: %v", what, err)
					}
				}
				opts := defaults(mode)
				a.Must(t, func() error { return ApplyIPTables(context.Background(), opts, f) })
				for what, c := range map[string]*lineConn{"inbound": in, "outbound": out} {
					for i := range 3 {
						if err := c.roundTrip(fmt.Sprintf("after %d", i)); err != nil {
							t.Errorf("%s connection established before apply: %v", what, err)
							break
						}
					}
				}
				// New connections are captured.
				if got := dial(t, b, net.Dialer{}, hostPort(tp.aIP, 2222)); got != "inbound" {
					t.Errorf("a new inbound connection: %q, want it captured", got)
				}
				peer := hostPort(tp.bIP, 443)
				if got := dial(t, a, net.Dialer{}, peer); got != "outbound "+peer {
					t.Errorf("a new outbound connection: %q, want it captured", got)
				}
			})
		}
	}
}

// TestRemoveRoutingWhateverOptionsNetns: --remove takes away the TPROXY
// policy routing that is there, read from the live state, even when the
// options it is given are another mode's, or another mark and table.
func TestRemoveRoutingWhateverOptionsNetns(t *testing.T) {
	netnstest.Require(t)
	for _, f := range families() {
		for name, change := range map[string]func(*IPTablesOptions){
			"redirect mode":        func(o *IPTablesOptions) { o.Mode = ModeRedirect },
			"another mark, table":  func(o *IPTablesOptions) { o.TProxyMark, o.RouteTable = 99, 150 },
			"redirect, other mark": func(o *IPTablesOptions) { o.Mode, o.TProxyMark, o.RouteTable = ModeRedirect, 99, 150 },
		} {
			t.Run(fmt.Sprintf("%v-%s", f, name), func(t *testing.T) {
				n := netnstest.New(t)
				before := routing(t, n, f)
				applied := defaults(ModeTProxy)
				applied.TProxyMark, applied.RouteTable = 0x77, 177
				n.Must(t, func() error { return ApplyIPTables(context.Background(), applied, f) })
				if r := routing(t, n, f); !strings.Contains(r, "lookup 177") {
					t.Fatalf("apply set up no routing:\n%s", r)
				}
				removed := defaults(ModeTProxy)
				change(&removed)
				n.Must(t, func() error { return RemoveIPTables(context.Background(), removed, f) })
				if got := routing(t, n, f); got != before {
					t.Errorf("remove left routing behind:\n%s\nbefore apply:\n%s", got, before)
				}
				if saved, _ := parseSave(n.Run(t, "", saveTool(f))); len(saved[TableMangle].ours()) > 0 || len(saved[TableNAT].ours()) > 0 {
					t.Errorf("remove left realipd's chains behind")
				}
			})
		}
	}
}

// TestHostNetns: a namespace the test made is not the host's; the test's
// own is exactly when it is kthreadd's (PID 2, in the initial namespaces),
// and there ApplyIPTables refuses without Host, before it looks for
// iptables (PATH is empty: with Host, that is the error).
func TestHostNetns(t *testing.T) {
	n := netnstest.New(t)
	n.Must(t, func() error {
		host, err := HostNetns()
		if err != nil || host {
			return fmt.Errorf("in a namespace of the test's: HostNetns() = %v, %v; want false", host, err)
		}
		return nil
	})

	self, err1 := os.Readlink("/proc/thread-self/ns/net")
	kthreadd, err2 := os.Readlink("/proc/2/ns/net")
	if err1 != nil || err2 != nil {
		t.Skipf("cannot read the namespaces to compare: %v, %v", err1, err2)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	host, err := HostNetns()
	if err != nil || host != (self == kthreadd) {
		t.Fatalf("HostNetns() = %v, %v; the test's namespace is %s, kthreadd's %s", host, err, self, kthreadd)
	}
	if !host {
		t.Skip("the test does not run in the host's network namespace")
	}
	t.Setenv("PATH", t.TempDir())
	opts := defaults(ModeRedirect)
	if err := ApplyIPTables(context.Background(), opts, IPv4); !errors.Is(err, ErrHostNetns) {
		t.Errorf("in the host's namespace: %v, want ErrHostNetns", err)
	}
	opts.Host = true
	if err := ApplyIPTables(context.Background(), opts, IPv4); err == nil || !strings.Contains(err.Error(), "is not on PATH") {
		t.Errorf("with Host: %v, want the missing iptables-save", err)
	}
}
