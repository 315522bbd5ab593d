package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/realipd/realipd/internal/config"
)

// metricsDocPath is the metrics reference that TestMetricsDoc keeps in step
// with what the roles register.
const metricsDocPath = "../../docs/metrics.md"

// recordingRegistry is a prometheus.Registry that remembers every
// collector registered in it, so that the metrics of vectors with no
// series yet (which Gather does not show) are seen through Describe.
type recordingRegistry struct {
	*prometheus.Registry
	mu         sync.Mutex
	collectors []prometheus.Collector
}

func (r *recordingRegistry) Register(c prometheus.Collector) error {
	if err := r.Registry.Register(c); err != nil {
		return err
	}
	r.mu.Lock()
	r.collectors = append(r.collectors, c)
	r.mu.Unlock()
	return nil
}

func (r *recordingRegistry) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// registeredMetric is one metric family a role registers.
type registeredMetric struct {
	name, help, typ string // typ "" when it cannot be told (a custom collector without series)
	labels          []string
}

var descString = regexp.MustCompile(`^Desc\{fqName: "([^"]*)", help: "((?:[^"\\]|\\.)*)", unit: "[^"]*", constLabels: \{[^}]*\}, variableLabels: \{([^}]*)\}\}$`)

// metricsOf describes the collectors recorded in reg: name, help, type and
// variable labels of every metric family they can produce.
func metricsOf(t *testing.T, reg *recordingRegistry) map[string]registeredMetric {
	t.Helper()
	out := map[string]registeredMetric{}
	for _, c := range reg.collectors {
		typ := ""
		switch c.(type) {
		case *prometheus.CounterVec:
			typ = "counter"
		case *prometheus.GaugeVec:
			typ = "gauge"
		case *prometheus.HistogramVec:
			typ = "histogram"
		case *prometheus.SummaryVec:
			typ = "summary"
		}
		// The type of the series the collector has now.
		types := map[string]string{}
		metrics := make(chan prometheus.Metric)
		go func() { c.Collect(metrics); close(metrics) }()
		for m := range metrics {
			var pb dto.Metric
			if m.Write(&pb) != nil {
				continue
			}
			var mt string
			switch {
			case pb.Counter != nil:
				mt = "counter"
			case pb.Gauge != nil:
				mt = "gauge"
			case pb.Histogram != nil:
				mt = "histogram"
			case pb.Summary != nil:
				mt = "summary"
			case pb.Untyped != nil:
				mt = "untyped"
			}
			types[descName(t, m.Desc())] = mt
		}
		descs := make(chan *prometheus.Desc)
		go func() { c.Describe(descs); close(descs) }()
		for d := range descs {
			m := descString.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read the descriptor %s", d)
			}
			rm := registeredMetric{name: m[1], help: m[2], typ: typ}
			if rm.typ == "" {
				rm.typ = types[rm.name]
			}
			if m[3] != "" {
				for l := range strings.SplitSeq(m[3], ",") {
					rm.labels = append(rm.labels, strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")"))
				}
			}
			out[rm.name] = rm
		}
	}
	return out
}

func descName(t *testing.T, d *prometheus.Desc) string {
	m := descString.FindStringSubmatch(d.String())
	if m == nil {
		t.Fatalf("cannot read the descriptor %s", d)
	}
	return m[1]
}

// documentedMetric is a row of docs/metrics.md.
type documentedMetric struct {
	name, typ, section string
	labels             []string
	line               int
}

var metricsDocRow = regexp.MustCompile("^\\| `([a-zA-Z0-9_:]+\\*?)` \\| ([a-z]+|—) \\| (.*?) \\| (.*) \\|$")

