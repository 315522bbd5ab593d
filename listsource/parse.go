package listsource

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/realipd/realipd/clientip"
)

// Bounds of one document.
const (
	// MaxBytes bounds a document as read (after any content decoding):
	// a larger answer is refused, not truncated.
	MaxBytes = 16 << 20
	// MaxEntries bounds the entries of one document.
	MaxEntries = 1_000_000
)

// Format is the syntax of a document.
type Format string

// The formats.
const (
	// FormatText is one CIDR or IP per line; "#" and ";" start comments
	// (Cloudflare's ips-v4/ips-v6, FireHOL netsets, Spamhaus DROP).
	FormatText Format = "text"
	// FormatAWS is AWS's ip-ranges.json, filtered by service and region.
	FormatAWS Format = "aws"
	// FormatGoogle is Google's cloud.json or goog.json, filtered by
	// service and scope (Filter.Region).
	FormatGoogle Format = "google"
	// FormatFastly is Fastly's public-ip-list.
	FormatFastly Format = "fastly"
)

// Formats lists the formats, as the configuration spells them.
func Formats() []Format { return []Format{FormatText, FormatAWS, FormatGoogle, FormatFastly} }

// Filter selects the entries of a JSON document: those whose service and
// region (Google's scope) equal these, ignoring case; an empty field
// selects every entry. The text and Fastly formats take no filter.
type Filter struct {
	Service string
	Region  string
}

func (f Filter) match(service, region string) bool {
	return (f.Service == "" || strings.EqualFold(f.Service, service)) &&
		(f.Region == "" || strings.EqualFold(f.Region, region))
}

// Refusal reasons of a document (Refused.Reason): the label values of
// realipd_list_source_refused_total.
const (
	ReasonParse    = "parse"     // not a document of its format, or an entry that is not a CIDR or an IP
	ReasonNotUTF8  = "not_utf8"  // not valid UTF-8
	ReasonTooLarge = "too_large" // more than MaxBytes
	ReasonTooMany  = "too_many"  // more than MaxEntries entries
	ReasonEmpty    = "empty"     // no entry (after the filter)
	ReasonShrink   = "shrink"    // shrunk by more than the source's MaxShrink
)

// Refused is the error of a document that cannot replace a list.
type Refused struct {
	Reason string // one of the Reason constants
	Detail string
}

func (e *Refused) Error() string { return e.Reason + ": " + e.Detail }

