package config

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/listsource"
)

// maxHTTPEventLoops bounds origdst.http_event_loops (each loop is a
// goroutine, an epoll set and an eventfd).
const maxHTTPEventLoops = 1024

// Validate checks every key, records the parsed forms (ClientIP,
// DenyPrefixes, ListenAddrs...) and normalises extproc.client_ip_header to
// lower case. It returns nil or a *ValidationError listing every problem,
// each with its key path. Parse and Load call it; call it yourself on a
// Config built in code (Default included).
func (c *Config) Validate() error {
	var errs errorList
	c.Trust.validate(&errs, "trust", c.OrigDst.ProxyProtocol)
	c.ExtProc.validate(&errs, "extproc")
	c.XDS.validate(&errs, "xds", c)
	c.OrigDst.validate(&errs, "origdst", c)
	c.Intercept.validate(&errs, "intercept", c)
	validateListen(&errs, "admin.listen", c.Admin.Listen, true)
	validateAllowedHosts(&errs, "admin.allowed_hosts", c.Admin.AllowedHosts)
	validatePolicies(&errs, c.Policies)
	validateDistinctListeners(&errs, c)
	checkSourceNames(&errs, c)
	if c.Trust.CacheDir != "" && strings.ContainsRune(c.Trust.CacheDir, 0) {
		errs.add("trust.cache_dir", "%q is not a directory path", c.Trust.CacheDir)
	}
	if len(errs) > 0 {
		return &ValidationError{Errors: errs}
	}
	return nil
}

// Validate checks the trust section alone (paths start with "trust.") and
// records its parsed form, returned by ClientIP. Strategy parameters that
// the strategy does not use are errors.
func (t *Trust) Validate() error {
	var errs errorList
	t.validate(&errs, "trust", false)
	if len(errs) > 0 {
		return &ValidationError{Errors: errs}
	}
	return nil
}

// ClientIP returns the trust section as a clientip.Config, ready for
// clientip.New. It is the zero Config until Validate has succeeded.
func (t Trust) ClientIP() clientip.Config { return t.clientIP }

// ExtProcAddress is where Envoy reaches the ext_proc server:
// xds.extproc_address, or extproc.listen when that is empty.
func (c *Config) ExtProcAddress() string {
	if c.XDS.ExtProcAddress != "" {
		return c.XDS.ExtProcAddress
	}
	return c.ExtProc.Listen
}

// DenyPrefixes returns the CIDRs written in a cidr policy's deny list
// (after Validate); DenySources its list sources.
func (p Policy) DenyPrefixes() []netip.Prefix { return p.deny }

// DenySources returns the list sources of a cidr policy's deny list.
func (p Policy) DenySources() []listsource.Spec { return p.denySources }

// AllowPrefixes returns the CIDRs written in a cidr policy's allow list
// (after Validate); AllowSources its list sources. Both empty means every
// client IP not denied may pass.
func (p Policy) AllowPrefixes() []netip.Prefix { return p.allow }

// AllowSources returns the list sources of a cidr policy's allow list.
func (p Policy) AllowSources() []listsource.Spec { return p.allowSources }

// ListenAddrs returns the parsed capture addresses of origdst.listen (after
// Validate), in the order given.
func (o OrigDst) ListenAddrs() []netip.AddrPort { return o.listen }

// Network splits a listen address of this file into the network and address
// that net.Listen takes: "unix:///run/x.sock" → ("unix", "/run/x.sock"),
// anything else → ("tcp", addr).
func Network(addr string) (network, address string) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		return "unix", path
	}
	return "tcp", addr
}

// cidrStrategies are the strategies that read trust.trusted_cidrs.
var cidrStrategies = []clientip.Strategy{clientip.RightmostTrustedRange, clientip.EnvoyXFF}

// unresolvedActions are the values of trust.on_unresolved.
var unresolvedActions = []string{"deny", "pass"}

