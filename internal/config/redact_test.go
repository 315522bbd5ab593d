package config

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestRedacted(t *testing.T) {
	const r = RedactedValue
	c := Default()
	c.Policies = []Policy{
		{Name: "block", Type: "cidr", Deny: CIDRs("198.51.100.0/24")},
		{Name: "p", Type: "plugin", Path: "/bin/p", SHA256: "ab", Config: map[string]any{
			"token":  "t0ken",
			"nested": map[string]any{"password": "pw", "n": json.Number("7"), "deeper": []any{"a", []any{"b"}, map[string]any{"k": false}}},
			"null":   nil,
			"typed":  map[string]string{"user": "u"},
			"ints":   []int{1, 2},
			"bytes":  []byte("raw"),
			"ptr":    new(string),
		}},
		{Name: "bare", Type: "plugin", Path: "/bin/q", SHA256: "cd"},
	}
	orig := make(map[string]any, len(c.Policies[1].Config))
	for k, v := range c.Policies[1].Config {
		orig[k] = v
	}

	got := c.Redacted()
	want := map[string]any{
		"token":  r,
		"nested": map[string]any{"password": r, "n": r, "deeper": []any{r, []any{r}, map[string]any{"k": r}}},
		"null":   r,
		"typed":  map[string]any{"user": r},
		"ints":   []any{r, r},
		"bytes":  r,
		"ptr":    r,
	}
	if !reflect.DeepEqual(got.Policies[1].Config, want) {
		t.Errorf("Redacted config = %#v, want %#v", got.Policies[1].Config, want)
	}
	if got.Policies[2].Config != nil {
		t.Errorf("a policy without config got %#v", got.Policies[2].Config)
	}
	if p := got.Policies[0]; p.Name != "block" || !reflect.DeepEqual(p.Deny, CIDRs("198.51.100.0/24")) {
		t.Errorf("cidr policy = %+v, want it shown as is", p)
	}
	if !reflect.DeepEqual(got.Admin, c.Admin) || !reflect.DeepEqual(got.ExtProc, c.ExtProc) {
		t.Errorf("sections outside the policies changed")
	}
	if !reflect.DeepEqual(c.Policies[1].Config, orig) || c.Policies[1].Config["token"] != "t0ken" {
		t.Errorf("Redacted changed the original: %#v", c.Policies[1].Config)
	}
	if &got.Policies[0] == &c.Policies[0] {
		t.Error("Redacted shares the policies slice with the original")
	}
}

// TestRedactedListSources: a list source's URL shows without its user
// information and query values, which may be credentials; the original
// keeps them.
func TestRedactedListSources(t *testing.T) {
	c := Default()
	secret := "https://user:s3cret@lists.example/drop.txt?key=t0ken"
	c.Trust.TrustedCIDRs = []ListEntry{{CIDR: "10.0.0.0/8"}, {Source: &ListSource{URL: secret}}}
	c.Policies = []Policy{{Name: "block", Type: "cidr", Deny: []ListEntry{{Source: &ListSource{URL: secret}}}}}
	got := c.Redacted()
	b, _ := json.Marshal(got)
	for _, s := range []string{"s3cret", "t0ken", "user"} {
		if strings.Contains(string(b), s) {
			t.Errorf("the redacted configuration shows %q: %s", s, b)
		}
	}
	if !strings.Contains(string(b), "https://lists.example/drop.txt?key=REDACTED") || !strings.Contains(string(b), `"10.0.0.0/8"`) {
		t.Errorf("the redacted configuration lost the entries: %s", b)
	}
	if c.Trust.TrustedCIDRs[1].Source.URL != secret || c.Policies[0].Deny[0].Source.URL != secret {
		t.Error("Redacted changed the original")
	}
}
