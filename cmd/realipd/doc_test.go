package main

import (
	"go/parser"
	"go/token"
	"slices"
	"strings"
	"testing"
)

// TestPackageDocCommands: the usage block of the command's doc comment
// (doc.go, what go doc prints) lists exactly the subcommands run
// dispatches, in the same order.
func TestPackageDocCommands(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "doc.go", nil, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil {
		t.Fatal(err)
	}
	if f.Doc == nil {
		t.Fatal("doc.go has no package doc comment")
	}
	var listed []string
	for line := range strings.SplitSeq(f.Doc.Text(), "\n") {
		// The usage lines are a code block: indented, "realipd NAME ...".
		fields := strings.Fields(line)
		if strings.HasPrefix(line, "\t") && len(fields) >= 2 && fields[0] == "realipd" {
			listed = append(listed, fields[1])
		}
	}
	var want []string
	for _, c := range commands() {
		want = append(want, c.name)
	}
	if !slices.Equal(listed, want) {
		t.Errorf("doc.go's usage lists the commands %v; run dispatches %v: give each command one line \"realipd NAME ...\", in commands() order", listed, want)
	}
}