// validate checks the trust section: it parses what is written as strings
// and leaves the rules of the strategies to clientip.New, reporting its
// errors under their key paths. cidrsUsedElsewhere allows trusted_cidrs
// with a strategy that does not read them (origdst's PROXY protocol also
// uses them).
func (t *Trust) validate(errs *errorList, path string, cidrsUsedElsewhere bool) {
	t.clientIP = clientip.Config{}
	before := len(*errs)
	oneOf(errs, path+".on_unresolved", t.OnUnresolved, unresolvedActions)
	strategy, strategyErr := clientip.ParseStrategy(t.Strategy)
	if strategyErr != nil {
		errs.add(path+".strategy", "%q is not one of %s", t.Strategy, strings.Join(clientip.StrategyNames(), ", "))
	}
	prefixes, sources := parseList(errs, path+".trusted_cidrs", t.TrustedCIDRs, listTrust)
	t.trusted, t.sources = prefixes, sources
	if strategyErr != nil {
		return // the rest depends on the strategy
	}
	cfg := clientip.Config{Strategy: strategy, Header: t.Header}
	usesCIDRs := slices.Contains(cidrStrategies, strategy) || !cidrsUsedElsewhere
	if usesCIDRs {
		cfg.TrustedCIDRs = prefixes
	}

	switch {
	case t.TrustedHops != nil:
		cfg.TrustedHops = *t.TrustedHops
	case strategy == clientip.RightmostTrustedCount:
		cfg.TrustedHops = 1
	}
	if t.UseRemoteAddress != nil {
		cfg.UseRemoteAddress = *t.UseRemoteAddress
	}
	// The rules of clientip.New look at whether CIDRs are set; sources
	// will set them once loaded, so a placeholder stands for them here.
	check := cfg
	if usesCIDRs && len(sources) > 0 {
		check.TrustedCIDRs = append(slices.Clip(prefixes), sourcePlaceholder)
	}
	if _, err := clientip.New(check); err != nil {
		ce, ok := errors.AsType[*clientip.ConfigError](err)
		if !ok {
			errs.add(path, "%v", err)
			return
		}
		for _, f := range ce.Fields {
			errs.add(path+"."+f.Field, "%s", f.Reason)
		}
		return
	}
	r, err := clientip.New(cfg)
	if err == nil && len(*errs) == before {
		t.clientIP = r.Config()
	}
}

// sourcePlaceholder stands for the lists of trust sources when the trust
// settings are checked, before any list is loaded.
var sourcePlaceholder = netip.PrefixFrom(netip.IPv6Unspecified(), 128)

// TrustedPrefixes returns the CIDRs written in trust.trusted_cidrs (after
// Validate), whatever the strategy: the peers trusted for the PROXY
// protocol too.
func (t Trust) TrustedPrefixes() []netip.Prefix { return t.trusted }

// TrustedSources returns the list sources of trust.trusted_cidrs (after
// Validate).
func (t Trust) TrustedSources() []listsource.Spec { return t.sources }

// UsesTrustedCIDRs reports whether the strategy reads trust.trusted_cidrs
// (rightmost_trusted_range, envoy_xff); otherwise they serve the PROXY
// protocol only.
func (t Trust) UsesTrustedCIDRs() bool {
	s, err := clientip.ParseStrategy(t.Strategy)
	return err == nil && slices.Contains(cidrStrategies, s)
}

// PassUnresolved reports whether trust.on_unresolved is pass: a request
// whose client IP is unresolved goes on to the policies without one.
func (t Trust) PassUnresolved() bool { return t.OnUnresolved == "pass" }

