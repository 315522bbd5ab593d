package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/internal/config"
)

const resolveSynopsis = `resolve [--config FILE] --remote-addr ADDR [-H 'Name: value']...
                  [--strategy S] [--header H] [--trusted-cidrs a,b] [--trusted-hops N]
                  [--use-remote-address] [--json]`

const resolveDescription = `
Resolve the client IP of one request, exactly as the server would, and print
it alone on stdout (exit 0). The peer stands in as the client only when it is
not trusted, when the request carries no forwarding header, or when every
entry is trusted; any other failure leaves the client IP unresolved: the
reason goes to stderr and the exit status is 1. A bad command line exits 2.

The request is the peer that connected (--remote-addr) and the header lines
it sent (-H, repeatable, kept in order; names are case-insensitive). --config
takes the trust section of a configuration file; flags given on the command
line override it. A --strategy other than the file's discards the file's
trust settings.`

const resolveExamples = `
  realipd resolve --strategy rightmost_trusted_range --trusted-cidrs 10.0.0.0/8 \
      --remote-addr 10.0.0.5:80 -H 'X-Forwarded-For: 203.0.113.9, 10.1.1.1'
  realipd resolve --config /etc/realipd.yaml --remote-addr 10.0.0.5:80 \
      -H 'Forwarded: for="[2001:db8::1]:4711"' --header Forwarded --json`

// headerLines collects -H flags in order.
type headerLines []headerLine

type headerLine struct{ name, value string }

func (h *headerLines) String() string { return "" }

// Set parses "Name: value". "Name:" is a line with an empty value.
func (h *headerLines) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	if !ok {
		return errors.New("want 'Name: value'")
	}
	name = strings.TrimSpace(name)
	if !isHeaderName(name) {
		return fmt.Errorf("%q is not a valid header name", name)
	}
	*h = append(*h, headerLine{name: name, value: strings.Trim(value, " \t")}) // HTTP white space only, as the server sees it
	return nil
}

// lines returns the values of every line named name (case-insensitive), in order.
func (h headerLines) lines(name string) []string {
	var out []string
	for _, l := range h {
		if strings.EqualFold(l.name, name) {
			out = append(out, l.value)
		}
	}
	return out
}

func isHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// trustFlags maps the trust keys to the resolve flags that set them.
var trustFlags = map[string]string{
	"strategy":           "strategy",
	"header":             "header",
	"trusted_cidrs":      "trusted-cidrs",
	"trusted_hops":       "trusted-hops",
	"use_remote_address": "use-remote-address",
}

// resolveFlags are the flags of resolve.
type resolveFlags struct {
	config, peer, strategy, header, cidrs *string
	headers                               *headerLines
	hops                                  *int
	useRemote, asJSON                     *bool
}

// resolveFlagSet builds resolve's FlagSet without running it.
func resolveFlagSet() (*flag.FlagSet, resolveFlags) {
	def := config.Default().Trust
	fs := newFlagSet("resolve", resolveSynopsis, resolveDescription, resolveExamples)
	f := resolveFlags{headers: &headerLines{}}
	f.config = fs.String("config", "", "configuration `FILE` whose trust section is used; flags override it")
	f.peer = fs.String("remote-addr", "", "the peer that connected: `ADDR` as ip:port, [v6]:port or an IP; '' is a peer that is not an IP (required)")
	fs.Var(f.headers, "H", "a request header line `'Name: value'`; repeatable, in order; 'Name:' is a line with an empty value")
	f.strategy = fs.String("strategy", def.Strategy, "strategy `S`: "+strings.Join(clientip.StrategyNames(), ", "))
	f.header = fs.String("header", def.Header, "header `H` to read (ignored by remote_addr)")
	f.cidrs = fs.String("trusted-cidrs", "", "comma-separated trusted `CIDRs` (rightmost_trusted_range; envoy_xff: xff_trusted_cidrs)")
	f.hops = fs.Int("trusted-hops", 0, "trusted hops `N` (rightmost_trusted_count, default 1; envoy_xff: xff_num_trusted_hops, default 0)")
	f.useRemote = fs.Bool("use-remote-address", false, "envoy_xff: emulate the HTTP connection manager's use_remote_address: true")
	f.asJSON = fs.Bool("json", false, "print the whole explanation as JSON on stdout")
	return fs, f
}

func runResolve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	def := config.Default().Trust
	fs, f := resolveFlagSet()
	configPath, peer, strategy, header, cidrs := f.config, f.peer, f.strategy, f.header, f.cidrs
	hops, useRemote, asJSON := f.hops, f.useRemote, f.asJSON
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	set := flagsSet(fs)
	if !set["remote-addr"] {
		return usageError("resolve: --remote-addr is required (--remote-addr '' is a peer that is not an IP)")
	}

	trust := def
	fileTrust := false // whether trust's unset keys come from the file
	if *configPath != "" {
		fileTrust = true
		cfg, err := config.Load(*configPath)
		if err != nil {
			return failure(err)
		}
		trust = cfg.Trust
	}
	if set["strategy"] && *strategy != trust.Strategy {
		// The file's parameters belong to the file's strategy.
		trust = config.Trust{Strategy: *strategy, Header: def.Header, OnUnresolved: trust.OnUnresolved}
		fileTrust = false
	}
	if set["header"] {
		trust.Header = *header
	}
	if set["trusted-cidrs"] {
		trust.TrustedCIDRs = splitList(*cidrs)
	} else if s := trust.Strategy; s != clientip.RightmostTrustedRange.String() && s != clientip.EnvoyXFF.String() {
		trust.TrustedCIDRs = nil // kept in the file for origdst's PROXY protocol only
	}
	if set["trusted-hops"] {
		trust.TrustedHops = hops
	}
	if set["use-remote-address"] {
		trust.UseRemoteAddress = useRemote
	}
	if err := trust.Validate(); err != nil {
		return usageError("resolve: %s", flagErrors(err, func(f string) bool { return set[f] || !fileTrust }))
	}

	r, err := clientip.New(trust.ClientIP())
	if err != nil {
		return failure(fmt.Errorf("resolve: %w", err))
	}
	res, expl := r.Explain(*peer, f.headers.lines(r.Header()))
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(expl); err != nil {
			return failure(fmt.Errorf("resolve: write: %w", err))
		}
	} else if res.OK() {
		fmt.Fprintln(stdout, res.IP)
	}
	if !res.OK() {
		reason := expl.Detail
		if reason == "" {
			reason = res.Reason.String()
		}
		action := "the server denies it (trust.on_unresolved: deny)"
		if trust.PassUnresolved() {
			action = "the server passes it to the policies without a client IP (trust.on_unresolved: pass)"
		}
		return failure(fmt.Errorf("%s (%s); %s", reason, res.Reason, action))
	}
	return nil
}

// flagErrors rewrites the key paths of a trust validation error as the
// flags that set those keys, for the keys whose value came from a flag or
// a flag's default (byFlag) rather than from the file.
func flagErrors(err error, byFlag func(flag string) bool) string {
	ve, ok := errors.AsType[*config.ValidationError](err)
	if !ok {
		return err.Error()
	}
	msgs := make([]string, 0, len(ve.Errors))
	for _, fe := range ve.Errors {
		key, _, _ := strings.Cut(strings.TrimPrefix(fe.Path, "trust."), "[")
		name := fe.Path
		if f, ok := trustFlags[key]; ok && byFlag(f) {
			name = "--" + f
		}
		msgs = append(msgs, name+": "+fe.Msg)
	}
	return strings.Join(msgs, "\n  ")
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

var _ flag.Value = (*headerLines)(nil)
