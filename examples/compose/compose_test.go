package compose_test

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/envoytest"
	"github.com/realipd/realipd/internal/imagetest"
)

// composeFile is the part of the Compose specification the example uses.
// Decoding is strict against it, so a misspelt key fails the test; a key
// the example starts to use must be added here.
type composeFile struct {
	Name     string             `json:"name"`
	Services map[string]service `json:"services"`
}

type service struct {
	Image       string               `json:"image"`
	Build       *build               `json:"build"`
	Entrypoint  []string             `json:"entrypoint"`
	Command     []string             `json:"command"`
	User        string               `json:"user"`
	ReadOnly    bool                 `json:"read_only"`
	CapDrop     []string             `json:"cap_drop"`
	SecurityOpt []string             `json:"security_opt"`
	Volumes     []string             `json:"volumes"`
	Ports       []string             `json:"ports"`
	Environment map[string]string    `json:"environment"`
	NetworkMode string               `json:"network_mode"`
	DependsOn   map[string]dependsOn `json:"depends_on"`
	Restart     string               `json:"restart"`
}

// build is the long syntax of a service's build section.
type build struct {
	Context    string `json:"context"`
	Dockerfile string `json:"dockerfile"`
	Target     string `json:"target"`
}

type dependsOn struct {
	Condition string `json:"condition"`
	Restart   bool   `json:"restart"`
}

// mount is one short-syntax volume: SOURCE:TARGET[:ro].
type mount struct{ source, target string }

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	data, err := os.ReadFile("docker-compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		t.Fatalf("docker-compose.yaml: %v", err)
	}
	var f composeFile
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("docker-compose.yaml: %v", err)
	}
	return f
}

func mounts(t *testing.T, name string, s service) []mount {
	t.Helper()
	var out []mount
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || len(parts) > 3 || (len(parts) == 3 && parts[2] != "ro") {
			t.Errorf("service %s: volume %q, want SOURCE:TARGET:ro", name, v)
			continue
		}
		if len(parts) != 3 {
			t.Errorf("service %s: volume %q is writable; mount configuration read-only", name, v)
		}
		out = append(out, mount{parts[0], parts[1]})
	}
	return out
}

// hostPath is the file the service sees at path inside the container, on
// the host (relative to this directory), or "".
func hostPath(ms []mount, path string) string {
	for _, m := range ms {
		rel, err := filepath.Rel(m.target, path)
		if err == nil && !strings.HasPrefix(rel, "..") {
			return filepath.Join(m.source, rel)
		}
	}
	return ""
}

// flagValue is the argument after flag in args, or "".
func flagValue(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	return n
}

