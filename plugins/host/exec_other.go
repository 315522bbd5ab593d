//go:build !linux

package host

import (
	"io"
	"os/exec"
)

// command checks the file at h.path and returns the command that runs it,
// and nothing to close.
//
// Without Linux's memfds the plugin is executed by its path, so a binary
// renamed over the path (or rewritten) between the check and the exec runs
// unverified: the check holds only against a binary replaced while no start
// is under way.
func (h *Host) command() (*exec.Cmd, io.Closer, error) {
	f, err := openBinary(h.path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	if err := checkSum(f, h.sum); err != nil {
		return nil, nil, err
	}
	return exec.Command(h.path), nopCloser{}, nil
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }
