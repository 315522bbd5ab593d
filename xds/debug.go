package xds

import (
	"encoding/json"
	"net/http"
	"slices"
	"time"
)

// debugState is the JSON document of /debug/xds; its field names are
// documented in the package doc and do not change.
type debugState struct {
	Version      string               `json:"version"`
	PublishedAt  *time.Time           `json:"published_at,omitempty"`
	LastRejected *debugRejection      `json:"last_rejected,omitempty"`
	Nodes        map[string]debugNode `json:"nodes"`
}

type debugRejection struct {
	Path   string    `json:"path"`
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
}

type debugNode struct {
	Streams int                  `json:"streams"`
	Peers   []string             `json:"peers"`
	Types   map[string]debugType `json:"types"`
}

type debugType struct {
	LastSentVersion  string     `json:"last_sent_version"`
	LastACKedVersion string     `json:"last_acked_version"`
	LastNACK         *debugNACK `json:"last_nack,omitempty"`
}

type debugNACK struct {
	Version string    `json:"version"`
	Error   string    `json:"error"`
	Time    time.Time `json:"time"`
}

// debugState copies the tracker's state.
func (s *Server) debugState() debugState {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := debugState{Version: s.version, Nodes: make(map[string]debugNode, len(s.nodes))}
	if !s.published.IsZero() {
		t := s.published
		d.PublishedAt = &t
	}
	if r := s.rejected; r != nil {
		d.LastRejected = &debugRejection{Path: r.path, Reason: r.reason, Time: r.at}
	}
	for id, n := range s.nodes {
		dn := debugNode{Streams: n.streams, Types: make(map[string]debugType, len(n.types))}
		for url, t := range n.types {
			dt := debugType{LastSentVersion: t.sent, LastACKedVersion: t.acked}
			if t.nack != nil {
				dt.LastNACK = &debugNACK{Version: t.nack.version, Error: t.nack.message, Time: t.nack.at}
			}
			dn.Types[url] = dt
		}
		d.Nodes[id] = dn
	}
	for _, st := range s.streams {
		dn := d.Nodes[st.node]
		if p := st.peer.String(); !slices.Contains(dn.Peers, p) {
			dn.Peers = append(dn.Peers, p)
			slices.Sort(dn.Peers)
			d.Nodes[st.node] = dn
		}
	}
	return d
}

// DebugHandler serves /debug/xds: the version served, the last rejected
// configuration and the state of every connected node, as indented JSON
// (the fields are listed in the package doc). cmd/realipd mounts it on the
// admin listener.
func (s *Server) DebugHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body, err := json.MarshalIndent(s.debugState(), "", "  ")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if r.Method == http.MethodHead {
			return
		}
		w.Write(append(body, '\n'))
	})
}

// TypeVersions are the versions of one resource type a node was last sent
// and last ACKed ("" when none).
type TypeVersions struct {
	Sent  string `json:"sent"`
	ACKed string `json:"acked"`
}

// NodeVersions returns, per connected node and type URL, the versions it
// was last sent and last ACKed (what /config_dump shows of each node).
func (s *Server) NodeVersions() map[string]map[string]TypeVersions {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]map[string]TypeVersions, len(s.nodes))
	for id, n := range s.nodes {
		types := make(map[string]TypeVersions, len(n.types))
		for url, t := range n.types {
			types[url] = TypeVersions{Sent: t.sent, ACKed: t.acked}
		}
		out[id] = types
	}
	return out
}
