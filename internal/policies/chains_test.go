package policies

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/listsource"
	"github.com/realipd/realipd/plugins"
)

// TestChainsShareThePlugins: a list refresh builds a new chain with the
// same plugin process (no restart), and its cidr policy takes the new
// list; the plugin stops once the last chain holding it is closed and the
// Chains released.
func TestChainsShareThePlugins(t *testing.T) {
	ms := func(d string) config.Duration {
		var c config.Duration
		if err := c.UnmarshalJSON([]byte(`"` + d + `"`)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	list := []config.Policy{
		{Name: "drop", Type: "cidr", Deny: []config.ListEntry{{CIDR: "192.0.2.0/24"}, {Source: &config.ListSource{URL: "https://lists.example/drop.txt"}}}},
		{Name: "tenant", Type: "plugin", Path: pluginBin.testpolicy, SHA256: fileSHA(t, pluginBin.testpolicy),
			Timeout: ms("5s"), OnError: "deny", Config: map[string]any{"tag": "e2e"}},
	}
	c, err := Start(list, Options{})
	if err != nil {
		t.Fatal(err)
	}
	const source = "policies[0].deny[1]"
	current := map[string]*listsource.List{source: listsource.NewList([]netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")})}
	lists := func(name string) *listsource.List { return current[name] }

	first, err := c.Build(lists)
	if err != nil {
		t.Fatal(err)
	}
	c.Release() // as serve does once the first chain is in force
	decide := func(chain *plugins.Chain, ip string) plugins.Verdict {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return chain.Decide(ctx, &plugins.Request{ClientIP: netip.MustParseAddr(ip)})
	}
	if v := decide(first, "198.51.100.7"); !v.Deny || v.Policy != "drop" {
		t.Errorf("first chain, an IP of the source's list: %+v", v)
	}
	if v := decide(first, "203.0.113.7"); v.Deny || v.Err != nil {
		t.Errorf("first chain, another IP: %+v", v)
	}
	unchanged, err := c.Build(lists)
	if err != nil {
		t.Fatal(err)
	}

	// The source's list changes: a new chain, the same plugin.
	current[source] = listsource.NewList([]netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")})
	second, err := c.Build(lists)
	if err != nil {
		t.Fatal(err)
	}
	first.Retire()
	unchanged.Close()
	<-first.Done()
	if v := decide(second, "203.0.113.7"); !v.Deny || v.Policy != "drop" {
		t.Errorf("second chain, an IP of the new list: %+v", v)
	}
	if v := decide(second, "198.51.100.7"); v.Deny || v.Err != nil {
		t.Errorf("second chain, an IP of the old list (the plugin must still run): %+v", v)
	}
	if v := decide(second, "192.0.2.1"); !v.Deny {
		t.Errorf("second chain, an inline CIDR: %+v", v)
	}
	// The cidr policy is the same object while its lists are.
	c.mu.Lock()
	built := c.cidrs[0].policy
	c.mu.Unlock()
	third, err := c.Build(lists)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	if c.cidrs[0].policy != built {
		t.Error("the cidr policy was built again for unchanged lists")
	}
	c.mu.Unlock()
	third.Close()

	plugin := c.entries[1].plugin
	if !plugin.host.Up() {
		t.Fatal("the plugin stopped while a chain holds it")
	}
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	if plugin.host.Up() {
		t.Error("the plugin still runs after the last chain closed")
	}
	if _, err := c.Build(lists); !errors.Is(err, ErrStopped) {
		t.Errorf("Build after everything closed: %v, want ErrStopped", err)
	}
}
