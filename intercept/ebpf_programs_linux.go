package intercept

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// The BPF programs of the eBPF capture, written with cilium/ebpf's asm
// package: nothing is generated and no C toolchain is needed. Each program
// is built for one configuration (capture port and exclusion mark are
// immediates) and verified by the kernel when loaded.
//
// The maps they share (see ebpfMapSpecs):
//
//	origdst_cookie  LRU hash: socket cookie of a captured client socket → origValue
//	origdst_pair    LRU hash: pairKey (client, capture address, netns) → origValue
//	counters        per-CPU array of uint64, indexed by the counter* constants
//	inbound_ports   hash: local TCP port (uint32, host order) → 1
//	inbound_sockets sockmap: 0 = IPv4 capture listener, 1 = IPv6 (dual stack)
//
// Addresses are kept as 16 bytes, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d),
// so that a v4 connection made from an AF_INET6 socket and looked up from an
// AF_INET socket (or the reverse) finds the same entry. Ports are in network
// byte order.

// Layout of origValue (32 bytes).
const (
	valAddr  = 0  // [16]byte original destination
	valPort  = 16 // be16 original destination port
	valNetns = 24 // uint64 netns cookie of the client socket
	valSize  = 32
)

// Layout of pairKey (48 bytes).
const (
	keyClient     = 0  // [16]byte client address
	keyServer     = 16 // [16]byte capture address the client reached
	keyClientPort = 32 // be16
	keyServerPort = 34 // be16
	keyPad        = 36 // uint32, zero
	keyNetns      = 40 // uint64 netns cookie
	keySize       = 48
)

// Counter indices.
const (
	counterCaptured = iota // connects rewritten to the capture port
	counterExcluded        // connects left alone because of the exclusion mark
	counterRecorded        // established captured connections recorded for lookup
	counterAnswered        // SO_ORIGINAL_DST answered from the map
	counterMissed          // SO_ORIGINAL_DST asked, no entry (the kernel's answer stands)
	counterSteered         // inbound connections steered by sk_lookup
	numCounters
)

// Kernel constants not in x/sys/unix.
const (
	skPass      = 1    // SK_PASS, the sk_lookup verdict that lets the lookup go on
	pageSizeMin = 4096 // the smallest page: a getsockopt buffer above it is not all seen
)

// Offsets in the program contexts (include/uapi/linux/bpf.h; checked
// against this kernel's BTF by TestEBPFContextLayout).
const (
	// struct bpf_sock_addr
	saUserIP4  = 4
	saUserIP6  = 8
	saUserPort = 24
	saType     = 32
	saProtocol = 36
	saSk       = 64
	// struct bpf_sock
	skFamily   = 4
	skProtocol = 12
	skMark     = 16
	skSrcIP4   = 24
	skSrcIP6   = 28
	skSrcPort  = 44 // host order
	skDstPort  = 48 // be16
	skDstIP4   = 52
	skDstIP6   = 56
	// struct bpf_sock_ops
	soOp        = 0
	soArgs1     = 8 // args[1]: the new state in BPF_SOCK_OPS_STATE_CB
	soFamily    = 20
	soRemoteIP4 = 24
	soLocalIP4  = 28
	soRemoteIP6 = 32
	soLocalIP6  = 48
	soRemotePrt = 64 // be16 in the upper half on little-endian hosts
	soLocalPort = 68 // host order
	soCbFlags   = 84
	// struct bpf_sockopt
	sopSk        = 0
	sopOptval    = 8
	sopOptvalEnd = 16
	sopLevel     = 24
	sopOptname   = 28
	sopOptlen    = 32
	sopRetval    = 36
	// struct bpf_sk_lookup
	slFamily    = 8
	slProtocol  = 12
	slLocalIP4  = 40
	slLocalIP6  = 44
	slLocalPort = 60
)

