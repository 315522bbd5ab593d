package envoy_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/xds"
)

// Where the shipped files point Envoy.
var (
	staticExtProcAt = endpoint{Addr: netip.MustParseAddrPort("127.0.0.1:9001")}
	udsExtProcAt    = endpoint{Pipe: "/run/realipd/extproc.sock"}
	adsXDSAt        = endpoint{Addr: netip.MustParseAddrPort("127.0.0.1:18000")}
)

// shippedFile is one file under envoy/ and what it must configure.
type shippedFile struct {
	file  string
	check func(*loaded) error
	// wantTypes must be among the messages unpacked from the file's Anys.
	wantTypes []string
}

// shipped lists what each file under envoy/ must configure. Every *.yaml in
// the directory must appear here (TestEveryFileHasExpectations), so a new file
// cannot skip the settings checks.
var shipped = []shippedFile{
	{
		file:  "envoy-extproc.yaml",
		check: func(l *loaded) error { return checkStatic(l, staticExtProcAt) },
		wantTypes: []string{
			"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
			"envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
			"envoy.extensions.filters.http.router.v3.Router",
			"envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
		},
	},
	{
		file:  "envoy-extproc-uds.yaml",
		check: func(l *loaded) error { return checkStatic(l, udsExtProcAt) },
		wantTypes: []string{
			"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
			"envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
			"envoy.extensions.filters.http.router.v3.Router",
			"envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
		},
	},
	{
		file:  "envoy-ads.yaml",
		check: func(l *loaded) error { return checkADS(l, adsXDSAt) },
		wantTypes: []string{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
		},
	},
}

func yamlFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	more, err := filepath.Glob("*.yml")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, more...)
	if len(files) == 0 {
		t.Fatal("no *.yaml files found under envoy/")
	}
	return files
}

// TestEveryFileValidates loads every YAML file under envoy/ into the Bootstrap
// proto and validates it, including every packed typed_config.
func TestEveryFileValidates(t *testing.T) {
	for _, file := range yamlFiles(t) {
		t.Run(file, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			l, err := load(data)
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if len(l.Unpacked) == 0 {
				t.Errorf("%s: no typed_config unpacked; the Any walk did not run", file)
			}
		})
	}
}

func TestEveryFileHasExpectations(t *testing.T) {
	for _, file := range yamlFiles(t) {
		if !slices.ContainsFunc(shipped, func(s shippedFile) bool { return s.file == file }) {
			t.Errorf("%s has no entry in shipped: add its expected settings", file)
		}
	}
}

// TestShippedSettings asserts the settings realipd relies on in each file.
func TestShippedSettings(t *testing.T) {
	for _, s := range shipped {
		t.Run(s.file, func(t *testing.T) {
			data, err := os.ReadFile(s.file)
			if err != nil {
				t.Fatal(err)
			}
			l, err := load(data)
			if err != nil {
				t.Fatalf("%s: %v", s.file, err)
			}
			if err := s.check(l); err != nil {
				t.Errorf("%s:\n%v", s.file, err)
			}
			for _, typ := range s.wantTypes {
				if !slices.Contains(l.Unpacked, typ) {
					t.Errorf("%s: %s not unpacked (got %q)", s.file, typ, l.Unpacked)
				}
			}
		})
	}
}

// edit replaces old by new in s once; an old ending in a newline with an empty
// new deletes the whole line holding old, indentation included.
func edit(s, old, new string) string {
	i := strings.Index(s, old)
	if i < 0 {
		return s
	}
	if new == "" && strings.HasSuffix(old, "\n") {
		start := strings.LastIndexByte(s[:i], '\n') + 1
		return s[:start] + s[i+len(old):]
	}
	return s[:i] + new + s[i+len(old):]
}

