package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/realipd/realipd/extproc/extproctest"
	"github.com/realipd/realipd/plugins"
)

// The agreement table: one set of requests that every door — the
// ext_proc server, the native listener's HTTP mode and, for the fields it
// has, its TCP proxy — must decide alike. TestDoorsAgree runs it in
// process, without root; TestHTTPModeAgreesWithExtProc runs it end to end
// through real iptables rules in network namespaces.

// uaPolicy reads request headers (HeaderInputs): it denies the user agent
// "evil" with its own status, body and header, and tags every other
// request with the path it saw.
type uaPolicy struct{}

func (uaPolicy) RequestHeaders() ([]string, bool) { return []string{":path", "user-agent"}, false }

func (uaPolicy) Decide(_ context.Context, req *plugins.Request) (plugins.Decision, error) {
	var path, ua string
	for _, h := range req.Headers {
		switch h.Name {
		case ":path":
			path = h.Value
		case "user-agent":
			ua = h.Value
		}
	}
	if ua == "evil" {
		return plugins.Decision{Deny: true, Status: 429, Body: "slow down\n", Headers: []plugins.Header{{Name: "retry-after", Value: "7"}}}, nil
	}
	return plugins.Decision{Headers: []plugins.Header{{Name: "x-policy-tag", Value: "path=" + path}}}, nil
}

// headerPolicy adds headers realipd must refuse to write (framing,
// routing, hop-by-hop, its own) beside one it may, on an allow or, with
// deny, on the deny answer.
type headerPolicy struct{ deny bool }

// refusedPolicyHeaders are the headers headerPolicy adds that no door may
// write (x-real-ip on an allow and content-type on a deny are realipd's
// own); x-ok is the one they all must.
var refusedPolicyHeaders = []string{"content-length", "transfer-encoding", "host", "connection", "te", "upgrade", "keep-alive", "x-real-ip", "content-type"}

func (p headerPolicy) Decide(context.Context, *plugins.Request) (plugins.Decision, error) {
	hs := []plugins.Header{{Name: "x-ok", Value: "yes"}}
	for _, n := range refusedPolicyHeaders {
		if n == "content-type" && !p.deny || n == "x-real-ip" && p.deny {
			continue // not realipd's own there: the policy's to set
		}
		hs = append(hs, plugins.Header{Name: n, Value: "99"})
	}
	hs = append(hs, plugins.Header{Name: "X-Upper", Value: "1"}, plugins.Header{Name: "x-crlf", Value: "a\r\nb"})
	return plugins.Decision{Deny: p.deny, Status: 451, Body: "unavailable\n", Headers: hs}, nil
}

// httpCase is one request of the shared table: a configuration, the peer
// (an address of the client namespace) and the header lines it sends.
type httpCase struct {
	name    string
	config  string // YAML: trust, extproc and policies sections
	policy  plugins.Policy
	peer    string
	headers [][2]string
	// want is the client IP header the upstream gets ("" for none), or,
	// for a deny, "deny <status>".
	want string
}

// answer is what a request came to, on any door.
type answer struct {
	decision string // "allow" or "deny <status> <body>"
	clientIP string // the client IP header the upstream gets; "" removed
	tag      string // the x-policy-tag header a policy adds
	extra    string // the other headers of headerPolicy that were written, "name=value" sorted
}

// The peers of the table: addresses of the client namespace, trusted or
// not by the configurations below.
const (
	caseUntV4 = "10.77.0.2"
	caseTrV4  = "10.77.0.200"
	caseUntV6 = "fd77::2"
	caseTrV6  = "fd77::105"
)

