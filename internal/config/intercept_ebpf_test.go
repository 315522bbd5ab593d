package config

import (
	"errors"
	"strings"
	"testing"
)

// TestEBPFValidate checks the intercept.ebpf rules: the exact set of key
// paths reported, and a fragment of each message.
func TestEBPFValidate(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want map[string]string // key path -> message fragment; nil: valid
	}{
		{name: "defaults, disabled", yaml: "intercept: {ebpf: {enabled: false}}"},
		{name: "enabled needs a cgroup", yaml: "intercept: {ebpf: {enabled: true}}",
			want: map[string]string{"intercept.ebpf.cgroup": "required when intercept.ebpf.enabled is true"}},
		{name: "enabled", yaml: "intercept: {ebpf: {enabled: true, cgroup: /kubepods.slice/pod1, getsockopt_cgroup: /, outbound_port: 15001, inbound_ports: [8080, 9090], pin: /sys/fs/bpf/realipd}}"},
		{name: "relative cgroup", yaml: "intercept: {ebpf: {enabled: true, cgroup: 'realipd/test'}}"},
		{name: "root cgroup", yaml: "intercept: {ebpf: {enabled: true, cgroup: /}}"},
		{name: "unclean cgroups", yaml: "intercept: {ebpf: {cgroup: '/a/../b', getsockopt_cgroup: '../x'}}",
			want: map[string]string{"intercept.ebpf.cgroup": "not a clean cgroup path", "intercept.ebpf.getsockopt_cgroup": "not a clean cgroup path"}},
		{name: "dot element", yaml: "intercept: {ebpf: {cgroup: 'a/./b'}}",
			want: map[string]string{"intercept.ebpf.cgroup": "not a clean cgroup path"}},
		{name: "marks and ports", yaml: "intercept: {ebpf: {exclude_mark: 0, outbound_port: 70000, inbound_ports: [0, 80, 80]}}",
			want: map[string]string{"intercept.ebpf.exclude_mark": "0 is not a fwmark", "intercept.ebpf.outbound_port": "70000 is not a port",
				"intercept.ebpf.inbound_ports[0]": "0 is not a port", "intercept.ebpf.inbound_ports[2]": "listed twice"}},
		{name: "pin relative", yaml: "intercept: {ebpf: {pin: bpf/realipd}}",
			want: map[string]string{"intercept.ebpf.pin": "not an absolute directory"}},
		{name: "unknown key", yaml: "intercept: {ebpf: {cgroups: /}}",
			want: map[string]string{"intercept.ebpf.cgroups": "unknown key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Parse error = %v, want a *ValidationError", err)
			}
			got := map[string]string{}
			for _, fe := range ve.Errors {
				got[fe.Path] = fe.Msg
			}
			for path, frag := range tt.want {
				if msg, ok := got[path]; !ok {
					t.Errorf("no error for %s; got:\n%v", path, ve)
				} else if !strings.Contains(msg, frag) {
					t.Errorf("%s: message %q does not contain %q", path, msg, frag)
				}
			}
			for path, msg := range got {
				if _, ok := tt.want[path]; !ok {
					t.Errorf("unexpected error %s: %s", path, msg)
				}
			}
		})
	}
}

func TestEBPFDerivedValues(t *testing.T) {
	c, err := Parse([]byte("intercept: {ebpf: {enabled: true, cgroup: /a}}\nxds: {outbound_port: 16001, inbound_port: 16006}"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.OutboundCapturePort(); got != 16001 {
		t.Errorf("OutboundCapturePort = %d, want xds.outbound_port 16001", got)
	}
	if got := c.Intercept.EBPF.EffectiveGetsockoptCgroup(); got != "/a" {
		t.Errorf("EffectiveGetsockoptCgroup = %q, want the cgroup /a", got)
	}
	if c.Intercept.EBPF.ExcludeMark != c.OrigDst.Mark {
		t.Errorf("exclude_mark %d differs from origdst.mark %d by default", c.Intercept.EBPF.ExcludeMark, c.OrigDst.Mark)
	}
	c, err = Parse([]byte("intercept: {ebpf: {outbound_port: 17001, getsockopt_cgroup: /b}}"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.OutboundCapturePort(); got != 17001 {
		t.Errorf("OutboundCapturePort = %d, want 17001", got)
	}
	if got := c.Intercept.EBPF.EffectiveGetsockoptCgroup(); got != "/b" {
		t.Errorf("EffectiveGetsockoptCgroup = %q, want /b", got)
	}
}
