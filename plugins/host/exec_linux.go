package host

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// maxBinarySize bounds the in-memory copy, so that a huge file put at the
// plugin's path fails its start instead of filling memory first.
const maxBinarySize = 1 << 30

// command returns the command that runs the plugin, and a file to close once
// the command has started (or failed to).
//
// Checking the file at h.path and then executing h.path would run whatever
// is at the path by the time of the exec: a binary renamed over it (or
// rewritten) in between would run unverified. Instead the file is copied
// into a memfd, the memfd is sealed against any change, the sealed contents
// are hashed, and the plugin is executed from the memfd: the bytes that run
// are the bytes that were checked, whatever happens to the path.
//
// The memfd is handed to the child as its fd 3 (ExtraFiles) and executed as
// /proc/self/fd/3 there. A close-on-exec descriptor would not reach the
// plugin, but it is closed by the time a script's interpreter opens
// /proc/self/fd/N, so a plugin written as a script (say, in Python) could not
// run; and fd 3 is where os/exec places it whatever descriptors the parent
// has. The plugin gains nothing from the inherited descriptor: the copy is
// sealed and is the plugin's own program.
func (h *Host) command() (*exec.Cmd, io.Closer, error) {
	mfd, err := sealedCopy(h.path, h.sum)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command("/proc/self/fd/3")
	cmd.Args[0] = h.path // what ps shows; the kernel takes the program from cmd.Path
	cmd.ExtraFiles = []*os.File{mfd}
	return cmd, mfd, nil
}

// sealedCopy copies the regular, executable file at path into a new sealed
// memfd and checks the sha256 of the memfd's contents against want.
func sealedCopy(path string, want []byte) (_ *os.File, err error) {
	src, err := openBinary(path)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	name := filepath.Base(path)
	fd, err := memfdCreate(name)
	if err != nil {
		return nil, err
	}
	mfd := os.NewFile(uintptr(fd), "memfd:"+name)
	defer func() {
		if err != nil {
			mfd.Close()
		}
	}()
	n, err := io.Copy(mfd, io.LimitReader(src, maxBinarySize+1))
	if err != nil {
		return nil, fmt.Errorf("copy to memfd: %w", err)
	}
	if n > maxBinarySize {
		return nil, fmt.Errorf("larger than %d MiB", maxBinarySize>>20)
	}
	// F_SEAL_SEAL keeps the seals from being lifted; F_SEAL_WRITE fails if
	// anything still maps the memfd writably, and nothing can.
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		return nil, fmt.Errorf("seal memfd: %w", err)
	}
	// Hash what the memfd holds now that it can no longer change, rather
	// than the bytes on their way in: then the sum covers exactly what will
	// run, even if something got hold of the memfd before it was sealed.
	if err := checkSum(io.NewSectionReader(mfd, 0, 1<<62), want); err != nil {
		return nil, err
	}
	return mfd, nil
}

// memfdCreate creates a close-on-exec, sealable memfd that may be executed.
func memfdCreate(name string) (int, error) {
	const flags = unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	// MFD_EXEC (Linux 6.3) keeps the memfd executable when the vm.memfd_noexec
	// sysctl would otherwise make it non-executable; older kernels reject the
	// flag and make every memfd executable.
	fd, err := unix.MemfdCreate(name, flags|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) {
		fd, err = unix.MemfdCreate(name, flags)
	}
	if errors.Is(err, unix.EACCES) {
		return -1, fmt.Errorf("memfd_create: %w (vm.memfd_noexec=2 forbids running plugins from memory)", err)
	}
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	return fd, nil
}
