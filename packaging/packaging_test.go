package packaging_test

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/realipd/realipd/internal/config"
)

// TestDefaultConfig: the configuration the image serves by default
// (realipd.yaml, copied to /etc/realipd/realipd.yaml) is valid and is the
// built-in defaults, as its comment says.
func TestDefaultConfig(t *testing.T) {
	got, err := config.Load("realipd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), "defaults.yaml")
	if err := os.WriteFile(empty, []byte("{}\n"), 0o644); err != nil { // the defaults (an empty file is refused)
		t.Fatal(err)
	}
	want, err := config.Load(empty)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", "  ")
		w, _ := json.MarshalIndent(want, "", "  ")
		t.Errorf("realipd.yaml differs from the built-in defaults:\n%s\nwant\n%s", g, w)
	}
}

// module is one module linked into cmd/realipd.
type module struct{ path, dir string }

// linkedModules lists the modules linked into cmd/realipd (for this
// GOOS/GOARCH), the main module left out.
func linkedModules(t *testing.T) []module {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-f", "{{with .Module}}{{if not .Main}}{{.Path}}\t{{.Dir}}{{end}}{{end}}", "../cmd/realipd")
	cmd.Env = append(os.Environ(), "GOOS=linux")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var mods []module
	for line := range strings.Lines(string(out)) {
		path, dir, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if !ok {
			continue
		}
		if m := (module{path, dir}); !slices.Contains(mods, m) {
			mods = append(mods, m)
		}
	}
	if len(mods) < 10 {
		t.Fatalf("go list found only %d modules: %q", len(mods), out)
	}
	return mods
}

// TestNotice: the NOTICE file reproduces the NOTICE of every linked
// module that has one (Apache-2.0, section 4(d)), and names no module that
// is no longer linked.
func TestNotice(t *testing.T) {
	data, err := os.ReadFile("../NOTICE")
	if err != nil {
		t.Fatal(err)
	}
	notice := string(data)
	mods := linkedModules(t)
	linked := map[string]bool{}
	for _, m := range mods {
		linked[m.path] = true
		files, _ := filepath.Glob(filepath.Join(m.dir, "NOTICE*"))
		for _, f := range files {
			if !strings.Contains(notice, "\n"+m.path+"\n") {
				t.Errorf("module %s has %s; NOTICE must reproduce it under a line %q", m.path, filepath.Base(f), m.path)
			}
			// The attribution lines themselves (the licence boilerplate
			// aside) are in NOTICE.
			body, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(string(body), "\n") {
				if strings.Contains(line, "Copyright") && !strings.Contains(notice, strings.TrimSpace(line)) {
					t.Errorf("NOTICE lacks %q from %s's %s", strings.TrimSpace(line), m.path, filepath.Base(f))
				}
			}
		}
	}
	// Each section after a ---- rule starts with a module path.
	sc := bufio.NewScanner(strings.NewReader(notice))
	afterRule := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "-----"):
			afterRule = true
		case afterRule:
			afterRule = false
			if !linked[line] {
				t.Errorf("NOTICE has a section for %q, which cmd/realipd does not link", line)
			}
		}
	}
}
