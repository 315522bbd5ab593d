package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
// When empty, the module version recorded in the binary is used.
var version = ""

// versionFlagSet builds version's FlagSet (it has no flags) without running it.
func versionFlagSet() *flag.FlagSet {
	return newFlagSet("version", "version", `
Print realipd's version, the Go version it was built with, the platform
and, when the binary records it, the VCS revision ("-dirty" when the tree
had changes).`, `
  realipd version`)
}

func runVersion(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := versionFlagSet()
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	fmt.Fprintln(stdout, versionString())
	return nil
}

// versionString is "realipd VERSION (GOVERSION GOOS/GOARCH[, rev REVISION])".
func versionString() string {
	v := version
	var rev, modified string
	if info, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
	}
	if rev != "" && modified == "true" {
		rev += "-dirty"
	}
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	out := fmt.Sprintf("realipd %s (%s %s/%s", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if rev != "" {
		out += ", rev " + rev
	}
	return out + ")"
}
