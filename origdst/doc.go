// Package origdst is realipd's native listener: capture listeners that
// take the TCP connections iptables (REDIRECT, TPROXY) or the eBPF capture
// steered to them, read each one's original destination, and a
// transparent TCP proxy that lets the policy chain decide on the client
// and copies the bytes to that destination.
//
// A Listener wraps one capture socket. In ModeRedirect the original
// destination is read with getsockopt(SO_ORIGINAL_DST) at SOL_IP (IPv4,
// IPv4-mapped peers of an IPv6 socket included) or IP6T_SO_ORIGINAL_DST at
// SOL_IPV6; in ModeTProxy the socket is transparent (IP_TRANSPARENT, set
// before bind) and the original destination is the accepted socket's
// local address. A connection whose original destination is a capture
// address was not redirected (a direct connection, or a loop): it is reset
// at once (ErrNotRedirected).
//
// A Server binds the capture addresses (Bind, separable from serving so
// that a caller can fail early or bind later) and serves them
// (ServeListeners; Serve does both). It decides through the decide
// package, as every door of realipd does: New takes the decide.Current
// that the other doors share, and a reload that stores a new Decider there
// applies to the next connection. For each connection: with
// Options.ProxyProtocol, a peer in the Decider's trusted CIDRs
// (decide.Settings.TrustedCIDRs) must send a PROXY v1 or v2 header, which
// names the client (one that names no source, LOCAL or UNKNOWN, leaves the
// peer as the client, as without a header), and a header from any other
// peer resets the connection, as do the first bytes of a signature still
// pending at ProxyHeaderTimeout; otherwise the client is the peer. The
// Decider decides (decide.Decider.Decide: the policy chain, held per
// connection like the ext_proc server's requests; an unresolved client
// follows trust.on_unresolved) before anything is dialled: a deny resets
// the connection, and no upstream ever sees it. The original destination
// is then dialled with SO_MARK Options.Mark, which the interception rules
// never capture, from the host's own address — or, in ModeTProxy with
// Options.OriginalSource (origdst.original_source), from the client's own
// address, with SO_MARK Options.TProxyMark on a transparent socket, as
// Envoy's original_src filter does, so that the upstream sees the client —
// and the bytes are copied both ways with half-close, spliced in the
// kernel (only what has arrived, so that an idle connection holds no
// splice pipe). Connections are bounded in number (MaxConnections), in
// setup time (DialTimeout, ProxyHeaderTimeout) and in idleness
// (IdleTimeout: no byte moved either way, measured on the monotonic clock,
// which a step of the wall clock does not move). When Serve's context
// ends the listeners close, the connections have DrainTimeout to finish
// and the rest are cut.
//
// Connections to the original-destination ports of Options.HTTPPorts are
// served as HTTP/1.1 instead (keep-alive and pipelining included), on a
// forwarding path of this package's own rather than net/http's (see
// http.go): each request head is read with a strict, bounded parser,
// refused as Envoy's connection manager would refuse it, resolved from its
// forwarding headers with the Decider's resolver and decided on, then
// either answered with a deny, shaped by the Decider as for every door, or
// forwarded, over an upstream connection of the client connection's own,
// to the original destination with the client-IP header set (a client-sent
// one removed) and the peer appended to X-Forwarded-For: what the ext_proc
// server answers Envoy for the same peer and headers. The HTTP mode dials
// from the host's address also with OriginalSource, and names the client
// in the client-IP header.
//
// A Handoff runs a Server for origdst.fallback: auto: it hands each
// capture port to Envoy and back. Its ListenerACKed and NodeGone methods
// have the signature of xds.Events (this package does not import xds;
// cmd/realipd passes the Handoff to the control plane), record the event
// and never block. A listener ACK is a claim that counts only when the
// kernel names its ADS peer as Envoy's user (HandoffOptions.EnvoyUID), and
// it is honoured only while a socket of that user, not the native
// listener's, listens on every capture address of the port (checked every
// HandoffOptions.VerifyEvery). Then the Handoff's own goroutine parks the
// port's listeners: they stop accepting but stay bound, so that no other
// user can take the port, and the connections already accepted go on. The
// port comes back — the parked sockets listen again — the moment Envoy's
// socket is gone, or once every node that claimed it has been gone for
// HandoffOptions.Grace; a failure to serve it again is logged, counted,
// retried with backoff and makes Ready fail. The grace and the retries run
// on a Clock that tests replace. Inside a Server, a serving session lets
// listeners join and leave while connections run, with one drain at the
// end.
//
// The metrics are realipd_origdst_* (see README.md in this directory).
// Capture listeners need Linux; elsewhere Listen fails with
// errors.ErrUnsupported.
package origdst
