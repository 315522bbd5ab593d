// Package decide is the step every front door of realipd shares, so that
// one request gets one answer whichever door it came through. A door — the
// ext_proc server, the native listener's HTTP mode, its TCP proxy — reads
// its own wire format, resolves the client IP with the Decider's resolver,
// hands the result to Decider.Decide, and writes the Outcome back in its
// wire format. Nothing else about a decision is a door's to choose.
//
// The package owns:
//
//   - Settings, what a decision needs (the resolver, the policy chain,
//     trust.on_unresolved, the client-IP header, the metadata namespace, the
//     deny status, the input model of X-Forwarded-For, the peers whose PROXY
//     header counts), checked once by New: one validator for the client-IP
//     header name (CheckClientIPHeader) serves the configuration and every
//     door;
//   - the Decider built from them, immutable, and Current, the Decider in
//     force: a configuration reload stores a new one, and every door sees it
//     at the same instant. A request holds the Decider's policy chain while
//     it decides (Current.Acquire), so that a chain a reload replaced stays
//     open until its last request is done (plugins.Chain.Retire);
//   - Runtime, which owns the chains' lives across reloads and shutdown;
//   - the decide step: the unresolved rule, the chain, the counting of
//     policy errors, and the shape of a deny (status, body, details, which
//     policy headers may be written);
//   - the decision log every door writes through, and Every, the monotonic
//     rate limiter of the doors' warnings.
//
// Everything here is safe for concurrent use unless its doc says otherwise.
package decide
