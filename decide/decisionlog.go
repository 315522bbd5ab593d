package decide

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/realipd/realipd/clientip"
)

// The doors a request comes through, as the decision log names them.
const (
	DoorExtProc = "extproc"      // the ext_proc server, one HTTP request Envoy asks about
	DoorTCP     = "origdst_tcp"  // the native listener, one TCP connection
	DoorHTTP    = "origdst_http" // the native listener's HTTP mode, one HTTP request
)

// PolicyUnresolved names the deny of a request whose client IP is
// unresolved (trust.on_unresolved: deny), in the policy metadata field, the
// decision log and the policy label of the deny counters.
const PolicyUnresolved = "trust.on_unresolved"

// DefaultDecisionLogRate is how many lines a DecisionLog writes per second
// of each kind (denies, allows) when DecisionLogOptions.PerSecond is 0.
const DefaultDecisionLogRate = 20

// Decided is one decision as the decision log records it.
type Decided struct {
	Door       string          // DoorExtProc, DoorTCP or DoorHTTP
	Peer       string          // the peer as received ("ip:port"); "" when there is none
	PeerAddr   netip.AddrPort  // the peer, for a door that has it as an address (Peer is then "")
	Resolution clientip.Result // the client IP is Resolution.IP, invalid when unresolved
	// ResolvedFrom overrides where the client IP came from ("" derives it
	// from Resolution: header, peer or none).
	ResolvedFrom string
	OriginalDst  netip.AddrPort // zero when unknown
	Deny         bool
	Policy       string // the deciding policy on a deny
}

// DecisionLogOptions tune a DecisionLog.
type DecisionLogOptions struct {
	// PerSecond bounds the lines of each kind (denies at Info, allows at
	// Debug) written in one second; the decisions past it are counted and
	// the count goes on the next line of that kind (suppressed). 0 means
	// DefaultDecisionLogRate.
	PerSecond int
	// Now returns the time on a monotonic clock, as a duration since any
	// fixed point (tests inject one); nil uses the time since the
	// DecisionLog was made, on the process's monotonic clock, so that a
	// step of the wall clock neither silences nor floods the log.
	Now func() time.Duration
}

// DecisionLog writes one structured line per decision a door makes: a deny
// at Info, an allow at Debug, each kind rate-limited on its own. Every door
// (the ext_proc server, the native listener's TCP proxy and HTTP mode)
// logs through one, so that the lines look alike whichever door decided.
// A nil DecisionLog logs nothing. It is safe for concurrent use, and a
// decision whose level is disabled costs one Enabled call.
type DecisionLog struct {
	log         *slog.Logger
	now         func() time.Duration
	perSecond   int
	deny, allow lineLimit
}

// NewDecisionLog returns a DecisionLog writing to log (nil: nowhere).
func NewDecisionLog(log *slog.Logger, opts DecisionLogOptions) *DecisionLog {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &DecisionLog{log: log, now: opts.Now, perSecond: opts.PerSecond}
	if l.perSecond <= 0 {
		l.perSecond = DefaultDecisionLogRate
	}
	if l.now == nil {
		start := time.Now()
		l.now = func() time.Duration { return time.Since(start) }
	}
	return l
}

// Log records d: at Info for a deny, at Debug for an allow, unless that
// kind already wrote its lines in the current second.
func (l *DecisionLog) Log(ctx context.Context, d Decided) {
	if l == nil {
		return
	}
	level, lim := slog.LevelDebug, &l.allow
	if d.Deny {
		level, lim = slog.LevelInfo, &l.deny
	}
	if !l.log.Enabled(ctx, level) {
		return
	}
	ok, suppressed := lim.take(l.now(), l.perSecond)
	if !ok {
		return
	}
	l.write(ctx, level, &d, suppressed)
}

// write writes the line of d. The strings are copied: a door may hand
// views of a buffer it reuses once Log returns.
func (l *DecisionLog) write(ctx context.Context, level slog.Level, d *Decided, suppressed int64) {
	decision, msg := "allow", "allowed"
	if d.Deny {
		decision, msg = "deny", "denied"
	}
	peer := strings.Clone(d.Peer)
	if peer == "" && d.PeerAddr.IsValid() {
		peer = d.PeerAddr.String()
	}
	client := ""
	if d.Resolution.IP.IsValid() {
		client = d.Resolution.IP.String()
	}
	from := d.ResolvedFrom
	if from == "" {
		from = ResolvedFrom(d.Resolution)
	}
	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs,
		slog.String("door", strings.Clone(d.Door)),
		slog.String("decision", decision),
		slog.String("policy", strings.Clone(d.Policy)),
		slog.String("client_ip", client),
		slog.String("peer", peer),
		slog.String("resolved_from", strings.Clone(from)),
	)
	if !d.Resolution.OK() {
		attrs = append(attrs, slog.String("reason", d.Resolution.Reason.String()))
	}
	if d.OriginalDst.IsValid() {
		attrs = append(attrs, slog.String("original_dst", d.OriginalDst.String()))
	}
	if suppressed > 0 {
		attrs = append(attrs, slog.Int64("suppressed", suppressed))
	}
	l.log.LogAttrs(ctx, level, msg, attrs...)
}

// ResolvedFrom says where a resolution's client IP came from: "header",
// "peer", or "none" when it is unresolved (the values of the ext_proc
// resolved_from metadata field).
func ResolvedFrom(res clientip.Result) string {
	switch {
	case !res.OK():
		return "none"
	case res.Source == clientip.SourcePeer:
		return "peer"
	}
	return "header"
}

// lineLimit lets at most a given number of lines through per one-second
// window and counts the others.
type lineLimit struct {
	mu         sync.Mutex
	start      time.Duration // the current window's start
	begun      bool          // a window has started
	lines      int           // lines let through in the window
	suppressed int64         // lines held back since the last one let through
}

// take reports whether a line may be written at now and, when it may, how
// many were held back before it.
func (l *lineLimit) take(now time.Duration, perSecond int) (ok bool, suppressed int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.begun || now-l.start >= time.Second || now < l.start {
		l.start, l.begun, l.lines = now, true, 0
	}
	if l.lines >= perSecond {
		l.suppressed++
		return false, 0
	}
	l.lines++
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}
