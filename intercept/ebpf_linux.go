package intercept

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// EBPFCapture is an attached eBPF capture. Close detaches it, unless it is
// pinned.
type EBPFCapture struct {
	opts  EBPFOptions
	maps  map[string]*ebpf.Map
	links map[string]link.Link
	// newPins are the files this AttachEBPF pinned, removed again if it
	// fails.
	newPins []string
}

// ebpfHook is one program and where it goes.
type ebpfHook struct {
	name   string // also the pinned link's file name, with "link_"
	typ    ebpf.ProgramType
	attach ebpf.AttachType
	label  string // for EBPFLink.Hook
	insns  asm.Instructions
	cgroup string // the absolute cgroup directory; "" for the netns ebpfHook
}

// Link names.
const (
	linkGetsockopt       = "getsockopt"
	linkSockOpsLookup    = "sockops_getsockopt"
	linkSockOps          = "sockops"
	linkConnect4         = "connect4"
	linkConnect6         = "connect6"
	linkSkLookup         = "sk_lookup"
	cgroup2SuperMagic    = 0x63677270
	bpfFSMagic           = 0xcafe4a11
	linkFilePrefix       = "link_"
	defaultNetNSOfThread = "/proc/thread-self/ns/net"
)

// ebpfLinks lists every link name, in attach order.
var ebpfLinks = []string{linkGetsockopt, linkSockOps, linkSockOpsLookup, linkConnect4, linkConnect6, linkSkLookup}