// TestChecksCatchMistakes edits the shipped static file in memory, one
// plausible mistake at a time, and requires the settings checks to name it.
func TestChecksCatchMistakes(t *testing.T) {
	checkEdits(t, "envoy-extproc.yaml", func(l *loaded) error { return checkStatic(l, staticExtProcAt) }, []editCase{
		{"request headers not sent", "request_header_mode: SEND", "request_header_mode: SKIP", "processing_mode.request_header_mode is SKIP"},
		{"response headers DEFAULT", "response_header_mode: SKIP", "response_header_mode: DEFAULT", "processing_mode.response_header_mode is DEFAULT"},
		{"response headers left out", "response_header_mode: SKIP\n", "", "response_header_mode is not set explicitly"},
		{"request body left out", "request_body_mode: NONE\n", "", "request_body_mode is not set explicitly"},
		{"request body buffered", "request_body_mode: NONE", "request_body_mode: BUFFERED", "processing_mode.request_body_mode is BUFFERED"},
		{"response body streamed", "response_body_mode: NONE", "response_body_mode: STREAMED", "processing_mode.response_body_mode is STREAMED"},
		{"request trailers sent", "request_trailer_mode: SKIP", "request_trailer_mode: SEND", "processing_mode.request_trailer_mode is SEND"},
		{"response trailers sent", "response_trailer_mode: SKIP", "response_trailer_mode: SEND", "processing_mode.response_trailer_mode is SEND"},
		{"wrong attribute", "request_attributes: [source.address, destination.address]", "request_attributes: [request.path]", "request_attributes"},
		{"no destination attribute", "request_attributes: [source.address, destination.address]", "request_attributes: [source.address]", "request_attributes"},
		{"no attribute", "request_attributes: [source.address, destination.address]\n", "", "request_attributes"},
		{"wrong namespace", "untyped: [realipd]", "untyped: [other]", "receiving_namespaces"},
		{"no message_timeout", "message_timeout: 0.2s\n", "", "message_timeout is not set explicitly"},
		{"huge message_timeout", "message_timeout: 0.2s", "message_timeout: 30s", "message_timeout is 30s"},
		{"no failure_mode_allow", "failure_mode_allow: false\n", "", "failure_mode_allow is not set explicitly"},
		{"observability mode", "failure_mode_allow: false", "failure_mode_allow: false\n              observability_mode: true", "observability_mode"},
		{"use_remote_address false", "use_remote_address: true", "use_remote_address: false", "use_remote_address must be true"},
		{"use_remote_address left out", "use_remote_address: true\n", "", "use_remote_address"},
		{"trusted hops", "xff_num_trusted_hops: 0", "xff_num_trusted_hops: 1", "xff_num_trusted_hops must be 0"},
		{"xff not appended", "skip_xff_append: false", "skip_xff_append: true", "skip_xff_append"},
		{"router not last", "\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n",
			"\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n" +
				"          - name: envoy.filters.http.cors\n" +
				"            typed_config:\n" +
				"              \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors\n",
			"last http_filter must be envoy.filters.http.router"},
		{"ext_proc to wrong cluster", "envoy_grpc: { cluster_name: realipd_extproc }", "envoy_grpc: { cluster_name: backend }", "cluster_name is \"backend\""},
		{"ext_proc cluster on HTTP/1.1", "http2_protocol_options: {}", "http_protocol_options: {}", "must use HTTP/2"},
		{"ext_proc cluster wrong port", "port_value: 9001", "port_value: 9002", "endpoints [127.0.0.1:9002]"},
		{"route to undefined cluster", "route: { cluster: backend }", "route: { cluster: nowhere }", "cluster \"nowhere\" is not defined"},
		{"access log without client_ip", "client_ip=%DYNAMIC_METADATA(realipd:client_ip)%", "", "no access_log prints"},
		{"admin on all addresses", "address: 127.0.0.1, port_value: 9901", "address: 0.0.0.0, port_value: 9901", "admin: address 0.0.0.0:9901"},
	})
}

// editCase is one mistaken edit of a shipped file: replacing old (which must
// occur once) by new must make the file's checks fail with wantError.
type editCase struct {
	name      string
	old, new  string
	wantError string
}

// checkEdits applies each case to file and runs check on the result.
func checkEdits(t *testing.T, file string, check func(*loaded) error, cases []editCase) {
	t.Helper()
	orig, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			if strings.Count(string(orig), tt.old) != 1 {
				t.Fatalf("%q occurs %d times in %s, want once", tt.old, strings.Count(string(orig), tt.old), file)
			}
			l, err := load([]byte(edit(string(orig), tt.old, tt.new)))
			if err != nil {
				t.Fatalf("edited file no longer loads, so this case tests nothing: %v", err)
			}
			err = check(l)
			if err == nil {
				t.Fatalf("checks passed after the edit, want an error containing %q", tt.wantError)
			}
			if !strings.Contains(err.Error(), tt.wantError) {
				t.Errorf("error = %v\nwant it to contain %q", err, tt.wantError)
			}
		})
	}
}

// TestADSChecksCatchMistakes does the same for the ADS bootstrap.
func TestADSChecksCatchMistakes(t *testing.T) {
	checkEdits(t, "envoy-ads.yaml", func(l *loaded) error { return checkADS(l, adsXDSAt) }, []editCase{
		{"REST instead of gRPC", "api_type: GRPC", "api_type: REST", "api_type is REST"},
		{"wrong xds cluster", "envoy_grpc: { cluster_name: realipd_xds }", "envoy_grpc: { cluster_name: other }", "cluster_name \"realipd_xds\""},
		{"lds not from ads", "lds_config:\n    ads: {}", "lds_config:\n    path_config_source: {path: /etc/envoy/lds.yaml}", "lds_config: must come from ads"},
		{"cds v2", "cds_config:\n    ads: {}\n    resource_api_version: V3", "cds_config:\n    ads: {}\n    resource_api_version: AUTO", "cds_config: resource_api_version is AUTO"},
		{"no node id", "id: realipd-sidecar\n", "", "node: id and cluster must be set"},
		{"xds on HTTP/1.1", "http2_protocol_options: {}", "http_protocol_options: {}", "must use HTTP/2"},
		{"xds wrong port", "port_value: 18000", "port_value: 18001", "endpoints [127.0.0.1:18001]"},
	})
}

