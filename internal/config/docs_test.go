package config

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// configDocPath is the configuration reference that TestConfigDoc keeps in
// step with the Config structs.
const configDocPath = "../../docs/config.md"

// docKey is one key found by walking the Config structs.
type docKey struct {
	path  string       // "origdst.fallback_grace", "policies[].cache_ttl"
	field reflect.Type // the Go type of the field
}

// configKeys lists every key of the configuration file, in field order:
// the leaves of the Config structs by their json tags, the keys of a list
// of mappings (policies) written as "list[].key".
func configKeys() []docKey {
	var keys []docKey
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
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
			ft := f.Type
			isStruct := func(t reflect.Type) bool {
				return t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(unmarshalerType)
			}
			switch {
			case isStruct(ft):
				walk(ft, prefix+name+".")
			case ft.Kind() == reflect.Slice && isStruct(ft.Elem()):
				walk(ft.Elem(), prefix+name+"[].")
			default:
				keys = append(keys, docKey{path: prefix + name, field: ft})
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
	return keys
}

// docType is the type a key's row in docs/config.md must start with.
func docType(t reflect.Type) string {
	switch t {
	case durationType:
		return "duration"
	case reflect.TypeFor[PortOrAll]():
		return `port or "*"`
	case reflect.TypeFor[[]ListEntry]():
		return "list of CIDRs, IPs or sources"
	}
	switch t.Kind() {
	case reflect.Pointer:
		return docType(t.Elem())
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "integer"
	case reflect.Map:
		return "mapping"
	case reflect.Slice:
		elem := docType(t.Elem())
		switch elem {
		case "string", "integer":
			return "list of " + elem + "s"
		case `port or "*"`:
			return `list of ports or "*"`
		}
		return "list of " + elem
	}
	return t.String()
}

// docRow is one key's row of docs/config.md.
type docRow struct {
	key, typ, def, example, meaning string
	table                           string // the "### " heading above it ("" when none)
	line                            int
}

var configDocRow = regexp.MustCompile("^\\| `([a-z0-9_.\\[\\]]+)` \\| (.*?) \\| (.*?) \\| (.*?) \\| (.*) \\|$")

// readConfigDoc returns the key rows of docs/config.md by key, and the
// first yaml code block under "## Complete example".
func readConfigDoc(t *testing.T) (rows map[string]docRow, example string) {
	t.Helper()
	f, err := os.Open(configDocPath)
	if err != nil {
		t.Fatalf("the configuration reference: %v", err)
	}
	defer f.Close()
	rows = map[string]docRow{}
	var section, table string
	var ex strings.Builder
	inExample, exampleDone := false, false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			section, table = strings.TrimPrefix(line, "## "), ""
		case strings.HasPrefix(line, "### "):
			table = strings.TrimPrefix(line, "### ")
		case section == "Complete example" && line == "```yaml" && !exampleDone:
			inExample = true
		case inExample && line == "```":
			inExample, exampleDone = false, true
		case inExample:
			ex.WriteString(line + "\n")
		default:
			m := configDocRow.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			if prev, dup := rows[m[1]]; dup {
				t.Errorf("%s:%d: key %s is documented twice (also line %d)", configDocPath, n, m[1], prev.line)
			}
			rows[m[1]] = docRow{key: m[1], typ: m[2], def: m[3], example: m[4], meaning: m[5], table: table, line: n}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rows, ex.String()
}

// backquoted returns the text between the first pair of backquotes of
// cell, and whether there was one.
func backquoted(cell string) (string, bool) {
	_, rest, ok := strings.Cut(cell, "`")
	if !ok {
		return "", false
	}
	v, _, ok := strings.Cut(rest, "`")
	return v, ok
}

// equalValues compares a documented value with the configured one: empty
// lists and maps are equal whether nil or not.
func equalValues(a, b reflect.Value) bool {
	if k := a.Kind(); (k == reflect.Slice || k == reflect.Map) && a.Len() == 0 && b.Len() == 0 {
		return true
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

// fieldValue walks v (a Config, or a Policy for "policies[]." keys) along
// the json names of path.
func fieldValue(v reflect.Value, path string) reflect.Value {
	for name := range strings.SplitSeq(path, ".") {
		for f := range v.Type().Fields() {
			if n, _, _ := strings.Cut(f.Tag.Get("json"), ","); n == name {
				v = v.FieldByIndex(f.Index)
				break
			}
		}
	}
	return v
}

// policyTables are the "### " headings of docs/config.md's policy tables:
// the keys every policy has, and those of each type.
var policyTables = map[string]string{"Every policy": "", "type: cidr": "cidr", "type: plugin": "plugin"}

// minimalPolicy is the smallest valid policy of a type.
func minimalPolicy(typ string) map[string]any {
	if typ == "cidr" {
		return map[string]any{"name": "p", "type": "cidr", "deny": []any{"192.0.2.0/24"}}
	}
	return map[string]any{"name": "p", "type": "plugin", "path": "/usr/local/lib/realipd/p", "sha256": strings.Repeat("ab", 32)}
}

// documentWith builds a configuration document with value at key path;
// with set false the key is left out. A policies[] key goes in a minimal
// policy of type typ.
func documentWith(path, typ string, value any, set bool) map[string]any {
	doc := map[string]any{}
	if rest, ok := strings.CutPrefix(path, "policies[]."); ok {
		p := minimalPolicy(typ)
		if set {
			p[rest] = value
		} else {
			delete(p, rest)
		}
		doc["policies"] = []any{p}
		return doc
	}
	m := doc
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		next := map[string]any{}
		m[p] = next
		m = next
	}
	if set {
		m[parts[len(parts)-1]] = value
	}
	return doc
}

// errorsAt parses doc and returns the problems reported at path (with
// policies[] as policies[0]) or at one of its list entries.
func errorsAt(t *testing.T, doc map[string]any, path string) []string {
	t.Helper()
	js, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse(js)
	var ve *ValidationError
	if err != nil && !errors.As(err, &ve) {
		return []string{err.Error()}
	}
	if ve == nil {
		return nil
	}
	at := strings.Replace(path, "policies[]", "policies[0]", 1)
	var out []string
	for _, fe := range ve.Errors {
		if fe.Path == at || strings.HasPrefix(fe.Path, at+"[") {
			out = append(out, fe.Error())
		}
	}
	return out
}

// TestConfigDoc checks docs/config.md against the Config structs: every
// key has a row (| `key` | type | default | example | meaning |) with its
// type and its default, documented keys exist, each example is a valid
// value of its key, a policy key's table says which policy type uses it,
// and the complete example file is valid and mentions every key.
func TestConfigDoc(t *testing.T) {
	rows, example := readConfigDoc(t)
	keys := configKeys()
	def := Default()
	section := func(path string) string {
		parts := strings.Split(strings.Replace(path, "[]", "", 1), ".")
		if parts[0] == "intercept" {
			return parts[0] + "." + parts[1]
		}
		return parts[0]
	}
	js, _ := json.Marshal(map[string]any{"policies": []any{minimalPolicy("plugin")}})
	minimal, err := Parse(js)
	if err != nil {
		t.Fatalf("a minimal plugin policy does not parse: %v", err)
	}
	pluginDefaults := minimal.Policies[0]
	known := map[string]bool{}
	for _, k := range keys {
		known[k.path] = true
		row, ok := rows[k.path]
		if !ok {
			// What to add: the row, with the default filled in.
			zero := "unset"
			v := fieldValue(reflect.ValueOf(def), k.path)
			if rest, ok := strings.CutPrefix(k.path, "policies[]."); ok {
				v = fieldValue(reflect.ValueOf(pluginDefaults), rest)
			}
			if k := v.Kind(); (k != reflect.Pointer && k != reflect.Map) || !v.IsNil() {
				b, _ := json.Marshal(v.Interface())
				if s := string(b); strings.HasPrefix(s, `"`) && s != `""` {
					zero = "`" + strings.Trim(s, `"`) + "`"
				} else {
					zero = "`" + s + "`"
				}
			}
			where := fmt.Sprintf("the table of section \"## %s\"", section(k.path))
			if strings.HasPrefix(k.path, "policies[]") {
				where = "the table under \"## policies\" for the policy types that use it (\"### Every policy\", \"### type: cidr\" or \"### type: plugin\")"
			}
			t.Errorf("%s: key %s is not documented: add the row\n| `%s` | %s | %s | `%s: EXAMPLE` | WHAT IT DOES |\nto %s",
				configDocPath, k.path, k.path, docType(k.field), zero, k.path[strings.LastIndex(k.path, ".")+1:], where)
			continue
		}
		at := fmt.Sprintf("%s:%d: %s", configDocPath, row.line, k.path)
		if want := docType(k.field); !strings.HasPrefix(row.typ, want) {
			t.Errorf("%s: the type column says %q; it must start with %q (the Go type is %v)", at, row.typ, want, k.field)
		}
		if strings.TrimSpace(row.meaning) == "" {
			t.Errorf("%s: no meaning written", at)
		}

		// The policy type that uses the key.
		typ := ""
		if strings.HasPrefix(k.path, "policies[]") {
			var known bool
			typ, known = policyTables[row.table]
			if !known {
				t.Errorf("%s: a policy key must be in one of the tables under \"### Every policy\", \"### type: cidr\" or \"### type: plugin\", not under %q", at, row.table)
				continue
			}
		}
		ctxType := typ
		if ctxType == "" {
			ctxType = "plugin"
		}

		// The default.
		switch {
		case row.def == "required":
			if len(errorsAt(t, documentWith(k.path, ctxType, nil, false), k.path)) == 0 {
				t.Errorf("%s: documented as required, but leaving it out is not an error", at)
			}
		case row.def == "unset":
			var got reflect.Value
			if typ == "" && !strings.HasPrefix(k.path, "policies[]") {
				got = fieldValue(reflect.ValueOf(def), k.path)
			} else {
				got = reflect.Zero(k.field)
			}
			if !got.IsZero() {
				t.Errorf("%s: documented as unset by default, but the default is %v", at, got)
			}
		default:
			text, ok := backquoted(row.def)
			if !ok {
				t.Errorf("%s: the default column %q is neither a `value`, \"required\" nor \"unset\"", at, row.def)
				break
			}
			want := reflect.New(k.field)
			js, err := yaml.YAMLToJSON([]byte(text))
			if err == nil {
				err = json.Unmarshal(js, want.Interface())
			}
			if err != nil {
				t.Errorf("%s: the default `%s` is not a %s: %v", at, text, docType(k.field), err)
				break
			}
			var got reflect.Value
			switch {
			case !strings.HasPrefix(k.path, "policies[]"):
				got = fieldValue(reflect.ValueOf(def), k.path)
			case typ == "plugin":
				// Parse fills the defaults of a plugin policy.
				got = fieldValue(reflect.ValueOf(pluginDefaults), strings.TrimPrefix(k.path, "policies[]."))
			default:
				got = reflect.Zero(k.field)
			}
			if !equalValues(want.Elem(), got) {
				b, _ := json.Marshal(got.Interface())
				t.Errorf("%s: the documented default `%s` is not the default, %s (config.Default(), load.go): fix the default column", at, text, b)
			}
		}

		// The example: "key: value", valid for the key.
		wrongTable := false
		text, ok := backquoted(row.example)
		if !ok {
			t.Errorf("%s: the example column %q is not `%s: VALUE`", at, row.example, k.path[strings.LastIndex(k.path, ".")+1:])
		} else {
			var m map[string]any
			last := k.path[strings.LastIndex(k.path, ".")+1:]
			if err := yaml.Unmarshal([]byte(text), &m); err != nil || len(m) != 1 || m[last] == nil && !strings.HasSuffix(text, "null") {
				t.Errorf("%s: the example `%s` is not `%s: VALUE` (%v)", at, text, last, err)
			} else {
				for _, e := range errorsAt(t, documentWith(k.path, ctxType, m[last], true), k.path) {
					switch {
					case typ != "" && strings.Contains(e, "not used by"):
						wrongTable = true
						t.Errorf("%s: documented under %q, but %s policies do not use it (%s): move the row to the table of the policy type that does", at, "### "+row.table, typ, e)
					case strings.Contains(e, "needs"), strings.Contains(e, "required when"), strings.Contains(e, "not used by"):
						// Valid with the keys it depends on (another
						// strategy, trust.trusted_cidrs...).
					default:
						t.Errorf("%s: the example `%s` is refused: %s", at, text, e)
					}
				}
			}
		}

		// A key of one policy type is refused by the other.
		if typ != "" && !wrongTable {
			other := map[string]string{"cidr": "plugin", "plugin": "cidr"}[typ]
			var m map[string]any
			if yaml.Unmarshal([]byte(text), &m) == nil {
				last := strings.TrimPrefix(k.path, "policies[].")
				if len(errorsAt(t, documentWith(k.path, other, m[last], true), k.path)) == 0 {
					t.Errorf("%s: documented under \"### type: %s\", but a %s policy accepts it too: move it to \"### Every policy\"", at, typ, other)
				}
			}
		}
	}
	for key, row := range rows {
		if !known[key] {
			t.Errorf("%s:%d: documents the key %s, which the configuration does not have (Config in internal/config/config.go): remove the row", configDocPath, row.line, key)
		}
	}

	// The complete example is a valid file that mentions every key.
	if example == "" {
		t.Fatalf("%s: no ```yaml block under \"## Complete example\"", configDocPath)
	}
	if _, err := Parse([]byte(example)); err != nil {
		t.Errorf("%s: the complete example is not valid: %v", configDocPath, err)
	}
	for _, k := range keys {
		last := k.path[strings.LastIndex(k.path, ".")+1:]
		if !regexp.MustCompile(`(?m)^[ #\-]*` + regexp.QuoteMeta(last) + `:`).MatchString(example) {
			t.Errorf("%s: the complete example does not mention %s (as a key, or in a comment \"# %s: ...\")", configDocPath, k.path, last)
		}
	}
	if !slices.ContainsFunc(keys, func(k docKey) bool { return k.path == "policies[].cache_ttl" }) {
		t.Error("configKeys does not reach the policies' keys")
	}
}

// TestConfigDocSaysWhatReloads: the paragraph under each section's
// heading in docs/config.md says which of its keys need a restart, as the
// reload tags declare (RestartKeys): "Every key reloads", "Every key ...
// needs a restart", or the restart keys named before "need a restart".
func TestConfigDocSaysWhatReloads(t *testing.T) {
	data, err := os.ReadFile(configDocPath)
	if err != nil {
		t.Fatal(err)
	}
	// The text between a section's heading and its first table.
	intro := map[string]string{}
	for _, part := range strings.Split(string(data), "\n## ")[1:] {
		heading, body, _ := strings.Cut(part, "\n")
		section, _, _ := strings.Cut(heading, ".")
		if _, seen := intro[section]; seen {
			continue
		}
		if i := strings.Index(body, "\n|"); i >= 0 {
			body = body[:i]
		}
		intro[section] = strings.Join(strings.Fields(body), " ")
	}
	restart := RestartKeys()
	var sections []string
	for _, k := range configKeys() {
		section, _, _ := strings.Cut(k.path, ".")
		section, _, _ = strings.Cut(section, "[")
		if !slices.Contains(sections, section) {
			sections = append(sections, section)
		}
	}
	for _, section := range sections {
		text, ok := intro[section]
		if !ok {
			t.Errorf("%s: no section %q", configDocPath, section)
			continue
		}
		var all, names []string
		for _, k := range configKeys() {
			if strings.HasPrefix(k.path, section+".") || strings.HasPrefix(k.path, section+"[") {
				all = append(all, k.path)
				if slices.Contains(restart, k.path) {
					names = append(names, k.path[strings.LastIndex(k.path, ".")+1:])
				}
			}
		}
		switch {
		case len(names) == 0:
			if !strings.Contains(text, "Every key reloads") {
				t.Errorf("%s: section %s: every key reloads, and the text does not say \"Every key reloads\": %q", configDocPath, section, text)
			}
		case len(names) == len(all):
			if !regexp.MustCompile(`(?i)every key [^.]*needs a restart`).MatchString(text) {
				t.Errorf("%s: section %s: every key needs a restart, and the text does not say so: %q", configDocPath, section, text)
			}
		default:
			before, _, found := strings.Cut(text, "need a restart")
			before = before[strings.LastIndex(before, ". ")+1:] // that sentence
			said := regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(before, -1)
			var got []string
			for _, m := range said {
				got = append(got, m[1])
			}
			slices.Sort(got)
			slices.Sort(names)
			if !found || !slices.Equal(got, names) {
				t.Errorf("%s: section %s: the text names %v before \"need a restart\", want the restart keys %v: %q", configDocPath, section, got, names, text)
			}
		}
	}
}
