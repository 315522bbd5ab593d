package intercept

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// EBPFOptions configures the eBPF capture (AttachEBPF).
//
// Outbound: every TCP connect made by a socket of the processes in Cgroup
// (and its descendants) goes to 127.0.0.1:OutboundPort instead (::1 for
// IPv6, ::ffff:127.0.0.1 for an IPv4-mapped destination), unless the
// destination is loopback or the socket carries a non-zero ExcludeMark
// (SO_MARK). The original destination is recorded, and
// getsockopt(SO_ORIGINAL_DST) on the connection accepted on the capture
// port answers it, exactly as after an iptables REDIRECT: Envoy's
// original_dst listener filter and realipd's native listener need no
// change. The getsockopt hook is attached to
// GetsockoptCgroup, which must contain the capture listener's socket: a
// socket belongs to the cgroup of the process that created it (for good,
// even if the process moves), an accepted socket to its listener's, and
// the hook runs for the socket's cgroup.
//
// Inbound: new TCP connections to one of InboundPorts (not to loopback) in
// the network namespace NetNS are steered to the listener given to
// SetInboundListener; the accepted socket's local address is the original
// destination, as with TPROXY.
type EBPFOptions struct {
	// Cgroup2Mount is where the cgroup v2 hierarchy is mounted; "" finds
	// it in /proc/mounts (FindCgroup2Mount).
	Cgroup2Mount string
	// Cgroup is the captured cgroup, relative to Cgroup2Mount ("/" is the
	// whole hierarchy).
	Cgroup string
	// GetsockoptCgroup is the cgroup the capture listener was created in
	// (the process reading SO_ORIGINAL_DST), relative to Cgroup2Mount, or
	// one of its ancestors; "" means Cgroup.
	GetsockoptCgroup string
	// OutboundPort is the capture port on loopback (required).
	OutboundPort uint16
	// ExcludeMark: sockets with this SO_MARK are never captured. 0
	// excludes none (it is the mark of every unmarked socket, which are
	// all captured).
	ExcludeMark uint32
	// InboundPorts are the local ports steered to the inbound listener;
	// none: no sk_lookup program is attached.
	InboundPorts []uint16
	// NetNS is the network namespace file the sk_lookup program is
	// attached to; "" is the calling thread's.
	NetNS string
	// Pin is a directory on a bpffs. When set, the links and maps are
	// pinned there: the capture stays attached after Close and after the
	// process exits, until DetachEBPF(Pin). Attaching again with the same
	// Pin takes the pinned capture over (replacing its programs in place,
	// so no connection goes uncaptured meanwhile).
	Pin string
}

// EBPFCounters are the capture's counters, summed over the CPUs. They live
// in a BPF map: with Pin they survive restarts.
type EBPFCounters struct {
	Captured uint64 // connects sent to the capture port
	Excluded uint64 // connects left alone because of the exclusion mark
	Recorded uint64 // captured connections established and recorded for lookup
	Answered uint64 // SO_ORIGINAL_DST answered from the record
	Missed   uint64 // SO_ORIGINAL_DST asked for a connection with no record (the kernel's own answer stands)
	Steered  uint64 // inbound connections steered to the inbound listener
}

// EBPFLink describes one attached program.
type EBPFLink struct {
	Name      string // connect4, connect6, sockops, sockops_getsockopt, getsockopt, sk_lookup
	Hook      string // the kernel hook, like "cgroup/connect4"
	Target    string // the cgroup (relative to the cgroup2 mount) or the netns inode
	LinkID    uint32
	ProgramID uint32
}

// EBPFState is what EBPFStatus reports of a pinned capture.
type EBPFState struct {
	Pin          string
	Links        []EBPFLink
	Counters     EBPFCounters
	InboundPorts []uint16
}

// ErrEBPFNotPinned is returned by EBPFStatus and DetachEBPF when nothing
// is pinned in the directory.
var ErrEBPFNotPinned = errors.New("no eBPF capture is pinned there")

// FindCgroup2Mount returns the mount point of the cgroup v2 hierarchy from
// /proc/mounts: /sys/fs/cgroup on most systems, /sys/fs/cgroup/unified on
// hybrid ones.
func FindCgroup2Mount() (string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "", fmt.Errorf("finding the cgroup2 mount: %w", err)
	}
	defer f.Close()
	return findCgroup2Mount(f)
}

func findCgroup2Mount(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return unescapeMount(fields[1]), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("finding the cgroup2 mount: %w", err)
	}
	return "", errors.New("no cgroup2 file system is mounted (see /proc/mounts); mount one with: mount -t cgroup2 none /sys/fs/cgroup")
}

// unescapeMount undoes the octal escapes of /proc/mounts (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ProcessCgroup returns the cgroup v2 path of a process (0: the calling
// process) relative to the cgroup2 mount, from the "0::" line of
// /proc/PID/cgroup.
func ProcessCgroup(pid int) (string, error) {
	name := "/proc/self/cgroup"
	if pid != 0 {
		name = "/proc/" + strconv.Itoa(pid) + "/cgroup"
	}
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return parseProcCgroup(f)
}

func parseProcCgroup(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return p, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("the process is in no cgroup v2 (no 0:: line)")
}
