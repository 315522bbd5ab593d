// Package listsource keeps CIDR lists that come from outside the
// configuration file up to date: a local file (re-read when it changes) or
// documents fetched over HTTPS (a CDN's or a cloud's published ranges, a
// blocklist), refreshed on their own. realipd uses them wherever its
// configuration takes a CIDR list: the trusted proxies and the cidr
// policies' lists.
//
// A list source is a security root: a list replaces the one in force only
// when it was read completely, parses completely (every entry a CIDR or an
// IP, the document valid UTF-8, within MaxBytes and MaxEntries), is not
// empty, and has not shrunk by more than the source's MaxShrink. Anything
// else is refused, counted with its reason, and the last good list keeps
// serving. The last good list of each fetched document is written to a
// cache directory and read back at start, so that a restart without
// network still serves what it served.
//
// The parsers (ParseText, ParseAWS, ParseGoogle, ParseFastly) are pure
// functions over bytes. A Set runs the sources of one configuration: it
// loads them (Set.Stage), refreshes them in the background with jitter and
// exponential backoff, and tells its owner when a list changed. Lists are
// immutable (*List); a consumer builds its lookup structures from them and
// swaps those in as a whole. Everything here is safe for concurrent use.
package listsource
