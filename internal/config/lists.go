package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/realipd/realipd/listsource"
)

// ListEntry is one entry of a CIDR list (trust.trusted_cidrs, a cidr
// policy's deny and allow): a CIDR or an IP written in the file, or a
// mapping naming a list source whose entries it stands for (see
// docs/trust-sources.md). Exactly one of CIDR and Source is set.
type ListEntry struct {
	CIDR   string
	Source *ListSource
}

// ListSource is an entry of a CIDR list that names a source: one of File,
// URL and Preset, and how it is read. The keys are documented in
// docs/trust-sources.md.
type ListSource struct {
	// Name names the source in logs, metrics and /config_dump; default:
	// the entry's key path (trust.trusted_cidrs[2]).
	Name string `json:"name,omitempty"`
	// File is a file of the text format (or Format), watched; relative to
	// the configuration file's directory.
	File string `json:"file,omitempty"`
	// URL is a document fetched over HTTPS.
	URL string `json:"url,omitempty"`
	// Preset is a named provider list (listsource.PresetNames).
	Preset string `json:"preset,omitempty"`
	// Format is the syntax of File or URL: text (default), aws, google,
	// fastly.
	Format string `json:"format,omitempty"`
	// Service and Region select the entries of an aws or google document
	// (Region matches Google's scope).
	Service string `json:"service,omitempty"`
	Region  string `json:"region,omitempty"`
	// Refresh is how often a URL is fetched again, and a file re-read
	// besides its watch (default 12h).
	Refresh Duration `json:"refresh,omitzero"`
	// MaxShrink is the largest fraction by which a document's list may
	// shrink at once (default 0.5); a larger shrink is refused.
	MaxShrink *float64 `json:"max_shrink,omitempty"`
	// CAFile is a PEM file of the certificate authorities trusted for URL,
	// instead of the system's; relative to the configuration file's
	// directory.
	CAFile string `json:"ca_file,omitempty"`
	// Required says whether serve refuses to start without this list (no
	// cache and no answer). Always true for trust.trusted_cidrs and allow
	// lists (false is refused); default false for deny lists.
	Required *bool `json:"required,omitempty"`
}

// MarshalJSON writes a CIDR as a string, a source as its mapping.
func (e ListEntry) MarshalJSON() ([]byte, error) {
	if e.Source != nil {
		return json.Marshal(e.Source)
	}
	return json.Marshal(e.CIDR)
}

// UnmarshalJSON reads a string (a CIDR or an IP) or a source mapping,
// whose unknown keys are errors.
func (e *ListEntry) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '{' {
		var src ListSource
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&src); err != nil {
			return fmt.Errorf("config: list source: %w", err)
		}
		*e = ListEntry{Source: &src}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New("config: a list entry is a CIDR, an IP or a source mapping")
	}
	*e = ListEntry{CIDR: s}
	return nil
}

// CIDRs is a list of CIDRs written in code: each a ListEntry.
func CIDRs(s ...string) []ListEntry {
	out := make([]ListEntry, len(s))
	for i, c := range s {
		out[i] = ListEntry{CIDR: c}
	}
	return out
}

var (
	listEntryType  = reflect.TypeFor[ListEntry]()
	listSourceType = reflect.TypeFor[ListSource]()
)

// checkListEntryShape is checkShape for a ListEntry: a string, or a
// mapping of ListSource's keys (each checked under path).
func checkListEntryShape(errs *errorList, path string, v any) bool {
	switch v := v.(type) {
	case string:
		return true
	case map[string]any:
		return checkShape(errs, path, v, listSourceType)
	}
	errs.add(path, "must be a CIDR, an IP or a source mapping ({file: ...}, {url: ...} or {preset: ...}), not %s", describe(v))
	return false
}

// listRole is what a CIDR list is for: it decides a source's defaults and
// what it may be.
type listRole int

const (
	listTrust listRole = iota // trust.trusted_cidrs: the proxies trusted
	listAllow                 // a cidr policy's allow: the only clients that pass
	listDeny                  // a cidr policy's deny
)

