package packaging_test

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestRelease runs make release's script for this machine's platform
// (CI's arm64 cross build is .ci/run's; the script's loop is the same)
// twice: each archive must hold the static binary, which names the version
// and commit it was given, with LICENSE, NOTICE, README.md, CHANGELOG.md and
// a licence for every linked module, owned by root with the commit's date;
// SHA256SUMS must match the archives; and the two runs must give the same
// bytes.
func TestRelease(t *testing.T) {
	if testing.Short() {
		t.Skip("builds release archives (a minute with a cold build cache): not with -short")
	}
	for _, tool := range []string{"tar", "gzip", "sha256sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("release.sh needs %s", tool)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	platform := "linux/" + runtime.GOARCH
	release := func(dist string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, "sh", "release.sh")
		cmd.Env = append(os.Environ(), "DIST="+dist, "PLATFORMS="+platform,
			"VERSION="+testVersion, "REVISION="+testRevision, "BUILD_DATE="+testDate)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("release.sh: %v\n%s", err, out)
		}
		return readTestFile(t, filepath.Join(dist, "SHA256SUMS"))
	}
	dist := filepath.Join(t.TempDir(), "dist")
	sums := release(dist)
	if again := release(filepath.Join(t.TempDir(), "dist")); again != sums {
		t.Errorf("two runs differ:\n%s\n%s", sums, again)
	}

	name := fmt.Sprintf("realipd-%s-linux-%s", testVersion, runtime.GOARCH)
	archive := filepath.Join(dist, name+".tar.gz")
	data, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if want := hex.EncodeToString(sum[:]) + "  " + name + ".tar.gz\n"; sums != want {
		t.Errorf("SHA256SUMS is %q, want %q", sums, want)
	}

	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	date, _ := time.Parse(time.RFC3339, testDate)
	files := map[string]bool{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		rel, ok := strings.CutPrefix(strings.TrimSuffix(h.Name, "/"), name)
		if !ok || (rel != "" && !strings.HasPrefix(rel, "/")) {
			t.Errorf("%s: outside %s/", h.Name, name)
			continue
		}
		files[strings.TrimPrefix(rel, "/")] = true
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(date) {
			t.Errorf("%s: owner %d:%d, time %v; want 0:0 and %v", h.Name, h.Uid, h.Gid, h.ModTime, date)
		}
		if h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeDir {
			t.Errorf("%s: type %q", h.Name, h.Typeflag)
		}
	}
	for _, want := range []string{"realipd", "LICENSE", "NOTICE", "README.md", "CHANGELOG.md"} {
		if !files[want] {
			t.Errorf("%s lacks %s", filepath.Base(archive), want)
		}
	}
	for _, m := range linkedModules(t) {
		if !files["third_party/"+m.path] {
			t.Errorf("%s lacks third_party/%s (the licence of a linked module)", filepath.Base(archive), m.path)
		}
	}

	bin := filepath.Join(dist, name, "realipd")
	checkStatic(t, bin, runtime.GOARCH)
	out, err := exec.CommandContext(ctx, bin, "version").CombinedOutput()
	want := fmt.Sprintf("realipd %s (commit %s, built %s, go", testVersion, testRevision, testDate)
	if err != nil || !strings.HasPrefix(string(out), want) {
		t.Errorf("version: %v: %q, want %q...", err, out, want)
	}
}
