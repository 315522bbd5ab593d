package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/internal/policies"
	"github.com/realipd/realipd/listsource"
	"github.com/realipd/realipd/plugins"
)

const resolveSynopsis = `resolve [--config FILE] --remote-addr ADDR [-H 'Name: value']...
                  [--as-forwarded-by-envoy [--destination-addr ADDR]]
                  [--strategy S] [--header H] [--trusted-cidrs a,b] [--trusted-hops N]
                  [--use-remote-address] [--json]`

const resolveDescription = `
Resolve the client IP of one request as the ext_proc server would, and print
it alone on stdout (exit 0). The peer stands in as the client only when it is
not trusted, when the request carries no forwarding header, or when every
entry is trusted; any other failure leaves the client IP unresolved: the
reason goes to stderr and the exit status is 1. A bad command line exits 2.

The request is the peer that connected (--remote-addr) and the header lines
(-H, repeatable, kept in order; names are case-insensitive). By default the
lines are the request as the peer sent it, before Envoy appended its entry
to X-Forwarded-For: what the server resolves once it has removed that entry
(extproc.xff_appended_by_envoy), and what the native listener's HTTP mode
resolves. With --as-forwarded-by-envoy they are the request as realipd
receives it from Envoy, X-Forwarded-For ending with the entry Envoy appended
(use_remote_address: true), and resolve removes that entry first with the
server's own code.

--config takes the trust section of a configuration file, and its
extproc.xff_appended_by_envoy; flags given on the command line override the
trust keys. A --strategy other than the file's discards the file's trust
settings. With --json and --config, the file's policies run too (plugins
are started, and stopped before resolve exits) and the output shows the
decision and the deciding policy; the exit status still tells only whether
the client IP resolved.`

