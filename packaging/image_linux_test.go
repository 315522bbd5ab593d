package packaging_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/realipd/realipd/internal/imagetest"
	"github.com/realipd/realipd/internal/netnstest"
)

// What make image is asked to build in the tests, and what the image and
// the binary must then say.
const (
	testImage    = "localhost/realipd-test"
	testTag      = "test"
	testVersion  = "v0.1.0-test"
	testRevision = "0123456789abcdef0123456789abcdef01234567"
	testDate     = "2026-01-02T03:04:05Z"
	imageUID     = 65532
)

// TestImage builds the image as `make image` does (packaging/image.sh with
// buildah, from the Containerfile, with a binary compiled here: nothing is
// pulled), exports it as an OCI layout, and checks its configuration (the
// entrypoint, the command, the user, the labels), that its file system
// holds exactly what the Containerfile copies (the static binary, the
// default configuration, the licences, all root-owned and read-only to
// the user), and then runs the binary inside that file system alone
// (chroot, as the image's user, no environment): version, validate of the
// image's configuration and of the compose example's, and serve with the
// image's default command in a network namespace of its own, until
// /readyz answers and SIGTERM stops it with exit 0.
//
// buildah runs with the vfs driver in a storage of the test's own
// (CONTAINERS_STORAGE_CONF), so it needs root but no overlay, FUSE or user
// namespace, leaves nothing behind, and parallel runs do not meet.
func TestImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the container image (a minute or two with a cold build cache): not with -short")
	}
	if os.Geteuid() != 0 {
		netnstest.Unavailable(t, "needs root (buildah's vfs storage, chroot)")
	}
	if _, err := exec.LookPath("buildah"); err != nil {
		netnstest.Unavailable(t, "needs buildah (Debian: apt-get install buildah)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()

	tmp := t.TempDir()
	storageConf := filepath.Join(tmp, "storage.conf")
	writeTestFile(t, storageConf, fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n",
		filepath.Join(tmp, "storage"), filepath.Join(tmp, "run")))
	env := append(os.Environ(),
		"CONTAINERS_STORAGE_CONF="+storageConf,
		"TMPDIR="+tmp,
		"CONTAINER_TOOL=buildah",
		"IMAGE="+testImage, "TAG="+testTag, "TARGET=realipd",
		"VERSION="+testVersion, "REVISION="+testRevision, "BUILD_DATE="+testDate)
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	out := run("sh", "image.sh")
	t.Logf("make image: %s", lastLine(out))
	// Both tags name the one image.
	id := strings.TrimSpace(run("buildah", "images", "--noheading", "--no-trunc", "--format", "{{.ID}}", testImage+":"+testTag))
	if idV := strings.TrimSpace(run("buildah", "images", "--noheading", "--no-trunc", "--format", "{{.ID}}", testImage+":"+testVersion)); id == "" || idV != id {
		t.Errorf("%s:%s is %q, %s:%s is %q: want one image", testImage, testTag, id, testImage, testVersion, idV)
	}

	layout := filepath.Join(tmp, "oci")
	run("buildah", "push", testImage+":"+testTag, "oci:"+layout)
	cfg, layers := readOCILayout(t, layout)

	// The configuration.
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cfg.OS, cfg.Architecture, runtime.GOARCH)
	}
	c := cfg.Config
	if want := []string{"/realipd"}; !slices.Equal(c.Entrypoint, want) {
		t.Errorf("entrypoint %q, want %q", c.Entrypoint, want)
	}
	if want := []string{"serve", "--config", "/etc/realipd/realipd.yaml"}; !slices.Equal(c.Cmd, want) {
		t.Errorf("cmd %q, want %q", c.Cmd, want)
	}
	if want := fmt.Sprintf("%d:%d", imageUID, imageUID); c.User != want {
		t.Errorf("user %q, want %q (non-root by default)", c.User, want)
	}
	// What the examples' tests read from the Containerfile is what was built.
	if stages, err := imagetest.Stages(".."); err != nil {
		t.Error(err)
	} else if s := stages["realipd"]; !slices.Equal(s.Entrypoint, c.Entrypoint) || !slices.Equal(s.Cmd, c.Cmd) || s.User != c.User {
		t.Errorf("imagetest reads the realipd target as %+v; the image has entrypoint %q, cmd %q, user %q", s, c.Entrypoint, c.Cmd, c.User)
	}
	if len(c.ExposedPorts) != 0 || len(c.Volumes) != 0 {
		t.Errorf("exposed ports %v, volumes %v: want none", c.ExposedPorts, c.Volumes)
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.title":    "realipd",
		"org.opencontainers.image.source":   "https://github.com/realipd/realipd",
		"org.opencontainers.image.licenses": "Apache-2.0",
		"org.opencontainers.image.version":  testVersion,
		"org.opencontainers.image.revision": testRevision,
		"org.opencontainers.image.created":  testDate,
	} {
		if c.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, c.Labels[k], v)
		}
	}

	// The file system: exactly what the Containerfile copies.
	rootfs := filepath.Join(tmp, "rootfs")
	entries, size := extractLayers(t, layers, rootfs)
	t.Logf("image %s:%s: %d layer(s), %d entries, %.1f MB uncompressed", testImage, testTag, len(layers), len(entries), float64(size)/1e6)
	want := map[string]byte{
		"realipd":                  tar.TypeReg,
		"etc/":                     tar.TypeDir,
		"etc/realipd/":             tar.TypeDir,
		"etc/realipd/realipd.yaml": tar.TypeReg,
		"licenses/":                tar.TypeDir,
		"licenses/LICENSE":         tar.TypeReg,
		"licenses/NOTICE":          tar.TypeReg,
		"licenses/third_party/":    tar.TypeDir,
	}
	for name, h := range entries {
		if typ, ok := want[name]; ok {
			if h.Typeflag != typ {
				t.Errorf("/%s: type %q, want %q", name, h.Typeflag, typ)
			}
		} else if !strings.HasPrefix(name, "licenses/third_party/") || (h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeDir) {
			t.Errorf("/%s (type %q): the Containerfile copies no such file", name, h.Typeflag)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("/%s: owner %d:%d, want 0:0 (not writable by the image's user)", name, h.Uid, h.Gid)
		}
		if mode := h.FileInfo().Mode(); mode&0o022 != 0 || mode&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 {
			t.Errorf("/%s: mode %v: writable by group or others, or set-id", name, mode)
		}
	}
	for name := range want {
		if _, ok := entries[name]; !ok {
			t.Errorf("/%s is missing", name)
		}
	}
	if h := entries["realipd"]; h != nil && h.Mode&0o005 != 0o005 {
		t.Errorf("/realipd: mode %o, want it executable by others (uid %d)", h.Mode, imageUID)
	}
	for file, src := range map[string]string{"etc/realipd/realipd.yaml": "realipd.yaml", "licenses/LICENSE": "../LICENSE", "licenses/NOTICE": "../NOTICE"} {
		if got, want := readTestFile(t, filepath.Join(rootfs, file)), readTestFile(t, src); got != want {
			t.Errorf("/%s differs from %s", file, src)
		}
	}
	for _, m := range linkedModules(t) {
		if files, _ := filepath.Glob(filepath.Join(rootfs, "licenses/third_party", m.path, "*")); len(files) == 0 {
			t.Errorf("/licenses/third_party/%s: no licence file for module %s", m.path, m.path)
		}
	}
	checkStatic(t, filepath.Join(rootfs, "realipd"), runtime.GOARCH)

	// The binary, in the image's file system alone, as the image's user.
	chroot := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "/realipd", args...)
		cmd.SysProcAttr = chrootAttr(rootfs)
		cmd.Dir = "/"
		cmd.Env = []string{}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := chroot("version")
	wantVersion := fmt.Sprintf("realipd %s (commit %s, built %s, go", testVersion, testRevision, testDate)
	if err != nil || !strings.HasPrefix(out, wantVersion) || !strings.HasSuffix(strings.TrimSpace(out), " linux/"+runtime.GOARCH+")") {
		t.Errorf("version: %v: %q, want %q...linux/%s)", err, out, wantVersion, runtime.GOARCH)
	}
	if out, err := chroot("validate", "--config", "/etc/realipd/realipd.yaml"); err != nil || !strings.Contains(out, ": OK (") {
		t.Errorf("validate of the image's configuration: %v: %s", err, out)
	}
	example := filepath.Join(rootfs, "example")
	if err := os.Mkdir(example, 0o755); err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(example, "realipd.yaml"), readTestFile(t, "../examples/compose/realipd/realipd.yaml"))
	if out, err := chroot("validate", "--config", "/example/realipd.yaml"); err != nil || !strings.Contains(out, ": OK (") {
		t.Errorf("validate of examples/compose/realipd/realipd.yaml: %v: %s", err, out)
	}

	// The image's default command serves.
	serveDefault(ctx, t, rootfs, slices.Concat(c.Entrypoint, c.Cmd))
}