// parseList checks a CIDR list: it parses its CIDRs and IPs (inline) and
// turns its source mappings into listsource.Specs (named by their key path
// unless named).
func parseList(errs *errorList, path string, list []ListEntry, role listRole) (inline []netip.Prefix, sources []listsource.Spec) {
	inline = make([]netip.Prefix, 0, len(list))
	for i, e := range list {
		p := fmt.Sprintf("%s[%d]", path, i)
		if e.Source == nil {
			pr, err := parsePrefix(e.CIDR)
			if err != nil {
				errs.add(p, "%s", err.Error())
				continue
			}
			inline = append(inline, pr)
			continue
		}
		if spec, ok := e.Source.spec(errs, p, role); ok {
			sources = append(sources, spec)
		}
	}
	return inline, sources
}

// spec checks a source mapping and returns its listsource.Spec.
func (s *ListSource) spec(errs *errorList, path string, role listRole) (listsource.Spec, bool) {
	before := len(*errs)
	spec := listsource.Spec{Name: path, File: s.File, Format: listsource.Format(s.Format), CAFile: s.CAFile,
		Filter: listsource.Filter{Service: s.Service, Region: s.Region}, Refresh: s.Refresh.Duration, MaxShrink: listsource.DefaultMaxShrink}
	if s.Name != "" {
		if s.Name != strings.TrimSpace(s.Name) || strings.ContainsFunc(s.Name, isSpaceOrControl) || len(s.Name) > 64 {
			errs.add(path+".name", "%q is not a name (1 to 64 characters, no spaces)", s.Name)
		}
		spec.Name = s.Name
	}
	var kinds []string
	for _, k := range []struct{ key, v string }{{"file", s.File}, {"url", s.URL}, {"preset", s.Preset}} {
		if k.v != "" {
			kinds = append(kinds, k.key)
		}
	}
	if len(kinds) != 1 {
		errs.add(path, "a source names one of file, url or preset (found %s)", describeKeys(kinds))
		return spec, false
	}
	loopback := s.File != ""
	switch {
	case s.Preset != "":
		pr, ok := listsource.LookupPreset(s.Preset)
		if !ok {
			errs.add(path+".preset", "%q is not one of %s", s.Preset, strings.Join(listsource.PresetNames(), ", "))
			return spec, false
		}
		if role == listTrust && pr.NotForTrust != "" {
			errs.add(path+".preset", "%s is refused in trust.trusted_cidrs: %s", pr.Name, pr.NotForTrust)
		}
		if s.Format != "" {
			errs.add(path+".format", "not used with a preset (the preset's format is %s)", pr.Format)
		}
		if (s.Service != "" || s.Region != "") && pr.Format != listsource.FormatAWS && pr.Format != listsource.FormatGoogle {
			errs.add(path, "service and region select entries of aws and google documents; the %s preset is %s", pr.Name, pr.Format)
		}
		spec.Preset, spec.URLs, spec.Format = pr.Name, pr.URLs, pr.Format
		if s.Service == "" {
			spec.Filter.Service = pr.Filter.Service
		}
		if s.Region == "" {
			spec.Filter.Region = pr.Filter.Region
		}
	case s.URL != "":
		if err := listsource.CheckURL(s.URL); err != nil {
			errs.add(path+".url", "%s: %v", listsource.RedactURL(s.URL), err)
		} else {
			loopback = isLoopbackURL(s.URL)
		}
		spec.URLs = []string{s.URL}
	case s.File != "":
		if s.CAFile != "" {
			errs.add(path+".ca_file", "not used by a file source")
		}
	}
	if s.Format != "" && !slices.Contains(listsource.Formats(), listsource.Format(s.Format)) {
		errs.add(path+".format", "%q is not one of text, aws, google, fastly", s.Format)
	}
	if f := spec.Format; (s.Service != "" || s.Region != "") && s.Preset == "" && f != listsource.FormatAWS && f != listsource.FormatGoogle {
		errs.add(path, "service and region select entries of aws and google documents, not of format %s", cmpOrFormat(f))
	}
	switch least := listsource.MinRefresh; {
	case s.Refresh.Duration == 0:
		spec.Refresh = listsource.DefaultRefresh
	case loopback && s.Refresh.Duration < listsource.MinLoopbackRefresh:
		errs.add(path+".refresh", "%v is shorter than %v", s.Refresh.Duration, listsource.MinLoopbackRefresh)
	case !loopback && s.Refresh.Duration < least:
		errs.add(path+".refresh", "%v is shorter than %v (the providers' lists change in days; a shorter refresh only loads them)", s.Refresh.Duration, least)
	}
	if s.MaxShrink != nil {
		if m := *s.MaxShrink; m < 0 || m > 1 {
			errs.add(path+".max_shrink", "%v is not a fraction between 0 and 1", m)
		} else {
			spec.MaxShrink = m
		}
	}
	spec.Required = role != listDeny
	if s.Required != nil {
		if !*s.Required && role != listDeny {
			what := "trust.trusted_cidrs"
			if role == listAllow {
				what = "an allow list"
			}
			errs.add(path+".required", "false is refused for %s: starting without the list would fail open", what)
		}
		spec.Required = *s.Required
	}
	return spec, len(*errs) == before
}