// agreementCases is the table.
func agreementCases() []httpCase {
	const (
		range77 = "trust: {strategy: rightmost_trusted_range, trusted_cidrs: [10.77.0.128/25, 10.1.0.0/16, 'fd77::100/120']}\n"
		untV4   = caseUntV4
		trV4    = caseTrV4
		untV6   = caseUntV6
		trV6    = caseTrV6
	)
	xff := func(v string) [2]string { return [2]string{"X-Forwarded-For", v} }
	return []httpCase{
		{name: "untrusted peer, spoofed XFF and x-real-ip", config: range77, peer: untV4,
			headers: [][2]string{xff("6.6.6.6"), {"X-Real-IP", "6.6.6.6"}}, want: untV4},
		{name: "trusted peer, forwarded client", config: range77, peer: trV4, headers: [][2]string{xff("198.51.100.9, 10.1.2.3")}, want: "198.51.100.9"},
		{name: "trusted peer, two XFF lines", config: range77, peer: trV4, headers: [][2]string{xff("203.0.113.1"), xff("198.51.100.9, 10.1.2.3")}, want: "198.51.100.9"},
		{name: "trusted peer, an empty XFF line (Envoy skips it)", config: range77, peer: trV4, headers: [][2]string{xff("198.51.100.9"), xff("")}, want: "198.51.100.9"},
		{name: "trusted peer, a client-sent x-real-ip is replaced", config: range77, peer: trV4,
			headers: [][2]string{{"X-Real-IP", "1.2.3.4"}, xff("198.51.100.9")}, want: "198.51.100.9"},
		{name: "trusted peer, no header: the peer", config: range77, peer: trV4, want: trV4},
		{name: "trusted peer, all trusted: the peer", config: range77, peer: trV4, headers: [][2]string{xff("10.1.2.3, 10.77.0.130")}, want: trV4},
		{name: "trusted peer, entries with ports", config: range77, peer: trV4, headers: [][2]string{xff("198.51.100.9:4711, 10.1.2.3:80")}, want: "198.51.100.9"},
		{name: "trusted peer, an IPv4-mapped entry is unmapped", config: range77, peer: trV4, headers: [][2]string{xff("::ffff:198.51.100.9")}, want: "198.51.100.9"},
		{name: "invalid decisive entry: unresolved, denied", config: range77, peer: trV4, headers: [][2]string{xff("8.8.8.8, bogus")}, want: "deny 403"},
		{name: "unresolved, on_unresolved pass: the header removed", config: "trust: {strategy: rightmost_trusted_range, trusted_cidrs: [10.77.0.128/25], on_unresolved: pass}\n",
			peer: trV4, headers: [][2]string{xff("8.8.8.8, bogus"), {"X-Real-IP", "1.2.3.4"}}, want: ""},
		{name: "unresolved, on_unresolved pass, an allow list denies it", config: "trust: {strategy: rightmost_trusted_range, trusted_cidrs: [10.77.0.128/25], on_unresolved: pass}\npolicies: [{name: only, type: cidr, allow: [198.51.100.0/24]}]\n",
			peer: trV4, headers: [][2]string{xff("8.8.8.8, bogus")}, want: "deny 403"},
		{name: "cidr deny of the resolved client, deny_status", config: range77 + "extproc: {deny_status: 429}\npolicies: [{name: block, type: cidr, deny: [198.51.100.0/24]}]\n",
			peer: trV4, headers: [][2]string{xff("198.51.100.9")}, want: "deny 429"},
		{name: "cidr deny of an IPv6 client", config: range77 + "policies: [{name: block, type: cidr, deny: ['2001:db8:bad::/48']}]\n",
			peer: trV6, headers: [][2]string{xff("2001:db8:bad::1")}, want: "deny 403"},
		{name: "cidr allow list passes the client", config: range77 + "policies: [{name: only, type: cidr, allow: [198.51.100.0/24]}]\n",
			peer: trV4, headers: [][2]string{xff("198.51.100.9")}, want: "198.51.100.9"},
		{name: "cidr allow list: the peer itself is not in it", config: range77 + "policies: [{name: only, type: cidr, allow: [198.51.100.0/24]}]\n",
			peer: untV4, headers: [][2]string{xff("198.51.100.9")}, want: "deny 403"},
		{name: "custom client IP header", config: range77 + "extproc: {client_ip_header: x-client-ip}\n", peer: trV4,
			headers: [][2]string{xff("198.51.100.9"), {"X-Client-IP", "6.6.6.6"}}, want: "198.51.100.9"},
		{name: "Forwarded header", config: "trust: {strategy: rightmost_trusted_range, header: Forwarded, trusted_cidrs: [10.77.0.128/25]}\n", peer: trV4,
			headers: [][2]string{{"Forwarded", `for=192.0.2.60;proto=http, for="[2001:db8::7]:443"`}}, want: "2001:db8::7"},
		{name: "Forwarded, an obfuscated identifier decides: unresolved", config: "trust: {strategy: rightmost_trusted_range, header: Forwarded, trusted_cidrs: [10.77.0.128/25]}\n", peer: trV4,
			headers: [][2]string{{"Forwarded", `for=192.0.2.60, for=_hidden`}}, want: "deny 403"},
		{name: "single_header CF-Connecting-IP", config: "trust: {strategy: single_header, header: CF-Connecting-IP}\n", peer: trV4,
			headers: [][2]string{{"CF-Connecting-IP", "198.51.100.7"}, {"CF-Connecting-IP", "198.51.100.8"}}, want: "198.51.100.8"},
		{name: "single_header with a port", config: "trust: {strategy: single_header, header: X-Client}\n", peer: trV4,
			headers: [][2]string{{"X-Client", "198.51.100.7:8443"}}, want: "198.51.100.7"},
		{name: "trusted count 2", config: "trust: {strategy: rightmost_trusted_count, trusted_hops: 2}\n", peer: untV4,
			headers: [][2]string{xff("6.6.6.6, 198.51.100.3, 10.9.9.9")}, want: "198.51.100.3"},
		{name: "trusted count, too few entries", config: "trust: {strategy: rightmost_trusted_count, trusted_hops: 3}\n", peer: untV4,
			headers: [][2]string{xff("198.51.100.3")}, want: "deny 403"},
		{name: "envoy_xff cidrs", config: "trust: {strategy: envoy_xff, trusted_cidrs: [10.77.0.128/25, 10.1.0.0/16]}\n", peer: trV4,
			headers: [][2]string{xff("198.51.100.4, 10.1.1.1")}, want: "198.51.100.4"},
		{name: "leftmost_non_private", config: "trust: {strategy: leftmost_non_private}\n", peer: untV4,
			headers: [][2]string{xff("10.0.0.1, 198.51.100.200, 8.8.8.8")}, want: "8.8.8.8"},
		{name: "remote_addr ignores the headers", config: "trust: {strategy: remote_addr}\n", peer: untV4, headers: [][2]string{xff("8.8.8.8")}, want: untV4},
		{name: "IPv6 untrusted peer", config: range77, peer: untV6, headers: [][2]string{xff("6.6.6.6")}, want: untV6},
		{name: "IPv6 trusted peer", config: range77, peer: trV6, headers: [][2]string{xff("2001:db8::9, fd77::1ff")}, want: "2001:db8::9"},
		{name: "IPv6 trusted peer, all trusted", config: range77, peer: trV6, headers: [][2]string{xff("fd77::1ff")}, want: trV6},
		{name: "header policy allows and tags", config: range77, policy: uaPolicy{}, peer: trV4,
			headers: [][2]string{xff("198.51.100.9"), {"User-Agent", "curl"}}, want: "198.51.100.9"},
		{name: "header policy denies with its status", config: range77, policy: uaPolicy{}, peer: trV4,
			headers: [][2]string{xff("198.51.100.9"), {"User-Agent", "evil"}}, want: "deny 429"},
		{name: "policy headers that must be refused, on an allow", config: range77, policy: headerPolicy{}, peer: trV4,
			headers: [][2]string{xff("198.51.100.9")}, want: "198.51.100.9"},
		{name: "policy headers that must be refused, on a deny", config: range77, policy: headerPolicy{deny: true}, peer: trV4,
			headers: [][2]string{xff("198.51.100.9")}, want: "deny 403"},
	}
}

