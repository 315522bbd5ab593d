package config

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestEveryKeyDeclaresReload walks the Config type: every key must say,
// once, whether a reload applies it (reload:"live" on the key) or needs a
// restart (reload:"restart" on the key or on a section around it). A key
// added without saying fails here, rather than being "reloaded" and never
// applied.
func TestEveryKeyDeclaresReload(t *testing.T) {
	keys := 0
	var walk func(tp reflect.Type, prefix, inherited string)
	walk = func(tp reflect.Type, prefix, inherited string) {
		for f := range tp.Fields() {
			if !f.IsExported() {
				continue
			}
			path := prefix + jsonName(f)
			tag, tagged := f.Tag.Lookup("reload")
			switch {
			case tagged && tag != ReloadLive && tag != ReloadRestart:
				t.Errorf("%s: reload:%q is neither %q nor %q", path, tag, ReloadLive, ReloadRestart)
			case tagged && inherited != "":
				t.Errorf("%s: reload:%q inside a section that already says reload:%q", path, tag, inherited)
			}
			reload := inherited
			if tagged {
				reload = tag
			}
			elem := f.Type
			list := elem.Kind() == reflect.Slice && isSection(elem.Elem())
			if list {
				elem = elem.Elem()
			}
			if isSection(elem) {
				if reload == ReloadLive {
					t.Errorf("%s: reload:\"live\" on a section: say it on each of its keys, so that a key added later must say it too", path)
				}
				if list && reload == ReloadRestart {
					t.Errorf("%s: reload:\"restart\" on a list of mappings is not supported by ChangedRestartKeys' comparison of whole lists; tag its keys", path)
				}
				suffix := "."
				if list {
					suffix = "[]."
				}
				walk(elem, path+suffix, reload)
				continue
			}
			keys++
			if reload == "" {
				t.Errorf("%s: no reload tag: add reload:\"live\" (and make serve apply it on reload) or reload:\"restart\"", path)
			}
			if strings.Contains(path, "[].") && reload == ReloadRestart {
				t.Errorf("%s: a key of a list of mappings cannot be restart-only (ChangedRestartKeys compares lists whole)", path)
			}
		}
	}
	walk(reflect.TypeFor[Config](), "", "")
	if keys < 50 {
		t.Errorf("only %d keys walked", keys)
	}
}

func TestRestartKeys(t *testing.T) {
	got := RestartKeys()
	for _, want := range []string{
		"extproc.enabled", "extproc.listen", "extproc.drain_timeout",
		"xds.enabled", "xds.listen", "xds.mode", "xds.outbound_port", "xds.inbound_port",
		"origdst.enabled", "origdst.max_connections", "intercept.iptables.route_table", "intercept.ebpf.pin",
		"admin.enabled", "admin.listen", "admin.allowed_hosts",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("RestartKeys() lacks %s: %v", want, got)
		}
	}
	for _, live := range []string{"trust.strategy", "trust.trusted_cidrs", "extproc.deny_status", "xds.http_ports", "policies"} {
		if slices.Contains(got, live) {
			t.Errorf("RestartKeys() has %s, which reloads", live)
		}
	}
}

func TestChangedRestartKeys(t *testing.T) {
	base := Default()
	tests := []struct {
		name   string
		change func(c *Config)
		want   string
	}{
		{"nothing", func(*Config) {}, ""},
		{"live keys", func(c *Config) {
			c.Trust.TrustedCIDRs = CIDRs("10.0.0.0/8")
			c.Policies = []Policy{{Name: "p", Type: "cidr"}}
			c.ExtProc.DenyStatus = 429
			c.XDS.HTTPPorts = []int{8081}
		}, ""},
		{"keys and sections", func(c *Config) {
			c.ExtProc.Listen = "unix:///run/x.sock"
			c.XDS.SocketGroup = new(65532)
			c.XDS.Mode = "tproxy"
			c.OrigDst.Listen = []string{"[::]:15001"}
			c.Intercept.IPTables.RouteTable = 7
			c.Admin.AllowedHosts = []string{"admin.internal"}
		}, "extproc.listen,xds.socket_group,xds.mode,origdst.listen,intercept.iptables.route_table,admin.allowed_hosts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.change(&c)
			if got := strings.Join(ChangedRestartKeys(&base, &c), ","); got != tt.want {
				t.Errorf("ChangedRestartKeys = %q, want %q", got, tt.want)
			}
		})
	}
}
