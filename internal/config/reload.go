package config

import (
	"encoding/json"
	"reflect"
	"strings"
)

// Every key of the file declares, in a `reload` tag on its field, whether
// `realipd serve` applies a change of it while serving:
//
//   - reload:"live": a reload applies it. Only a key (a field that is not a
//     section of keys) may say so: the role that uses the key must then
//     take the new value on reload.
//   - reload:"restart": a reload that changes it is rejected, naming the
//     key, and the running value stays. On a section it covers every key of
//     the section, those added later included.
//
// A key with neither, on itself or on a section around it, is a mistake
// that a test (TestEveryKeyDeclaresReload) reports, so that a key cannot be
// added and then silently "reloaded" without ever being applied.
const (
	ReloadLive    = "live"
	ReloadRestart = "restart"
)

// RestartKeys lists the keys a reload cannot change, in file order, as key
// paths ("extproc.listen", "intercept.iptables.route_table").
func RestartKeys() []string {
	var keys []string
	walkReload(reflect.TypeFor[Config](), "", "", func(path, reload string, _ []int) {
		if reload == ReloadRestart {
			keys = append(keys, path)
		}
	})
	return keys
}

// ChangedRestartKeys lists the keys that differ between a and b and that a
// reload cannot change (see RestartKeys), in file order.
func ChangedRestartKeys(a, b *Config) []string {
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	var changed []string
	walkReload(va.Type(), "", "", func(path, reload string, index []int) {
		if reload != ReloadRestart {
			return
		}
		if !reflect.DeepEqual(va.FieldByIndex(index).Interface(), vb.FieldByIndex(index).Interface()) {
			changed = append(changed, path)
		}
	})
	return changed
}

// walkReload calls fn for every key of the struct type t, with its key path
// (prefix followed by its name), the reload tag in force (its own, or the
// nearest section's; "" when none) and its field index from t. A list of
// mappings (policies) is one key for walkReload: its entries' keys are
// checked by TestEveryKeyDeclaresReload, but a list is compared whole.
func walkReload(t reflect.Type, prefix, inherited string, fn func(path, reload string, index []int)) {
	var walk func(t reflect.Type, prefix, inherited string, index []int)
	walk = func(t reflect.Type, prefix, inherited string, index []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			name := jsonName(f)
			if !f.IsExported() || name == "-" {
				continue
			}
			reload := inherited
			if tag, ok := f.Tag.Lookup("reload"); ok && inherited == "" {
				reload = tag
			}
			idx := append(append([]int(nil), index...), i)
			if isSection(f.Type) {
				walk(f.Type, prefix+name+".", reload, idx)
				continue
			}
			fn(prefix+name, reload, idx)
		}
	}
	walk(t, prefix, inherited, nil)
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// isSection reports whether t is a mapping of keys of its own (a struct
// decoded field by field), not a value (Duration, PortOrAll).
func isSection(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(unmarshalerType)
}

// jsonName is the key of a field.
func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "" {
		return f.Name
	}
	return name
}