// AttachEBPF loads the capture programs and attaches them: first the
// getsockopt and sockops hooks, so that the first captured connection is
// already answered, then the connect hooks, then (with InboundPorts) the
// sk_lookup program. An error says which capability or kernel feature is
// missing; nothing this call attached or pinned stays after an error (a
// capture pinned before, and taken over, may have been updated in part).
func AttachEBPF(opts EBPFOptions) (c *EBPFCapture, err error) {
	if opts.OutboundPort == 0 {
		return nil, errors.New("ebpf: the outbound capture port is required")
	}
	if opts.Cgroup == "" {
		return nil, errors.New("ebpf: the captured cgroup is required (\"/\" for every process)")
	}
	if len(opts.InboundPorts) > maxInboundPorts {
		return nil, fmt.Errorf("ebpf: %d inbound ports; at most %d", len(opts.InboundPorts), maxInboundPorts)
	}
	mount := opts.Cgroup2Mount
	if mount == "" {
		if mount, err = FindCgroup2Mount(); err != nil {
			return nil, fmt.Errorf("ebpf: %w", err)
		}
	}
	target, err := ebpfCgroupDir(mount, opts.Cgroup)
	if err != nil {
		return nil, err
	}
	lookupRel := opts.GetsockoptCgroup
	if lookupRel == "" {
		lookupRel = opts.Cgroup
	}
	lookup, err := ebpfCgroupDir(mount, lookupRel)
	if err != nil {
		return nil, err
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; a failure
	// here matters only if loading fails too.
	memlockErr := rlimit.RemoveMemlock()
	if err := ProbeEBPF(len(opts.InboundPorts) > 0); err != nil {
		if memlockErr != nil {
			err = fmt.Errorf("%w (and raising RLIMIT_MEMLOCK, which kernels before 5.11 need, failed: %v)", err, memlockErr)
		}
		return nil, err
	}
	if opts.Pin != "" {
		if err := ebpfEnsureBPFFS(opts.Pin); err != nil {
			return nil, err
		}
	}

	c = &EBPFCapture{opts: opts, maps: map[string]*ebpf.Map{}, links: map[string]link.Link{}}
	defer func() {
		if err != nil {
			for _, p := range c.newPins {
				_ = os.Remove(p)
			}
			c.closeFDs(true)
		}
	}()
	for name, spec := range ebpfMapSpecs() {
		mopts := ebpf.MapOptions{}
		if opts.Pin != "" {
			spec.Pinning = ebpf.PinByName
			mopts.PinPath = opts.Pin
			if _, err := os.Stat(filepath.Join(opts.Pin, name)); errors.Is(err, os.ErrNotExist) {
				c.newPins = append(c.newPins, filepath.Join(opts.Pin, name))
			}
		}
		m, err := ebpf.NewMapWithOptions(spec, mopts)
		if err != nil {
			if errors.Is(err, ebpf.ErrMapIncompatible) {
				return nil, fmt.Errorf("ebpf: the map %s pinned in %s is of another layout (an older realipd?): run 'realipd ebpf detach' first: %w", name, opts.Pin, err)
			}
			return nil, fmt.Errorf("ebpf: creating the map %s: %w", name, ebpfPermissionHint(err))
		}
		c.maps[name] = m
	}
	if err := c.setInboundPorts(opts.InboundPorts); err != nil {
		return nil, err
	}

	hooks := []ebpfHook{
		{name: linkGetsockopt, typ: ebpf.CGroupSockopt, attach: ebpf.AttachCGroupGetsockopt, label: "cgroup/getsockopt", insns: getsockoptProgram(), cgroup: lookup},
	}
	// The sockops program must see the captured client sockets (to record
	// them once established) and the connections accepted on the capture
	// port (to delete the records when they close): one attachment when
	// one cgroup contains the other, since a program attached to a cgroup
	// runs for its descendants too, two otherwise.
	sockops := func(name, cgroup string) ebpfHook {
		return ebpfHook{name: name, typ: ebpf.SockOps, attach: ebpf.AttachCGroupSockOps, label: "sockops", insns: sockOpsProgram(opts.OutboundPort), cgroup: cgroup}
	}
	switch {
	case ebpfCgroupContains(lookup, target):
		hooks = append(hooks, sockops(linkSockOps, lookup))
	case ebpfCgroupContains(target, lookup):
		hooks = append(hooks, sockops(linkSockOps, target))
	default:
		hooks = append(hooks, sockops(linkSockOps, target), sockops(linkSockOpsLookup, lookup))
	}
	hooks = append(hooks,
		ebpfHook{name: linkConnect4, typ: ebpf.CGroupSockAddr, attach: ebpf.AttachCGroupInet4Connect, label: "cgroup/connect4", insns: connectProgram(false, opts.OutboundPort, opts.ExcludeMark), cgroup: target},
		ebpfHook{name: linkConnect6, typ: ebpf.CGroupSockAddr, attach: ebpf.AttachCGroupInet6Connect, label: "cgroup/connect6", insns: connectProgram(true, opts.OutboundPort, opts.ExcludeMark), cgroup: target},
	)
	if len(opts.InboundPorts) > 0 {
		hooks = append(hooks, ebpfHook{name: linkSkLookup, typ: ebpf.SkLookup, attach: ebpf.AttachSkLookup, label: "sk_lookup", insns: skLookupProgram()})
	}
	for _, h := range hooks {
		if err := c.attach(h); err != nil {
			return nil, err
		}
	}
	// A pinned capture taken over may have links this configuration does
	// not want any more.
	if opts.Pin != "" {
		for _, name := range ebpfLinks {
			if !slices.ContainsFunc(hooks, func(h ebpfHook) bool { return h.name == name }) {
				if err := removePinnedEBPFLink(opts.Pin, name); err != nil {
					return nil, err
				}
			}
		}
	}
	return c, nil
}

// attach loads h's program and attaches it, or updates the pinned link
// already in place for the same target.
func (c *EBPFCapture) attach(h ebpfHook) error {
	insns := slices.Clone(h.insns)
	for name, m := range c.maps {
		if err := insns.AssociateMap(name, m); err != nil && !errors.Is(err, asm.ErrUnreferencedSymbol) {
			return fmt.Errorf("ebpf: %s: %w", h.name, err)
		}
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "realipd_" + h.name,
		Type:         h.typ,
		AttachType:   h.attach,
		Instructions: insns,
		License:      "Apache-2.0", // no GPL-only helper is called
	})
	if err != nil {
		return fmt.Errorf("ebpf: loading the %s program: %w", h.name, ebpfPermissionHint(err))
	}
	defer prog.Close() // the link holds its own reference

	var (
		l      link.Link
		netns  *os.File
		pinned = filepath.Join(c.opts.Pin, linkFilePrefix+h.name)
	)
	if h.cgroup == "" {
		path := c.opts.NetNS
		if path == "" {
			path = defaultNetNSOfThread
		}
		if netns, err = os.Open(path); err != nil {
			return fmt.Errorf("ebpf: opening the network namespace for sk_lookup: %w", err)
		}
		defer netns.Close()
	}
	if c.opts.Pin != "" {
		if old, err := link.LoadPinnedLink(pinned, nil); err == nil {
			if ebpfSameTarget(old, h, netns) {
				if err := old.Update(prog); err != nil {
					old.Close()
					return fmt.Errorf("ebpf: replacing the program of the pinned link %s: %w", pinned, err)
				}
				c.links[h.name] = old
				return nil
			}
			// Pinned for another cgroup or netns: replace it.
			_ = detachEBPFLink(old)
			_ = old.Unpin()
			old.Close()
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("ebpf: loading the pinned link %s: %w", pinned, err)
		}
	}
	if h.cgroup != "" {
		l, err = link.AttachCgroup(link.CgroupOptions{Path: h.cgroup, Attach: h.attach, Program: prog})
		if err != nil {
			return fmt.Errorf("ebpf: attaching %s to the cgroup %s: %w", h.label, h.cgroup, ebpfPermissionHint(err))
		}
	} else {
		l, err = link.AttachNetNs(int(netns.Fd()), prog)
		if err != nil {
			return fmt.Errorf("ebpf: attaching sk_lookup to the network namespace: %w", ebpfPermissionHint(err))
		}
	}
	c.links[h.name] = l
	if c.opts.Pin != "" {
		c.newPins = append(c.newPins, pinned)
		if err := l.Pin(pinned); err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) {
				return fmt.Errorf("ebpf: pinning %s needs BPF links for cgroups (Linux 5.7+): %w", h.name, err)
			}
			return fmt.Errorf("ebpf: pinning %s at %s: %w", h.name, pinned, err)
		}
	}
	return nil
}