// minimal is a small valid bootstrap with an Any inside an Any (ext_proc inside
// the HCM); the cases below break it in one place each.
const minimal = `
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: STAT_PREFIX
          route_config: {name: r}
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": EXTPROC_TYPE
              grpc_service: {envoy_grpc: {cluster_name: realipd_extproc}}
              message_timeout: MESSAGE_TIMEOUT
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: ADMIN_PORT}}
`

// TestLoadRejectsInvalid proves that load fails where Envoy would refuse the
// file, at each stage: YAML, protojson (unknown fields, unregistered types),
// the bootstrap's validation, and validation inside a (nested) typed_config.
func TestLoadRejectsInvalid(t *testing.T) {
	fill := func(repl ...string) string {
		defaults := map[string]string{
			"STAT_PREFIX":     "ingress",
			"EXTPROC_TYPE":    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
			"MESSAGE_TIMEOUT": "0.2s",
			"ADMIN_PORT":      "9901",
		}
		for i := 0; i+1 < len(repl); i += 2 {
			defaults[repl[i]] = repl[i+1]
		}
		s := minimal
		for k, v := range defaults {
			s = strings.ReplaceAll(s, k, v)
		}
		return s
	}
	tests := []struct {
		name    string
		yaml    string
		wantErr string // "" means load must succeed
	}{
		{"valid", fill(), ""},
		{"bad yaml", fill() + "static_resources: [\n", "yaml to json"},
		{"unknown top-level field", fill() + "no_such_field: 1\n", "protojson"},
		{"unknown field inside typed_config", strings.Replace(fill(), "stat_prefix: ingress", "stat_prefix: ingress\n          no_such_field: 1", 1), "protojson"},
		{"unregistered typed_config type", fill("EXTPROC_TYPE", "type.googleapis.com/envoy.extensions.filters.http.no_such.v3.Nope"), "protojson"},
		{"bootstrap rule broken", fill("ADMIN_PORT", "70000"), "validate bootstrap"},
		{"rule broken inside typed_config", fill("STAT_PREFIX", `""`), "validate envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"},
		{"rule broken inside nested typed_config", fill("MESSAGE_TIMEOUT", "7200s"), "validate envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := load([]byte(tt.yaml))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("load: %v", err)
				}
				want := []string{
					"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
					"envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
					"envoy.extensions.filters.http.router.v3.Router",
				}
				if !slices.Equal(l.Unpacked, want) {
					t.Errorf("unpacked %q, want %q", l.Unpacked, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("load succeeded, want an error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error = %v\nwant it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// TestFilesMatchRealipdDefaults ties the shipped files to what `realipd serve`
// does with no config file, so that changing a default without the files (or
// the reverse) fails here.
func TestFilesMatchRealipdDefaults(t *testing.T) {
	def := config.Default()
	extProcAt, err := netip.ParseAddrPort(def.ExtProc.Listen)
	if err != nil {
		t.Fatalf("default extproc.listen %q: %v", def.ExtProc.Listen, err)
	}
	xdsAt, err := netip.ParseAddrPort(def.XDS.Listen)
	if err != nil {
		t.Fatalf("default xds.listen %q: %v", def.XDS.Listen, err)
	}
	if def.ExtProc.MetadataNamespace != metadataNS {
		t.Errorf("default extproc.metadata_namespace %q, the files receive %q", def.ExtProc.MetadataNamespace, metadataNS)
	}
	if got := (endpoint{Addr: extProcAt}); got != staticExtProcAt {
		t.Errorf("default extproc.listen %v, envoy-extproc.yaml dials %v", got, staticExtProcAt)
	}
	if got := (endpoint{Addr: xdsAt}); got != adsXDSAt {
		t.Errorf("default xds.listen %v, envoy-ads.yaml dials %v", got, adsXDSAt)
	}
}

// TestBootstrapIsTheShippedFile: envoy-ads.yaml is exactly what realipd
// bootstrap prints for the default configuration, and a bootstrap for a
// unix:// xds.listen passes the same checks with a pipe address.
func TestBootstrapIsTheShippedFile(t *testing.T) {
	want, err := os.ReadFile("envoy-ads.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got, err := xds.Bootstrap(xds.BootstrapOptions{XDSAddress: config.Default().XDS.Listen})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("envoy-ads.yaml differs from xds.Bootstrap for the defaults (regenerate it: go run ./cmd/realipd bootstrap > envoy/envoy-ads.yaml):\n%s", got)
	}
	for _, tc := range []struct {
		listen string
		at     endpoint
	}{
		{"unix:///run/realipd/xds.sock", endpoint{Pipe: "/run/realipd/xds.sock"}},
		{"0.0.0.0:18001", endpoint{Addr: netip.MustParseAddrPort("127.0.0.1:18001")}},
		{"[::1]:18000", endpoint{Addr: netip.MustParseAddrPort("[::1]:18000")}},
	} {
		data, err := xds.Bootstrap(xds.BootstrapOptions{XDSAddress: tc.listen})
		if err != nil {
			t.Fatalf("%s: %v", tc.listen, err)
		}
		l, err := load(data)
		if err != nil {
			t.Fatalf("%s: %v", tc.listen, err)
		}
		if err := checkADS(l, tc.at); err != nil {
			t.Errorf("%s:\n%v", tc.listen, err)
		}
	}
}
