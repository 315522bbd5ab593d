package netnstest

import (
	"context"
	"net"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// churn makes and deletes namespaces with a veth pair until the test
// ends: the contention for the kernel's RTNL lock that other packages'
// tests cause, under which an address's configuration lags behind
// "ip addr add".
func churn(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				a, b := uniqueName("realipd-churn"), uniqueName("realipd-churn")
				_ = exec.Command("ip", "netns", "add", a).Run()
				_ = exec.Command("ip", "netns", "add", b).Run()
				_ = exec.Command("ip", "link", "add", "churn", "netns", a, "type", "veth", "peer", "name", "churn", "netns", b).Run()
				_ = exec.Command("ip", "-n", a, "link", "set", "churn", "up").Run()
				_ = exec.Command("ip", "netns", "del", a).Run()
				_ = exec.Command("ip", "netns", "del", b).Run()
			}
		})
	}
}

// TestAddressesUsableAtOnce: when New and Veth return, no address they
// configured is tentative, every one can be bound and reached, and a
// connection crosses the veth pair at once, also while other namespaces
// come and go. Until the kernel's address work has run (it waits for the
// RTNL lock), an IPv6 address added without nodad, even on lo, is
// tentative (bind: cannot assign requested address), and one added with
// nodad has no local route yet (connect: network is unreachable): a race
// that the churn makes likely, not certain, so the test guards the
// helpers rather than proves the race.
func TestAddressesUsableAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("makes 80 namespaces while others come and go: not with -short")
	}
	Require(t)
	churn(t)
	for round := range 40 {
		a := New(t, "2001:db8::10/128", "192.0.2.10/32")
		b := New(t)
		Veth(t, a, b, []string{"fd77::1/64"}, []string{"fd77::2/64"})
		for _, n := range []*Netns{a, b} {
			if out := n.IP(t, "-6", "addr", "show", "tentative"); out != "" {
				t.Fatalf("round %d: tentative addresses in %s:\n%s", round, n.Name, out)
			}
		}
		var ln net.Listener
		a.Must(t, func() error {
			for _, addr := range []string{"[2001:db8::10]:8080", "192.0.2.10:8080"} {
				l, err := net.Listen("tcp", addr)
				if err != nil {
					t.Errorf("round %d: %v", round, err)
					continue
				}
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					t.Errorf("round %d: %v", round, err)
				} else {
					c.Close()
				}
				l.Close()
			}
			var err error
			ln, err = net.Listen("tcp", "[fd77::1]:8080")
			return err
		})
		b.Must(t, func() error {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("fd77::2")}}
			c, err := d.Dial("tcp", "[fd77::1]:8080")
			if err != nil {
				return err
			}
			return c.Close()
		})
		ln.Close()
		if t.Failed() {
			return
		}
	}
}