// TestCompose checks the compose file against what it runs: the services,
// the files they mount (they exist), Envoy's configuration (valid, and
// pointing at realipd and the echo server in the shared namespace) and
// realipd's (valid, and listening where Envoy and the published ports
// expect).
func TestCompose(t *testing.T) {
	f := loadCompose(t)
	var names []string
	for name := range f.Services {
		names = append(names, name)
	}
	slices.Sort(names)
	if want := []string{"echo", "envoy", "realipd"}; !slices.Equal(names, want) {
		t.Fatalf("services %v, want %v", names, want)
	}
	envoy, realipd, echo := f.Services["envoy"], f.Services["realipd"], f.Services["echo"]

	// Every mounted file exists; configuration is mounted read-only.
	all := map[string][]mount{}
	for _, name := range names {
		all[name] = mounts(t, name, f.Services[name])
		for _, m := range all[name] {
			if _, err := os.Stat(m.source); err != nil {
				t.Errorf("service %s mounts %s, which does not exist: %v", name, m.source, err)
			}
		}
	}

	// The shared network namespace: ports are published on Envoy's service.
	for _, name := range []string{"realipd", "echo"} {
		s := f.Services[name]
		if s.NetworkMode != "service:envoy" {
			t.Errorf("service %s: network_mode %q, want service:envoy (Envoy dials it on loopback)", name, s.NetworkMode)
		}
		if d, ok := s.DependsOn["envoy"]; !ok || !d.Restart {
			t.Errorf("service %s: want depends_on envoy with restart: true (it lives in Envoy's namespace)", name)
		}
		if len(s.Ports) != 0 {
			t.Errorf("service %s publishes ports; in Envoy's namespace only Envoy's service can", name)
		}
	}

	// Hardening, where the images allow it.
	for _, name := range names {
		s := f.Services[name]
		if !s.ReadOnly || !slices.Equal(s.CapDrop, []string{"ALL"}) || !slices.Contains(s.SecurityOpt, "no-new-privileges:true") {
			t.Errorf("service %s: want read_only, cap_drop [ALL] and no-new-privileges", name)
		}
		if uid, _, _ := strings.Cut(s.User, ":"); uid == "" || uid == "0" || uid == "root" {
			t.Errorf("service %s: user %q, want a non-root uid", name, s.User)
		}
	}

	// realipd: the image this repository builds, built by Compose itself,
	// the command, its configuration file in a mounted directory, and that
	// file valid.
	stage := checkBuild(t, realipd)
	cmd := stage.Argv(realipd.Entrypoint, realipd.Command)
	if want := []string{"/realipd", "serve", "--config", "/etc/realipd/realipd.yaml"}; !slices.Equal(cmd, want) {
		t.Errorf("realipd runs %q, want %q", cmd, want)
	}
	cfgFile := hostPath(all["realipd"], flagValue(cmd, "--config"))
	if cfgFile == "" {
		t.Fatalf("realipd's --config %s is not mounted", flagValue(cmd, "--config"))
	}
	if fi, err := os.Stat(filepath.Dir(cfgFile)); err != nil || !fi.IsDir() || filepath.Dir(cfgFile) == "." {
		t.Errorf("realipd's configuration %s: mount its own directory, so that reloads see renames", cfgFile)
	}
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatalf("realipd's configuration: %v", err)
	}
	if cfg.XDS.Enabled || cfg.OrigDst.Enabled {
		t.Errorf("%s: xds and origdst must be off (a static Envoy, no interception)", cfgFile)
	}

	// Envoy: the mounted bootstrap loads as Envoy would, passes the checks
	// of envoy/, and dials realipd and the echo server where they listen.
	envoyCmd := append(slices.Clone(envoy.Entrypoint), envoy.Command...)
	bootstrapFile := hostPath(all["envoy"], flagValue(envoyCmd, "--config-path"))
	if bootstrapFile == "" {
		t.Fatalf("Envoy's --config-path %q is not mounted", flagValue(envoyCmd, "--config-path"))
	}
	data, err := os.ReadFile(bootstrapFile)
	if err != nil {
		t.Fatal(err)
	}
	l, err := envoytest.Load(data)
	if err != nil {
		t.Fatalf("%s: %v", bootstrapFile, err)
	}
	var extProcAt envoytest.Endpoint
	if err := extProcAt.Addr.UnmarshalText([]byte(cfg.ExtProc.Listen)); err != nil {
		t.Fatalf("extproc.listen %q: %v (the shared namespace needs an IP address)", cfg.ExtProc.Listen, err)
	}
	if err := envoytest.CheckStatic(l, extProcAt); err != nil {
		t.Errorf("%s:\n%v", bootstrapFile, err)
	}
	var backend []envoytest.Endpoint
	for _, c := range l.Bootstrap.GetStaticResources().GetClusters() {
		if c.GetName() != "backend" {
			continue
		}
		for _, e := range c.GetLoadAssignment().GetEndpoints() {
			for _, lb := range e.GetLbEndpoints() {
				backend = append(backend, envoytest.EndpointOf(lb.GetEndpoint().GetAddress()))
			}
		}
	}
	echoPort, err := strconv.Atoi(echo.Environment["PORT"])
	if err != nil {
		t.Fatalf("echo: PORT %q: %v", echo.Environment["PORT"], err)
	}
	if len(backend) != 1 || !backend[0].Addr.Addr().IsLoopback() || int(backend[0].Addr.Port()) != echoPort {
		t.Errorf("Envoy's backend cluster %v, want the echo server on loopback port %d", backend, echoPort)
	}

	// Published ports: Envoy's listener, and realipd's admin on the host's
	// loopback only.
	var listenerPorts []int
	for _, lis := range l.Bootstrap.GetStaticResources().GetListeners() {
		listenerPorts = append(listenerPorts, int(envoytest.EndpointOf(lis.GetAddress()).Addr.Port()))
	}
	if len(listenerPorts) != 1 {
		t.Fatalf("%s: listeners on %v, want one", bootstrapFile, listenerPorts)
	}
	adminPort := port(t, cfg.Admin.Listen)
	want := []string{
		strconv.Itoa(listenerPorts[0]) + ":" + strconv.Itoa(listenerPorts[0]),
		"127.0.0.1:" + strconv.Itoa(adminPort) + ":" + strconv.Itoa(adminPort),
	}
	if !slices.Equal(envoy.Ports, want) {
		t.Errorf("envoy publishes %q (listeners on %v), want %q", envoy.Ports, listenerPorts, want)
	}
	if host, _, _ := net.SplitHostPort(cfg.Admin.Listen); host != "0.0.0.0" {
		t.Errorf("admin.listen %q: a published port arrives on the container's interface; want 0.0.0.0", cfg.Admin.Listen)
	}
}

// checkBuild checks that the realipd service runs the image this
// repository builds, under the name make image gives it, and that Compose
// builds it from the Containerfile when it is missing (`docker compose up`
// in a clone, no registry image needed); it returns the Containerfile's
// stage the service builds.
func checkBuild(t *testing.T, s service) imagetest.Stage {
	t.Helper()
	root, err := imagetest.Root()
	if err != nil {
		t.Fatal(err)
	}
	names, err := imagetest.ImageNames(root)
	if err != nil {
		t.Fatal(err)
	}
	if s.Image != names.Realipd {
		t.Errorf("realipd's image is %q, want %q (what make image tags, and Compose's build)", s.Image, names.Realipd)
	}
	if s.Build == nil {
		t.Fatal("realipd: want a build section (context: the repository, dockerfile: Containerfile), so that docker compose up builds the image")
	}
	ctx, err := filepath.Abs(s.Build.Context)
	if err != nil {
		t.Fatal(err)
	}
	if ctx != root {
		t.Errorf("realipd's build context %s is %s, want the repository's root %s", s.Build.Context, ctx, root)
	}
	if s.Build.Dockerfile != "Containerfile" {
		t.Errorf("realipd's build dockerfile %q, want Containerfile", s.Build.Dockerfile)
	}
	stages, err := imagetest.Stages(root)
	if err != nil {
		t.Fatal(err)
	}
	stage, ok := stages[s.Build.Target]
	if !ok || s.Build.Target != "realipd" {
		t.Fatalf("realipd's build target %q, want realipd (the image make image builds)", s.Build.Target)
	}
	return stage
}

// TestComposeStrict proves that the strict decoding catches a misspelt key.
func TestComposeStrict(t *testing.T) {
	js, err := yaml.YAMLToJSONStrict([]byte("services:\n  envoy:\n    imagee: x\n"))
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var f composeFile
	if err := dec.Decode(&f); err == nil || !strings.Contains(err.Error(), `unknown field "imagee"`) {
		t.Errorf("decode: %v, want an unknown field error", err)
	}
}