// Map names (also the pinned file names, with a "map_" prefix).
const (
	mapCookie   = "origdst_cookie"
	mapPair     = "origdst_pair"
	mapCounters = "counters"
	mapInPorts  = "inbound_ports"
	mapInSocks  = "inbound_sockets"
)

// ebpfMaxEntries bounds the two lookup maps: an entry that is never
// removed (a captured connect that failed, a connection the capture
// listener never accepted) is evicted, least recently used first, once
// this many exist. A record is needed only from the connect until the
// capture listener's getsockopt right after accept, so the bound is on
// connections waiting to be accepted, not on open ones. LRU maps are
// preallocated: the two take about 3.5 MB of kernel memory.
const ebpfMaxEntries = 16384

// maxInboundPorts bounds intercept.ebpf.inbound_ports.
const maxInboundPorts = 1024

func ebpfMapSpecs() map[string]*ebpf.MapSpec {
	return map[string]*ebpf.MapSpec{
		mapCookie:   {Name: mapCookie, Type: ebpf.LRUHash, KeySize: 8, ValueSize: valSize, MaxEntries: ebpfMaxEntries},
		mapPair:     {Name: mapPair, Type: ebpf.LRUHash, KeySize: keySize, ValueSize: valSize, MaxEntries: ebpfMaxEntries},
		mapCounters: {Name: mapCounters, Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: numCounters},
		mapInPorts:  {Name: mapInPorts, Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: maxInboundPorts},
		mapInSocks:  {Name: mapInSocks, Type: ebpf.SockMap, KeySize: 4, ValueSize: 8, MaxEntries: 2},
	}
}

// Values whose in-register form depends on the host's byte order: a
// 4-byte word loaded from network-order bytes b.
func nativeWord(b0, b1, b2, b3 byte) int32 {
	return int32(binary.NativeEndian.Uint32([]byte{b0, b1, b2, b3}))
}

var (
	bpfLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1
	mappedWord      = nativeWord(0, 0, 0xff, 0xff) // the third word of ::ffff:0:0/96
	loopback4       = nativeWord(127, 0, 0, 1)
	loopback6w3     = nativeWord(0, 0, 0, 1) // the last word of ::1
)

// nativePort is the value a 4-byte load of a be16 port field yields.
func nativePort(port uint16) int32 {
	return int32(binary.NativeEndian.Uint16([]byte{byte(port >> 8), byte(port)}))
}

// bpfBuilder collects instructions; label names the next instruction added.
type bpfBuilder struct {
	insns   asm.Instructions
	pending string
	n       int
}

func (b *bpfBuilder) add(ins ...asm.Instruction) {
	for _, in := range ins {
		if b.pending != "" {
			in = in.WithSymbol(b.pending)
			b.pending = ""
		}
		b.insns = append(b.insns, in)
	}
}

func (b *bpfBuilder) label(name string) {
	if b.pending != "" {
		b.add(asm.Ja.Label(name)) // two labels on one spot: a jump to the next
	}
	b.pending = name
}

// uniq returns a label name not used before.
func (b *bpfBuilder) uniq(prefix string) string {
	b.n++
	return fmt.Sprintf("%s_%d", prefix, b.n)
}

// count adds 1 to counter idx. It clobbers R0-R5 and the stack slot at
// fp-60.
func (b *bpfBuilder) count(idx int32) {
	done := b.uniq("counted")
	b.add(
		asm.StoreImm(asm.RFP, -60, int64(idx), asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapCounters),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -60),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, done),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
	)
	b.label(done)
}

// mapped stores the IPv4 address in src (a register holding the 4 bytes
// as loaded) as ::ffff:a.b.c.d at fp+off.
func (b *bpfBuilder) mapped(off int16, src asm.Register) {
	b.add(
		asm.StoreImm(asm.RFP, off, 0, asm.Word),
		asm.StoreImm(asm.RFP, off+4, 0, asm.Word),
		asm.StoreImm(asm.RFP, off+8, int64(mappedWord), asm.Word),
		asm.StoreMem(asm.RFP, off+12, src, asm.Word),
	)
}

