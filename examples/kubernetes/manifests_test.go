package kubernetes_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/envoytest"
	"github.com/realipd/realipd/internal/imagetest"
	"github.com/realipd/realipd/xds"
)

// The names the manifests use, and the paths inside the containers.
const (
	namespace       = "realipd-demo"
	realipdConfigCM = "realipd-config"
	realipdKey      = "realipd.yaml"
	envoyCM         = "envoy-bootstrap"
	envoyKey        = "envoy.yaml"
	realipdConfig   = "/etc/realipd/realipd.yaml" // --config of realipd serve and realipd iptables
	envoyBootstrap  = "/etc/envoy/envoy.yaml"     // --config-path of envoy
)

// manifests are the decoded documents of a directory of manifests.
type manifests []object

// reporter is what the checks report to: a *testing.T, or a collector
// (TestChecksCatchMistakes).
type reporter interface {
	Helper()
	Error(args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// object is one decoded document of a manifest file.
type object struct {
	file string
	obj  any // *corev1.ConfigMap, *appsv1.Deployment, ...
	meta metav1.ObjectMeta
}

// newObject returns an empty typed object for apiVersion and kind: the kinds
// the example may use.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return &corev1.Namespace{}, nil
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, nil
	case "networking.k8s.io/v1 NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, nil
	}
	return nil, fmt.Errorf("apiVersion %q kind %q: not a kind this example uses", apiVersion, kind)
}

// decodeStrict decodes one YAML document into its Kubernetes API type:
// duplicate keys (YAMLToJSONStrict), unknown fields and trailing data are
// errors, as kubectl apply --validate=strict makes them.
func decodeStrict(doc []byte) (any, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return nil, fmt.Errorf("type: %w", err)
	}
	obj, err := newObject(tm.APIVersion, tm.Kind)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return nil, fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%s %s: data after the object", tm.APIVersion, tm.Kind)
	}
	return obj, nil
}

// splitDocuments splits a multi-document YAML file at its "---" lines,
// leaving out documents that hold only comments.
func splitDocuments(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, err
		}
		if string(bytes.TrimSpace(js)) != "null" {
			docs = append(docs, doc)
		}
	}
}

var (
	loadOnce sync.Once
	loaded   manifests
	loadErr  error
)

// objects decodes every document of every *.yaml file here, once.
func objects(t *testing.T) manifests {
	t.Helper()
	loadOnce.Do(func() { loaded, loadErr = decodeDir(".") })
	if loadErr != nil {
		t.Fatal(loadErr)
	}
	return loaded
}

func decodeDir(dir string) (manifests, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, errors.New("no *.yaml manifests found")
	}
	var out manifests
	var errs []error
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		docs, err := splitDocuments(data)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", file, err))
			continue
		}
		for i, doc := range docs {
			obj, err := decodeStrict(doc)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s, document %d: %w", file, i+1, err))
				continue
			}
			out = append(out, object{file: file, obj: obj, meta: objectMeta(obj)})
		}
	}
	return out, errors.Join(errs...)
}

func objectMeta(obj any) metav1.ObjectMeta {
	switch o := obj.(type) {
	case *corev1.Namespace:
		return o.ObjectMeta
	case *corev1.ConfigMap:
		return o.ObjectMeta
	case *corev1.ServiceAccount:
		return o.ObjectMeta
	case *corev1.Service:
		return o.ObjectMeta
	case *appsv1.Deployment:
		return o.ObjectMeta
	case *networkingv1.NetworkPolicy:
		return o.ObjectMeta
	}
	panic(fmt.Sprintf("objectMeta: %T", obj))
}

