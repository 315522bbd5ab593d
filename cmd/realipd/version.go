package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"regexp"
	"runtime"
	"runtime/debug"
	"time"
)

// Set at build time by the Makefile, the release script and the
// Containerfile:
//
//	go build -ldflags "-X main.version=v0.1.0 -X main.revision=0123abc... -X main.buildDate=2026-01-02T03:04:05Z"
//
// Each one left empty is taken from what the Go toolchain recorded in the
// binary (buildInfo): a plain `go install ...@v0.1.0` or a `go build` in a
// clone still says something useful.
var version, revision, buildDate string

// buildInfo is what `realipd version` and serve's first log line report.
type buildInfo struct {
	Version   string // v0.1.0, a pseudo-version, or "devel"
	Commit    string // the VCS revision ("-dirty" when the tree had changes), or "unknown"
	Date      string // the commit's date (RFC 3339, UTC), or "unknown"
	GoVersion string // go1.26.0
	Platform  string // linux/amd64
}

// rePseudo matches the tail of a Go pseudo-version (v0.0.0-, vX.Y.Z-pre.0.
// and vX.Y.(Z+1)-0. forms): the commit's UTC time and its 12-hex prefix,
// followed by "+dirty" when go build recorded changes.
var rePseudo = regexp.MustCompile(`[-.]([0-9]{14})-([0-9a-f]{12})(\+dirty)?$`)

// readBuildInfo combines the -ldflags values with the binary's build
// information (nil when there is none): the main module's version (set by
// `go install MODULE@VERSION`, and since Go 1.24 by `go build` from the
// VCS), and the vcs.* settings `go build` records in a clone. A
// pseudo-version (v0.0.0-20260102030405-0123456789ab) names the commit
// and its date when nothing else does.
func readBuildInfo(ver, rev, when string, info *debug.BuildInfo) buildInfo {
	b := buildInfo{Version: ver, Commit: rev, Date: when, GoVersion: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if info != nil {
		if b.Version == "" && info.Main.Version != "(devel)" {
			b.Version = info.Main.Version
		}
		var vcsRev, vcsTime string
		modified := false
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				vcsRev = s.Value
			case "vcs.time":
				vcsTime = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if b.Commit == "" && vcsRev != "" {
			b.Commit = vcsRev
			if modified {
				b.Commit += "-dirty"
			}
		}
		if b.Date == "" {
			b.Date = vcsTime
		}
		if m := rePseudo.FindStringSubmatch(info.Main.Version); m != nil {
			if b.Commit == "" {
				b.Commit = m[2]
				if m[3] != "" {
					b.Commit += "-dirty"
				}
			}
			if t, err := time.Parse("20060102150405", m[1]); b.Date == "" && err == nil {
				b.Date = t.UTC().Format(time.RFC3339)
			}
		}
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	if b.Date == "" {
		b.Date = "unknown"
	}
	return b
}

// String is "realipd VERSION (commit COMMIT, built DATE, GOVERSION OS/ARCH)".
func (b buildInfo) String() string {
	return fmt.Sprintf("realipd %s (commit %s, built %s, %s %s)", b.Version, b.Commit, b.Date, b.GoVersion, b.Platform)
}

// currentBuild is this binary's buildInfo.
func currentBuild() buildInfo {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		info = nil
	}
	return readBuildInfo(version, revision, buildDate, info)
}

// versionFlagSet builds version's FlagSet (it has no flags) without running it.
func versionFlagSet() *flag.FlagSet {
	return newFlagSet("version", "version", `
Print realipd's version, the commit it was built from ("-dirty" when the
tree had changes), the build date (the commit's date, so that two builds of
one commit are identical), the Go version and the platform. A release build
has them from -ldflags; any other build takes what the Go toolchain recorded
in the binary (the module version of go install, the VCS revision and time
of a go build in a clone), and says "devel" or "unknown" for what is not
known.`, `
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

// versionString is currentBuild().String(): `realipd version`'s line, and
// the version serve logs when it starts.
func versionString() string {
	return currentBuild().String()
}