func cmpOrFormat(f listsource.Format) listsource.Format {
	if f == "" {
		return listsource.FormatText
	}
	return f
}

func describeKeys(keys []string) string {
	if len(keys) == 0 {
		return "none"
	}
	return strings.Join(keys, " and ")
}

// isLoopbackURL reports whether a URL is on loopback.
func isLoopbackURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && listsource.IsLoopback(u)
}

// resolveListPaths makes trust.cache_dir and the relative file and ca_file
// paths of every list source relative to dir, the configuration file's
// directory.
func resolveListPaths(cfg *Config, dir string) {
	if d := cfg.Trust.CacheDir; d != "" && !filepath.IsAbs(d) {
		cfg.Trust.CacheDir = filepath.Join(dir, d)
	}
	for _, list := range cfg.lists() {
		for _, e := range list.entries {
			if s := e.Source; s != nil {
				for _, p := range []*string{&s.File, &s.CAFile} {
					if *p != "" && !filepath.IsAbs(*p) {
						*p = filepath.Join(dir, *p)
					}
				}
			}
		}
	}
}

// namedList is one CIDR list key of a configuration.
type namedList struct {
	path    string
	entries []ListEntry
}

// lists returns the CIDR list keys of cfg, in file order.
func (c *Config) lists() []namedList {
	out := []namedList{{"trust.trusted_cidrs", c.Trust.TrustedCIDRs}}
	for i, p := range c.Policies {
		out = append(out, namedList{fmt.Sprintf("policies[%d].deny", i), p.Deny}, namedList{fmt.Sprintf("policies[%d].allow", i), p.Allow})
	}
	return out
}

// ListSources returns the list sources of the configuration, in file
// order (after Validate).
func (c *Config) ListSources() []listsource.Spec {
	out := slices.Clone(c.Trust.sources)
	for _, p := range c.Policies {
		out = append(append(out, p.denySources...), p.allowSources...)
	}
	return out
}

// checkSourceNames refuses two sources of one name.
func checkSourceNames(errs *errorList, c *Config) {
	seen := map[string]bool{}
	for _, spec := range c.ListSources() {
		if seen[spec.Name] {
			errs.add("", "two list sources are named %q: names must be unique", spec.Name)
		}
		seen[spec.Name] = true
	}
}

// Lists gives the current list of each source by name (nil: none yet).
type Lists func(name string) *listsource.List

// Expand returns inline followed by the lists of sources, as lists has
// them now: the prefixes a CIDR list key stands for.
func Expand(inline []netip.Prefix, sources []listsource.Spec, lists Lists) []netip.Prefix {
	if len(sources) == 0 || lists == nil {
		return inline
	}
	out := slices.Clone(inline)
	for _, s := range sources {
		out = append(out, lists(s.Name).Prefixes()...)
	}
	return out
}