// extraNames are the headers answer.extra reports.
var extraNames = append([]string{"x-ok", "x-upper", "x-crlf"}, refusedPolicyHeaders...)

// askExtProcCase asks the ext_proc server of ep about tc as Envoy would:
// the headers as Envoy forwards them (its X-Forwarded-For entry appended,
// the client's lines joined), source.address the peer, destination.address
// app. It returns the answer and the X-Forwarded-For Envoy forwards.
func askExtProcCase(t *testing.T, ep *extProcHarness, tc httpCase, i int, app, ipHeader string) (answer, string) {
	t.Helper()
	peerAddr := netip.AddrPortFrom(netip.MustParseAddr(tc.peer), 40000+uint16(i))
	var sent []extproctest.Header
	var xffLines []string
	for _, h := range tc.headers {
		if strings.EqualFold(h[0], "X-Forwarded-For") {
			if strings.TrimSpace(h[1]) != "" { // Envoy joins the lines, skipping empty ones
				xffLines = append(xffLines, h[1])
			}
			continue
		}
		sent = append(sent, extproctest.Header{Name: strings.ToLower(h[0]), Value: h[1]})
	}
	envoyXFF := strings.Join(append(xffLines, tc.peer), ", ")
	sent = append(sent, extproctest.Header{Name: "x-forwarded-for", Value: envoyXFF},
		extproctest.Header{Name: ":path", Value: "/case"}, extproctest.Header{Name: ":authority", Value: app})
	res, err := ep.client.Process(context.Background(), extproctest.Request{Headers: sent, SourceAddress: peerAddr.String(), DestinationAddress: app})
	if err != nil {
		t.Fatal(err)
	}
	var a answer
	var extra []string
	for _, n := range extraNames {
		if v, ok := res.SetHeader(n); ok && (n != ipHeader || res.Immediate != nil) {
			extra = append(extra, n+"="+v)
		}
	}
	slices.Sort(extra)
	if im := res.Immediate; im != nil {
		a.decision = fmt.Sprintf("deny %d %s", im.GetStatus().GetCode(), im.GetBody())
		extra = slices.DeleteFunc(extra, func(e string) bool { return strings.HasPrefix(e, "content-type=") })
		a.extra = strings.Join(extra, " ")
		return a, envoyXFF
	}
	a.decision = "allow"
	a.clientIP, _ = res.SetHeader(ipHeader)
	if !res.Removed(ipHeader) && a.clientIP == "" {
		t.Errorf("ext_proc neither set nor removed %s", ipHeader)
	}
	a.tag, _ = res.SetHeader("x-policy-tag")
	a.extra = strings.Join(extra, " ")
	return a, envoyXFF
}

