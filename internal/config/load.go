package config

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Defaults that are not obvious from Default's literal.
const (
	DefaultPluginTimeout = 50 * time.Millisecond // policies[].timeout
	DefaultPluginOnError = "deny"                // policies[].on_error: fail closed
)

// Default returns the configuration realipd runs with when no file is
// given: ext_proc, xDS and admin on loopback, the native listener off, and
// the peer taken as the client (rightmost_trusted_range with no trusted
// CIDRs). The result is not yet validated: call Validate before using the
// parsed forms.
func Default() Config {
	return Config{
		Trust: Trust{
			Strategy:     "rightmost_trusted_range",
			OnUnresolved: "deny",
			Header:       "X-Forwarded-For",
		},
		ExtProc: ExtProc{
			Enabled:            true,
			Listen:             "127.0.0.1:9001",
			ClientIPHeader:     "x-real-ip",
			MetadataNamespace:  "realipd",
			XFFAppendedByEnvoy: true,
			DenyStatus:         403,
			DrainTimeout:       Duration{10 * time.Second},
		},
		XDS: XDS{
			Enabled:      true,
			Listen:       "127.0.0.1:18000",
			Mode:         "redirect",
			OutboundPort: 15001,
			InboundPort:  15006,
			IPFamilies:   []string{"ipv4"},
			HTTPPorts:    []int{8080},
		},
		Intercept: defaultIntercept(),
		OrigDst: OrigDst{
			Enabled:    false,
			Mode:       "redirect",
			Listen:     []string{"0.0.0.0:15001", "0.0.0.0:15006"}, // xds.outbound_port, xds.inbound_port: where `realipd iptables` steers
			Mark:       1338,
			TProxyMark: 1337,
			Fallback:   "always",
			HTTPPorts:  []int{},

			FallbackGrace:  Duration{5 * time.Second},
			DialTimeout:    Duration{5 * time.Second},
			IdleTimeout:    Duration{time.Hour},
			DrainTimeout:   Duration{10 * time.Second},
			MaxConnections: 10000,
		},
		Admin: Admin{
			Enabled:      true,
			Listen:       "127.0.0.1:9902",
			AllowedHosts: []string{},
		},
		Policies: []Policy{},
	}
}

// Load reads, parses and validates the YAML file at path (see ReadFile and
// ParseFile). A validation failure is a *ValidationError naming the file.
func Load(path string) (*Config, error) {
	return LoadContext(context.Background(), path)
}

// LoadContext is Load, giving up when ctx ends (see ReadFile).
func LoadContext(ctx context.Context, path string) (*Config, error) {
	data, err := ReadFile(ctx, path)
	if err != nil {
		return nil, err
	}
	return ParseFile(data, path)
}

// Parse parses and validates a YAML document. Keys that are absent keep
// their Default value; unknown keys are errors. A validation failure is a
// *ValidationError listing every problem found.
func Parse(data []byte) (*Config, error) {
	return parse(data, "")
}

// ParseFile is Parse for data read from the file at path, and adds what
// only a file has. A file with no keys at all (empty, or only whitespace
// and comments) is refused: it is far more likely a file caught while being
// written, or truncated, than a wish for the defaults, and running on them
// would trust no proxy and drop every policy; "{}" says that wish. Relative
// paths are made relative to the file's directory (see Policy.Dir).
func ParseFile(data []byte, path string) (*Config, error) {
	return parse(data, path)
}

// emptyFileMsg is the error of a file with no keys.
const emptyFileMsg = "the file is empty (no keys, only whitespace or comments): refused, since a truncated or half-written file looks the same; " +
	"write {} to run on the defaults"

