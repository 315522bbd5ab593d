package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/realipd/realipd/listsource"
)

func TestListSources(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "realipd.yaml")
	doc := `
trust:
  trusted_cidrs:
    - 10.0.0.0/8
    - {preset: cloudflare}
    - {file: lb.txt}
    - {url: "https://ranges.example/aws.json", format: aws, service: CLOUDFRONT_ORIGIN_FACING, region: GLOBAL, refresh: 6h, max_shrink: 0.2, ca_file: ca.pem, name: origin-facing}
  cache_dir: cache
policies:
  - name: drop
    type: cidr
    deny: [192.0.2.0/24, {url: "https://user:pw@lists.example/drop.txt"}, {preset: google-cloud, region: us-central1, required: true}]
`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Trust.TrustedPrefixes(); len(got) != 1 || got[0].String() != "10.0.0.0/8" {
		t.Errorf("inline trusted CIDRs %v", got)
	}
	specs := cfg.ListSources()
	var names []string
	for _, s := range specs {
		names = append(names, s.Name)
	}
	if want := []string{"trust.trusted_cidrs[1]", "trust.trusted_cidrs[2]", "origin-facing", "policies[0].deny[1]", "policies[0].deny[2]"}; !slices.Equal(names, want) {
		t.Fatalf("sources %v, want %v", names, want)
	}
	cf := specs[0]
	if cf.Preset != "cloudflare" || len(cf.URLs) != 2 || cf.Format != listsource.FormatText || !cf.Required || cf.Refresh != listsource.DefaultRefresh || cf.MaxShrink != 0.5 {
		t.Errorf("cloudflare preset %+v", cf)
	}
	if f := specs[1]; f.File != filepath.Join(dir, "lb.txt") || !f.Required {
		t.Errorf("file source %+v: relative to the file's directory, required in trust", f)
	}
	if u := specs[2]; u.Filter != (listsource.Filter{Service: "CLOUDFRONT_ORIGIN_FACING", Region: "GLOBAL"}) || u.Refresh != 6*time.Hour ||
		u.MaxShrink != 0.2 || u.CAFile != filepath.Join(dir, "ca.pem") || u.Format != listsource.FormatAWS {
		t.Errorf("url source %+v", u)
	}
	if d := specs[3]; d.Required || d.URLs[0] != "https://user:pw@lists.example/drop.txt" {
		t.Errorf("deny source %+v: optional by default, its URL as given", d)
	}
	if g := specs[4]; !g.Required || g.Filter.Region != "us-central1" || g.Preset != "google-cloud" {
		t.Errorf("google-cloud preset in a deny list %+v", g)
	}
	if p := cfg.Policies[0]; len(p.DenyPrefixes()) != 1 || len(p.DenySources()) != 2 || len(p.AllowSources()) != 0 {
		t.Errorf("policy lists %v %v", p.DenyPrefixes(), p.DenySources())
	}
	if cfg.Trust.CacheDir != filepath.Join(dir, "cache") {
		t.Errorf("cache_dir %q, want it relative to the file's directory", cfg.Trust.CacheDir)
	}
}