// only returns the one object of type T named name; the test fails when
// there is none or more than one.
func only[T any](t reporter, m manifests, name string) T {
	t.Helper()
	var found []T
	for _, o := range m {
		if v, ok := o.obj.(T); ok && o.meta.Name == name {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %T named %q, found %d", zero, name, len(found))
	}
	return found[0]
}

// TestManifestsDecodeStrictly decodes every manifest into the Kubernetes API
// types and requires the kinds the example is made of.
func TestManifestsDecodeStrictly(t *testing.T) {
	m := objects(t)
	kinds := map[string]int{}
	for _, o := range m {
		kinds[fmt.Sprintf("%T", o.obj)]++
		if o.meta.Name == "" {
			t.Errorf("%s: a %T without metadata.name", o.file, o.obj)
		}
		if _, isNS := o.obj.(*corev1.Namespace); !isNS && o.meta.Namespace != namespace {
			t.Errorf("%s: %T %q in namespace %q, want %q", o.file, o.obj, o.meta.Name, o.meta.Namespace, namespace)
		}
	}
	want := map[string]int{
		"*v1.Namespace": 1, "*v1.ConfigMap": 2, "*v1.ServiceAccount": 1,
		"*v1.Service": 1, "*v1.Deployment": 1, "*v1.NetworkPolicy": 1,
	}
	for k, n := range want {
		if kinds[k] != n {
			t.Errorf("%d objects of type %s, want %d (all: %v)", kinds[k], k, n, kinds)
		}
	}
	only[*corev1.Namespace](t, m, namespace)
}

// TestStrictDecodingRefuses proves that the decoding above would catch a
// mistyped field, a duplicate key and a kind the example does not use.
func TestStrictDecodingRefuses(t *testing.T) {
	for _, tt := range []struct{ name, doc, wantErr string }{
		{"unknown field", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndatta: {}\n", `unknown field "datta"`},
		{"unknown nested field", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      containers:\n      - name: a\n        imagePullPolicyy: Always\n", `unknown field "imagePullPolicyy"`},
		{"duplicate key", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {}\ndata: {}\n", `key "data" already set`},
		{"wrong type", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: http}]}\n", "cannot unmarshal"},
		{"unexpected kind", "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n", "not a kind this example uses"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeStrict([]byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("decodeStrict: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// pod is the Deployment's pod with its configuration.
type pod struct {
	deploy   *appsv1.Deployment
	spec     *corev1.PodSpec
	cfg      *config.Config // realipd's, from the ConfigMap
	cfgText  []byte
	iptables *corev1.Container // the init container
	realipd  *corev1.Container // the sidecars (restartable init containers)
	envoy    *corev1.Container
	app      *corev1.Container
}

func loadPod(t reporter, m manifests) *pod {
	t.Helper()
	d := only[*appsv1.Deployment](t, m, "echo")
	p := &pod{deploy: d, spec: &d.Spec.Template.Spec}
	cm := only[*corev1.ConfigMap](t, m, realipdConfigCM)
	text, ok := cm.Data[realipdKey]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %s", realipdConfigCM, realipdKey)
	}
	p.cfgText = []byte(text)
	cfg, err := config.Parse(p.cfgText)
	if err != nil {
		t.Fatalf("ConfigMap %s, %s: %v", realipdConfigCM, realipdKey, err)
	}
	p.cfg = cfg
	find := func(list []corev1.Container, name string) *corev1.Container {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
		t.Fatalf("no container %q", name)
		return nil
	}
	p.iptables = find(p.spec.InitContainers, "realipd-iptables")
	p.realipd = find(p.spec.InitContainers, "realipd")
	p.envoy = find(p.spec.InitContainers, "envoy")
	p.app = find(p.spec.Containers, "echo")
	return p
}

// all is every container of the pod, init containers first.
func (p *pod) all() []*corev1.Container {
	var out []*corev1.Container
	for i := range p.spec.InitContainers {
		out = append(out, &p.spec.InitContainers[i])
	}
	for i := range p.spec.Containers {
		out = append(out, &p.spec.Containers[i])
	}
	return out
}

// listenPort is the port of a host:port listen address.
func listenPort(t reporter, key, addr string) (host string, port int) {
	t.Helper()
	h, ps, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s %q: %v", key, addr, err)
	}
	n, err := strconv.Atoi(ps)
	if err != nil {
		t.Fatalf("%s %q: %v", key, addr, err)
	}
	return h, n
}

// containerPort resolves a probe's or a Service's port (a number or a port
// name) against c's ports.
func containerPort(t reporter, c *corev1.Container, p intstr.IntOrString) int {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntValue()
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort)
		}
	}
	t.Fatalf("container %s has no port named %q", c.Name, p.StrVal)
	return 0
}

func portByName(t reporter, c *corev1.Container, name string) int {
	t.Helper()
	return containerPort(t, c, intstr.FromString(name))
}

// TestRealipdConfig: the ConfigMap's realipd configuration passes realipd's
// validation, and the settings the pod depends on hold.
func TestRealipdConfig(t *testing.T) { checkRealipdConfig(t, objects(t)) }

func checkRealipdConfig(t reporter, m manifests) {
	p := loadPod(t, m)
	c := p.cfg
	if !c.ExtProc.Enabled || !c.XDS.Enabled || !c.Admin.Enabled {
		t.Errorf("extproc, xds and admin must be enabled (%v, %v, %v)", c.ExtProc.Enabled, c.XDS.Enabled, c.Admin.Enabled)
	}
	if c.OrigDst.Enabled || c.Intercept.EBPF.Enabled {
		t.Error("origdst and intercept.ebpf must be off: they need root, and the realipd container has none")
	}
	// Envoy alone needs them; a port on the pod's loopback is open to
	// every container of the pod (TestSockets checks who reaches the
	// sockets).
	for key, addr := range map[string]string{"extproc.listen": c.ExtProc.Listen, "xds.listen": c.XDS.Listen} {
		if network, _ := config.Network(addr); network != "unix" {
			t.Errorf("%s %q: want a unix:///path socket on the volume realipd shares with Envoy: a port on the pod's loopback is open to every container of the pod", key, addr)
		}
	}
	// The kubelet's probes come to the pod IP.
	if host, _ := listenPort(t, "admin.listen", c.Admin.Listen); host != "0.0.0.0" && host != "" && host != "::" {
		t.Errorf("admin.listen %q: the kubelet probes the pod IP; want a wildcard address", c.Admin.Listen)
	}
	if c.XDS.Mode != "redirect" {
		t.Errorf("xds.mode %q: the example runs Envoy without NET_ADMIN, which only redirect mode allows", c.XDS.Mode)
	}
}

// TestPorts: every container port matches the configuration it documents.
func TestPorts(t *testing.T) { checkPorts(t, objects(t)) }

func checkPorts(t reporter, m manifests) {
	p := loadPod(t, m)
	_, admin := listenPort(t, "admin.listen", p.cfg.Admin.Listen)
	l := bootstrap(t, m)
	envoyAdmin := envoytest.EndpointOf(l.Bootstrap.GetAdmin().GetAddress()).Addr.Port()

	// ext_proc and xDS are unix sockets: admin is realipd's only port.
	if len(p.realipd.Ports) != 1 {
		t.Errorf("container realipd lists ports %v, want only realipd-admin (ext_proc and xDS listen on unix sockets)", p.realipd.Ports)
	}
	for _, w := range []struct {
		c    *corev1.Container
		name string
		want int
	}{
		{p.realipd, "realipd-admin", admin},
		{p.envoy, "outbound", p.cfg.XDS.OutboundPort},
		{p.envoy, "inbound", p.cfg.XDS.InboundPort},
		{p.envoy, "envoy-admin", int(envoyAdmin)},
	} {
		if got := portByName(t, w.c, w.name); got != w.want {
			t.Errorf("container %s port %s is %d, the configuration says %d", w.c.Name, w.name, got, w.want)
		}
	}
	appPort := portByName(t, p.app, "http")
	if !slices.Contains(p.cfg.XDS.HTTPPorts, appPort) {
		t.Errorf("the application's port %d is not in xds.http_ports %v: its requests would not pass ext_proc", appPort, p.cfg.XDS.HTTPPorts)
	}
	if slices.Contains(p.cfg.Intercept.IPTables.ExcludeInboundPorts, appPort) || !p.cfg.Intercept.IPTables.IncludeAllInbound() && !slices.Contains(p.cfg.Intercept.IPTables.InboundPorts(), appPort) {
		t.Errorf("the application's port %d is not captured inbound: requests would bypass Envoy", appPort)
	}

	// The Service reaches the application port, the NetworkPolicy lets it in.
	svc := only[*corev1.Service](t, m, "echo")
	if len(svc.Spec.Ports) != 1 || containerPort(t, p.app, svc.Spec.Ports[0].TargetPort) != appPort {
		t.Errorf("Service echo: ports %+v, want one targeting the application port %d", svc.Spec.Ports, appPort)
	}
	np := only[*networkingv1.NetworkPolicy](t, m, "echo")
	var allowed []int
	for _, rule := range np.Spec.Ingress {
		if len(rule.From) != 0 {
			continue
		}
		for _, port := range rule.Ports {
			allowed = append(allowed, containerPort(t, p.app, *port.Port))
		}
	}
	if !slices.Equal(allowed, []int{appPort}) {
		t.Errorf("NetworkPolicy echo admits ports %v from every pod, want only the application port %d", allowed, appPort)
	}

	// Selectors all pick the template's pods.
	labels := p.deploy.Spec.Template.Labels
	for what, sel := range map[string]map[string]string{
		"Deployment selector":       p.deploy.Spec.Selector.MatchLabels,
		"Service selector":          svc.Spec.Selector,
		"NetworkPolicy podSelector": np.Spec.PodSelector.MatchLabels,
	} {
		if len(sel) == 0 {
			t.Errorf("%s is empty", what)
		}
		for k, v := range sel {
			if labels[k] != v {
				t.Errorf("%s %s=%s does not match the pod template's labels %v", what, k, v, labels)
			}
		}
	}
}

// TestProbes: realipd's probes reach its admin listener on the right paths,
// not through Envoy; Envoy's go through the inbound capture.
func TestProbes(t *testing.T) { checkProbes(t, objects(t)) }

func checkProbes(t reporter, m manifests) {
	p := loadPod(t, m)
	_, admin := listenPort(t, "admin.listen", p.cfg.Admin.Listen)
	for _, w := range []struct {
		what  string
		probe *corev1.Probe
		path  string
	}{
		{"startupProbe", p.realipd.StartupProbe, "/readyz"},
		{"livenessProbe", p.realipd.LivenessProbe, "/healthz"},
		{"readinessProbe", p.realipd.ReadinessProbe, "/readyz"},
	} {
		if w.probe == nil || w.probe.HTTPGet == nil {
			t.Errorf("realipd %s: want an httpGet probe", w.what)
			continue
		}
		g := w.probe.HTTPGet
		if g.Path != w.path || containerPort(t, p.realipd, g.Port) != admin || g.Host != "" || (g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP) {
			t.Errorf("realipd %s: %s %v%s, want HTTP on the pod IP, admin port %d, path %s", w.what, g.Scheme, g.Port.String(), g.Path, admin, w.path)
		}
	}
	if !slices.Contains(p.cfg.Intercept.IPTables.ExcludeInboundPorts, admin) {
		t.Errorf("admin port %d is not in intercept.iptables.exclude_inbound_ports: the kubelet's probes of realipd would pass through Envoy", admin)
	}
	for what, probe := range map[string]*corev1.Probe{"startupProbe": p.envoy.StartupProbe, "livenessProbe": p.envoy.LivenessProbe} {
		if probe == nil || probe.TCPSocket == nil {
			t.Errorf("envoy %s: want a tcpSocket probe", what)
			continue
		}
		port := containerPort(t, p.envoy, probe.TCPSocket.Port)
		if !slices.Contains(p.cfg.XDS.HTTPPorts, port) || slices.Contains(p.cfg.Intercept.IPTables.ExcludeInboundPorts, port) {
			t.Errorf("envoy %s on port %d: want a captured application port, which the rules redirect to Envoy's inbound listener", what, port)
		}
	}
	if g := p.app.ReadinessProbe; g == nil || g.HTTPGet == nil || containerPort(t, p.app, g.HTTPGet.Port) != portByName(t, p.app, "http") {
		t.Errorf("echo: want an httpGet readinessProbe on the application port (through Envoy and ext_proc)")
	}
	if p.app.LivenessProbe != nil {
		t.Errorf("echo: a liveness probe through Envoy would restart the application for a sidecar's fault")
	}
}

// TestVolumes: every mount names a volume of the pod, every ConfigMap volume
// names a ConfigMap of the manifests and keys it has, the configuration
// files the commands read are mounted, and the ConfigMaps are mounted as
// directories (a subPath mount never sees an update).
func TestVolumes(t *testing.T) { checkVolumes(t, objects(t)) }

func checkVolumes(t reporter, m manifests) {
	p := loadPod(t, m)
	volumes := map[string]corev1.Volume{}
	for _, v := range p.spec.Volumes {
		volumes[v.Name] = v
	}
	for _, v := range p.spec.Volumes {
		cmv := v.ConfigMap
		if cmv == nil {
			continue
		}
		cm := only[*corev1.ConfigMap](t, m, cmv.Name)
		if cmv.Optional != nil && *cmv.Optional {
			t.Errorf("volume %s: ConfigMap %s is optional; the pod must not start without it", v.Name, cmv.Name)
		}
		for _, it := range cmv.Items {
			if _, ok := cm.Data[it.Key]; !ok {
				t.Errorf("volume %s: key %q is not in ConfigMap %s", v.Name, it.Key, cmv.Name)
			}
		}
	}
	used := map[string]bool{}
	for _, c := range p.all() {
		for _, m := range c.VolumeMounts {
			used[m.Name] = true
			v, ok := volumes[m.Name]
			if !ok {
				t.Errorf("container %s mounts %q, which is not a volume of the pod", c.Name, m.Name)
				continue
			}
			if v.ConfigMap != nil && (m.SubPath != "" || m.SubPathExpr != "") {
				t.Errorf("container %s mounts ConfigMap volume %s with a subPath: updates would never reach it", c.Name, m.Name)
			}
			if v.ConfigMap != nil && !m.ReadOnly {
				t.Errorf("container %s mounts ConfigMap volume %s read-write", c.Name, m.Name)
			}
		}
	}
	for name := range volumes {
		if !used[name] {
			t.Errorf("volume %s is mounted by no container", name)
		}
	}

	for _, w := range []struct {
		c          *corev1.Container
		path       string
		configMap  string
		key        string
		flagBefore string
	}{
		{p.iptables, realipdConfig, realipdConfigCM, realipdKey, "--config"},
		{p.realipd, realipdConfig, realipdConfigCM, realipdKey, "--config"},
		{p.envoy, envoyBootstrap, envoyCM, envoyKey, "--config-path"},
	} {
		if i := slices.Index(w.c.Args, w.flagBefore); i < 0 || i+1 >= len(w.c.Args) || w.c.Args[i+1] != w.path {
			t.Errorf("container %s: args %q, want %s %s", w.c.Name, w.c.Args, w.flagBefore, w.path)
		}
		cm, key := mountedKey(w.c, volumes, w.path)
		if cm != w.configMap || key != w.key {
			t.Errorf("container %s: %s is ConfigMap %q key %q, want %s key %s", w.c.Name, w.path, cm, key, w.configMap, w.key)
		}
	}
}

// mountedKey names the ConfigMap and key that c sees at path ("" if none).
func mountedKey(c *corev1.Container, volumes map[string]corev1.Volume, path string) (configMap, key string) {
	for _, m := range c.VolumeMounts {
		rel, err := filepath.Rel(m.MountPath, path)
		if err != nil || strings.HasPrefix(rel, "..") || m.SubPath != "" {
			continue
		}
		v := volumes[m.Name]
		if v.ConfigMap == nil {
			continue
		}
		if len(v.ConfigMap.Items) == 0 {
			return v.ConfigMap.Name, rel
		}
		for _, it := range v.ConfigMap.Items {
			if it.Path == rel {
				return v.ConfigMap.Name, it.Key
			}
		}
	}
	return "", ""
}

// TestSockets: realipd serves ext_proc and xDS on unix sockets in an
// emptyDir that realipd (read-write) and Envoy (read-only, at the same
// path) alone mount, and Envoy dials those paths. Each socket belongs to
// its socket_group (mode 0660), which realipd and Envoy run in and no other
// container does: nothing else in the pod reaches Envoy's control plane.
func TestSockets(t *testing.T) { checkSockets(t, objects(t)) }

func checkSockets(t reporter, m manifests) {
	p := loadPod(t, m)
	volumes := map[string]corev1.Volume{}
	for _, v := range p.spec.Volumes {
		volumes[v.Name] = v
	}
	for _, s := range []struct {
		key, listen string
		group       *int
	}{
		{"extproc", p.cfg.ExtProc.Listen, p.cfg.ExtProc.SocketGroup},
		{"xds", p.cfg.XDS.Listen, p.cfg.XDS.SocketGroup},
	} {
		network, path := config.Network(s.listen)
		if network != "unix" {
			t.Errorf("%s.listen %q: want a unix socket on a volume realipd shares with Envoy alone", s.key, s.listen)
			continue
		}
		mount := mountAt(p.realipd, path)
		if mount == nil {
			t.Errorf("%s.listen %s: realipd mounts no volume there, so Envoy cannot see the socket", s.key, path)
			continue
		}
		if mount.ReadOnly {
			t.Errorf("%s.listen %s: realipd mounts volume %s read-only and cannot make its socket there", s.key, path, mount.Name)
		}
		if v := volumes[mount.Name]; v.EmptyDir == nil {
			t.Errorf("%s.listen %s: volume %s is not an emptyDir: the socket must be reachable from the pod's containers only", s.key, path, mount.Name)
		}
		switch em := mountAt(p.envoy, path); {
		case em == nil || em.Name != mount.Name || em.MountPath != mount.MountPath:
			t.Errorf("%s.listen %s: envoy does not mount volume %s at %s, so it cannot dial the socket at that path", s.key, path, mount.Name, mount.MountPath)
		case !em.ReadOnly:
			t.Errorf("envoy mounts volume %s read-write: it only connects to the sockets, and could replace them", mount.Name)
		}
		for _, c := range p.all() {
			if c == p.realipd || c == p.envoy {
				continue
			}
			for _, vm := range c.VolumeMounts {
				if vm.Name == mount.Name {
					t.Errorf("container %s mounts volume %s, where realipd's sockets are: only realipd and Envoy may reach them", c.Name, mount.Name)
				}
			}
		}
		if s.group == nil {
			t.Errorf("%s.socket_group is unset: the socket is for realipd's user alone (mode 0600), and Envoy (another user) cannot connect", s.key)
			continue
		}
		for _, c := range p.all() {
			in, known := inGroup(p, c, *s.group)
			switch {
			case !known:
				t.Errorf("container %s: no runAsGroup, so whether it is in group %d (%s.socket_group) depends on its image", c.Name, *s.group, s.key)
			case (c == p.realipd || c == p.envoy) && !in:
				t.Errorf("container %s is not in group %d (%s.socket_group): realipd must be to give the socket to it, Envoy to connect", c.Name, *s.group, s.key)
			case c != p.realipd && c != p.envoy && in:
				t.Errorf("container %s is in group %d (%s.socket_group): only realipd and Envoy may connect to the socket", c.Name, *s.group, s.key)
			}
		}
	}
	// Envoy dials those sockets: ADS from its bootstrap (TestEnvoyBootstrap
	// checks the pipe), ext_proc where realipd's xDS tells it.
	if got := p.cfg.ExtProcAddress(); got != p.cfg.ExtProc.Listen {
		t.Errorf("xds.extproc_address %q: Envoy would dial another address than extproc.listen %q, where realipd serves ext_proc", got, p.cfg.ExtProc.Listen)
	}
}

// mountAt returns c's volume mount that holds path (the deepest one), or nil.
func mountAt(c *corev1.Container, path string) *corev1.VolumeMount {
	var found *corev1.VolumeMount
	for i, vm := range c.VolumeMounts {
		rel, err := filepath.Rel(vm.MountPath, path)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || vm.SubPath != "" || vm.SubPathExpr != "" {
			continue
		}
		if found == nil || len(vm.MountPath) > len(found.MountPath) {
			found = &c.VolumeMounts[i]
		}
	}
	return found
}

// inGroup says whether c's processes are in group gid: their group
// (runAsGroup, the container's or the pod's), or a group the pod gives every
// container (fsGroup, supplementalGroups). known is false when neither
// names the container's group, which its image then decides.
func inGroup(p *pod, c *corev1.Container, gid int) (in, known bool) {
	g := int64(gid)
	var runAs *int64
	if psc := p.spec.SecurityContext; psc != nil {
		if (psc.FSGroup != nil && *psc.FSGroup == g) || slices.Contains(psc.SupplementalGroups, g) {
			return true, true
		}
		runAs = psc.RunAsGroup
	}
	if c.SecurityContext != nil && c.SecurityContext.RunAsGroup != nil {
		runAs = c.SecurityContext.RunAsGroup
	}
	if runAs == nil {
		return false, false
	}
	return *runAs == g, true
}

// TestSecurityContexts: only the init container runs as root, with
// NET_ADMIN and NET_RAW and nothing else; every other container is non-root
// with no capability; Envoy runs as the uid the rules exclude, and no other
// container does.
func TestSecurityContexts(t *testing.T) { checkSecurityContexts(t, objects(t)) }

func checkSecurityContexts(t reporter, m manifests) {
	p := loadPod(t, m)
	psc := p.spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("pod: want securityContext.runAsNonRoot: true")
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod: want seccompProfile RuntimeDefault")
	}
	if p.spec.HostNetwork || p.spec.HostPID || p.spec.HostIPC {
		t.Error("pod: no host namespaces")
	}
	if p.spec.AutomountServiceAccountToken == nil || *p.spec.AutomountServiceAccountToken {
		t.Error("pod: no container uses the API; want automountServiceAccountToken: false")
	}
	excluded := p.cfg.Intercept.IPTables.ExcludeUIDs
	for _, c := range p.all() {
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("container %s: no securityContext", c.Name)
			continue
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("container %s: privileged", c.Name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("container %s: want allowPrivilegeEscalation: false", c.Name)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("container %s: want readOnlyRootFilesystem: true", c.Name)
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("container %s: want capabilities.drop: [ALL]", c.Name)
		}
		if sc.RunAsUser == nil {
			t.Errorf("container %s: want a fixed runAsUser", c.Name)
			continue
		}
		uid := int(*sc.RunAsUser)
		var add []corev1.Capability
		if sc.Capabilities != nil {
			add = sc.Capabilities.Add
		}
		if c == p.iptables {
			if uid != 0 || sc.RunAsNonRoot == nil || *sc.RunAsNonRoot {
				t.Errorf("container %s: iptables needs root: want runAsUser 0, runAsNonRoot false", c.Name)
			}
			if got := slices.Sorted(slices.Values(add)); !slices.Equal(got, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
				t.Errorf("container %s: capabilities.add %v, want exactly [NET_ADMIN NET_RAW]", c.Name, add)
			}
			continue
		}
		if uid == 0 || (sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot) {
			t.Errorf("container %s: runs as root", c.Name)
		}
		if len(add) != 0 {
			t.Errorf("container %s: capabilities.add %v, want none", c.Name, add)
		}
		switch {
		case c == p.envoy && !slices.Contains(excluded, uid):
			t.Errorf("envoy runs as uid %d, not in intercept.iptables.exclude_uids %v: its own connections would be captured and loop", uid, excluded)
		case c != p.envoy && slices.Contains(excluded, uid):
			t.Errorf("container %s runs as uid %d, which the rules exclude: its connections would bypass Envoy", c.Name, uid)
		}
		// Envoy shares realipd's group (TestSockets): excluding Envoy by
		// group would let other containers' connections bypass it too.
		if c != p.envoy && sc.RunAsGroup != nil && slices.Contains(p.cfg.Intercept.IPTables.ExcludeGIDs, int(*sc.RunAsGroup)) {
			t.Errorf("container %s runs as gid %d, which the rules exclude: its connections would bypass Envoy", c.Name, *sc.RunAsGroup)
		}
	}
}

// TestSidecars: realipd and Envoy are native sidecars started in order after
// the iptables init container, every container has requests and limits, and
// the realipd containers run the images make image and make
// image-iptables build.
func TestSidecars(t *testing.T) { checkSidecars(t, objects(t)) }

func checkSidecars(t reporter, m manifests) {
	p := loadPod(t, m)
	var names []string
	for _, c := range p.spec.InitContainers {
		names = append(names, c.Name)
	}
	if want := []string{"realipd-iptables", "realipd", "envoy"}; !slices.Equal(names, want) {
		t.Errorf("init containers %v, want %v: the rules first, then realipd (which Envoy dials), then Envoy", names, want)
	}
	if p.iptables.RestartPolicy != nil {
		t.Error("realipd-iptables must run to completion (no restartPolicy)")
	}
	for _, c := range []*corev1.Container{p.realipd, p.envoy} {
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Errorf("%s: want restartPolicy: Always (a sidecar)", c.Name)
		}
		if c.StartupProbe == nil {
			t.Errorf("%s: want a startupProbe, so the next container waits for it", c.Name)
		}
	}
	images := imageNames(t)
	if p.realipd.Image != images.Realipd {
		t.Errorf("realipd runs %q, want %q: the image make image tags", p.realipd.Image, images.Realipd)
	}
	if p.iptables.Image != images.IPTables {
		t.Errorf("realipd-iptables runs %q, want %q: the image make image-iptables tags (--apply runs iptables-restore, which %s lacks)",
			p.iptables.Image, images.IPTables, images.Realipd)
	}
	for _, c := range p.all() {
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, okReq := c.Resources.Requests[res]
			lim, okLim := c.Resources.Limits[res]
			if !okReq || !okLim {
				t.Errorf("container %s: want requests and limits for %s", c.Name, res)
				continue
			}
			if req.Cmp(lim) > 0 || req.Cmp(resource.Quantity{}) <= 0 {
				t.Errorf("container %s: %s request %s, limit %s", c.Name, res, req.String(), lim.String())
			}
		}
	}
}