// serveDefault runs argv (the image's entrypoint and command) in rootfs, as
// the image's user, in a network namespace of its own, until /readyz on
// the default admin address answers 200; then SIGTERM must stop it with
// exit 0.
func serveDefault(ctx context.Context, t *testing.T, rootfs string, argv []string) {
	ns := netnstest.New(t)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = chrootAttr(rootfs)
	cmd.Dir = "/"
	cmd.Env = []string{}
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	// Started from a thread inside the namespace: the child is in it.
	ns.Must(t, cmd.Start)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-done
		}
	}()

	deadline := time.Now().Add(30 * time.Second)
	var last string
	for {
		var status string
		err := ns.Do(func() error {
			var err error
			status, err = httpStatus("127.0.0.1:9902", "/readyz")
			return err
		})
		if err == nil && status == "200" {
			break
		}
		last = fmt.Sprint(status, " ", err)
		select {
		case err := <-done:
			t.Fatalf("serve exited before it was ready: %v\n%s", err, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not 200 after 30s (last: %s); serve's logs:\n%s", last, logs.String())
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve after SIGTERM: %v, want exit 0; logs:\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Errorf("serve still running 30s after SIGTERM; logs:\n%s", logs.String())
	}
}

// httpStatus sends GET path to addr over a connection made on the calling
// thread (so, in netnstest.Netns.Do, inside the namespace) and returns the
// status code.
func httpStatus(addr, path string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", err
	}
	fields := strings.Fields(line)
	if len(fields) < 2 {
		return "", fmt.Errorf("status line %q", line)
	}
	return fields[1], nil
}