// copy16 copies 16 bytes from src+soff to fp+doff, through R2.
func (b *bpfBuilder) copy16(doff int16, src asm.Register, soff int16) {
	for i := int16(0); i < 16; i += 4 {
		b.add(
			asm.LoadMem(asm.R2, src, soff+i, asm.Word),
			asm.StoreMem(asm.RFP, doff+i, asm.R2, asm.Word),
		)
	}
}

func (b *bpfBuilder) pass() {
	b.add(asm.Mov.Imm(asm.R0, 1), asm.Return())
}

// Stack layout shared by the programs (offsets from the frame pointer).
const (
	stKey   = -56 // pairKey, 48 bytes: fp-56 .. fp-8
	stValue = -40 // origValue in connect: fp-40 .. fp-8
	stU64   = -8  // a cookie
)

// connectProgram rewrites the TCP connects of an AF_INET (v6 false) or
// AF_INET6 socket to the loopback capture port and records the original
// destination under the socket's cookie. Loopback destinations and sockets
// carrying excludeMark (when it is not 0) are left alone.
func connectProgram(v6 bool, port uint16, excludeMark uint32) asm.Instructions {
	b := &bpfBuilder{}
	b.add(
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, saType, asm.Word),
		asm.JNE.Imm(asm.R2, unix.SOCK_STREAM, "pass"),
		asm.LoadMem(asm.R2, asm.R6, saProtocol, asm.Word),
		asm.JNE.Imm(asm.R2, unix.IPPROTO_TCP, "pass"),
	)
	if !v6 {
		// 127.0.0.0/8 is never captured: the capture listener and the
		// local services live there.
		b.add(
			asm.LoadMem(asm.R2, asm.R6, saUserIP4, asm.Byte),
			asm.JEq.Imm(asm.R2, 127, "pass"),
		)
	} else {
		// R7 = 1 when the destination is IPv4-mapped.
		b.add(
			asm.Mov.Imm(asm.R7, 0),
			asm.LoadMem(asm.R2, asm.R6, saUserIP6, asm.Word),
			asm.JNE.Imm(asm.R2, 0, "native6"),
			asm.LoadMem(asm.R2, asm.R6, saUserIP6+4, asm.Word),
			asm.JNE.Imm(asm.R2, 0, "native6"),
			asm.LoadMem(asm.R2, asm.R6, saUserIP6+8, asm.Word),
			asm.JEq.Imm32(asm.R2, mappedWord, "mapped6"),
			asm.JNE.Imm(asm.R2, 0, "native6"),
			asm.LoadMem(asm.R2, asm.R6, saUserIP6+12, asm.Word),
			asm.JEq.Imm32(asm.R2, loopback6w3, "pass"), // ::1
			asm.Ja.Label("native6"),
		)
		b.label("mapped6")
		b.add(
			asm.Mov.Imm(asm.R7, 1),
			asm.LoadMem(asm.R2, asm.R6, saUserIP6+12, asm.Byte),
			asm.JEq.Imm(asm.R2, 127, "pass"), // ::ffff:127.0.0.0/104
		)
		b.label("native6")
	}
	// The exclusion mark: ctx->sk->mark. Mark 0 excludes nothing: every
	// unmarked socket carries it, so comparing with it would capture none.
	if excludeMark != 0 {
		b.add(
			asm.LoadMem(asm.R2, asm.R6, saSk, asm.DWord),
			asm.JEq.Imm(asm.R2, 0, "unmarked"),
			asm.LoadMem(asm.R3, asm.R2, skMark, asm.Word),
			asm.JNE.Imm32(asm.R3, int32(excludeMark), "unmarked"),
		)
		b.count(counterExcluded)
		b.pass()
	}

	b.label("unmarked")
	// The original destination, keyed by the socket cookie.
	b.add(
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, stU64, asm.R0, asm.DWord),
	)
	if !v6 {
		b.add(asm.LoadMem(asm.R3, asm.R6, saUserIP4, asm.Word))
		b.mapped(stValue+valAddr, asm.R3)
	} else {
		b.copy16(stValue+valAddr, asm.R6, saUserIP6)
	}
	b.add(
		asm.LoadMem(asm.R2, asm.R6, saUserPort, asm.Word),
		asm.StoreMem(asm.RFP, stValue+valPort, asm.R2, asm.Half),
		asm.StoreImm(asm.RFP, stValue+valPort+2, 0, asm.Half),
		asm.StoreImm(asm.RFP, stValue+valPort+4, 0, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetNetnsCookie.Call(),
		asm.StoreMem(asm.RFP, stValue+valNetns, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapCookie),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stU64),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, stValue),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnMapUpdateElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "pass"), // not recorded: do not redirect what cannot be looked up
	)
	// Rewrite the destination.
	if !v6 {
		b.add(
			asm.Mov.Imm32(asm.R2, loopback4),
			asm.StoreMem(asm.R6, saUserIP4, asm.R2, asm.Word),
		)
	} else {
		b.add(
			asm.Mov.Imm32(asm.R2, loopback4),
			asm.JNE.Imm(asm.R7, 0, "write_w3"),
			asm.Mov.Imm(asm.R3, 0),
			asm.StoreMem(asm.R6, saUserIP6, asm.R3, asm.Word),
			asm.StoreMem(asm.R6, saUserIP6+4, asm.R3, asm.Word),
			asm.StoreMem(asm.R6, saUserIP6+8, asm.R3, asm.Word),
			asm.Mov.Imm32(asm.R2, loopback6w3),
		)
		b.label("write_w3")
		b.add(asm.StoreMem(asm.R6, saUserIP6+12, asm.R2, asm.Word))
	}
	b.add(
		asm.Mov.Imm32(asm.R2, nativePort(port)),
		asm.StoreMem(asm.R6, saUserPort, asm.R2, asm.Word),
	)
	b.count(counterCaptured)
	b.label("pass")
	b.pass()
	return b.insns
}