func readMetricsDoc(t *testing.T) map[string]documentedMetric {
	t.Helper()
	f, err := os.Open(metricsDocPath)
	if err != nil {
		t.Fatalf("the metrics reference: %v", err)
	}
	defer f.Close()
	out := map[string]documentedMetric{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if h, ok := strings.CutPrefix(line, "## "); ok {
			section = h
			continue
		}
		m := metricsDocRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		dm := documentedMetric{name: m[1], typ: m[2], section: section, line: n}
		for _, l := range regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(m[3], -1) {
			dm.labels = append(dm.labels, l[1])
		}
		if prev, dup := out[dm.name]; dup {
			t.Errorf("%s:%d: %s is documented twice (also line %d)", metricsDocPath, n, dm.name, prev.line)
		}
		out[dm.name] = dm
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// everyRoleRegistry builds every role the way serve does, all enabled (the
// native listener with fallback: never, so that nothing is bound; a plugin
// policy, so that the plugin host registers its metrics), on a recording
// registry, adds the metrics of the ebpf role (which needs root to build:
// they are registered directly), and stops what was started.
func everyRoleRegistry(t *testing.T) *recordingRegistry {
	t.Helper()
	bin, err := testPolicy()
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.ExtProc.Listen, cfg.XDS.Listen, cfg.Admin.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.XDS.ExtProcAddress = "127.0.0.1:9001"
	cfg.OrigDst.Enabled, cfg.OrigDst.Fallback = true, "never"
	cfg.OrigDst.Listen = []string{"192.0.2.1:1"} // not this host's: binding it would fail
	cfg.Policies = []config.Policy{
		{Name: "tp", Type: "plugin", Path: bin[0], SHA256: bin[1], Timeout: config.Duration{Duration: time.Second}, OnError: "deny"},
		{Name: "block", Type: "cidr", Deny: config.CIDRs("192.0.2.0/24")},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := &recordingRegistry{Registry: prometheus.NewRegistry()}
	s, err := buildRolesOn(&cfg, discardLogger(), reg)
	if err != nil {
		t.Fatalf("buildRolesOn: %v", err)
	}
	if err := registerEBPFMetrics(reg, &ebpfRuntime{log: discardLogger()}); err != nil {
		t.Fatal(err)
	}
	// Run the roles with an ended context: each stops at once, and the
	// last one closes the policy chain, which stops the plugin.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := runRoles(ctx, discardLogger(), s.roles, 10*time.Second); err != nil {
		t.Errorf("stopping the roles: %v", err)
	}
	return reg
}

// metricSection names the section of docs/metrics.md a new metric goes in:
// the one holding the documented metrics that share its realipd_<part>_
// prefix.
func metricSection(name string, doc map[string]documentedMetric) string {
	parts := strings.SplitN(name, "_", 3)
	if len(parts) < 3 {
		return "the section of its role"
	}
	prefix := parts[0] + "_" + parts[1] + "_"
	for _, d := range doc {
		if strings.HasPrefix(d.name, prefix) {
			return fmt.Sprintf("section \"## %s\" (with the other %s* metrics)", d.section, prefix)
		}
	}
	return "a new section for its role"
}

// TestMetricsDoc checks docs/metrics.md against every metric the roles
// register: each has a row (| `name` | type | labels | meaning |) with its
// type and its labels, and every documented metric is registered. Rows
// ending in * (go_*, process_*) stand for the families of the Go and
// process collectors, which vary with the Go version.
func TestMetricsDoc(t *testing.T) {
	doc := readMetricsDoc(t)
	reg := everyRoleRegistry(t)
	registered := metricsOf(t, reg)

	var wildcards []string
	for name := range doc {
		if p, ok := strings.CutSuffix(name, "*"); ok {
			wildcards = append(wildcards, p)
		}
	}
	covered := map[string]bool{}
	names := make([]string, 0, len(registered))
	for name := range registered {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		m := registered[name]
		if i := slices.IndexFunc(wildcards, func(p string) bool { return strings.HasPrefix(name, p) }); i >= 0 {
			covered[wildcards[i]+"*"] = true
			continue
		}
		d, ok := doc[name]
		if !ok {
			labels := "—"
			if len(m.labels) > 0 {
				labels = "`" + strings.Join(m.labels, "`, `") + "`"
			}
			typ := m.typ
			if typ == "" {
				typ = "TYPE"
			}
			t.Errorf("%s: metric %s is registered but not documented: add the row\n| `%s` | %s | %s | %s |\nto %s",
				metricsDocPath, name, name, typ, labels, m.help, metricSection(name, doc))
			continue
		}
		at := fmt.Sprintf("%s:%d: %s", metricsDocPath, d.line, name)
		if m.typ != "" && d.typ != m.typ {
			t.Errorf("%s: documented as a %s, registered as a %s", at, d.typ, m.typ)
		}
		want := slices.Clone(m.labels)
		got := slices.Clone(d.labels)
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: documented labels %v, registered labels %v: fix the labels column (— for none)", at, d.labels, m.labels)
		}
	}
	for name, d := range doc {
		if strings.HasSuffix(name, "*") {
			if !covered[name] {
				t.Errorf("%s:%d: %s matches no registered metric: remove the row", metricsDocPath, d.line, name)
			}
			continue
		}
		if _, ok := registered[name]; !ok {
			t.Errorf("%s:%d: %s is documented but no role registers it: remove the row (or register the metric)", metricsDocPath, d.line, name)
		}
	}
	// The roles the registry must have covered, so that a role that stops
	// registering (or a build that skips one) is noticed here.
	for _, prefix := range []string{"realipd_config_", "realipd_admin_", "realipd_extproc_", "realipd_xds_", "realipd_plugin_", "realipd_origdst_", "realipd_ebpf_", "go_", "process_", "promhttp_"} {
		if !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, prefix) }) {
			t.Errorf("no %s* metric was registered: everyRoleRegistry no longer builds that role", prefix)
		}
	}
}
