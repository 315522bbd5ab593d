package extproc

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/realipd/realipd/decide"
)

// warnInterval is the least time between two warnings of one kind about
// requests: a misconfigured Envoy sends every request that way, and the
// counters carry the numbers.
const warnInterval = time.Minute

// monotonic returns the nanoseconds on the monotonic clock
// (decide.Monotonic), so that a step of the wall clock does not hold back
// a listing of the host's addresses.
func monotonic() int64 { return int64(decide.Monotonic()) }

// localRefresh is the least time between two listings of the host's
// addresses when one is asked for that is not in the last listing.
const localRefresh = 10 * time.Second

// localAddrs is a cached list of this host's addresses. It is safe for
// concurrent use.
type localAddrs struct {
	list  func() ([]netip.Addr, error)
	addrs atomic.Pointer[[]netip.Addr]
	mu    sync.Mutex   // held while listing
	next  atomic.Int64 // monotonic nanoseconds before which no listing starts
}

// newLocalAddrs lists the addresses once, so that the first requests find
// them.
func newLocalAddrs(list func() ([]netip.Addr, error)) *localAddrs {
	if list == nil {
		list = interfaceAddrs
	}
	l := &localAddrs{list: list}
	l.mu.Lock()
	l.refresh()
	l.mu.Unlock()
	return l
}

// contains reports whether a is one of the host's addresses, listing them
// again (at most every localRefresh) when a is not in the last listing. A
// request that misses while another lists waits for that listing.
func (l *localAddrs) contains(a netip.Addr) bool {
	if l.has(a) {
		return true
	}
	if monotonic() < l.next.Load() {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.has(a) {
		return true // listed while this request waited
	}
	if monotonic() < l.next.Load() {
		return false
	}
	l.refresh()
	return l.has(a)
}

func (l *localAddrs) has(a netip.Addr) bool {
	p := l.addrs.Load()
	return p != nil && slices.Contains(*p, a)
}

// refresh lists the addresses; l.mu is held.
func (l *localAddrs) refresh() {
	l.next.Store(monotonic() + int64(localRefresh))
	if list, err := l.list(); err == nil {
		l.addrs.Store(&list)
	}
}

// hostAddr reports whether a is an address of one of the host's network
// interfaces, listing them now.
func hostAddr(a netip.Addr) bool {
	addrs, err := interfaceAddrs()
	return err == nil && slices.Contains(addrs, a)
}

// interfaceAddrs lists the addresses of the host's network interfaces,
// unmapped.
func interfaceAddrs() ([]netip.Addr, error) {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(ifas))
	for _, ifa := range ifas {
		if n, ok := ifa.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out, nil
}
