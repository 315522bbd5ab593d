package xds

import (
	"sync"

	"github.com/realipd/realipd/sockowner"
)

// Events receives what the other roles need to know about the nodes served:
// that a node's Envoy has accepted a listener on a port (so traffic may be
// steered to that port), and that a node is gone. cmd/realipd wires it.
//
// The methods are called one at a time and in order (a node's NodeGone comes
// after its ListenerACKed calls, and a reconnecting node's ListenerACKed after
// the NodeGone of its previous streams), from a goroutine of the Server's own:
// never on an xDS stream and never while the Server holds a lock, so a slow
// method delays only the events after it. Implementations must still be
// quick and must not block: hand long work to a goroutine of your own.
//
// Anyone who can reach xds.listen can open a stream, name any node and ACK
// anything: an event is a claim, not a fact. Each carries the peer of the
// stream it came from, as the kernel names it (sockowner.Peer), so that a
// receiver can count only the claims of the user Envoy runs as, and must
// still check what is claimed (the native listener checks that a listening
// socket of that user really holds the port).
type Events interface {
	// ListenerACKed reports that node has ACKed a listener version with a
	// listener bound to port (the port of the listener's socket address or
	// of one of its additional addresses). It is called for every port of
	// the version, on every ACK of a new listener version, so the same
	// (node, port) comes again with each version: implementations must be
	// idempotent. An ACK means Envoy accepted the listener; it may still
	// be warming. It is also called when a node's stream asks for
	// listeners naming, in version_info, a recent version it had ACKed
	// (a node coming back says what it runs), before it answers the
	// version it is then sent, which it may NACK.
	ListenerACKed(node string, peer sockowner.Peer, port uint32)
	// NodeGone reports that the last ADS stream (SotW or delta) of node has
	// closed; the Server has forgotten the node.
	NodeGone(node string)
}

// event is one call of Events.
type event struct {
	node string
	peer sockowner.Peer
	port uint32
	gone bool // NodeGone; otherwise ListenerACKed(node, peer, port)
}

// eventQueue delivers events to an Events in order from one goroutine,
// started when events are queued and ended when the queue is empty, so
// nothing runs while nothing happens. Pushing never blocks.
type eventQueue struct {
	ev Events // nil: events are dropped

	mu      sync.Mutex
	q       []event
	running bool
}

func (e *eventQueue) push(evs ...event) {
	if e.ev == nil || len(evs) == 0 {
		return
	}
	e.mu.Lock()
	e.q = append(e.q, evs...)
	start := !e.running
	e.running = true
	e.mu.Unlock()
	if start {
		go e.run()
	}
}

func (e *eventQueue) run() {
	for {
		e.mu.Lock()
		batch := e.q
		e.q = nil
		if len(batch) == 0 {
			e.running = false
			e.mu.Unlock()
			return
		}
		e.mu.Unlock()
		for _, ev := range batch {
			if ev.gone {
				e.ev.NodeGone(ev.node)
			} else {
				e.ev.ListenerACKed(ev.node, ev.peer, ev.port)
			}
		}
	}
}