// sockOpsProgram moves the record of a captured connection, once it is
// established, from the client socket's cookie to the connection's
// addresses (as the capture listener's accepted socket sees them, reversed),
// and deletes it when the accepted socket on the capture port closes.
func sockOpsProgram(port uint16) asm.Instructions {
	b := &bpfBuilder{}
	b.add(
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, soOp, asm.Word),
		asm.JEq.Imm(asm.R2, unix.BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, "active"),
		asm.JEq.Imm(asm.R2, unix.BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, "passive"),
		asm.JEq.Imm(asm.R2, unix.BPF_SOCK_OPS_STATE_CB, "state"),
	)
	b.pass()

	// remotePort loads the be16 remote port into R2.
	remotePort := func() {
		b.add(asm.LoadMem(asm.R2, asm.R6, soRemotePrt, asm.Word))
		if bpfLittleEndian {
			b.add(asm.RSh.Imm(asm.R2, 16))
		}
	}
	// addrs stores the client and server addresses at the key's slots:
	// the local side is the client when active.
	addrs := func(active bool) {
		clientIP4, serverIP4, clientIP6, serverIP6 := int16(soRemoteIP4), int16(soLocalIP4), int16(soRemoteIP6), int16(soLocalIP6)
		if active {
			clientIP4, serverIP4, clientIP6, serverIP6 = soLocalIP4, soRemoteIP4, soLocalIP6, soRemoteIP6
		}
		v6, done := b.uniq("v6"), b.uniq("addrs")
		b.add(
			asm.LoadMem(asm.R2, asm.R6, soFamily, asm.Word),
			asm.JEq.Imm(asm.R2, unix.AF_INET6, v6),
			asm.LoadMem(asm.R3, asm.R6, clientIP4, asm.Word),
		)
		b.mapped(stKey+keyClient, asm.R3)
		b.add(asm.LoadMem(asm.R3, asm.R6, serverIP4, asm.Word))
		b.mapped(stKey+keyServer, asm.R3)
		b.add(asm.Ja.Label(done))
		b.label(v6)
		b.copy16(stKey+keyClient, asm.R6, clientIP6)
		b.copy16(stKey+keyServer, asm.R6, serverIP6)
		b.label(done)
		b.add(asm.StoreImm(asm.RFP, stKey+keyPad, 0, asm.Word))
	}

	// Active side: the client socket is established.
	b.label("active")
	b.add(
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, stU64, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapCookie),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stU64),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(asm.R7, asm.R0),
	)
	addrs(true)
	b.add(
		asm.LoadMem(asm.R2, asm.R6, soLocalPort, asm.Word),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.StoreMem(asm.RFP, stKey+keyClientPort, asm.R2, asm.Half),
	)
	remotePort()
	b.add(
		asm.StoreMem(asm.RFP, stKey+keyServerPort, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.R7, valNetns, asm.DWord),
		asm.StoreMem(asm.RFP, stKey+keyNetns, asm.R2, asm.DWord),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapPair),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stKey),
		asm.Mov.Reg(asm.R3, asm.R7),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapCookie),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stU64),
		asm.FnMapDeleteElem.Call(),
		asm.JNE.Imm(asm.R8, 0, "pass"),
	)
	b.count(counterRecorded)
	b.pass()

	// Passive side: a connection accepted on the capture port asks for its
	// state changes, to delete the record when it closes.
	b.label("passive")
	b.add(
		asm.LoadMem(asm.R2, asm.R6, soLocalPort, asm.Word),
		asm.JNE.Imm(asm.R2, int32(port), "pass"),
		asm.LoadMem(asm.R2, asm.R6, soCbFlags, asm.Word),
		asm.Or.Imm(asm.R2, unix.BPF_SOCK_OPS_STATE_CB_FLAG),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnSockOpsCbFlagsSet.Call(),
	)
	b.pass()

	b.label("state")
	b.add(
		asm.LoadMem(asm.R2, asm.R6, soArgs1, asm.Word),
		asm.JNE.Imm(asm.R2, unix.BPF_TCP_CLOSE, "pass"),
		asm.LoadMem(asm.R2, asm.R6, soLocalPort, asm.Word),
		asm.JNE.Imm(asm.R2, int32(port), "pass"),
	)
	addrs(false)
	remotePort()
	b.add(
		asm.StoreMem(asm.RFP, stKey+keyClientPort, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.R6, soLocalPort, asm.Word),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.StoreMem(asm.RFP, stKey+keyServerPort, asm.R2, asm.Half),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetNetnsCookie.Call(),
		asm.StoreMem(asm.RFP, stKey+keyNetns, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapPair),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stKey),
		asm.FnMapDeleteElem.Call(),
	)
	b.label("pass")
	b.pass()
	return b.insns
}