// chrootAttr runs a command with rootfs as its root, as the image's user
// with no supplementary group. (No Pdeathsig: serve is started from a
// locked thread that ends when netnstest's Do returns, which would send
// it.)
func chrootAttr(rootfs string) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Chroot:     rootfs,
		Credential: &syscall.Credential{Uid: imageUID, Gid: imageUID, Groups: []uint32{}},
	}
}

// ociConfig is the part of an OCI image configuration the test reads.
type ociConfig struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
	Config       struct {
		User         string              `json:"User"`
		Entrypoint   []string            `json:"Entrypoint"`
		Cmd          []string            `json:"Cmd"`
		Labels       map[string]string   `json:"Labels"`
		ExposedPorts map[string]struct{} `json:"ExposedPorts"`
		Volumes      map[string]struct{} `json:"Volumes"`
	} `json:"config"`
}

type ociDescriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
}

// readOCILayout reads the one image of an OCI layout directory: its
// configuration and its layers' blob files, in order.
func readOCILayout(t *testing.T, dir string) (ociConfig, []ociDescriptor) {
	t.Helper()
	blob := func(d ociDescriptor) string {
		alg, hex, ok := strings.Cut(d.Digest, ":")
		if !ok || alg != "sha256" || strings.ContainsAny(hex, "/.") {
			t.Fatalf("digest %q", d.Digest)
		}
		return filepath.Join(dir, "blobs", alg, hex)
	}
	var index struct{ Manifests []ociDescriptor }
	decodeJSONFile(t, filepath.Join(dir, "index.json"), &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("index.json: %d manifests, want 1", len(index.Manifests))
	}
	var manifest struct {
		Config ociDescriptor
		Layers []ociDescriptor
	}
	decodeJSONFile(t, blob(index.Manifests[0]), &manifest)
	var cfg ociConfig
	decodeJSONFile(t, blob(manifest.Config), &cfg)
	for i := range manifest.Layers {
		manifest.Layers[i].Digest = blob(manifest.Layers[i]) // now the file
	}
	return cfg, manifest.Layers
}

// extractLayers unpacks the layers into dir and returns every entry by its
// clean relative name (directories with a trailing slash) and the size of
// the regular files. Links, devices and whiteouts fail the test: the
// Containerfile copies none.
func extractLayers(t *testing.T, layers []ociDescriptor, dir string) (map[string]*tar.Header, int64) {
	t.Helper()
	entries := map[string]*tar.Header{}
	var size int64
	for _, l := range layers {
		f, err := os.Open(l.Digest)
		if err != nil {
			t.Fatal(err)
		}
		var r io.Reader = f
		if strings.HasSuffix(l.MediaType, "+gzip") {
			zr, err := gzip.NewReader(f)
			if err != nil {
				t.Fatal(err)
			}
			r = zr
		}
		tr := tar.NewReader(r)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			name := path.Clean(strings.TrimPrefix(h.Name, "./"))
			if name == "." || name == "/" {
				continue
			}
			if path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") || strings.Contains(path.Base(name), ".wh.") {
				t.Fatalf("layer entry %q", h.Name)
			}
			target := filepath.Join(dir, filepath.FromSlash(name))
			switch h.Typeflag {
			case tar.TypeDir:
				entries[name+"/"] = h
				if err := os.MkdirAll(target, 0o755); err != nil {
					t.Fatal(err)
				}
			case tar.TypeReg:
				entries[name] = h
				size += h.Size
				if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
					t.Fatal(err)
				}
				w, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode).Perm())
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.Copy(w, tr); err != nil {
					t.Fatal(err)
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("layer entry %q of type %q: the Containerfile copies files and directories only", h.Name, h.Typeflag)
			}
		}
		f.Close()
	}
	return entries, size
}

// checkStatic fails unless file is a statically linked ELF executable for
// goarch: no program interpreter, no shared library needed.
func checkStatic(t *testing.T, file, goarch string) {
	t.Helper()
	f, err := elf.Open(file)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	defer f.Close()
	machine := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "386": elf.EM_386, "arm": elf.EM_ARM}[goarch]
	if f.Machine != machine {
		t.Errorf("%s: machine %v, want %v (%s)", file, f.Machine, machine, goarch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s: has a %v program header: not statically linked", file, p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s: needs %v: not statically linked", file, libs)
	}
}

func decodeJSONFile(t *testing.T, file string, v any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

func readTestFile(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func writeTestFile(t *testing.T, file, content string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