func refused(reason, format string, args ...any) error {
	return &Refused{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// RefusalReason returns the reason of a *Refused in err's chain, or "".
func RefusalReason(err error) string {
	if r, ok := errors.AsType[*Refused](err); ok {
		return r.Reason
	}
	return ""
}

// Parse parses a document of format f, keeping the entries filter selects,
// and returns its prefixes in the order found (a bare IP is a
// single-address prefix). Every entry must be a CIDR without bits set past
// its length, or an IP, without a zone. It refuses (a *Refused) a document
// that is not valid UTF-8, is larger than MaxBytes, has more than
// maxEntries entries (<= 0: MaxEntries), has an entry it cannot parse, or
// has no entry once filtered.
func Parse(f Format, data []byte, filter Filter, maxEntries int) ([]netip.Prefix, error) {
	if maxEntries <= 0 {
		maxEntries = MaxEntries
	}
	if len(data) > MaxBytes {
		return nil, refused(ReasonTooLarge, "%d bytes, more than %d", len(data), MaxBytes)
	}
	if !utf8.Valid(data) {
		return nil, refused(ReasonNotUTF8, "the document is not valid UTF-8")
	}
	var (
		out []netip.Prefix
		err error
	)
	switch f {
	case FormatText:
		out, err = parseText(data, maxEntries)
	case FormatAWS:
		out, err = parseAWS(data, filter, maxEntries)
	case FormatGoogle:
		out, err = parseGoogle(data, filter, maxEntries)
	case FormatFastly:
		out, err = parseFastly(data, maxEntries)
	default:
		return nil, fmt.Errorf("listsource: unknown format %q", f)
	}
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, refused(ReasonEmpty, "no entry")
	}
	return out, nil
}

// ParseText parses the text format: one CIDR or IP per line, blank lines
// and comments ("#" or ";" to the end of the line) ignored, CR LF line
// ends accepted.
func ParseText(data []byte) ([]netip.Prefix, error) { return Parse(FormatText, data, Filter{}, 0) }

// ParseAWS parses AWS's ip-ranges.json (prefixes[].ip_prefix,
// ipv6_prefixes[].ipv6_prefix), keeping the entries filter selects.
func ParseAWS(data []byte, filter Filter) ([]netip.Prefix, error) {
	return Parse(FormatAWS, data, filter, 0)
}

// ParseGoogle parses Google's cloud.json or goog.json
// (prefixes[].ipv4Prefix or ipv6Prefix), keeping the entries filter
// selects (Filter.Region matches scope).
func ParseGoogle(data []byte, filter Filter) ([]netip.Prefix, error) {
	return Parse(FormatGoogle, data, filter, 0)
}

// ParseFastly parses Fastly's public-ip-list (addresses, ipv6_addresses).
func ParseFastly(data []byte) ([]netip.Prefix, error) { return Parse(FormatFastly, data, Filter{}, 0) }

func parseText(data []byte, maxEntries int) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for n := 1; len(data) > 0; n++ {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if i := bytes.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if len(out) == maxEntries {
			return nil, refused(ReasonTooMany, "more than %d entries", maxEntries)
		}
		p, err := parseEntry(string(line))
		if err != nil {
			return nil, refused(ReasonParse, "line %d: %v", n, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// decodeJSON decodes a whole JSON document into v: one value, nothing
// after it.
func decodeJSON(data []byte, v any, what string) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return refused(ReasonParse, "not %s: %v", what, err)
	}
	if dec.More() {
		return refused(ReasonParse, "not %s: data after the document", what)
	}
	return nil
}

func parseAWS(data []byte, filter Filter, maxEntries int) ([]netip.Prefix, error) {
	type entry struct {
		IPPrefix   *string `json:"ip_prefix"`
		IPv6Prefix *string `json:"ipv6_prefix"`
		Region     string  `json:"region"`
		Service    string  `json:"service"`
	}
	var doc struct {
		Prefixes     *[]entry `json:"prefixes"`
		IPv6Prefixes []entry  `json:"ipv6_prefixes"`
	}
	const what = "an AWS ip-ranges.json document"
	if err := decodeJSON(data, &doc, what); err != nil {
		return nil, err
	}
	if doc.Prefixes == nil {
		return nil, refused(ReasonParse, "not %s: no prefixes", what)
	}
	var out []netip.Prefix
	add := func(key string, i int, s *string, e entry) error {
		if s == nil {
			return refused(ReasonParse, "%s[%d]: no %s", key, i, map[string]string{"prefixes": "ip_prefix", "ipv6_prefixes": "ipv6_prefix"}[key])
		}
		if !filter.match(e.Service, e.Region) {
			return nil
		}
		if len(out) == maxEntries {
			return refused(ReasonTooMany, "more than %d entries", maxEntries)
		}
		p, err := parseEntry(*s)
		if err != nil {
			return refused(ReasonParse, "%s[%d]: %v", key, i, err)
		}
		out = append(out, p)
		return nil
	}
	for i, e := range *doc.Prefixes {
		if err := add("prefixes", i, e.IPPrefix, e); err != nil {
			return nil, err
		}
	}
	for i, e := range doc.IPv6Prefixes {
		if err := add("ipv6_prefixes", i, e.IPv6Prefix, e); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func parseGoogle(data []byte, filter Filter, maxEntries int) ([]netip.Prefix, error) {
	var doc struct {
		Prefixes *[]struct {
			IPv4Prefix *string `json:"ipv4Prefix"`
			IPv6Prefix *string `json:"ipv6Prefix"`
			Service    string  `json:"service"`
			Scope      string  `json:"scope"`
		} `json:"prefixes"`
	}
	const what = "a Google cloud.json or goog.json document"
	if err := decodeJSON(data, &doc, what); err != nil {
		return nil, err
	}
	if doc.Prefixes == nil {
		return nil, refused(ReasonParse, "not %s: no prefixes", what)
	}
	var out []netip.Prefix
	for i, e := range *doc.Prefixes {
		s := e.IPv4Prefix
		if s == nil {
			s = e.IPv6Prefix
		}
		if s == nil || e.IPv4Prefix != nil && e.IPv6Prefix != nil {
			return nil, refused(ReasonParse, "prefixes[%d]: want one of ipv4Prefix and ipv6Prefix", i)
		}
		if !filter.match(e.Service, e.Scope) {
			continue
		}
		if len(out) == maxEntries {
			return nil, refused(ReasonTooMany, "more than %d entries", maxEntries)
		}
		p, err := parseEntry(*s)
		if err != nil {
			return nil, refused(ReasonParse, "prefixes[%d]: %v", i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func parseFastly(data []byte, maxEntries int) ([]netip.Prefix, error) {
	var doc struct {
		Addresses     *[]string `json:"addresses"`
		IPv6Addresses []string  `json:"ipv6_addresses"`
	}
	const what = "a Fastly public-ip-list document"
	if err := decodeJSON(data, &doc, what); err != nil {
		return nil, err
	}
	if doc.Addresses == nil {
		return nil, refused(ReasonParse, "not %s: no addresses", what)
	}
	var out []netip.Prefix
	for _, l := range []struct {
		key  string
		list []string
	}{{"addresses", *doc.Addresses}, {"ipv6_addresses", doc.IPv6Addresses}} {
		for i, s := range l.list {
			if len(out) == maxEntries {
				return nil, refused(ReasonTooMany, "more than %d entries", maxEntries)
			}
			p, err := parseEntry(s)
			if err != nil {
				return nil, refused(ReasonParse, "%s[%d]: %v", l.key, i, err)
			}
			out = append(out, p)
		}
	}
	return out, nil
}

// maxQuoted bounds how much of a bad entry an error quotes.
const maxQuoted = 64

// quote quotes s for an error message, cut to maxQuoted bytes.
func quote(s string) string {
	if len(s) > maxQuoted {
		s = s[:maxQuoted]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		return fmt.Sprintf("%q...", s)
	}
	return fmt.Sprintf("%q", s)
}

// parseEntry parses a CIDR (no bits set past its length) or an IP (a
// single-address prefix), without a zone, as the configuration file's
// inline entries are parsed.
func parseEntry(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%s is not a CIDR", quote(s))
		}
		if p != p.Masked() {
			return netip.Prefix{}, fmt.Errorf("%s has address bits set past /%d", quote(s), p.Bits())
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%s is not a CIDR or an IP address", quote(s))
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Merge returns the fewest prefixes covering exactly the addresses of ps
// (duplicates and prefixes inside others dropped, adjacent ones joined;
// see clientip.PrefixSet.Prefixes): a list as it is counted and kept.
func Merge(ps []netip.Prefix) []netip.Prefix {
	s := clientip.NewPrefixSet(ps)
	return s.Prefixes()
}