// getsockoptProgram answers getsockopt(SOL_IP or SOL_IPV6,
// SO_ORIGINAL_DST) on a socket accepted from a captured connection with
// the recorded original destination. Every other call keeps the kernel's
// answer.
func getsockoptProgram() asm.Instructions {
	b := &bpfBuilder{}
	b.add(
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, sopOptlen, asm.Word),
		asm.JSGT.Imm32(asm.R2, pageSizeMin, "large"),
		asm.LoadMem(asm.R2, asm.R6, sopOptname, asm.Word),
		asm.JNE.Imm(asm.R2, unix.SO_ORIGINAL_DST, "pass"),
		asm.LoadMem(asm.R7, asm.R6, sopLevel, asm.Word),
		asm.JEq.Imm(asm.R7, unix.SOL_IP, "asked"),
		asm.JNE.Imm(asm.R7, unix.SOL_IPV6, "pass"),
	)
	b.label("asked")
	b.add(
		asm.LoadMem(asm.R8, asm.R6, sopSk, asm.DWord),
		asm.JEq.Imm(asm.R8, 0, "pass"),
		asm.LoadMem(asm.R2, asm.R8, skProtocol, asm.Word),
		asm.JNE.Imm(asm.R2, unix.IPPROTO_TCP, "pass"),
		asm.LoadMem(asm.R2, asm.R8, skFamily, asm.Word),
		asm.JEq.Imm(asm.R2, unix.AF_INET6, "key6"),
		asm.LoadMem(asm.R3, asm.R8, skDstIP4, asm.Word),
	)
	b.mapped(stKey+keyClient, asm.R3)
	b.add(asm.LoadMem(asm.R3, asm.R8, skSrcIP4, asm.Word))
	b.mapped(stKey+keyServer, asm.R3)
	b.add(asm.Ja.Label("ports"))
	b.label("key6")
	b.copy16(stKey+keyClient, asm.R8, skDstIP6)
	b.copy16(stKey+keyServer, asm.R8, skSrcIP6)
	b.label("ports")
	b.add(
		asm.LoadMem(asm.R2, asm.R8, skDstPort, asm.Half),
		asm.StoreMem(asm.RFP, stKey+keyClientPort, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.R8, skSrcPort, asm.Word),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.StoreMem(asm.RFP, stKey+keyServerPort, asm.R2, asm.Half),
		asm.StoreImm(asm.RFP, stKey+keyPad, 0, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetNetnsCookie.Call(),
		asm.StoreMem(asm.RFP, stKey+keyNetns, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapPair),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "missed"),
		asm.Mov.Reg(asm.R9, asm.R0),
		// R2 = optval, R3 = optval_end.
		asm.LoadMem(asm.R2, asm.R6, sopOptval, asm.DWord),
		asm.LoadMem(asm.R3, asm.R6, sopOptvalEnd, asm.DWord),
		asm.JEq.Imm(asm.R7, unix.SOL_IPV6, "answer6"),
		// SOL_IP: a struct sockaddr_in, for an IPv4 original destination.
		asm.LoadMem(asm.R4, asm.R9, valAddr, asm.Word),
		asm.JNE.Imm(asm.R4, 0, "missed"),
		asm.LoadMem(asm.R4, asm.R9, valAddr+4, asm.Word),
		asm.JNE.Imm(asm.R4, 0, "missed"),
		asm.LoadMem(asm.R4, asm.R9, valAddr+8, asm.Word),
		asm.JNE.Imm32(asm.R4, mappedWord, "missed"),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 16),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"), // the caller's buffer is too small: the kernel's answer stands
		asm.Mov.Imm(asm.R4, unix.AF_INET),
		asm.StoreMem(asm.R2, 0, asm.R4, asm.Half),
		asm.LoadMem(asm.R4, asm.R9, valPort, asm.Half),
		asm.StoreMem(asm.R2, 2, asm.R4, asm.Half),
		asm.LoadMem(asm.R4, asm.R9, valAddr+12, asm.Word),
		asm.StoreMem(asm.R2, 4, asm.R4, asm.Word),
		asm.Mov.Imm(asm.R4, 0),
		asm.StoreMem(asm.R2, 8, asm.R4, asm.Word),
		asm.StoreMem(asm.R2, 12, asm.R4, asm.Word),
		asm.Mov.Imm(asm.R4, 16),
		asm.Ja.Label("answered"),
	)
	// SOL_IPV6: a struct sockaddr_in6 (an IPv4 destination as ::ffff:a.b.c.d).
	b.label("answer6")
	b.add(
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 28),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.Mov.Imm(asm.R4, unix.AF_INET6),
		asm.StoreMem(asm.R2, 0, asm.R4, asm.Half),
		asm.LoadMem(asm.R4, asm.R9, valPort, asm.Half),
		asm.StoreMem(asm.R2, 2, asm.R4, asm.Half),
		asm.Mov.Imm(asm.R4, 0),
		asm.StoreMem(asm.R2, 4, asm.R4, asm.Word),  // sin6_flowinfo
		asm.StoreMem(asm.R2, 24, asm.R4, asm.Word), // sin6_scope_id
	)
	for i := int16(0); i < 16; i += 4 {
		b.add(
			asm.LoadMem(asm.R4, asm.R9, valAddr+i, asm.Word),
			asm.StoreMem(asm.R2, 8+i, asm.R4, asm.Word),
		)
	}
	b.add(asm.Mov.Imm(asm.R4, 28))
	b.label("answered")
	b.add(
		asm.StoreMem(asm.R6, sopOptlen, asm.R4, asm.Word),
		asm.Mov.Imm(asm.R4, 0),
		asm.StoreMem(asm.R6, sopRetval, asm.R4, asm.Word),
	)
	b.count(counterAnswered)
	b.pass()

	b.label("missed")
	b.count(counterMissed)
	b.pass()

	// A buffer larger than a page: the program sees only its first page;
	// optlen 0 tells the kernel to keep its own answer untouched.
	b.label("large")
	b.add(
		asm.Mov.Imm(asm.R2, 0),
		asm.StoreMem(asm.R6, sopOptlen, asm.R2, asm.Word),
	)
	b.label("pass")
	b.pass()
	return b.insns
}