// ebpfSameTarget reports whether the pinned link l is attached where h goes.
func ebpfSameTarget(l link.Link, h ebpfHook, netns *os.File) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	if h.cgroup != "" {
		cg := info.Cgroup()
		if cg == nil || uint32(cg.AttachType) != uint32(h.attach) {
			return false
		}
		id, err := ebpfCgroupID(h.cgroup)
		return err == nil && id == cg.CgroupId
	}
	ns := info.NetNs()
	if ns == nil {
		return false
	}
	var st unix.Stat_t
	return unix.Fstat(int(netns.Fd()), &st) == nil && uint64(ns.NetnsInode) == st.Ino
}

// ebpfCgroupID is the kernel's id of a cgroup v2 directory: its inode number.
func ebpfCgroupID(dir string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// ebpfCgroupDir joins mount and a cgroup path and checks that it is a cgroup v2
// directory.
func ebpfCgroupDir(mount, rel string) (string, error) {
	dir := filepath.Join(mount, filepath.Clean("/"+rel))
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return "", fmt.Errorf("ebpf: the cgroup %s: %w", dir, err)
	}
	if uint32(fs.Type) != cgroup2SuperMagic {
		return "", fmt.Errorf("ebpf: %s is not in a cgroup v2 file system (the cgroup2 mount is given by /proc/mounts)", dir)
	}
	return dir, nil
}

// ebpfCgroupContains reports whether the cgroup directory outer is inner or
// one of its ancestors.
func ebpfCgroupContains(outer, inner string) bool {
	return outer == inner || strings.HasPrefix(inner, strings.TrimSuffix(outer, "/")+"/")
}

// ebpfEnsureBPFFS creates the pin directory and checks that it is on a bpffs.
func ebpfEnsureBPFFS(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("ebpf: the pin directory: %w", err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("ebpf: the pin directory: %w", err)
	}
	if uint32(fs.Type) != bpfFSMagic {
		return fmt.Errorf("ebpf: the pin directory %s is not on a bpffs (mount one with: mount -t bpf bpf /sys/fs/bpf)", dir)
	}
	return nil
}

// setInboundPorts makes the inbound_ports map hold exactly ports.
func (c *EBPFCapture) setInboundPorts(ports []uint16) error {
	m := c.maps[mapInPorts]
	var stale []uint32
	var key, val uint32
	it := m.Iterate()
	for it.Next(&key, &val) {
		if !slices.Contains(ports, uint16(key)) || key > 0xffff {
			stale = append(stale, key)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("ebpf: reading the inbound ports: %w", err)
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("ebpf: removing inbound port %d: %w", k, err)
		}
	}
	for _, p := range ports {
		if err := m.Put(uint32(p), uint32(1)); err != nil {
			return fmt.Errorf("ebpf: adding inbound port %d: %w", p, err)
		}
	}
	return nil
}

