// Package plugintest builds policy plugin programs for tests and pins them by
// sha256, as realipd's configuration requires. Tests call Build once (from
// TestMain) so that each program is compiled once per test binary. Its
// functions are safe for concurrent use.
package plugintest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

// Build compiles the main packages pkgs (as the go command takes them,
// relative to the test's directory) into dir in one go build, and returns
// each program's path keyed by its package's base name.
func Build(dir string, pkgs ...string) (map[string]string, error) {
	args := append([]string{"build", "-o", dir + string(filepath.Separator)}, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("plugintest: go build %v: %w", pkgs, err)
	}
	bins := make(map[string]string, len(pkgs))
	for _, p := range pkgs {
		name := filepath.Base(p)
		bins[name] = filepath.Join(dir, name)
	}
	return bins, nil
}

var (
	sumsMu sync.Mutex
	sums   = map[string]string{}
)

// SHA256 returns the hex sha256 of the file at path, computed once per path.
func SHA256(path string) (string, error) {
	sumsMu.Lock()
	defer sumsMu.Unlock()
	if s, ok := sums[path]; ok {
		return s, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("plugintest: %w", err)
	}
	s := sha256.Sum256(b)
	sums[path] = hex.EncodeToString(s[:])
	return sums[path], nil
}
