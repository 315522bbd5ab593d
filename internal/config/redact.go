package config

import (
	"reflect"
	"slices"

	"github.com/realipd/realipd/listsource"
)

// RedactedValue stands for every value that Redacted hides.
const RedactedValue = "<redacted>"

// Redacted returns a copy of c fit to show (serve's /config_dump): the
// values under every policy's config, at any depth, are replaced by
// RedactedValue, since a plugin's settings may hold credentials. The keys
// and the nesting of mappings and lists are kept, so an operator still sees
// which settings a plugin was given. c is not modified and the copy shares
// no plugin settings with it. A list source's URL loses its user information
// and its query's values. The rest of the file (listen addresses, CIDRs,
// plugin paths and sha256) holds no secrets and is shown as is.
func (c *Config) Redacted() *Config {
	out := *c
	out.Trust.TrustedCIDRs = redactList(c.Trust.TrustedCIDRs)
	out.Policies = slices.Clone(c.Policies)
	for i := range out.Policies {
		p := &out.Policies[i]
		if m := p.Config; m != nil {
			p.Config = redactMap(m)
		}
		p.Deny, p.Allow = redactList(p.Deny), redactList(p.Allow)
	}
	return &out
}

// redactList copies a CIDR list with its list sources' URLs redacted
// (listsource.RedactURL): user information and query values may be
// credentials.
func redactList(list []ListEntry) []ListEntry {
	if !slices.ContainsFunc(list, func(e ListEntry) bool { return e.Source != nil }) {
		return list
	}
	out := slices.Clone(list)
	for i, e := range out {
		if e.Source != nil {
			s := *e.Source
			if s.URL != "" {
				s.URL = listsource.RedactURL(s.URL)
			}
			out[i].Source = &s
		}
	}
	return out
}

func redactMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = redactValue(v)
	}
	return out
}

// redactValue keeps the shape of v (mappings with their keys, lists with
// their length) and replaces every leaf with RedactedValue. A loaded file
// holds only map[string]any, []any and scalars; other maps and slices (a
// Config built in code) are walked by reflection.
func redactValue(v any) any {
	switch v := v.(type) {
	case map[string]any:
		return redactMap(v)
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = redactValue(e)
		}
		return out
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Map:
		if rv.Type().Key().Kind() == reflect.String {
			out := make(map[string]any, rv.Len())
			for it := rv.MapRange(); it.Next(); {
				out[it.Key().String()] = redactValue(it.Value().Interface())
			}
			return out
		}
	case reflect.Slice, reflect.Array:
		if rv.Type().Elem().Kind() != reflect.Uint8 { // []byte is one value
			out := make([]any, rv.Len())
			for i := range rv.Len() {
				out[i] = redactValue(rv.Index(i).Interface())
			}
			return out
		}
	case reflect.Pointer, reflect.Interface:
		if !rv.IsNil() {
			return redactValue(rv.Elem().Interface())
		}
	}
	return RedactedValue
}
