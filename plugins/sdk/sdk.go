package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/hashicorp/go-plugin"
)

// ProtocolVersion is the version of the plugin API. realipd and a plugin
// agree on it in go-plugin's handshake; a plugin built against another
// version is refused with a clear error.
const ProtocolVersion = 1

// PluginName is the name under which the policy is served in go-plugin's
// plugin set.
const PluginName = "policy"

// Handshake is go-plugin's handshake configuration shared by realipd and its
// plugins. The magic cookie only keeps a plugin from being run by accident
// outside realipd; it is not a security measure.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "REALIPD_PLUGIN_COOKIE",
	MagicCookieValue: "5b0e1f4a9c7d3e82-realipd-ip-policy",
}

// LogLevelEnv is the environment variable through which realipd tells a
// plugin the lowest log level it will keep: trace, debug, info, warn or
// error. Logger honours it.
const LogLevelEnv = "REALIPD_PLUGIN_LOG_LEVEL"

// Policy decides whether a request may pass. Decide is called concurrently
// and must honour ctx's deadline: when it passes, realipd has already applied
// the policy's on_error decision.
type Policy interface {
	Decide(ctx context.Context, req *Request) (Decision, error)
}

// Configurer is implemented by policies that take configuration. Configure is
// called once per plugin process, before any Decide, with the `config` map of
// the policy's entry in realipd's configuration. An error rejects the
// configuration: realipd refuses to start and reports the error with the
// policy's name. A policy that does not implement Configurer accepts only an
// empty config.
type Configurer interface {
	Configure(ctx context.Context, cfg Config) error
}

// InputDeclarer is implemented by policies that read only some parts of a
// request. realipd then sends only those parts and keys its decision cache
// on them, so that a cached decision is reused for every request that looks
// the same to the policy. Inputs is called once, after Configure. Without it
// a policy receives every field and its decisions are cached per distinct
// request.
type InputDeclarer interface {
	Inputs() Inputs
}

// Inputs names the request fields a policy reads besides the client IP,
// which it always gets.
type Inputs struct {
	All         bool // every field and header, as if InputDeclarer were not implemented
	Peer        bool
	OriginalDst bool
	Resolution  bool // Strategy, ResolvedFrom, Reason, Position
	Listener    bool
	Route       bool
	Headers     []string // names of the request headers read, any case
}

// Request is one request to decide. Fields the policy did not declare in
// Inputs are zero.
type Request struct {
	ClientIP     netip.Addr     // the resolved client IP; invalid when realipd found none
	Peer         string         // the peer as received ("ip:port"); may be empty
	OriginalDst  netip.AddrPort // the intercepted connection's original destination, when known
	Strategy     string         // the resolution strategy, e.g. "rightmost_trusted_range"
	ResolvedFrom string         // "header", "peer", or "" when there was no result
	Reason       string         // why resolution ended as it did, e.g. "header", "all_trusted", "invalid"
	Position     int            // for ResolvedFrom "header": the entry's position from the right
	Headers      []Header       // the selected request headers, lower-case names; values are bytes (see Header)
	Listener     string         // listener name, when known
	Route        string         // route name, when known
}

// Header returns the value of the first header named name (lower case) and
// whether there was one.
func (r *Request) Header(name string) (string, bool) {
	for _, h := range r.Headers {
		if h.Name == name {
			return h.Value, true
		}
	}
	return "", false
}

// Header is one header name and value. Value holds the header's bytes as
// the client sent them, which need not be valid UTF-8; compare them as
// bytes (strings.Contains, ==), and expect range loops and conversions to
// []rune to see U+FFFD for the invalid parts.
type Header struct {
	Name  string
	Value string
}

// Decision is a policy's answer. The zero Decision allows the request with
// no effects and is not cached.
//
// Header values are sent to realipd byte for byte. Body, Metadata keys and
// values, and header names travel as protobuf strings, which must be valid
// UTF-8: invalid bytes there are replaced with U+FFFD (one per run) rather
// than failing the decision, so a policy may copy request header values
// into them.
type Decision struct {
	Deny     bool
	Status   int               // deny HTTP status; 0 means realipd's configured default
	Body     string            // deny body; "" means a default text
	Headers  []Header          // headers to set on the request (allow) or the deny response
	Metadata map[string]string // extra dynamic metadata fields
	// CacheTTL is how long realipd may reuse this decision for requests with
	// the same inputs, capped by the policy's cache_ttl; 0 means not at all.
	CacheTTL time.Duration
}

// Config is a policy's configuration: the `config` map of its entry in
// realipd's configuration file.
type Config struct {
	policy string
	raw    []byte
}

// NewConfig returns the Config realipd would hand to the policy named policy
// for the given config map; nil means no config. It is meant for tests.
func NewConfig(policy string, m map[string]any) (Config, error) {
	if m == nil {
		m = map[string]any{}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return Config{}, fmt.Errorf("sdk: encode config: %w", err)
	}
	return Config{policy: policy, raw: raw}, nil
}

// PolicyName is the name of the policies entry that loaded the plugin.
func (c Config) PolicyName() string { return c.policy }

// Empty reports whether no config keys were given.
func (c Config) Empty() bool {
	t := bytes.TrimSpace(c.raw)
	return len(t) == 0 || string(t) == "{}" || string(t) == "null"
}

// JSON returns the config map encoded as a JSON object.
func (c Config) JSON() []byte {
	if len(c.raw) == 0 {
		return []byte("{}")
	}
	return c.raw
}

// Decode decodes the config into v (a pointer to a struct with json tags)
// with encoding/json. Keys v has no field for are errors, so that a typo in
// realipd's configuration is reported at start-up instead of ignored.
func (c Config) Decode(v any) error {
	dec := json.NewDecoder(bytes.NewReader(c.JSON()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode config: %w", err)
	}
	return nil
}

// Duration is a time.Duration that decodes from a Go duration string such as
// "30s", for use in config structs.
type Duration struct{ time.Duration }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.Duration.String()) }