// bootstrap is the Envoy bootstrap of the ConfigMap, loaded as Envoy would.
func bootstrap(t reporter, m manifests) *envoytest.Loaded {
	t.Helper()
	cm := only[*corev1.ConfigMap](t, m, envoyCM)
	l, err := envoytest.Load([]byte(cm.Data[envoyKey]))
	if err != nil {
		t.Fatalf("ConfigMap %s, %s: %v", envoyCM, envoyKey, err)
	}
	return l
}

// TestEnvoyBootstrap: the ConfigMap's bootstrap is valid Envoy
// configuration, dials realipd's xds.listen, and is exactly what
// `realipd bootstrap --config` prints for the ConfigMap's realipd config.
func TestEnvoyBootstrap(t *testing.T) { checkEnvoyBootstrap(t, objects(t)) }

func checkEnvoyBootstrap(t reporter, m manifests) {
	p := loadPod(t, m)
	l := bootstrap(t, m)
	at := envoytest.Endpoint{}
	if network, path := config.Network(p.cfg.XDS.Listen); network == "unix" {
		at.Pipe = path
	} else {
		host, port := listenPort(t, "xds.listen", p.cfg.XDS.Listen)
		if err := at.Addr.UnmarshalText([]byte(net.JoinHostPort(host, strconv.Itoa(port)))); err != nil {
			t.Fatalf("xds.listen: %v", err)
		}
	}
	if err := envoytest.CheckADS(l, at); err != nil {
		t.Errorf("ConfigMap %s:\n%v", envoyCM, err)
	}
	want, err := xds.Bootstrap(xds.BootstrapOptions{XDSAddress: p.cfg.XDS.Listen})
	if err != nil {
		t.Fatalf("xds.Bootstrap: %v", err)
	}
	if got := only[*corev1.ConfigMap](t, m, envoyCM).Data[envoyKey]; got != string(want) {
		t.Errorf("ConfigMap %s key %s differs from realipd bootstrap for %s (regenerate it):\n%s", envoyCM, envoyKey, realipdConfigCM, want)
	}
}

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// realipd builds cmd/realipd once and returns the binary's path: the init
// container's command line is checked by the real flag parsing, which lives
// in package main.
func realipd(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "realipd-example-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "realipd")
		cmd := exec.Command("go", "build", "-o", binary, "github.com/realipd/realipd/cmd/realipd")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/realipd: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binary != "" {
		os.RemoveAll(filepath.Dir(binary))
	}
	os.Exit(code)
}