// SetInboundListener makes l, a TCP listener in the namespace of the
// sk_lookup program, the socket that inbound connections to the inbound
// ports are steered to: an IPv4 listener takes IPv4 connections, an IPv6
// one IPv6 connections and, when it is dual stack and no IPv4 listener is
// set, IPv4 ones too. The map holds its own reference to the socket until
// the socket is closed.
func (c *EBPFCapture) SetInboundListener(l syscall.Conn) error {
	rc, err := l.SyscallConn()
	if err != nil {
		return err
	}
	var (
		family int
		putErr error
	)
	ctlErr := rc.Control(func(fd uintptr) {
		sa, err := unix.Getsockname(int(fd))
		if err != nil {
			putErr = err
			return
		}
		proto, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err == nil && proto != unix.IPPROTO_TCP {
			putErr = fmt.Errorf("the listener's protocol is %d, not TCP (Go listens with MPTCP by default since 1.24: use a net.ListenConfig with SetMultipathTCP(false))", proto)
			return
		}
		slot := uint32(0)
		if _, ok := sa.(*unix.SockaddrInet6); ok {
			slot, family = 1, unix.AF_INET6
		} else {
			family = unix.AF_INET
		}
		putErr = c.maps[mapInSocks].Put(slot, uint64(fd))
	})
	if ctlErr != nil {
		return ctlErr
	}
	if putErr != nil {
		return fmt.Errorf("ebpf: adding the inbound listener (family %d) to the sockmap: %w", family, putErr)
	}
	return nil
}

// Counters reads the capture's counters.
func (c *EBPFCapture) Counters() (EBPFCounters, error) {
	return readEBPFCounters(c.maps[mapCounters])
}

// Links describes the attached programs.
func (c *EBPFCapture) Links() []EBPFLink {
	var out []EBPFLink
	for _, name := range ebpfLinks {
		if l, ok := c.links[name]; ok {
			out = append(out, describeEBPFLink(name, l, c.opts.Cgroup2Mount))
		}
	}
	return out
}

// Pinned reports whether the capture is pinned (Close leaves it attached).
func (c *EBPFCapture) Pinned() bool { return c.opts.Pin != "" }

// Close releases the capture. Unpinned, it detaches every program (the
// connect hooks first); pinned, it only closes this process's handles and
// the capture stays attached.
func (c *EBPFCapture) Close() error {
	return c.closeFDs(c.opts.Pin == "")
}

func (c *EBPFCapture) closeFDs(detach bool) error {
	var errs []error
	for _, name := range slices.Backward(ebpfLinks) {
		if l, ok := c.links[name]; ok {
			if err := l.Close(); err != nil && detach {
				errs = append(errs, fmt.Errorf("detaching %s: %w", name, err))
			}
			delete(c.links, name)
		}
	}
	for name, m := range c.maps {
		m.Close()
		delete(c.maps, name)
	}
	return errors.Join(errs...)
}

// DetachEBPF removes the capture pinned in dir: it detaches every pinned
// link (the connect hooks first), so that no connect is captured once it
// returns, and removes the pins of the links and maps. It returns
// ErrEBPFNotPinned when dir holds none of them.
func DetachEBPF(dir string) error {
	found := false
	var errs []error
	for _, name := range slices.Backward(ebpfLinks) {
		path := filepath.Join(dir, linkFilePrefix+name)
		if _, err := os.Stat(path); err != nil {
			continue
		}
		found = true
		if err := removePinnedEBPFLink(dir, name); err != nil {
			errs = append(errs, err)
		}
	}
	for name := range ebpfMapSpecs() {
		path := filepath.Join(dir, name)
		if _, err := os.Stat(path); err != nil {
			continue
		}
		found = true
		if err := os.Remove(path); err != nil {
			errs = append(errs, fmt.Errorf("ebpf: unpinning %s: %w", path, err))
		}
	}
	if !found {
		return fmt.Errorf("ebpf: %s: %w", dir, ErrEBPFNotPinned)
	}
	return errors.Join(errs...)
}

