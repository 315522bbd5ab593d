package envoytest

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// Every extension type a shipped file may pack into a typed_config must be
	// registered, or protojson refuses the file ("unable to resolve").
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// Loaded is one configuration file as Envoy would read it: the typed
// Bootstrap, the same document as plain JSON values (to tell a field written
// out from one left at its zero value, which proto3 cannot), and the full names
// of the messages unpacked from every google.protobuf.Any in it.
type Loaded struct {
	Bootstrap *bootstrapv3.Bootstrap
	Raw       map[string]any
	Unpacked  []string
}

// validator is what protoc-gen-validate generates for every Envoy message.
type validator interface{ ValidateAll() error }

// Load turns YAML into a validated Bootstrap the way Envoy does: YAML to JSON,
// strict protojson (unknown fields and unregistered Any types are errors),
// ValidateAll on the bootstrap, then ValidateAll on every message packed in an
// Any anywhere in it, recursively (the bootstrap's own ValidateAll does not look
// inside an Any).
func Load(data []byte) (*Loaded, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("yaml to json: %w", err)
	}
	var raw map[string]any
	if err := json.Unmarshal(js, &raw); err != nil {
		return nil, fmt.Errorf("json: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, b); err != nil {
		return nil, fmt.Errorf("protojson: %w", err)
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("validate bootstrap: %w", err)
	}
	l := &Loaded{Bootstrap: b, Raw: raw}
	if err := l.walk(b.ProtoReflect(), "bootstrap"); err != nil {
		return nil, err
	}
	return l, nil
}

// walk visits every set message field of m (singular, repeated and map values)
// and hands each to visit.
func (l *Loaded) walk(m protoreflect.Message, path string) error {
	var errs []error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := path + "." + string(fd.Name())
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				errs = append(errs, l.visit(mv.Message(), fmt.Sprintf("%s[%q]", name, k.String())))
				return true
			})
		case fd.IsList():
			if fd.Message() == nil {
				return true
			}
			list := v.List()
			for i := range list.Len() {
				errs = append(errs, l.visit(list.Get(i).Message(), fmt.Sprintf("%s[%d]", name, i)))
			}
		case fd.Message() != nil:
			errs = append(errs, l.visit(v.Message(), name))
		}
		return true
	})
	return errors.Join(errs...)
}

// visit unpacks m if it is an Any, validates what it holds and walks into it;
// any other message is walked as it is.
func (l *Loaded) visit(m protoreflect.Message, path string) error {
	if m.Descriptor().FullName() != "google.protobuf.Any" {
		return l.walk(m, path)
	}
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		return fmt.Errorf("%s: Any of unexpected Go type %T", path, m.Interface())
	}
	inner, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
	if err != nil {
		return fmt.Errorf("%s: unpack %s: %w", path, a.GetTypeUrl(), err)
	}
	name := string(inner.ProtoReflect().Descriptor().FullName())
	l.Unpacked = append(l.Unpacked, name)
	v, ok := inner.(validator)
	switch {
	case ok:
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s: validate %s: %w", path, name, err)
		}
	case strings.HasPrefix(name, "envoy."):
		return fmt.Errorf("%s: %s has no ValidateAll", path, name)
	}
	return l.walk(inner.ProtoReflect(), path+"<"+name+">")
}

// RawAt follows keys (string) and indices (int) through the plain JSON values.
func RawAt(v any, path ...any) (any, bool) {
	for _, p := range path {
		switch p := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil, false
			}
			if v, ok = m[p]; !ok {
				return nil, false
			}
		case int:
			s, ok := v.([]any)
			if !ok || p >= len(s) {
				return nil, false
			}
			v = s[p]
		default:
			return nil, false
		}
	}
	return v, true
}