// runRealipd runs the binary with args, the configuration file path replaced
// by a copy of the ConfigMap's; it returns stdout.
func runRealipd(t *testing.T, p *pod, args []string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), realipdKey)
	if err := os.WriteFile(file, p.cfgText, 0o644); err != nil {
		t.Fatal(err)
	}
	args = slices.Clone(args)
	for i, a := range args {
		if a == realipdConfig {
			args[i] = file
		}
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(realipd(t), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("realipd %q: %v\n%s", args, err, stderr.String())
	}
	return stdout.String()
}

// TestCommandLines runs the containers' realipd command lines with the real
// binary: the init container's iptables flags parse and render the rules
// (without --apply, which needs root), the ConfigMap passes realipd validate,
// and realipd bootstrap prints the Envoy ConfigMap's bootstrap.
func TestCommandLines(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cmd/realipd")
	}
	m := objects(t)
	p := loadPod(t, m)
	// What the containers run: their images' entrypoint, /realipd, with
	// their args.
	stages := containerfileStages(t)
	for _, w := range []struct {
		c      *corev1.Container
		target string
	}{{p.iptables, "realipd-iptables"}, {p.realipd, "realipd"}} {
		argv := stages[w.target].Argv(w.c.Command, w.c.Args)
		if len(argv) == 0 || argv[0] != "/realipd" || !slices.Equal(argv[1:], w.c.Args) {
			t.Errorf("container %s runs %q (image target %s), want /realipd followed by its args", w.c.Name, argv, w.target)
		}
	}
	if len(p.iptables.Args) == 0 || p.iptables.Args[0] != "iptables" || !slices.Contains(p.iptables.Args, "--apply") {
		t.Fatalf("realipd-iptables: args %q, want realipd iptables ... --apply", p.iptables.Args)
	}
	if i := slices.Index(p.iptables.Args, "--mode"); i < 0 || i+1 >= len(p.iptables.Args) || p.iptables.Args[i+1] != p.cfg.XDS.Mode {
		t.Errorf("realipd-iptables: --mode must be xds.mode %q, or Envoy's listeners and the rules disagree", p.cfg.XDS.Mode)
	}
	if slices.Contains(p.iptables.Args, "--ipv6") == slices.Contains(p.cfg.XDS.IPFamilies, "ipv4") {
		t.Errorf("realipd-iptables: args %q for ip_families %v", p.iptables.Args, p.cfg.XDS.IPFamilies)
	}
	render := slices.DeleteFunc(slices.Clone(p.iptables.Args), func(a string) bool { return a == "--apply" })
	rules := runRealipd(t, p, render)
	for _, want := range []string{
		fmt.Sprintf("REDIRECT --to-ports %d", p.cfg.XDS.OutboundPort),
		fmt.Sprintf("REDIRECT --to-ports %d", p.cfg.XDS.InboundPort),
		fmt.Sprintf("-m owner --uid-owner %d -j RETURN", *p.envoy.SecurityContext.RunAsUser),
		fmt.Sprintf("--dport %d -j RETURN", portByName(t, p.realipd, "realipd-admin")),
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("realipd %q: the rules lack %q:\n%s", render, want, rules)
		}
	}

	if !slices.Equal(p.realipd.Args[:1], []string{"serve"}) {
		t.Errorf("realipd: args %q, want serve --config %s", p.realipd.Args, realipdConfig)
	}
	if out := runRealipd(t, p, []string{"validate", "--config", realipdConfig}); !strings.Contains(out, ": OK") {
		t.Errorf("realipd validate: %s", out)
	}
	if got := runRealipd(t, p, []string{"bootstrap", "--config", realipdConfig}); got != only[*corev1.ConfigMap](t, m, envoyCM).Data[envoyKey] {
		t.Errorf("realipd bootstrap --config %s differs from ConfigMap %s:\n%s", realipdConfigCM, envoyCM, got)
	}
}