// removePinnedEBPFLink detaches the link pinned in dir under name, then
// removes the pin; nothing pinned there is no error.
func removePinnedEBPFLink(dir, name string) error {
	path := filepath.Join(dir, linkFilePrefix+name)
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ebpf: loading the pinned link %s: %w", path, ebpfPermissionHint(err))
	}
	defer l.Close()
	if err := detachEBPFLink(l); err != nil {
		return fmt.Errorf("ebpf: detaching the pinned link %s: %w", path, err)
	}
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("ebpf: unpinning %s: %w", path, err)
	}
	return nil
}

// detachEBPFLink detaches l from its cgroup or namespace at once
// (BPF_LINK_DETACH). Dropping the last reference to a link detaches it
// too, but not at once when that reference is a pin: the kernel frees an
// unlinked bpffs file after an RCU grace period and releases the link
// from a work queue, so a connect made meanwhile, right after "detach"
// returned, would still be captured. A kernel without BPF_LINK_DETACH
// (before 5.9, where the capture cannot run anyway) is left to that.
func detachEBPFLink(l link.Link) error {
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	return nil
}

// EBPFStatus describes the capture pinned in dir, or returns
// ErrEBPFNotPinned.
func EBPFStatus(dir string) (*EBPFState, error) {
	st := &EBPFState{Pin: dir}
	mount, _ := FindCgroup2Mount()
	for _, name := range ebpfLinks {
		l, err := link.LoadPinnedLink(filepath.Join(dir, linkFilePrefix+name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("ebpf: loading the pinned link %s: %w", name, ebpfPermissionHint(err))
		}
		st.Links = append(st.Links, describeEBPFLink(name, l, mount))
		l.Close()
	}
	counters, err := ebpf.LoadPinnedMap(filepath.Join(dir, mapCounters), &ebpf.LoadPinOptions{ReadOnly: true})
	if err == nil {
		st.Counters, err = readEBPFCounters(counters)
		counters.Close()
		if err != nil {
			return nil, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("ebpf: loading the pinned counters: %w", ebpfPermissionHint(err))
	}
	if ports, err := ebpf.LoadPinnedMap(filepath.Join(dir, mapInPorts), &ebpf.LoadPinOptions{ReadOnly: true}); err == nil {
		var key, val uint32
		it := ports.Iterate()
		for it.Next(&key, &val) {
			st.InboundPorts = append(st.InboundPorts, uint16(key))
		}
		ports.Close()
		slices.Sort(st.InboundPorts)
	}
	if len(st.Links) == 0 && errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("ebpf: %s: %w", dir, ErrEBPFNotPinned)
	}
	return st, nil
}

func describeEBPFLink(name string, l link.Link, mount string) EBPFLink {
	out := EBPFLink{Name: name, Hook: ebpfHookLabel(name)}
	info, err := l.Info()
	if err != nil {
		return out
	}
	out.LinkID, out.ProgramID = uint32(info.ID), uint32(info.Program)
	if cg := info.Cgroup(); cg != nil {
		out.Target = "cgroup id " + strconv.FormatUint(cg.CgroupId, 10)
		if p := ebpfCgroupPathByID(mount, cg.CgroupId); p != "" {
			out.Target = p
		}
	} else if ns := info.NetNs(); ns != nil {
		out.Target = "netns inode " + strconv.FormatUint(uint64(ns.NetnsInode), 10)
	}
	return out
}

func ebpfHookLabel(name string) string {
	switch name {
	case linkGetsockopt:
		return "cgroup/getsockopt"
	case linkSockOps, linkSockOpsLookup:
		return "sockops"
	case linkConnect4:
		return "cgroup/connect4"
	case linkConnect6:
		return "cgroup/connect6"
	case linkSkLookup:
		return "sk_lookup"
	}
	return name
}

// ebpfCgroupPathByID finds the cgroup with the given id (inode) under mount,
// relative to it; "" when not found. The walk stops early at the match.
func ebpfCgroupPathByID(mount string, id uint64) string {
	if mount == "" {
		return ""
	}
	found := ""
	_ = filepath.WalkDir(mount, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if cid, err := ebpfCgroupID(path); err == nil && cid == id {
			rel, _ := filepath.Rel(mount, path)
			found = filepath.Clean("/" + rel)
			return filepath.SkipAll
		}
		return nil
	})
	return found
}

