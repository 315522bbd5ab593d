package clientip

import (
	"fmt"
	"strings"
)

var strategyNames = [...]string{
	RemoteAddr:            "remote_addr",
	SingleHeader:          "single_header",
	LeftmostNonPrivate:    "leftmost_non_private",
	RightmostNonPrivate:   "rightmost_non_private",
	RightmostTrustedCount: "rightmost_trusted_count",
	RightmostTrustedRange: "rightmost_trusted_range",
	EnvoyXFF:              "envoy_xff",
}

// String returns the strategy's contract name, e.g. "rightmost_trusted_range".
func (s Strategy) String() string {
	if int(s) < len(strategyNames) && strategyNames[s] != "" {
		return strategyNames[s]
	}
	return fmt.Sprintf("strategy(%d)", uint8(s))
}

// ParseStrategy returns the strategy with the given contract name.
func ParseStrategy(name string) (Strategy, error) {
	for i, n := range strategyNames {
		if n != "" && n == name {
			return Strategy(i), nil
		}
	}
	return 0, fmt.Errorf("clientip: unknown strategy %q (one of %s)", name, strings.Join(StrategyNames(), ", "))
}

// StrategyNames lists the contract names of all strategies.
func StrategyNames() []string {
	names := make([]string, 0, len(strategyNames)-1)
	for _, n := range strategyNames {
		if n != "" {
			names = append(names, n)
		}
	}
	return names
}

var reasonNames = [...]string{
	ReasonNone:          "none",
	ReasonPicked:        "header",
	ReasonPeer:          "peer",
	ReasonNoPeer:        "no_peer",
	ReasonNoHeader:      "no_header",
	ReasonInvalidEntry:  "invalid",
	ReasonAllTrusted:    "all_trusted",
	ReasonTooFewEntries: "too_few_entries",
	ReasonNoPublicEntry: "no_public_entry",
	ReasonBound:         "bound",
}

// String returns the reason's stable name (its class), e.g. "all_trusted":
// "header" (an entry was chosen), "peer" (the peer is the client),
// "no_header", "all_trusted", or a failure: "invalid", "bound", "no_peer",
// "too_few_entries", "no_public_entry".
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// String returns "header", "peer" or "" for no result.
func (s Source) String() string {
	switch s {
	case SourceHeader:
		return "header"
	case SourcePeer:
		return "peer"
	}
	return ""
}