func parse(data []byte, file string) (*Config, error) {
	where := ""
	if file != "" {
		where = file + ": "
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("config: %sparse YAML: %w", where, err)
	}
	var tree any
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if err := dec.Decode(&tree); err != nil {
		return nil, fmt.Errorf("config: %sparse YAML: %w", where, err)
	}

	if tree == nil && file != "" {
		return nil, &ValidationError{File: file, Errors: []FieldError{{Msg: emptyFileMsg}}}
	}
	cfg := Default()
	var errs errorList
	if tree != nil {
		if _, ok := tree.(map[string]any); !ok {
			return nil, &ValidationError{File: file, Errors: []FieldError{{Msg: "the document must be a mapping of keys, not " + describe(tree)}}}
		}
		checkShape(&errs, "", tree, reflect.TypeFor[Config]())
		// What remains after checkShape has only known keys and values of
		// the right kinds; decoding it strictly is a second line of defence.
		clean, err := json.Marshal(tree)
		if err != nil {
			return nil, fmt.Errorf("config: %sre-encode: %w", where, err)
		}
		dec := json.NewDecoder(bytes.NewReader(clean))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return nil, fmt.Errorf("config: %sdecode: %w", where, err)
		}
		applyPolicyDefaults(&cfg, tree.(map[string]any))
	}
	if file != "" {
		// Relative paths of list sources are the file's, checked as such.
		if dir, err := filepath.Abs(filepath.Dir(file)); err == nil {
			resolveListPaths(&cfg, dir)
		}
	}
	if verr := cfg.Validate(); verr != nil {
		var ve *ValidationError
		if !errors.As(verr, &ve) {
			return nil, verr
		}
		errs = append(errs, ve.Errors...)
	}
	if len(errs) > 0 {
		sortByDocumentOrder(errs)
		return nil, &ValidationError{File: file, Errors: errs}
	}
	if file != "" {
		dir, err := filepath.Abs(filepath.Dir(file))
		if err != nil {
			return nil, fmt.Errorf("config: %s: %w", file, err)
		}
		resolvePluginPaths(&cfg, dir)
	}
	return &cfg, nil
}

// resolvePluginPaths makes relative plugin paths relative to dir, the
// configuration file's directory (absolute), and records dir as the
// directory plugins run in, so that a file means the same whatever
// directory realipd is started from: the paths in a plugin's config too.
func resolvePluginPaths(cfg *Config, dir string) {
	for i := range cfg.Policies {
		p := &cfg.Policies[i]
		if p.Type != "plugin" {
			continue
		}
		p.dir = dir
		if p.Path != "" && !filepath.IsAbs(p.Path) {
			p.Path = filepath.Join(dir, p.Path)
		}
	}
}

// sortByDocumentOrder orders errors by section (in the order of Config's
// fields; unknown top-level keys first) and by policy index, keeping the
// order of errors within one section or policy.
func sortByDocumentOrder(errs errorList) {
	sections := sortKeysInFieldOrder(reflect.TypeFor[Config]())
	rank := func(path string) (int, int) {
		top, _, _ := strings.Cut(path, ".")
		name, index, _ := strings.Cut(top, "[")
		n, _ := strconv.Atoi(strings.TrimSuffix(index, "]"))
		return slices.Index(sections, name), n
	}
	slices.SortStableFunc(errs, func(a, b FieldError) int {
		sa, ia := rank(a.Path)
		sb, ib := rank(b.Path)
		return cmp.Or(cmp.Compare(sa, sb), cmp.Compare(ia, ib))
	})
}

// sortKeysInFieldOrder lists the JSON keys of struct type t in field order.
func sortKeysInFieldOrder(t reflect.Type) []string {
	var keys []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		keys = append(keys, name)
	}
	return keys
}

// applyPolicyDefaults fills the keys a plugin policy left out. It looks at
// the document rather than at zero values so that an explicit "timeout: 0s"
// is still reported as an error.
func applyPolicyDefaults(cfg *Config, doc map[string]any) {
	list, _ := doc["policies"].([]any)
	for i := range cfg.Policies {
		p := &cfg.Policies[i]
		if p.Type != "plugin" || i >= len(list) {
			continue
		}
		m, _ := list[i].(map[string]any)
		if _, ok := m["timeout"]; !ok {
			p.Timeout = Duration{DefaultPluginTimeout}
		}
		if _, ok := m["on_error"]; !ok {
			p.OnError = DefaultPluginOnError
		}
	}
}

// FieldError is one problem with one key.
type FieldError struct {
	Path string // key path, e.g. "trust.trusted_cidrs[1]"; "" for the whole document
	Msg  string
}

func (e FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// ValidationError lists every problem found in a configuration.
type ValidationError struct {
	File   string // the file, when loaded with Load
	Errors []FieldError
}

// Error prints one problem per line, each with its key path.
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("config: ")
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(": ")
	}
	if len(e.Errors) == 1 {
		b.WriteString(e.Errors[0].Error())
		return b.String()
	}
	fmt.Fprintf(&b, "%d errors:", len(e.Errors))
	for _, fe := range e.Errors {
		b.WriteString("\n  ")
		b.WriteString(fe.Error())
	}
	return b.String()
}

// errorList collects FieldErrors.
type errorList []FieldError

func (l *errorList) add(path, format string, args ...any) {
	*l = append(*l, FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}