// parsePrefix parses a CIDR, or a bare IP as a single-address prefix. A
// CIDR with bits set past its length is refused as a likely typo.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", s)
		}
		if p != p.Masked() {
			return netip.Prefix{}, fmt.Errorf("%q has address bits set past /%d (did you mean %s?)", s, p.Bits(), p.Masked())
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an IP address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (x *ExtProc) validate(errs *errorList, path string) {
	validateListen(errs, path+".listen", x.Listen, true)
	validateSocketGroup(errs, path, x.Listen, x.SocketGroup)
	// The one rule of both doors (decide.CheckClientIPHeader).
	if h, err := decide.CheckClientIPHeader(x.ClientIPHeader); err != nil {
		errs.add(path+".client_ip_header", "%s", err.Error())
	} else {
		x.ClientIPHeader = h
	}
	if x.MetadataNamespace == "" || strings.ContainsFunc(x.MetadataNamespace, isSpaceOrControl) {
		errs.add(path+".metadata_namespace", "%q is not a valid namespace (non-empty, no spaces)", x.MetadataNamespace)
	}
	if err := decide.CheckDenyStatus(x.DenyStatus); err != nil {
		errs.add(path+".deny_status", "%s", err.Error())
	}
	if x.DrainTimeout.Duration < 0 {
		errs.add(path+".drain_timeout", "%v is negative", x.DrainTimeout.Duration)
	}
}

var (
	modes      = []string{"redirect", "tproxy"}
	fallbacks  = []string{"always", "auto", "never"}
	families   = []string{"ipv4", "ipv6"}
	policyKind = []string{"cidr", "plugin"}
)

func (x *XDS) validate(errs *errorList, path string, c *Config) {
	validateListen(errs, path+".listen", x.Listen, true)
	validateSocketGroup(errs, path, x.Listen, x.SocketGroup)
	oneOf(errs, path+".mode", x.Mode, modes)
	validatePort(errs, path+".outbound_port", x.OutboundPort)
	validatePort(errs, path+".inbound_port", x.InboundPort)
	if x.OutboundPort == x.InboundPort {
		errs.add(path+".inbound_port", "%d is also the outbound_port", x.InboundPort)
	}
	if len(x.IPFamilies) == 0 {
		errs.add(path+".ip_families", "must list ipv4, ipv6 or both")
	}
	for i, f := range x.IPFamilies {
		p := fmt.Sprintf("%s.ip_families[%d]", path, i)
		if oneOf(errs, p, f, families) && slices.Index(x.IPFamilies, f) < i {
			errs.add(p, "%q is listed twice", f)
		}
	}
	validatePorts(errs, path+".http_ports", x.HTTPPorts)
	if x.ExtProcAddress != "" {
		validateListen(errs, path+".extproc_address", x.ExtProcAddress, false)
	} else if x.Enabled && c.ExtProc.Listen != "" {
		if network, addr := Network(c.ExtProc.Listen); network == "tcp" {
			if _, port, err := net.SplitHostPort(addr); err == nil && port == "0" {
				errs.add(path+".extproc_address", "required when extproc.listen has port 0 (Envoy cannot dial an ephemeral port it does not know)")
			}
		}
	}
}

func (o *OrigDst) validate(errs *errorList, path string, c *Config) {
	oneOf(errs, path+".mode", o.Mode, modes)
	o.listen = nil
	if o.Enabled && len(o.Listen) == 0 {
		errs.add(path+".listen", "must list at least one capture address when origdst is enabled")
	}
	for i, s := range o.Listen {
		p := fmt.Sprintf("%s.listen[%d]", path, i)
		ap, err := netip.ParseAddrPort(s)
		switch {
		case err != nil:
			errs.add(p, "%q is not an IP:port (like 0.0.0.0:15001 or [::]:15001)", s)
		case ap.Addr().Zone() != "":
			errs.add(p, "%q: zones are not supported", s)
		case slices.Contains(o.listen, ap):
			errs.add(p, "%q is listed twice", s)
		default:
			o.listen = append(o.listen, ap)
		}
	}
	validateMark(errs, path+".mark", o.Mark)
	validateMark(errs, path+".tproxy_mark", o.TProxyMark)
	if o.Mark == o.TProxyMark {
		errs.add(path+".tproxy_mark", "%d is also origdst.mark; the upstream mark must differ from the TPROXY mark", o.TProxyMark)
	}
	if oneOf(errs, path+".fallback", o.Fallback, fallbacks) && o.Fallback == "auto" && o.Enabled && !c.XDS.Enabled {
		errs.add(path+".fallback", "auto needs xds.enabled (it watches for an Envoy that has ACKed)")
	}
	validatePorts(errs, path+".http_ports", o.HTTPPorts)
	if o.HTTPEventLoops < -1 || o.HTTPEventLoops > maxHTTPEventLoops {
		errs.add(path+".http_event_loops", "%d is not -1 (none), 0 (automatic) or a number of loops up to %d", o.HTTPEventLoops, maxHTTPEventLoops)
	}
	if o.OriginalSource && o.Mode != "tproxy" {
		errs.add(path+".original_source", "needs origdst.mode: tproxy (only the TPROXY rules route the answers back to realipd)")
	}
	if o.DialTimeout.Duration <= 0 {
		errs.add(path+".dial_timeout", "%v is not a positive duration", o.DialTimeout.Duration)
	}
	for _, d := range []struct {
		key string
		d   Duration
	}{{"fallback_grace", o.FallbackGrace}, {"idle_timeout", o.IdleTimeout}, {"drain_timeout", o.DrainTimeout}} {
		if d.d.Duration < 0 {
			errs.add(path+"."+d.key, "%v is negative", d.d.Duration)
		}
	}
	if o.MaxConnections < 1 {
		errs.add(path+".max_connections", "%d is not a positive number of connections", o.MaxConnections)
	}
	if o.ProxyProtocol && len(c.Trust.TrustedCIDRs) == 0 {
		errs.add(path+".proxy_protocol", "needs trust.trusted_cidrs: PROXY headers are accepted only from trusted peers")
	}
}

// ValidatePolicies checks a policies list on its own, as Validate does
// (key paths start with "policies["), and records the parsed CIDRs of its
// cidr entries (DenyPrefixes, AllowPrefixes). It returns nil or a
// *ValidationError.
func ValidatePolicies(policies []Policy) error {
	var errs errorList
	validatePolicies(&errs, policies)
	if len(errs) > 0 {
		return &ValidationError{Errors: errs}
	}
	return nil
}

func validatePolicies(errs *errorList, policies []Policy) {
	names := make(map[string]int, len(policies))
	for i := range policies {
		p := &policies[i]
		path := fmt.Sprintf("policies[%d]", i)
		p.deny, p.allow, p.denySources, p.allowSources = nil, nil, nil, nil
		switch first, seen := names[p.Name]; {
		case p.Name == "":
			errs.add(path+".name", "required")
		case seen:
			errs.add(path+".name", "%q is already the name of policies[%d]", p.Name, first)
		default:
			names[p.Name] = i
		}
		if !oneOf(errs, path+".type", p.Type, policyKind) {
			continue
		}
		switch p.Type {
		case "cidr":
			p.deny, p.denySources = parseList(errs, path+".deny", p.Deny, listDeny)
			p.allow, p.allowSources = parseList(errs, path+".allow", p.Allow, listAllow)
			if len(p.Deny) == 0 && len(p.Allow) == 0 {
				errs.add(path, "a cidr policy needs deny, allow or both")
			}
			for _, f := range []struct {
				key string
				set bool
			}{
				{"path", p.Path != ""}, {"sha256", p.SHA256 != ""}, {"timeout", p.Timeout.Duration != 0},
				{"on_error", p.OnError != ""}, {"cache_ttl", p.CacheTTL.Duration != 0}, {"config", p.Config != nil},
			} {
				if f.set {
					errs.add(path+"."+f.key, "not used by cidr policies")
				}
			}
		case "plugin":
			if p.Path == "" {
				errs.add(path+".path", "required for a plugin policy")
			} else if filepath.Clean(p.Path) == "." {
				errs.add(path+".path", "%q is not a program path", p.Path)
			}
			if p.SHA256 == "" {
				errs.add(path+".sha256", "required for a plugin policy: the binary's SHA-256, so a replaced binary is refused (sha256sum PATH)")
			} else {
				if b, err := hex.DecodeString(p.SHA256); err != nil || len(b) != 32 {
					errs.add(path+".sha256", "%q is not 64 hexadecimal digits", p.SHA256)
				}
			}
			if p.Timeout.Duration <= 0 {
				errs.add(path+".timeout", "%v is not a positive duration", p.Timeout.Duration)
			}
			oneOf(errs, path+".on_error", p.OnError, []string{"allow", "deny"})
			if p.CacheTTL.Duration < 0 {
				errs.add(path+".cache_ttl", "%v is negative", p.CacheTTL.Duration)
			}
			if len(p.Deny) > 0 {
				errs.add(path+".deny", "not used by plugin policies (a plugin takes its settings under config)")
			}
			if len(p.Allow) > 0 {
				errs.add(path+".allow", "not used by plugin policies (a plugin takes its settings under config)")
			}
		}
	}
}

// validateDistinctListeners refuses two enabled roles on one address.
func validateDistinctListeners(errs *errorList, c *Config) {
	type listener struct{ path, addr string }
	var seen []listener
	for _, l := range []struct {
		on   bool
		path string
		addr string
	}{
		{c.ExtProc.Enabled, "extproc.listen", c.ExtProc.Listen},
		{c.XDS.Enabled, "xds.listen", c.XDS.Listen},
		{c.Admin.Enabled, "admin.listen", c.Admin.Listen},
	} {
		if !l.on || l.addr == "" || strings.HasSuffix(l.addr, ":0") {
			continue
		}
		for _, s := range seen {
			if s.addr == l.addr {
				errs.add(l.path, "%q is also %s", l.addr, s.path)
			}
		}
		seen = append(seen, listener{l.path, l.addr})
	}
}

// validateListen checks "host:port" (port 0 allowed when listening: the
// kernel picks one) or "unix:///absolute/path".
func validateListen(errs *errorList, path, addr string, listening bool) {
	if addr == "" {
		errs.add(path, "required (host:port or unix:///absolute/path)")
		return
	}
	if network, p := Network(addr); network == "unix" {
		if !filepath.IsAbs(p) || filepath.Clean(p) == "/" {
			errs.add(path, "%q: a unix socket address is unix:// followed by an absolute path", addr)
		}
		return
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		errs.add(path, "%q is not host:port or unix:///absolute/path", addr)
		return
	}
	if strings.ContainsAny(host, " /") {
		errs.add(path, "%q: %q is not a host name or IP address", addr, host)
	}
	n, err := strconv.Atoi(port)
	lowest := 1
	if listening {
		lowest = 0
	}
	if err != nil || n < lowest || n > 65535 {
		errs.add(path, "%q: port %q is not between %d and 65535", addr, port, lowest)
	}
}

// validateSocketGroup checks the socket_group of the section at path,
// whose listen address is listen: a gid, and only for a unix socket (a TCP
// port has no owner or group: every local process may connect).
func validateSocketGroup(errs *errorList, path, listen string, group *int) {
	if group == nil {
		return
	}
	if *group < 0 || int64(*group) > maxID {
		errs.add(path+".socket_group", "%d is not a group ID between 0 and %d", *group, int64(maxID))
	}
	if network, _ := Network(listen); network != "unix" {
		errs.add(path+".socket_group", "needs a unix:// %s.listen (%q is TCP, which any local process may connect to)", path, listen)
	}
}

// validateAllowedHosts checks the extra host names of the admin listener's
// Host check: exact DNS names, since IP addresses and localhost are always
// accepted and a wildcard would let DNS rebinding in again.
func validateAllowedHosts(errs *errorList, path string, hosts []string) {
	seen := make(map[string]int, len(hosts))
	for i, h := range hosts {
		p := fmt.Sprintf("%s[%d]", path, i)
		name := strings.TrimSuffix(strings.ToLower(h), ".")
		_, ipErr := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"))
		switch {
		case h == "":
			errs.add(p, "empty; give a host name")
		case ipErr == nil:
			errs.add(p, "%q: IP addresses are always accepted; list host names only", h)
		case name == "localhost":
			errs.add(p, "localhost is always accepted")
		case strings.Contains(h, "*"):
			errs.add(p, "%q: wildcards are not supported; list each name", h)
		case strings.Contains(h, ":"):
			errs.add(p, "%q: give the host name without a port (any port is accepted)", h)
		case !isHostName(name):
			errs.add(p, "%q is not a host name", h)
		default:
			if first, dup := seen[name]; dup {
				errs.add(p, "%q is already %s[%d]", h, path, first)
			} else {
				seen[name] = i
			}
		}
	}
}

// isHostName reports whether s is a DNS name: dot-separated labels of 1 to
// 63 letters, digits, '-' or '_', not starting or ending with '-', at most
// 253 characters.
func isHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func validatePort(errs *errorList, path string, port int) {
	if port < 1 || port > 65535 {
		errs.add(path, "%d is not a port between 1 and 65535", port)
	}
}

func validatePorts(errs *errorList, path string, ports []int) {
	for i, port := range ports {
		p := fmt.Sprintf("%s[%d]", path, i)
		validatePort(errs, p, port)
		if slices.Index(ports, port) < i {
			errs.add(p, "%d is listed twice", port)
		}
	}
}

func validateMark(errs *errorList, path string, mark int) {
	if mark < 1 || int64(mark) > 0xFFFFFFFF { // int64: on 32-bit systems the constant overflows int
		errs.add(path, "%d is not a fwmark between 1 and 4294967295", mark)
	}
}

// oneOf records an error unless v is one of allowed, and reports whether it is.
func oneOf(errs *errorList, path, v string, allowed []string) bool {
	if slices.Contains(allowed, v) {
		return true
	}
	errs.add(path, "%q is not one of %s", v, strings.Join(allowed, ", "))
	return false
}

func isSpaceOrControl(r rune) bool { return r <= ' ' || r == 0x7f }
