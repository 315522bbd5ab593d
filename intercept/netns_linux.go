//go:build linux

package intercept

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// The inode numbers the kernel gives two of the initial namespaces
// (include/linux/proc_ns.h). The PID one is fixed since Linux 3.8; recent
// kernels fix the network one too, where older ones number it like any
// other (dynamic numbers start at 0xF0000000, so a namespace that is not
// the initial one never has 0xEFFFFFF9).
const (
	initPIDNamespaceInode = 0xEFFFFFFC // PROC_PID_INIT_INO
	initNetNamespaceInode = 0xEFFFFFF9 // PROC_NET_INIT_INO
)

// HostNetns reports whether the calling thread is in the host's network
// namespace: the initial one, which the host's own interfaces, its sshd
// and its init are in. It is true when
//
//   - the namespace's inode is the initial network namespace's fixed
//     number (recent kernels), wherever realipd runs, a container included;
//   - or, when realipd runs in the host's PID namespace (its inode is the
//     initial PID namespace's fixed number), the namespace is that of
//     kthreadd (PID 2, a kernel thread: kernel threads never leave the
//     initial namespaces), or, if PID 2 cannot be read, of init (PID 1).
//
// In a PID namespace of its own (a container), PID 1 is the container's
// init, not the host's, and the host's processes are out of sight: there,
// on a kernel that does not fix the initial network namespace's inode, a
// container given the host's network (Kubernetes' hostNetwork, Docker's
// --network host) is not recognised and HostNetns reports false. It reads
// /proc (the thread's own namespace, /proc/thread-self/ns/net); an error
// says what it could not read.
func HostNetns() (bool, error) {
	runtime.LockOSThread() // the namespace is the thread's: stay on it
	defer runtime.UnlockOSThread()
	self, err := nsID(threadNetnsPath())
	if err != nil {
		return false, err
	}
	if self.ino == initNetNamespaceInode {
		return true, nil
	}
	pid, err := nsID("/proc/self/ns/pid")
	if err != nil {
		return false, err
	}
	if pid.ino != initPIDNamespaceInode {
		return false, nil
	}
	var errs []error
	for _, p := range []string{"2", "1"} {
		if p == "2" {
			if comm, err := os.ReadFile("/proc/2/comm"); err != nil || strings.TrimSpace(string(comm)) != "kthreadd" {
				continue
			}
		}
		ref, err := nsID("/proc/" + p + "/ns/net")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return ref == self, nil
	}
	return false, errors.Join(errs...)
}

// threadNetnsPath is the calling thread's network namespace file.
func threadNetnsPath() string {
	if _, err := os.Stat("/proc/thread-self"); err == nil {
		return "/proc/thread-self/ns/net"
	}
	return fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()) // before Linux 3.17
}

// nsIdentity identifies a namespace: the device and inode of its file.
type nsIdentity struct{ dev, ino uint64 }

func nsID(path string) (nsIdentity, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsIdentity{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return nsIdentity{dev: uint64(st.Dev), ino: uint64(st.Ino)}, nil
}