func readEBPFCounters(m *ebpf.Map) (EBPFCounters, error) {
	var sums [numCounters]uint64
	for i := range sums {
		var perCPU []uint64
		if err := m.Lookup(uint32(i), &perCPU); err != nil {
			return EBPFCounters{}, fmt.Errorf("ebpf: reading counter %d: %w", i, err)
		}
		for _, v := range perCPU {
			sums[i] += v
		}
	}
	return EBPFCounters{
		Captured: sums[counterCaptured],
		Excluded: sums[counterExcluded],
		Recorded: sums[counterRecorded],
		Answered: sums[counterAnswered],
		Missed:   sums[counterMissed],
		Steered:  sums[counterSteered],
	}, nil
}

// ebpfPermissionHint adds the capabilities needed to an EPERM or EACCES.
func ebpfPermissionHint(err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w (loading and attaching the capture needs CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN on kernels before 5.8; run as root or grant them)", err)
	}
	return err
}

// ebpfRequirement is one kernel feature the capture needs.
type ebpfRequirement struct {
	what  string
	probe func() error
}

func ebpfOutboundRequirements() []ebpfRequirement {
	helper := func(pt ebpf.ProgramType, fn asm.BuiltinFunc) func() error {
		return func() error { return features.HaveProgramHelper(pt, fn) }
	}
	return []ebpfRequirement{
		{"LRU hash maps (Linux 4.10)", func() error { return features.HaveMapType(ebpf.LRUHash) }},
		{"per-CPU arrays (Linux 4.6)", func() error { return features.HaveMapType(ebpf.PerCPUArray) }},
		{"cgroup connect hooks, BPF_PROG_TYPE_CGROUP_SOCK_ADDR (Linux 4.17)", func() error { return features.HaveProgramType(ebpf.CGroupSockAddr) }},
		{"bpf_get_socket_cookie in connect hooks (Linux 5.0)", helper(ebpf.CGroupSockAddr, asm.FnGetSocketCookie)},
		{"bpf_get_netns_cookie in connect hooks (Linux 5.7)", helper(ebpf.CGroupSockAddr, asm.FnGetNetnsCookie)},
		{"sockops programs, BPF_PROG_TYPE_SOCK_OPS (Linux 4.13)", func() error { return features.HaveProgramType(ebpf.SockOps) }},
		{"bpf_sock_ops_cb_flags_set (Linux 4.16)", helper(ebpf.SockOps, asm.FnSockOpsCbFlagsSet)},
		{"bpf_get_socket_cookie in sockops (Linux 5.0)", helper(ebpf.SockOps, asm.FnGetSocketCookie)},
		{"bpf_get_netns_cookie in sockops (Linux 5.15)", helper(ebpf.SockOps, asm.FnGetNetnsCookie)},
		{"cgroup getsockopt hooks, BPF_PROG_TYPE_CGROUP_SOCKOPT (Linux 5.3)", func() error { return features.HaveProgramType(ebpf.CGroupSockopt) }},
		{"bpf_get_netns_cookie in getsockopt hooks (Linux 5.9)", helper(ebpf.CGroupSockopt, asm.FnGetNetnsCookie)},
	}
}

func ebpfInboundRequirements() []ebpfRequirement {
	return []ebpfRequirement{
		{"sockmaps (Linux 4.14)", func() error { return features.HaveMapType(ebpf.SockMap) }},
		{"sk_lookup programs, BPF_PROG_TYPE_SK_LOOKUP (Linux 5.9)", func() error { return features.HaveProgramType(ebpf.SkLookup) }},
		{"bpf_sk_assign in sk_lookup (Linux 5.9)", func() error { return features.HaveProgramHelper(ebpf.SkLookup, asm.FnSkAssign) }},
	}
}

// ProbeEBPF checks that this kernel, with this process's privileges, has
// every feature the capture uses (inbound: also the sk_lookup steering).
// The error names the first one missing, or the capabilities needed.
func ProbeEBPF(inbound bool) error {
	reqs := ebpfOutboundRequirements()
	if inbound {
		reqs = append(reqs, ebpfInboundRequirements()...)
	}
	for _, r := range reqs {
		err := r.probe()
		switch {
		case err == nil:
		case errors.Is(err, ebpf.ErrNotSupported):
			return fmt.Errorf("ebpf: this kernel lacks %s: %w", r.what, err)
		case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
			return fmt.Errorf("ebpf: this process may not use BPF: the capture needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN on kernels before 5.8); run as root or grant them (probing %s: %w)", r.what, err)
		default:
			return fmt.Errorf("ebpf: probing %s: %w", r.what, err)
		}
	}
	return nil
}