// nativeAnswer is the answer of the HTTP mode: the response the client got
// and, for an allow, the headers the app got (got).
func nativeAnswer(t *testing.T, status int, body []byte, respHeader http.Header, ipHeader, envoyXFF string) answer {
	t.Helper()
	var a answer
	var extra []string
	if status != http.StatusOK {
		a.decision = fmt.Sprintf("deny %d %s", status, body)
		for _, n := range extraNames {
			if n == "content-type" || n == "content-length" || n == "connection" {
				continue // the deny answer's own framing
			}
			if vs := respHeader.Values(n); len(vs) > 0 {
				extra = append(extra, n+"="+strings.Join(vs, ","))
			}
		}
		slices.Sort(extra)
		a.extra = strings.Join(extra, " ")
		return a
	}
	a.decision = "allow"
	var got http.Header
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("the app's answer %q: %v", body, err)
	}
	if vs := got.Values(ipHeader); len(vs) > 1 {
		t.Errorf("the upstream got %s %q", ipHeader, vs)
	}
	a.clientIP = got.Get(ipHeader)
	a.tag = got.Get("x-policy-tag")
	for _, n := range extraNames {
		if n == ipHeader || n == "host" {
			continue // realipd's own, and the request's
		}
		if vs := got.Values(n); len(vs) > 0 {
			extra = append(extra, n+"="+strings.Join(vs, ","))
		}
	}
	slices.Sort(extra)
	a.extra = strings.Join(extra, " ")
	// What Envoy would forward: the client's lines joined, the peer appended.
	if x := got.Values("X-Forwarded-For"); len(x) != 1 || x[0] != envoyXFF {
		t.Errorf("the upstream got X-Forwarded-For %q, want %q", x, envoyXFF)
	}
	return a
}

// checkAgreement fails the test when the doors disagree or the answer is
// not the case's.
func checkAgreement(t *testing.T, tc httpCase, viaNative, viaExtProc answer) {
	t.Helper()
	if viaNative != viaExtProc {
		t.Errorf("native %+v, ext_proc %+v", viaNative, viaExtProc)
	}
	switch {
	case strings.HasPrefix(tc.want, "deny "):
		if !strings.HasPrefix(viaNative.decision, tc.want+" ") {
			t.Errorf("decision %q, want %s", viaNative.decision, tc.want)
		}
	case viaNative.decision != "allow" || viaNative.clientIP != tc.want:
		t.Errorf("%+v, want allowed with client IP %q", viaNative, tc.want)
	}
	if _, ok := tc.policy.(uaPolicy); ok && viaNative.decision == "allow" && viaNative.tag != "path=/case" {
		t.Errorf("the policy's header %q, want path=/case", viaNative.tag)
	}
	if _, ok := tc.policy.(headerPolicy); ok && viaNative.extra != "x-ok=yes" {
		t.Errorf("the policy's headers that were written: %q, want only x-ok=yes", viaNative.extra)
	}
}