const resolveExamples = `
  realipd resolve --strategy rightmost_trusted_range --trusted-cidrs 10.0.0.0/8 \
      --remote-addr 10.0.0.5:80 -H 'X-Forwarded-For: 203.0.113.9, 10.1.1.1'
  realipd resolve --strategy rightmost_trusted_count --trusted-hops 1 --as-forwarded-by-envoy \
      --remote-addr 10.0.0.5:80 -H 'X-Forwarded-For: 203.0.113.9, 10.0.0.5'
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
	destination                           *string
	headers                               *headerLines
	hops                                  *int
	useRemote, asJSON, asForwarded        *bool
}

// resolveFlagSet builds resolve's FlagSet without running it.
func resolveFlagSet() (*flag.FlagSet, resolveFlags) {
	def := config.Default().Trust
	fs := newFlagSet("resolve", resolveSynopsis, resolveDescription, resolveExamples)
	f := resolveFlags{headers: &headerLines{}}
	f.config = fs.String("config", "", "configuration `FILE` whose trust section (and extproc.xff_appended_by_envoy) is used, flags overriding it; with --json its policies run too")
	f.peer = fs.String("remote-addr", "", "the peer that connected: `ADDR` as ip:port, [v6]:port or an IP; '' is a peer that is not an IP (required)")
	fs.Var(f.headers, "H", "a request header line `'Name: value'`; repeatable, in order; 'Name:' is a line with an empty value")
	f.asForwarded = fs.Bool("as-forwarded-by-envoy", false, "the -H lines are the request as realipd receives it from Envoy, whose use_remote_address: true appended the peer to X-Forwarded-For: remove that entry first, as the ext_proc server does (extproc.xff_appended_by_envoy); without it the lines are as the peer sent them, which is also what the native listener's HTTP mode resolves (it appends the peer like Envoy, but only to what it forwards)")
	f.destination = fs.String("destination-addr", "", "with --as-forwarded-by-envoy: Envoy's destination.address `ADDR` (ip:port), the entry Envoy appends for a loopback peer")
	f.strategy = fs.String("strategy", def.Strategy, "strategy `S`: "+strings.Join(clientip.StrategyNames(), ", "))
	f.header = fs.String("header", def.Header, "header `H` to read (ignored by remote_addr)")
	f.cidrs = fs.String("trusted-cidrs", "", "comma-separated trusted `CIDRs` (rightmost_trusted_range; envoy_xff: xff_trusted_cidrs)")
	f.hops = fs.Int("trusted-hops", 0, "trusted hops `N` (rightmost_trusted_count, default 1; envoy_xff: xff_num_trusted_hops, default 0)")
	f.useRemote = fs.Bool("use-remote-address", false, "envoy_xff: emulate the HTTP connection manager's use_remote_address: true")
	f.asJSON = fs.Bool("json", false, "print the input model, the whole explanation and the decision as JSON on stdout")
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
	if set["destination-addr"] {
		if !*f.asForwarded {
			return usageError("resolve: --destination-addr is Envoy's destination.address: it goes with --as-forwarded-by-envoy")
		}
		if _, err := netip.ParseAddrPort(*f.destination); err != nil {
			return usageError("resolve: --destination-addr: %q is not an ip:port", *f.destination)
		}
	}

	defaults := config.Default()
	cfg := &defaults
	fileTrust := false // whether trust's unset keys come from the file
	if *configPath != "" {
		fileTrust = true
		loaded, err := config.LoadContext(ctx, *configPath)
		if err != nil {
			return failure(err)
		}
		cfg = loaded
	}
	trust := cfg.Trust
	if set["strategy"] && *strategy != trust.Strategy {
		// The file's parameters belong to the file's strategy.
		trust = config.Trust{Strategy: *strategy, Header: def.Header, OnUnresolved: trust.OnUnresolved}
		fileTrust = false
	}
	if set["header"] {
		trust.Header = *header
	}
	if set["trusted-cidrs"] {
		trust.TrustedCIDRs = config.CIDRs(splitList(*cidrs)...)
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
	cfg.Trust = trust

	// The list sources the server would use: those of trust, and with
	// --json those of the policies too. They load as at serve's start
	// (their caches, or fetched), without writing the cache.
	var lists config.Lists
	if *configPath != "" {
		specs := cfg.Trust.TrustedSources()
		if *asJSON {
			specs = cfg.ListSources()
		}
		if len(specs) > 0 {
			set := listsource.NewSet(listsource.Options{CacheDir: cfg.Trust.CacheDir, CacheReadOnly: true,
				Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
			defer set.Close()
			st, err := set.Stage(ctx, specs)
			if err != nil {
				return failure(fmt.Errorf("resolve: list sources: %w", err))
			}
			lists = st.List
		}
	}

	// The server's own decision settings, so that the resolver and the
	// removal of Envoy's entry are the server's.
	settings, err := decisionSettings(cfg, nil, lists)
	if err != nil {
		return failure(fmt.Errorf("resolve: %w", err))
	}
	r := settings.Resolver
	in := resolveInput{Model: inputAsSent}
	lines := f.headers.lines(r.Header())
	if *f.asForwarded {
		in.Model = inputAsForwarded
		in.Entry = "not_removed"
		if settings.TrimsEnvoyEntry() {
			var found extproc.EnvoyEntry
			last := clientip.LastEntry(lines)
			lines, found = extproc.TrimEnvoyEntry(slices.Clone(lines), *peer, *f.destination, nil)
			in.Entry = found.String()
			if found == extproc.EnvoyEntryMismatch {
				fmt.Fprintf(stderr, "realipd: warning: the last X-Forwarded-For entry %q is not the address Envoy appends for the peer %q, so nothing was removed, as the server does (it counts realipd_extproc_xff_mismatch_total): Envoy probably does not append, or this header is not as Envoy forwarded it\n", last, *peer)
			}
		}
	}
	res, expl := r.Explain(*peer, lines)
	if *asJSON {
		out := resolveOutput{resolveInput: in, Explanation: expl}
		if err := decideForResolve(ctx, cfg, *configPath != "", lists, settings, *peer, res, *f.headers, &out, stderr); err != nil {
			return failure(fmt.Errorf("resolve: %w", err))
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
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

// The input models of resolve (the input field of its JSON output).
const (
	inputAsSent      = "as_sent_by_peer"       // the lines as the peer sent them, before Envoy appended to them
	inputAsForwarded = "as_forwarded_by_envoy" // the lines as realipd receives them from Envoy
)

// resolveInput says which input model resolve used.
type resolveInput struct {
	Model string `json:"input"`
	// Entry is, with as_forwarded_by_envoy, what became of the entry Envoy
	// appended: removed, not_appended (a peer that is not an IP), mismatch
	// (the last entry is not what Envoy appends: nothing removed), or
	// not_removed (extproc.xff_appended_by_envoy is false, or the strategy
	// does not read X-Forwarded-For).
	Entry string `json:"envoy_entry,omitempty"`
}

// resolveOutput is resolve's JSON output: the input model, the
// explanation of the resolution, and the decision.
type resolveOutput struct {
	resolveInput
	clientip.Explanation
	// Policies are the policies that ran, in order: those of --config's
	// file; none without it.
	Policies []string `json:"policies"`
	Decision string   `json:"decision"`         // allow or deny
	Policy   string   `json:"policy,omitempty"` // the deciding policy of a deny, or trust.on_unresolved
	Status   int      `json:"status,omitempty"` // the HTTP status of a deny
	// PolicyError is the first policy error, settled by its on_error.
	PolicyError string            `json:"policy_error,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"` // the policies' metadata fields
}

// decideForResolve fills out's decision with the servers' own decide step
// (decide.Decider.Decide): trust.on_unresolved, then the policies of cfg
// (when withPolicies; their plugins are started and stopped before it
// returns; their cidr lists with the lists of their sources), each seeing
// the header lines it reads.
func decideForResolve(ctx context.Context, cfg *config.Config, withPolicies bool, lists config.Lists, settings decide.Settings, peer string, res clientip.Result, headers headerLines, out *resolveOutput, stderr io.Writer) error {
	out.Policies = []string{}
	if withPolicies && len(cfg.Policies) > 0 {
		// The plugins' own logs go to stderr, their warnings and errors only.
		logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		chains, err := policies.Start(cfg.Policies, policies.Options{Logger: logger})
		if err != nil {
			return err
		}
		chain, err := chains.Build(lists)
		chains.Release()
		if err != nil {
			return err
		}
		defer chain.Close() // stops the plugin processes before resolve exits
		settings.Chain = chain
		out.Policies = chain.Names()
	}
	d, err := decide.New(settings, nil)
	if err != nil {
		return err
	}
	o := d.Decide(ctx, &decide.Door{Name: "resolve"}, &decide.Input{Peer: peer, Resolution: res}, func() *plugins.Request {
		return &plugins.Request{
			ClientIP:   res.IP,
			Peer:       peer,
			Resolution: res,
			Strategy:   d.Resolver().Strategy(),
			Headers:    headers.forPolicies(d.Chain()),
		}
	})
	if o.Err != nil {
		out.PolicyError = o.Err.Error()
	}
	out.Decision, out.Policy, out.Metadata = "allow", o.Policy, o.Metadata
	if o.Deny {
		out.Decision, out.Status = "deny", o.Status
	}
	return nil
}

// forPolicies returns the lines the policies of chain read
// (plugins.HeaderInputs), names lower-case, in order, as the ext_proc
// server collects them.
func (h headerLines) forPolicies(chain *plugins.Chain) []plugins.Header {
	names, all := chain.RequestHeaders()
	var out []plugins.Header
	for _, l := range h {
		name := strings.ToLower(l.name)
		if all || slices.Contains(names, name) {
			out = append(out, plugins.Header{Name: name, Value: l.value})
		}
	}
	return out
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
