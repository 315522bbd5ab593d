package archtest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// pkgDecls is what a package declares, as far as its doc comment can name
// it: its top-level names, and each type's fields and methods.
type pkgDecls struct {
	doc      string // the package doc comment
	names    map[string]bool
	members  map[string]map[string]bool // type -> field or method names
	embedded map[string]bool            // types with an embedded field (promoted members are not listed)
}

// parseDecls reads the non-test Go files of a package directory.
func parseDecls(t *testing.T, dir string, files []string) *pkgDecls {
	t.Helper()
	d := &pkgDecls{names: map[string]bool{}, members: map[string]map[string]bool{}, embedded: map[string]bool{}}
	member := func(typ, name string) {
		if d.members[typ] == nil {
			d.members[typ] = map[string]bool{}
		}
		d.members[typ][name] = true
	}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.SkipObjectResolution|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if f.Doc != nil {
			d.doc += f.Doc.Text()
		}
		for _, decl := range f.Decls {
			switch decl := decl.(type) {
			case *ast.FuncDecl:
				if decl.Recv == nil {
					d.names[decl.Name.Name] = true
					continue
				}
				typ := decl.Recv.List[0].Type
				if star, ok := typ.(*ast.StarExpr); ok {
					typ = star.X
				}
				if idx, ok := typ.(*ast.IndexExpr); ok {
					typ = idx.X
				}
				if id, ok := typ.(*ast.Ident); ok {
					member(id.Name, decl.Name.Name)
				}
			case *ast.GenDecl:
				for _, spec := range decl.Specs {
					switch spec := spec.(type) {
					case *ast.TypeSpec:
						d.names[spec.Name.Name] = true
						switch typ := spec.Type.(type) {
						case *ast.StructType:
							for _, fld := range typ.Fields.List {
								if len(fld.Names) == 0 {
									d.embedded[spec.Name.Name] = true
								}
								for _, n := range fld.Names {
									member(spec.Name.Name, n.Name)
								}
							}
						case *ast.InterfaceType:
							for _, m := range typ.Methods.List {
								if len(m.Names) == 0 {
									d.embedded[spec.Name.Name] = true
								}
								for _, n := range m.Names {
									member(spec.Name.Name, n.Name)
								}
							}
						default:
							d.embedded[spec.Name.Name] = true // an alias or a defined type: its members are elsewhere
						}
					case *ast.ValueSpec:
						for _, n := range spec.Names {
							d.names[n.Name] = true
						}
					}
				}
			}
		}
	}
	return d
}

// docRef is a Go name in a doc comment: Type.Member, pkg.Name or
// pkg.Type.Member.
var docRef = regexp.MustCompile(`\b(?:([a-z][a-z0-9]*)\.)?([A-Z][A-Za-z0-9_]*)(?:\.([A-Z][A-Za-z0-9_]*))?\b`)

// TestDocCommentsNameWhatExists: every package doc comment names only
// types, fields, methods and package members that exist — Options.X,
// decide.Settings.X, plugins.Chain.Acquire — so that a rename or a move
// cannot leave the package documentation describing code that is gone.
// Names of the standard library and of other modules are not checked.
func TestDocCommentsNameWhatExists(t *testing.T) {
	pkgs := listPackages(t)
	byName := map[string]*pkgDecls{} // the module's packages other than commands, by name
	byImport := map[string]*pkgDecls{}
	for _, p := range pkgs {
		d := parseDecls(t, p.Dir, p.GoFiles)
		byImport[p.ImportPath] = d
		if p.Name != "main" {
			byName[p.Name] = d
		}
	}
	for _, p := range pkgs {
		self := byImport[p.ImportPath]
		for _, m := range docRef.FindAllStringSubmatch(self.doc, -1) {
			qual, name, member := m[1], m[2], m[3]
			d := self
			if qual != "" {
				if d = byName[qual]; d == nil {
					continue // the standard library's, another module's
				}
				if !d.names[name] {
					t.Errorf("%s: the package doc names %s.%s, which does not exist", p.ImportPath, qual, name)
					continue
				}
			} else if member == "" || !isTypeName(name) {
				continue // a word, or an unqualified name: not checked
			} else if !d.names[name] {
				t.Errorf("%s: the package doc names %s.%s, but package %s declares no %s", p.ImportPath, name, member, p.Name, name)
				continue
			}
			if member != "" && d.members[name] != nil && !d.members[name][member] && !d.embedded[name] {
				t.Errorf("%s: the package doc names %s.%s, but %s has no field or method %s", p.ImportPath, strings.TrimPrefix(qual+"."+name, "."), member, name, member)
			}
		}
	}
}

// isTypeName reports whether s looks like a Go type name rather than an
// acronym or a word of prose: mixed case.
func isTypeName(s string) bool { return s != strings.ToUpper(s) }