func TestListSourceErrors(t *testing.T) {
	cases := []struct {
		name, doc string
		want      []string // "path: part of the message"
	}{
		{"unknown key", `trust: {trusted_cidrs: [{url: "https://x.example/l", refesh: 1h}]}`,
			[]string{"trust.trusted_cidrs[0].refesh: unknown key"}},
		{"wrong kind", `trust: {trusted_cidrs: [10.0.0.0/8, 7, [a]]}`,
			[]string{"trust.trusted_cidrs[1]: must be a CIDR, an IP or a source mapping", "trust.trusted_cidrs[2]: must be a CIDR"}},
		{"no kind", `trust: {trusted_cidrs: [{format: text}]}`, []string{"trust.trusted_cidrs[0]: a source names one of file, url or preset (found none)"}},
		{"two kinds", `trust: {trusted_cidrs: [{file: a, url: "https://x.example/"}]}`, []string{"trust.trusted_cidrs[0]: a source names one of file, url or preset (found file and url)"}},
		{"plain http", `trust: {trusted_cidrs: [{url: "http://ranges.example/l"}]}`, []string{"trust.trusted_cidrs[0].url: http://ranges.example/l: plain http is refused"}},
		{"credentials not echoed", `trust: {trusted_cidrs: [{url: "ftp://u:secret@x.example/"}]}`, []string{"trust.trusted_cidrs[0].url: ftp://x.example/: the scheme must be https"}},
		{"unknown preset", `trust: {trusted_cidrs: [{preset: akamai}]}`, []string{"trust.trusted_cidrs[0].preset: \"akamai\" is not one of cloudflare, cloudfront, fastly, google-cloud"}},
		{"google-cloud trusted", `trust: {trusted_cidrs: [{preset: google-cloud}]}`, []string{"trust.trusted_cidrs[0].preset: google-cloud is refused in trust.trusted_cidrs: cloud.json lists"}},
		{"preset with format", `trust: {trusted_cidrs: [{preset: fastly, format: text}]}`, []string{"trust.trusted_cidrs[0].format: not used with a preset"}},
		{"filter of a text list", `trust: {trusted_cidrs: [{preset: cloudflare, service: X}, {url: "https://x.example/", region: z}]}`,
			[]string{"trust.trusted_cidrs[0]: service and region select entries", "trust.trusted_cidrs[1]: service and region select entries"}},
		{"format", `trust: {trusted_cidrs: [{url: "https://x.example/", format: csv}]}`, []string{"trust.trusted_cidrs[0].format: \"csv\" is not one of"}},
		{"refresh", `trust: {trusted_cidrs: [{url: "https://x.example/", refresh: 10s}, {url: "http://127.0.0.1:1/", refresh: 1ms}]}`,
			[]string{"trust.trusted_cidrs[0].refresh: 10s is shorter than 1m0s", "trust.trusted_cidrs[1].refresh: 1ms is shorter than 100ms"}},
		{"max_shrink", `trust: {trusted_cidrs: [{preset: fastly, max_shrink: 1.5}, {preset: cloudflare, max_shrink: "half"}]}`,
			[]string{"trust.trusted_cidrs[0].max_shrink: 1.5 is not a fraction", "trust.trusted_cidrs[1].max_shrink: must be a number"}},
		{"trust never optional", `trust: {trusted_cidrs: [{preset: fastly, required: false}]}`, []string{"trust.trusted_cidrs[0].required: false is refused for trust.trusted_cidrs"}},
		{"allow never optional", `policies: [{name: a, type: cidr, allow: [{preset: fastly, required: false}]}]`, []string{"policies[0].allow[0].required: false is refused for an allow list"}},
		{"ca_file of a file", `trust: {trusted_cidrs: [{file: a.txt, ca_file: ca.pem}]}`, []string{"trust.trusted_cidrs[0].ca_file: not used by a file source"}},
		{"names", `trust: {trusted_cidrs: [{preset: fastly, name: x}, {preset: cloudflare, name: x}, {preset: cloudfront, name: "a b"}]}`,
			[]string{"two list sources are named \"x\"", "trust.trusted_cidrs[2].name: \"a b\" is not a name"}},
		{"strategy rules see sources", `trust: {strategy: envoy_xff, trusted_hops: 1, trusted_cidrs: [{preset: fastly}]}`,
			[]string{"trust.trusted_cidrs: cannot be combined with trusted_hops"}},
		{"unused by the strategy", `trust: {strategy: remote_addr, trusted_cidrs: [{preset: fastly}]}`,
			[]string{"trust.trusted_cidrs: not used by remote_addr"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			ve, ok := errors.AsType[*ValidationError](err)
			if !ok {
				t.Fatalf("Parse error = %v, want a *ValidationError", err)
			}
			if len(ve.Errors) != len(tc.want) {
				t.Errorf("%d errors, want %d:\n%v", len(ve.Errors), len(tc.want), err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("a credential in the error: %v", err)
			}
		})
	}
	// A source counts as trusted CIDRs for the PROXY protocol check.
	if _, err := Parse([]byte("trust: {trusted_cidrs: [{preset: cloudflare}]}\norigdst: {proxy_protocol: true}\n")); err != nil {
		t.Errorf("proxy_protocol with a trust source: %v", err)
	}
}
