package host

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrChecksum is wrapped by the error of Check and New when the plugin file's
// sha256 differs from the configured one.
var ErrChecksum = errors.New("sha256 mismatch")

// Check verifies what can be verified about a plugin policy without running
// it: a name, an absolute-able path to a regular, executable file, and a
// configured sha256 (64 hex digits) equal to the file's. Errors name the
// policy and the plugin's path. New runs the same check; `realipd validate`
// calls it directly.
func Check(cfg Config) error {
	_, _, err := checkBinary(cfg)
	return err
}

// checkBinary runs Check and returns the absolute path and expected sum.
func checkBinary(cfg Config) (path string, sum []byte, err error) {
	if cfg.Name == "" {
		return "", nil, errors.New("host: plugin policy has no name")
	}
	if cfg.Path == "" {
		return "", nil, fmt.Errorf("host: policy %q: no plugin path", cfg.Name)
	}
	path, err = filepath.Abs(cfg.Path)
	if err != nil {
		return "", nil, fmt.Errorf("host: policy %q: plugin %s: %w", cfg.Name, cfg.Path, err)
	}
	fail := func(format string, args ...any) (string, []byte, error) {
		return "", nil, fmt.Errorf("host: policy %q: plugin %s: "+format, append([]any{cfg.Name, path}, args...)...)
	}
	want := strings.ToLower(strings.TrimSpace(cfg.SHA256))
	if want == "" {
		return fail("sha256 is required (sha256sum of the plugin binary)")
	}
	sum, err = hex.DecodeString(want)
	if err != nil || len(sum) != sha256.Size {
		return fail("sha256 %q is not 64 hex digits", cfg.SHA256)
	}
	f, err := openBinary(path)
	if err != nil {
		return fail("%w", err)
	}
	defer f.Close()
	if err := checkSum(f, sum); err != nil {
		return fail("%w", err)
	}
	return path, sum, nil
}

// openBinary opens the plugin file at path for reading and checks that it
// is a regular, executable file. Its errors leave naming the path to the
// caller.
func openBinary(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, errors.New("no such file")
		}
		return nil, err
	}
	st, err := f.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = errors.New("not a regular file")
	} else if err == nil && st.Mode().Perm()&0o111 == 0 {
		err = fmt.Errorf("not executable (mode %v)", st.Mode().Perm())
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// checkSum reads r to its end and checks that the sha256 of what it read is
// want; a mismatch wraps ErrChecksum and gives both sums.
func checkSum(r io.Reader, want []byte) error {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if got := h.Sum(nil); !bytes.Equal(got, want) {
		return fmt.Errorf("%w: configured %s, file has %s", ErrChecksum, hex.EncodeToString(want), hex.EncodeToString(got))
	}
	return nil
}
