package listsource

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// Defaults of a Spec's fields.
const (
	DefaultRefresh   = 12 * time.Hour
	DefaultMaxShrink = 0.5
	// MinRefresh is the shortest refresh of a URL that is not on loopback:
	// the providers' lists change in days, and a shorter one hammers them.
	MinRefresh = time.Minute
	// MinLoopbackRefresh is the shortest refresh of a file or of a URL on
	// loopback (tests).
	MinLoopbackRefresh = 100 * time.Millisecond
	// DefaultTimeout bounds one fetch, from the request to the last byte.
	DefaultTimeout = 30 * time.Second
)

// Spec describes one list source, as the configuration gives it. A source
// reads one file (File) or fetches one or more documents (URLs, from a
// Preset or given); its list is the union of its documents' lists.
type Spec struct {
	// Name identifies the source in logs, metrics (the source label) and
	// /config_dump: the configuration's key path of the entry, or a name
	// given to it. It never holds a credential.
	Name string
	// File is the absolute path of a local file; or
	File string
	// URLs are the documents to fetch (https, or http on loopback).
	URLs []string
	// Preset is the preset URLs came from, for display ("" when given).
	Preset string
	// Format is the documents' syntax (FormatText when empty).
	Format Format
	// Filter selects the entries of a JSON document (aws, google).
	Filter Filter
	// Refresh is how often the documents are fetched again (a file is
	// re-read when it changes, and at this interval too).
	Refresh time.Duration
	// MaxShrink is the largest fraction by which a document's list may
	// shrink from one fetch to the next (0.5: to half); a list that
	// shrinks more is refused. 1 accepts any shrink but to empty.
	MaxShrink float64
	// CAFile is a PEM file of the certificate authorities trusted for the
	// URLs, instead of the system's.
	CAFile string
	// Required makes a source that has no list at start (no cache and no
	// answer) an error; otherwise it contributes nothing until it has one.
	Required bool
}

// key identifies a Spec: two equal keys are the same source.
func (s Spec) key() string {
	return fmt.Sprintf("%q|%q|%q|%q|%q|%q|%q|%v|%v|%q|%v", s.Name, s.File, s.URLs, s.Preset, s.Format, s.Filter.Service, s.Filter.Region,
		s.Refresh, s.MaxShrink, s.CAFile, s.Required)
}

func (s Spec) format() Format {
	if s.Format == "" {
		return FormatText
	}
	return s.Format
}

// docKey identifies one document of a Spec: what decides its contents
// (where it comes from, its format and filter), and so its cache file.
func (s Spec) docKey(where string) string {
	return fmt.Sprintf("v1|%s|%s|%s|%s", where, s.format(), strings.ToLower(s.Filter.Service), strings.ToLower(s.Filter.Region))
}

// Preset is a named source: a provider's documented URLs and their format.
type Preset struct {
	Name   string
	URLs   []string
	Format Format
	Filter Filter
	// What says what the list is, for the docs and errors.
	What string
	// NotForTrust says why the list must not be a list of trusted proxies
	// ("" when it may be one).
	NotForTrust string
}

// presets are the named sources. Their URLs are the providers' documented
// ones; nothing is fetched at build time and no list is kept in the binary.
var presets = []Preset{
	{Name: "cloudflare", URLs: []string{"https://www.cloudflare.com/ips-v4", "https://www.cloudflare.com/ips-v6"}, Format: FormatText,
		What: "Cloudflare's edge (the addresses Cloudflare connects to origins from)"},
	{Name: "cloudfront", URLs: []string{"https://ip-ranges.amazonaws.com/ip-ranges.json"}, Format: FormatAWS, Filter: Filter{Service: "CLOUDFRONT"},
		What: "Amazon CloudFront's edge (service CLOUDFRONT of AWS's ip-ranges.json)"},
	{Name: "fastly", URLs: []string{"https://api.fastly.com/public-ip-list"}, Format: FormatFastly,
		What: "Fastly's edge (its public-ip-list)"},
	{Name: "google-cloud", URLs: []string{"https://www.gstatic.com/ipranges/cloud.json"}, Format: FormatGoogle,
		What: "the external addresses Google Cloud gives its customers (cloud.json)",
		NotForTrust: "cloud.json lists the addresses any Google Cloud customer's VMs and load balancers get: trusting them would let anyone " +
			"with a Google Cloud VM forge the client IP. Trust your load balancer's own ranges instead (Google's external Application " +
			"Load Balancers connect from 35.191.0.0/16 and 130.211.0.0/22)"},
}

// Presets returns the presets.
func Presets() []Preset { return append([]Preset(nil), presets...) }

// LookupPreset returns the preset named name.
func LookupPreset(name string) (Preset, bool) {
	for _, p := range presets {
		if p.Name == name {
			return p, true
		}
	}
	return Preset{}, false
}

// PresetNames lists the presets' names.
func PresetNames() []string {
	names := make([]string, len(presets))
	for i, p := range presets {
		names[i] = p.Name
	}
	return names
}

// CheckURL checks a source URL: https with a host, or http to a loopback
// address (for tests); no fragment. Plain HTTP elsewhere is refused: a
// list of trusted proxies fetched without TLS is anyone's on the path.
func CheckURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %v", errors.Unwrap(err))
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http":
		if !IsLoopback(u) {
			return errors.New("plain http is refused (the list could be changed on its way); use https (http is accepted on loopback only, for tests)")
		}
	default:
		return fmt.Errorf("the scheme must be https, not %q", u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return errors.New("no host")
	}
	if u.Fragment != "" {
		return errors.New("a fragment (#...) is never sent; remove it")
	}
	return nil
}

// IsLoopback reports whether u's host is a loopback address or localhost.
func IsLoopback(u *url.URL) bool {
	h := u.Hostname()
	if strings.EqualFold(h, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.Unmap().IsLoopback()
}

// RedactURL returns s fit to show: without user information and with the
// query's values hidden, since either may hold a credential.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(an invalid URL)"
	}
	u.User = nil
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			q[k] = []string{"REDACTED"}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}
