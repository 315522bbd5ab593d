// Package extproc is realipd's envoy.service.ext_proc.v3.ExternalProcessor:
// Envoy's ext_proc HTTP filter streams each request's headers to it, and it
// answers with the real client IP as a request header (x-real-ip), dynamic
// metadata, or an immediate deny from the policy chain.
//
// Protocol rules it keeps, since Envoy turns any slip into a 500 or 504 for
// the user's request:
//
//   - every message gets exactly one answer of the matching oneof, a
//     pass-through for the phases realipd does not act on (response headers,
//     bodies, trailers); messages with observability_mode get none;
//   - io.EOF and cancellation end a stream normally (status OK);
//   - header values are read from raw_value (value when raw_value is empty)
//     and written in raw_value only, with append explicitly false (and
//     append_action at its default), so a client-sent x-real-ip never survives;
//   - the peer is the source.address request attribute under the attributes
//     key "envoy.filters.http.ext_proc" ("ip:port" or "[v6]:port"); without
//     it nothing can be verified and the request is unresolved (counted,
//     warned about at most once a minute);
//   - a deny is an ImmediateResponse with an explicit status (deny_status),
//     a short text body and details "realipd_policy_denied".
//
// Dynamic metadata goes under the configured namespace (default realipd) as
// string fields client_ip, peer, strategy, resolved_from (header, peer, or
// none when there is no client IP at all), decision (allow, deny) and, on
// deny, policy. Fields and headers policies add to their decisions are
// merged in (on deny: the deciding policy's headers, and the metadata of the
// deciding policy and of those that allowed before it; see plugins.Verdict);
// realipd's own fields and its client-IP header win, and headers Envoy would
// reject (not a lower-case token, or a value with NUL, CR or LF) are dropped.
//
// Policies that read request headers say which (plugins.HeaderInputs); the
// decoder collects the union over the chain (plugins.Chain.RequestHeaders) in
// the same walk over the headers that finds the resolver's header, into a
// per-stream buffer, and the policy request gets copies in request order with
// lower-case names. With no such policy nothing is collected.
//
// With decide.Settings.XFFAppendedByEnvoy (extproc.xff_appended_by_envoy)
// and a strategy reading X-Forwarded-For,
// the last X-Forwarded-For entry is removed before resolving when it is the
// one Envoy appends with use_remote_address: true: the IP of source.address,
// or for a loopback peer Envoy's own address (destination.address, or one of
// this host's addresses). A pipe peer gets nothing appended. Any other last
// entry stays: realipd_extproc_xff_mismatch_total goes up and a warning (at
// most once a minute) names the likely Envoy misconfiguration.
//
// The client IP comes from clientip.Resolver.Client: the peer stands in only
// when it is not trusted, when the request carries no forwarding header, or
// when every entry is trusted. Every other failure is unresolved: no client
// IP, the client-IP header removed, resolved_from none, and either a deny
// (the default; policy trust.on_unresolved, details
// realipd_client_ip_unresolved) or, with decide.Settings.PassUnresolved
// (trust.on_unresolved: pass), the policies deciding on a request without
// client IP. The decision itself is decide.Decider.Decide, the step every
// door of realipd shares; this package reads and writes Envoy's wire
// format around it.
//
// The hot path reads and writes protobuf wire format directly (wire.go,
// encode.go) and takes its Decider from the decide.Current that New is
// given and the other doors share, so that a reload swaps resolver,
// policies and names while streams run. Each message holds the Decider's
// policy chain (decide.Current.Acquire, one atomic add) until it is
// answered, so that a chain a reload replaced and retired closes only once
// the messages deciding on it are done.
//
// Serving: TCP or unix:///path, grpc.health.v1 (SERVING for "" and
// ServiceName until the drain), server reflection, keepalive enforcement, and
// a graceful drain bounded by Options.DrainTimeout when Serve's context ends
// (grpcserve, shared with the xDS server).
package extproc
