package config

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

var durationType = reflect.TypeFor[Duration]()

// shaper is a type that accepts values of more than one kind and checks a
// decoded value itself (PortOrAll: a number or "*").
type shaper interface{ checkShape(v any) error }

// checkShape compares a decoded JSON document (decoded with UseNumber) with
// the Go type it will be decoded into, and records every unknown key and
// every value of the wrong kind with its key path. Offending keys are
// deleted from their mapping so that the document that remains decodes
// cleanly and the rest of the file can still be validated. It reports
// whether v itself is acceptable.
func checkShape(errs *errorList, path string, v any, t reflect.Type) bool {
	if v == nil {
		return true // null: the key is treated as absent or empty, as encoding/json does
	}
	if t == durationType {
		if _, err := parseDuration(v); err != nil {
			errs.add(path, "%s", err.Error())
			return false
		}
		return true
	}
	if t == listEntryType {
		return checkListEntryShape(errs, path, v)
	}
	if s, ok := reflect.Zero(t).Interface().(shaper); ok {
		if err := s.checkShape(v); err != nil {
			errs.add(path, "%s", err.Error())
			return false
		}
		return true
	}
	switch t.Kind() {
	case reflect.Pointer:
		return checkShape(errs, path, v, t.Elem())
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			errs.add(path, "must be a mapping of keys, not %s", describe(v))
			return false
		}
		fields := jsonFields(t)
		for _, k := range sortedKeys(m) {
			ft, known := fields[k]
			if !known {
				errs.add(keyPath(path, k), "unknown key (valid keys here: %s)", strings.Join(sortedKeys(fields), ", "))
				delete(m, k)
				continue
			}
			if !checkShape(errs, keyPath(path, k), m[k], ft) {
				delete(m, k)
			}
		}
		return true
	case reflect.Map:
		if _, ok := v.(map[string]any); !ok {
			errs.add(path, "must be a mapping of keys, not %s", describe(v))
			return false
		}
		return true // free-form (a plugin's own config)
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			errs.add(path, "must be a list, not %s", describe(v))
			return false
		}
		good := true
		for i, elem := range list {
			if !checkShape(errs, fmt.Sprintf("%s[%d]", path, i), elem, t.Elem()) {
				good = false
			}
		}
		return good
	case reflect.String:
		if _, ok := v.(string); !ok {
			errs.add(path, "must be a string, not %s (quote the value)", describe(v))
			return false
		}
		return true
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			errs.add(path, "must be true or false, not %s", describe(v))
			return false
		}
		return true
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := v.(json.Number)
		if !ok {
			errs.add(path, "must be a whole number, not %s", describe(v))
			return false
		}
		if _, err := strconv.ParseInt(n.String(), 10, t.Bits()); err != nil {
			errs.add(path, "%s is not a whole number in range", n)
			return false
		}
		return true
	case reflect.Float32, reflect.Float64:
		n, ok := v.(json.Number)
		if !ok {
			errs.add(path, "must be a number, not %s", describe(v))
			return false
		}
		if _, err := strconv.ParseFloat(n.String(), t.Bits()); err != nil {
			errs.add(path, "%s is not a number in range", n)
			return false
		}
		return true
	case reflect.Interface:
		return true
	}
	errs.add(path, "cannot be set from %s", describe(v))
	return false
}

// jsonFields maps the JSON key of each exported field of struct type t to
// the field's type.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := make(map[string]reflect.Type, t.NumField())
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// keyPath appends key k to a dotted path.
func keyPath(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// describe names the kind of a decoded JSON value for error messages.
func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("the string %q", v)
	case bool:
		return fmt.Sprintf("the boolean %v", v)
	case json.Number, float64:
		return fmt.Sprintf("the number %v", v)
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", v)
}