// skLookupProgram steers new TCP connections to one of the inbound ports
// to the capture listener in inbound_sockets. Loopback destinations are
// left alone, so that the capture process can hand a connection on to the
// local service on the same port.
func skLookupProgram() asm.Instructions {
	b := &bpfBuilder{}
	b.add(
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, slProtocol, asm.Word),
		asm.JNE.Imm(asm.R2, unix.IPPROTO_TCP, "pass"),
		asm.LoadMem(asm.R2, asm.R6, slLocalPort, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapInPorts),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Imm(asm.R7, 1), // the sockmap slot: 1 (IPv6) ...
		asm.LoadMem(asm.R2, asm.R6, slFamily, asm.Word),
		asm.JEq.Imm(asm.R2, unix.AF_INET6, "family6"),
		asm.Mov.Imm(asm.R7, 0), // ... or 0 (IPv4)
		asm.LoadMem(asm.R2, asm.R6, slLocalIP4, asm.Byte),
		asm.JEq.Imm(asm.R2, 127, "pass"),
		asm.Ja.Label("lookup"),
	)
	b.label("family6")
	b.add(
		asm.LoadMem(asm.R2, asm.R6, slLocalIP6, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "lookup"),
		asm.LoadMem(asm.R2, asm.R6, slLocalIP6+4, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "lookup"),
		asm.LoadMem(asm.R2, asm.R6, slLocalIP6+8, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "lookup"),
		asm.LoadMem(asm.R2, asm.R6, slLocalIP6+12, asm.Word),
		asm.JEq.Imm32(asm.R2, loopback6w3, "pass"),
	)
	b.label("lookup")
	b.add(
		asm.StoreMem(asm.RFP, -8, asm.R7, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapInSocks),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "assign"),
		// No IPv4 listener: a dual-stack IPv6 one takes IPv4 too.
		asm.JNE.Imm(asm.R7, 0, "pass"),
		asm.StoreImm(asm.RFP, -8, 1, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapInSocks),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
	)
	b.label("assign")
	b.add(
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnSkAssign.Call(),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.FnSkRelease.Call(),
		asm.JNE.Imm(asm.R8, 0, "pass"),
	)
	b.count(counterSteered)
	b.label("pass")
	b.add(asm.Mov.Imm(asm.R0, skPass), asm.Return())
	return b.insns
}
