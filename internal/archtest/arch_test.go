package archtest

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/realipd/realipd"

type pkg struct {
	Dir        string
	GoFiles    []string
	ImportPath string
	Name       string
	Doc        string
	Standard   bool
	Imports    []string
	Deps       []string
}

// listPackages runs go list over the whole module.
func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

// local returns the path of p inside the module ("" for the module root).
func local(importPath string) (string, bool) {
	if importPath == module {
		return "", true
	}
	rest, ok := strings.CutPrefix(importPath, module+"/")
	return rest, ok
}

func TestEveryPackageHasADocComment(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no doc comment", p.ImportPath)
		}
	}
}

// isStandard reports whether an import path is in the standard library (no
// dot in its first element).
func isStandard(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}

func TestLayering(t *testing.T) {
	pkgs := listPackages(t)
	byPath := map[string]pkg{}
	for _, p := range pkgs {
		byPath[p.ImportPath] = p
	}
	roles := []string{"extproc", "xds", "origdst", "intercept"}
	for _, p := range pkgs {
		rel, _ := local(p.ImportPath)
		top, _, _ := strings.Cut(rel, "/")
		switch {
		case rel == "clientip":
			// Pure resolution: the standard library only.
			for _, imp := range p.Imports {
				if !isStandard(imp) {
					t.Errorf("clientip imports %s; it may import the standard library only", imp)
				}
			}
		case rel == "decide":
			// The decision every door shares: resolution and policies
			// only, never a role (the roles import it).
			for _, imp := range p.Imports {
				if isStandard(imp) {
					continue
				}
				if r, ok := local(imp); !ok || (r != "clientip" && r != "plugins") {
					t.Errorf("decide imports %s; it may import the standard library, clientip and plugins only", imp)
				}
			}
		case rel == "grpcserve":
			// The serve-and-drain sequence of the gRPC roles: gRPC and
			// listenaddr, never a role (extproc and xds import it).
			for _, imp := range p.Imports {
				if isStandard(imp) || imp == "google.golang.org/grpc" || strings.HasPrefix(imp, "google.golang.org/grpc/") {
					continue
				}
				if r, ok := local(imp); !ok || r != "listenaddr" {
					t.Errorf("grpcserve imports %s; it may import the standard library, google.golang.org/grpc and listenaddr only", imp)
				}
			}
		case rel == "listsource":
			// Fetching and parsing CIDR lists: the standard library and
			// clientip (merging) only; metrics and the file watch are
			// wired in cmd/realipd.
			for _, imp := range p.Imports {
				if r, ok := local(imp); !isStandard(imp) && (!ok || r != "clientip") {
					t.Errorf("listsource imports %s; it may import the standard library and clientip only", imp)
				}
			}
		case rel == "sockowner" || rel == "listenaddr":
			// Shared by the roles: the standard library and x/sys only.
			for _, imp := range p.Imports {
				if !isStandard(imp) && !strings.HasPrefix(imp, "golang.org/x/sys/") {
					t.Errorf("%s imports %s; it may import the standard library and golang.org/x/sys only", rel, imp)
				}
			}
		case top == "plugins" || slices.Contains(roles, top):
			// The roles meet only in cmd/realipd and internal/; plugins
			// serves them all and imports none.
			for _, dep := range p.Deps {
				drel, ok := local(dep)
				if !ok {
					continue
				}
				dtop, _, _ := strings.Cut(drel, "/")
				for _, r := range roles {
					if dtop == r && top != r {
						t.Errorf("%s depends on %s: %s must not import each other, and plugins none of them", rel, drel, strings.Join(roles, ", "))
					}
				}
				if dtop == "internal" || dtop == "cmd" {
					t.Errorf("%s depends on %s: packages outside cmd/ and internal/ must not import them", rel, drel)
				}
			}
		}
	}
	for _, want := range []string{"clientip", "decide", "grpcserve"} {
		if _, ok := byPath[module+"/"+want]; !ok {
			t.Fatalf("%s not found: the test is not looking at this module", want)
		}
	}
}