// imageNames are the images make image and make image-iptables tag.
func imageNames(t reporter) imagetest.Names {
	t.Helper()
	root, err := imagetest.Root()
	if err != nil {
		t.Fatalf("%v", err)
	}
	names, err := imagetest.ImageNames(root)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return names
}

// containerfileStages are the Containerfile's stages, by name.
func containerfileStages(t *testing.T) map[string]imagetest.Stage {
	t.Helper()
	root, err := imagetest.Root()
	if err != nil {
		t.Fatal(err)
	}
	stages, err := imagetest.Stages(root)
	if err != nil {
		t.Fatal(err)
	}
	return stages
}

// errFatal stops a check run by a collector at its first Fatalf.
var errFatal = errors.New("fatal")

// collector is a reporter that records what a check reports.
type collector struct{ errs []string }

func (c *collector) Helper()           {}
func (c *collector) Error(args ...any) { c.errs = append(c.errs, fmt.Sprint(args...)) }
func (c *collector) Errorf(format string, args ...any) {
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
}
func (c *collector) Fatalf(format string, args ...any) {
	c.Errorf(format, args...)
	panic(errFatal)
}

// run runs check on m and returns everything it reported.
func (c *collector) run(check func(reporter, manifests), m manifests) (errs string) {
	defer func() {
		if r := recover(); r != nil && r != errFatal {
			panic(r)
		}
		errs = strings.Join(c.errs, "\n")
	}()
	check(c, m)
	return ""
}

