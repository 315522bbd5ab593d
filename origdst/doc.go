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
// (ServeListeners; Serve does both). For each connection: with
// Options.ProxyProtocol, a peer in Settings.TrustedCIDRs must send a PROXY
// v1 or v2 header, which names the client (one that names no source,
// LOCAL or UNKNOWN, leaves the peer as the client, as without a header),
// and a header from any other peer resets the connection, as do the first
// bytes of a signature still pending at ProxyHeaderTimeout; otherwise the
// client is the peer. The
// policies decide (Settings.Chain, held per connection like the ext_proc
// server's requests; an unresolved client follows
// Settings.PassUnresolved) before anything is dialled: a deny resets the
// connection, and no upstream ever sees it. The original destination is
// then dialled with SO_MARK Options.Mark, which the interception rules
// never capture, from the host's own address (also in ModeTProxy: the
// upstream sees realipd, not the client), and the bytes are copied both
// ways with half-close, spliced in the kernel (only what has arrived,
// so that an idle connection holds no splice pipe). Connections are
// bounded in number (MaxConnections), in setup time (DialTimeout,
// ProxyHeaderTimeout) and in idleness (IdleTimeout: no byte moved either
// way, measured on the monotonic clock, which a step of the wall clock
// does not move).
// When Serve's context ends the listeners close, the connections have
// DrainTimeout to finish and the rest are cut.
//
// Connections to the original-destination ports of Options.HTTPPorts are
// served as HTTP/1.1 instead (net/http, keep-alive and upgrades included):
// each request is resolved from its forwarding headers with
// Settings.Resolver, decided on by the chain, and either answered with a
// deny (Settings.DenyStatus) or forwarded to the original destination with
// the client-IP header set (a client-sent one removed) and the peer
// appended to X-Forwarded-For: what the ext_proc server answers Envoy for
// the same peer and headers.
//
// A Handoff runs a Server for origdst.fallback: auto. Its ListenerACKed
// and NodeGone methods have the signature of xds.Events (this package
// does not import xds; cmd/realipd passes the Handoff to the control
// plane), record the event and never block. Per capture port, its own
// goroutine closes the port's listeners when an Envoy node ACKs a
// listener on it (the connections already accepted go on), and binds them
// again, with SO_REUSEPORT (ListenConfig.ReusePort), once every node that
// held the port has been gone for HandoffOptions.Grace; a failed rebind is
// logged, counted, retried with backoff and makes Ready fail. The grace
// and the retries run on a Clock that tests replace. Inside a Server, a
// serving session lets listeners join and leave while connections run,
// with one drain at the end.
//
// The metrics are realipd_origdst_* (see README.md in this directory).
// Capture listeners need Linux; elsewhere Listen fails with
// errors.ErrUnsupported.
package origdst
