package extproc

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// warnInterval is the least time between two warnings of one kind about
// requests: a misconfigured Envoy sends every request that way, and the
// counters carry the numbers.
const warnInterval = time.Minute

// rateLimit lets one event through per interval. It is safe for concurrent
// use; its zero value lets every event through.
type rateLimit struct {
	every time.Duration
	next  atomic.Int64 // unix nanoseconds before which nothing passes
}

// allow reports whether an event may pass now.
func (r *rateLimit) allow() bool {
	now := time.Now().UnixNano()
	next := r.next.Load()
	return now >= next && r.next.CompareAndSwap(next, now+int64(r.every))
}

// localRefresh is the least time between two listings of the host's
// addresses when one is asked for that is not in the last listing.
const localRefresh = 10 * time.Second

// localAddrs is a cached list of this host's addresses. It is safe for
// concurrent use.
type localAddrs struct {
	list  func() ([]netip.Addr, error)
	addrs atomic.Pointer[[]netip.Addr]
	mu    sync.Mutex // held while listing
	next  atomic.Int64
}

func newLocalAddrs(list func() ([]netip.Addr, error)) *localAddrs {
	if list == nil {
		list = interfaceAddrs
	}
	return &localAddrs{list: list}
}

// contains reports whether a is one of the host's addresses, listing them
// again (at most every localRefresh) when a is not in the last listing.
func (l *localAddrs) contains(a netip.Addr) bool {
	if p := l.addrs.Load(); p != nil && slices.Contains(*p, a) {
		return true
	}
	now := time.Now().UnixNano()
	if now < l.next.Load() || !l.mu.TryLock() {
		return false
	}
	defer l.mu.Unlock()
	l.next.Store(now + int64(localRefresh))
	list, err := l.list()
	if err != nil {
		return false
	}
	l.addrs.Store(&list)
	return slices.Contains(list, a)
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