// TestChecksCatchMistakes edits a copy of the manifests, one plausible
// mistake at a time, and requires the checks to name it: a check that
// cannot fail proves nothing.
func TestChecksCatchMistakes(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, file, old, new string
		check                func(reporter, manifests)
		wantErr              string
	}{
		{"Envoy's uid not excluded", "20-deployment.yaml", "runAsUser: 101", "runAsUser: 1337",
			checkSecurityContexts, "envoy runs as uid 1337, not in intercept.iptables.exclude_uids"},
		{"application runs as Envoy's uid", "20-deployment.yaml", "runAsUser: 10001", "runAsUser: 101",
			checkSecurityContexts, "container echo runs as uid 101, which the rules exclude"},
		{"Envoy excluded by its group", "10-realipd-config.yaml", "exclude_uids: [101]", "exclude_uids: [101]\n        exclude_gids: [65532]",
			checkSecurityContexts, "container realipd runs as gid 65532, which the rules exclude"},
		{"extra capability", "20-deployment.yaml", "add: [NET_ADMIN, NET_RAW]", "add: [NET_ADMIN, NET_RAW, SYS_ADMIN]",
			checkSecurityContexts, "want exactly [NET_ADMIN NET_RAW]"},
		{"realipd as root", "20-deployment.yaml", "runAsUser: 65532", "runAsUser: 0",
			checkSecurityContexts, "container realipd: runs as root"},
		{"liveness on the wrong path", "20-deployment.yaml", "path: /healthz", "path: /health",
			checkProbes, "realipd livenessProbe"},
		{"admin port captured", "10-realipd-config.yaml", "exclude_inbound_ports: [9902]", "exclude_inbound_ports: []",
			checkProbes, "admin port 9902 is not in intercept.iptables.exclude_inbound_ports"},
		{"admin port mismatch", "10-realipd-config.yaml", "listen: 0.0.0.0:9902", "listen: 0.0.0.0:9903",
			checkPorts, "port realipd-admin is 9902, the configuration says 9903"},
		{"application port not HTTP", "10-realipd-config.yaml", "http_ports: [8080]", "http_ports: [8081]",
			checkPorts, "not in xds.http_ports"},
		{"policy opens the admin port", "31-networkpolicy.yaml", "port: 8080", "port: 9902",
			checkPorts, "NetworkPolicy echo admits ports [9902]"},
		{"missing ConfigMap key", "20-deployment.yaml", "{key: envoy.yaml, path: envoy.yaml}", "{key: bootstrap.yaml, path: envoy.yaml}",
			checkVolumes, `key "bootstrap.yaml" is not in ConfigMap envoy-bootstrap`},
		{"mount of no volume", "20-deployment.yaml", "- name: envoy-bootstrap\n              mountPath", "- name: envoy-config\n              mountPath",
			checkVolumes, `mounts "envoy-config", which is not a volume`},
		{"bootstrap edited by hand", "11-envoy-bootstrap.yaml", "pipe: { path: /run/realipd/xds.sock }", "pipe: { path: /run/realipd/ads.sock }",
			checkEnvoyBootstrap, "differs from realipd bootstrap"},
		{"bootstrap on loopback", "11-envoy-bootstrap.yaml", "pipe: { path: /run/realipd/xds.sock }", "socket_address: { address: 127.0.0.1, port_value: 18000 }",
			checkEnvoyBootstrap, `cluster "realipd_xds": endpoints [127.0.0.1:18000], want [unix:///run/realipd/xds.sock]`},
		{"xDS on the pod's loopback", "10-realipd-config.yaml", "listen: unix:///run/realipd/xds.sock\n      socket_group: 65532", "listen: 127.0.0.1:18000",
			checkRealipdConfig, `xds.listen "127.0.0.1:18000": want a unix:///path socket`},
		{"ext_proc on the pod's loopback", "10-realipd-config.yaml", "listen: unix:///run/realipd/extproc.sock\n      socket_group: 65532", "listen: 127.0.0.1:9001",
			checkSockets, `extproc.listen "127.0.0.1:9001": want a unix socket`},
		{"xDS socket for realipd alone", "10-realipd-config.yaml", "listen: unix:///run/realipd/xds.sock\n      socket_group: 65532", "listen: unix:///run/realipd/xds.sock",
			checkSockets, "xds.socket_group is unset"},
		{"socket outside the shared volume", "10-realipd-config.yaml", "listen: unix:///run/realipd/xds.sock", "listen: unix:///tmp/xds.sock",
			checkSockets, "xds.listen /tmp/xds.sock: realipd mounts no volume there"},
		{"Envoy without the sockets", "20-deployment.yaml", "- name: realipd-sockets\n              mountPath: /run/realipd\n              readOnly: true", "- name: realipd-sockets\n              mountPath: /run/envoy\n              readOnly: true",
			checkSockets, "envoy does not mount volume realipd-sockets at /run/realipd"},
		{"Envoy may replace the sockets", "20-deployment.yaml", "- name: realipd-sockets\n              mountPath: /run/realipd\n              readOnly: true", "- name: realipd-sockets\n              mountPath: /run/realipd",
			checkSockets, "envoy mounts volume realipd-sockets read-write"},
		{"sockets on the node", "20-deployment.yaml", "- name: realipd-sockets\n          emptyDir:\n            medium: Memory\n            sizeLimit: 1Mi", "- name: realipd-sockets\n          hostPath: {path: /run/realipd, type: DirectoryOrCreate}",
			checkSockets, "volume realipd-sockets is not an emptyDir"},
		{"application reaches the sockets", "20-deployment.yaml", "          readinessProbe:\n            httpGet: {path: /, port: http}", "          volumeMounts: [{name: realipd-sockets, mountPath: /run/realipd, readOnly: true}]\n          readinessProbe:\n            httpGet: {path: /, port: http}",
			checkSockets, "container echo mounts volume realipd-sockets"},
		{"Envoy not in the sockets' group", "20-deployment.yaml", "Envoy connect to realipd's sockets (mode 0660).\n            runAsGroup: 65532", "Envoy connect to realipd's sockets (mode 0660).\n            runAsGroup: 101",
			checkSockets, "container envoy is not in group 65532 (extproc.socket_group)"},
		{"every container in the sockets' group", "20-deployment.yaml", "        runAsNonRoot: true\n        seccompProfile:", "        runAsNonRoot: true\n        supplementalGroups: [65532]\n        seccompProfile:",
			checkSockets, "container echo is in group 65532 (xds.socket_group)"},
		{"application in the sockets' group", "20-deployment.yaml", "runAsGroup: 10001", "runAsGroup: 65532",
			checkSockets, "container echo is in group 65532"},
		{"application's group left to its image", "20-deployment.yaml", "            runAsGroup: 10001\n", "",
			checkSockets, "container echo: no runAsGroup"},
		{"bootstrap invalid", "11-envoy-bootstrap.yaml", "api_type: GRPC", "api_type: RPC",
			checkEnvoyBootstrap, "ConfigMap envoy-bootstrap, envoy.yaml: protojson"},
		{"realipd config invalid", "10-realipd-config.yaml", "trusted_cidrs: []", "trusted_cidrs: [10.0.0.0/33]",
			checkRealipdConfig, "trust.trusted_cidrs[0]"},
		{"sidecar on a placeholder image", "20-deployment.yaml", "image: localhost/realipd:dev", "image: ghcr.io/realipd/realipd:latest",
			checkSidecars, `realipd runs "ghcr.io/realipd/realipd:latest", want "localhost/realipd:dev"`},
		{"init container without iptables", "20-deployment.yaml", "image: localhost/realipd-iptables:dev", "image: localhost/realipd:dev",
			checkSidecars, `realipd-iptables runs "localhost/realipd:dev", want "localhost/realipd-iptables:dev"`},
		{"misspelt field", "20-deployment.yaml", "runAsUser: 101", "runAsUser: 101\n            runAsGroupp: 1",
			nil, `unknown field "runAsGroupp"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range files {
				data, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				if f == tt.file {
					if n := bytes.Count(data, []byte(tt.old)); n != 1 {
						t.Fatalf("%q occurs %d times in %s, want once", tt.old, n, f)
					}
					data = bytes.Replace(data, []byte(tt.old), []byte(tt.new), 1)
				}
				if err := os.WriteFile(filepath.Join(dir, f), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			m, err := decodeDir(dir)
			var got string
			switch {
			case tt.check == nil && err == nil:
				t.Fatalf("the edit decodes, want an error containing %q", tt.wantErr)
			case tt.check == nil:
				got = err.Error()
			case err != nil:
				t.Fatalf("the edited manifests no longer decode, so this case tests nothing: %v", err)
			default:
				got = (&collector{}).run(tt.check, m)
			}
			if !strings.Contains(got, tt.wantErr) {
				t.Errorf("reported:\n%s\nwant it to contain %q", got, tt.wantErr)
			}
		})
	}
}
