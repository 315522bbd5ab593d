// Package h1 reads HTTP/1.x message heads and bodies for realipd's native
// HTTP mode, a forwarding proxy: a request head parser that is bounded
// (MaxHeadBytes, MaxHeaders), works in place over the caller's buffer
// (every field views it; nothing is copied or allocated), and is strict
// wherever two HTTP parsers could frame one message two ways — the root of
// request smuggling. A request it accepts, Go's net/http accepts and frames
// the same way (its fuzz test checks); many that net/http accepts it
// refuses: bare LF line ends, obs-fold, whitespace before a colon, a
// Content-Length beside Transfer-Encoding, differing or malformed
// Content-Lengths, transfer codings other than chunked, control characters.
// It also frames chunked bodies (ChunkReader) and response heads
// (ParseResponse). It is not safe for concurrent use of one value.
package h1

import (
	"bytes"
	"errors"
	"net/url"
	"strconv"
)

// Bounds of a request head (Envoy's defaults: max_request_headers_kb 60,
// max_headers_count 100).
const (
	MaxHeadBytes = 60 << 10
	MaxHeaders   = 100
)

// ErrIncomplete means that the buffer does not hold a whole head yet: read
// more and parse again.
var ErrIncomplete = errors.New("h1: incomplete head")

// Error is a head refused, with the HTTP status to answer it with: 400,
// 417, 431 or 501.
type Error struct {
	Status int
	Reason string
}

func (e *Error) Error() string { return "h1: " + strconv.Itoa(e.Status) + " " + e.Reason }

func refuse(status int, reason string) error { return &Error{Status: status, Reason: reason} }

// Header is one header field line: Name as written (any case), Value
// without the whitespace around it. Both view the parsed buffer.
type Header struct {
	Name, Value []byte
}

// Request is a parsed request head. Its byte slices view the buffer given
// to ParseRequest: they are valid until the caller reuses it.
type Request struct {
	Method []byte
	// Target is the request target as written: origin-form (/p?q),
	// absolute-form (http://host/p), or * (OPTIONS only).
	Target []byte
	// Minor is the protocol's minor version: 1 for HTTP/1.1, 0 for 1.0.
	Minor   int
	Headers []Header // in order, repeated lines kept
	// HeadLen is the length of the head, its final empty line included.
	HeadLen int

	// ContentLength is the body's length when Content-Length frames it,
	// -1 otherwise (chunked, or no body: a request without either has
	// none).
	ContentLength int64
	// Chunked: Transfer-Encoding: chunked frames the body.
	Chunked bool
	// KeepAlive: the connection persists after this request (HTTP/1.1
	// without Connection: close; HTTP/1.0 with keep-alive).
	KeepAlive bool
	// Upgrade is the Upgrade header's value when Connection lists upgrade;
	// nil otherwise.
	Upgrade []byte
	// ExpectContinue: Expect: 100-continue.
	ExpectContinue bool
	// Host is the authority: the absolute-form target's, else the Host
	// header's (empty for an HTTP/1.0 request without one).
	Host []byte
	// Path is the target as an origin server gets it: the absolute form's
	// path and query (at least "/"), the target itself otherwise.
	Path []byte
	// Absolute: the target is in absolute form.
	Absolute bool

	// checked is how much of an incomplete head a call found no fault in
	// and no end of; the next call, with the same head longer, goes on
	// from there.
	checked int
}

// Common header names, lower case.
var (
	hContentLength    = []byte("content-length")
	hTransferEncoding = []byte("transfer-encoding")
	hConnection       = []byte("connection")
	hHost             = []byte("host")
	hUpgrade          = []byte("upgrade")
	hExpect           = []byte("expect")
	crlf              = []byte("\r\n")
	crlfcrlf          = []byte("\r\n\r\n")
)

// ParseRequest parses the request head at the start of b into r, reusing
// r.Headers' storage. It returns ErrIncomplete when b holds no whole head
// yet (and is still under MaxHeadBytes), or an *Error. After ErrIncomplete
// r remembers how far the head was checked, and a call with the same head,
// longer (more bytes read), checks only the new bytes: a head that comes a
// byte at a time costs time linear in its length. Any other result forgets
// it; so does Reset.
func ParseRequest(b []byte, r *Request) error {
	from := min(r.checked, len(b))
	r.checked = 0
	i := bytes.Index(b[max(from-3, 0):], crlfcrlf)
	end := -1
	if i >= 0 {
		end = max(from-3, 0) + i
	}
	if end < 0 {
		if len(b) >= MaxHeadBytes {
			return refuse(431, "request header fields too large")
		}
		if err := checkPartial(b, max(from-1, 0)); err != nil {
			return err
		}
		r.checked = len(b)
		return ErrIncomplete
	}
	if end+4 > MaxHeadBytes {
		return refuse(431, "request header fields too large")
	}
	head := b[:end+2] // every line with its CRLF
	*r = Request{Headers: r.Headers[:0], HeadLen: end + 4, ContentLength: -1}

	line, rest := cutLine(head)
	if err := parseRequestLine(line, r); err != nil {
		return err
	}
	var (
		clSeen, teSeen, hostSeen int
		upgrade                  []byte
		connUpgrade, connClose   bool
		connKeepAlive            bool
	)
	for len(rest) > 0 {
		line, rest = cutLine(rest)
		if len(r.Headers) == MaxHeaders {
			return refuse(431, "too many header fields")
		}
		h, err := parseField(line)
		if err != nil {
			return err
		}
		r.Headers = append(r.Headers, h)
		switch {
		case equalFold(h.Name, hContentLength):
			n, ok := parseLength(h.Value)
			if !ok {
				return refuse(400, "invalid Content-Length")
			}
			if clSeen > 0 && n != r.ContentLength {
				return refuse(400, "differing Content-Length values")
			}
			r.ContentLength = n
			clSeen++
		case equalFold(h.Name, hTransferEncoding):
			teSeen++
			if teSeen > 1 {
				return refuse(400, "more than one Transfer-Encoding")
			}
			if !equalFold(h.Value, []byte("chunked")) {
				return refuse(501, "unsupported transfer encoding")
			}
			r.Chunked = true
		case equalFold(h.Name, hHost):
			hostSeen++
			if hostSeen > 1 {
				return refuse(400, "more than one Host")
			}
			if !validHost(h.Value) {
				return refuse(400, "invalid Host")
			}
			if !r.Absolute {
				r.Host = h.Value
			}
		case equalFold(h.Name, hConnection):
			forEachToken(h.Value, func(tok []byte) {
				switch {
				case equalFold(tok, []byte("close")):
					connClose = true
				case equalFold(tok, []byte("keep-alive")):
					connKeepAlive = true
				case equalFold(tok, hUpgrade):
					connUpgrade = true
				}
			})
		case equalFold(h.Name, hUpgrade):
			upgrade = h.Value
		case equalFold(h.Name, hExpect):
			if r.Minor == 0 {
				break // ignored in HTTP/1.0 (RFC 9110 10.1.1), as Go's server does
			}
			if !equalFold(h.Value, []byte("100-continue")) {
				return refuse(417, "unsupported expectation")
			}
			r.ExpectContinue = true
		}
	}
	switch {
	case r.Chunked && clSeen > 0:
		return refuse(400, "Content-Length with Transfer-Encoding")
	case r.Chunked && r.Minor == 0:
		return refuse(400, "Transfer-Encoding in an HTTP/1.0 request")
	case r.Minor == 1 && hostSeen == 0:
		return refuse(400, "missing Host")
	}
	if r.Chunked {
		r.ContentLength = -1
	}
	if r.Minor == 1 {
		r.KeepAlive = !connClose
	} else {
		r.KeepAlive = connKeepAlive && !connClose
	}
	if connUpgrade && upgrade != nil {
		r.Upgrade = upgrade
	}
	return nil
}

// Reset makes r forget an incomplete head: the next ParseRequest starts
// a new one.
func (r *Request) Reset() { r.checked = 0 }

// checkPartial refuses, before the head is whole, what can never become a
// valid head: a bare LF or CR already received, looking at b from from on.
// It keeps a client from holding a connection with a head that is bound to
// fail.
func checkPartial(b []byte, from int) error {
	for i := from; i < len(b); i++ {
		switch c := b[i]; c {
		case '\n':
			if i == 0 || b[i-1] != '\r' {
				return refuse(400, "bare LF")
			}
		case '\r':
			if i+1 < len(b) && b[i+1] != '\n' {
				return refuse(400, "bare CR")
			}
		}
	}
	return nil
}

// cutLine returns the first CRLF-terminated line of b, without its CRLF,
// and the rest. b ends with a CRLF.
func cutLine(b []byte) (line, rest []byte) {
	i := bytes.Index(b, crlf)
	return b[:i], b[i+2:]
}

// parseRequestLine parses "METHOD SP target SP HTTP/1.x".
func parseRequestLine(line []byte, r *Request) error {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return refuse(400, "malformed request line")
	}
	r.Method = line[:sp1]
	for _, c := range r.Method {
		if !isTchar(c) {
			return refuse(400, "invalid method")
		}
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return refuse(400, "malformed request line")
	}
	r.Target, rest = rest[:sp2], rest[sp2+1:]
	for _, c := range r.Target {
		if c <= ' ' || c >= 0x7f {
			return refuse(400, "invalid request target")
		}
	}
	switch string(rest) {
	case "HTTP/1.1":
		r.Minor = 1
	case "HTTP/1.0":
		r.Minor = 0
	default:
		return refuse(400, "unsupported protocol version")
	}
	return parseTarget(r)
}

// parseTarget checks the target's form and sets Path, Host (absolute
// form) and Absolute.
func parseTarget(r *Request) error {
	t := r.Target
	switch {
	case t[0] == '/':
		if !validEscapes(t) {
			return refuse(400, "invalid percent-encoding in the request target")
		}
		r.Path = t
		return nil
	case len(t) == 1 && t[0] == '*':
		if string(r.Method) != "OPTIONS" {
			return refuse(400, "* is the target of OPTIONS only")
		}
		r.Path = t
		return nil
	case string(r.Method) == "CONNECT":
		// authority-form; the caller refuses CONNECT.
		r.Path = nil
		r.Host = t
		return nil
	}
	rest, ok := cutPrefixFold(t, "http://")
	if !ok {
		return refuse(400, "invalid request target")
	}
	slash := bytes.IndexByte(rest, '/')
	q := bytes.IndexByte(rest, '?')
	end := len(rest)
	if slash >= 0 {
		end = slash
	}
	if q >= 0 && q < end {
		end = q
	}
	authority := rest[:end]
	if len(authority) == 0 || bytes.IndexByte(authority, '@') >= 0 || !validHost(authority) || !validEscapes(rest[end:]) {
		return refuse(400, "invalid request target")
	}
	// The absolute form is rare (a client that takes realipd for a
	// forward proxy): let Go's URL parser, which net/http uses, have the
	// last word on it.
	if u, err := url.ParseRequestURI(string(t)); err != nil || u.Host != string(authority) || u.User != nil {
		return refuse(400, "invalid request target")
	}
	r.Absolute = true
	r.Host = authority
	r.Path = rest[end:]
	if len(r.Path) == 0 || r.Path[0] == '?' {
		// http://host and http://host?q: the origin-form is / (and /?q),
		// written by the caller.
		r.Path = nil
	}
	return nil
}

// validEscapes reports whether every '%' in the path part of t (before
// any '?') starts a %XX escape, as Go's URL parser requires.
func validEscapes(t []byte) bool {
	if q := bytes.IndexByte(t, '?'); q >= 0 {
		t = t[:q]
	}
	for i := 0; i < len(t); i++ {
		if t[i] != '%' {
			continue
		}
		if i+2 >= len(t) || !isHex(t[i+1]) || !isHex(t[i+2]) {
			return false
		}
		i += 2
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// parseField parses "name: value" (OWS around the value).
func parseField(line []byte) (Header, error) {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
			return Header{}, refuse(400, "obsolete line folding")
		}
		return Header{}, refuse(400, "malformed header field")
	}
	name := line[:colon]
	for _, c := range name {
		if !isTchar(c) {
			return Header{}, refuse(400, "invalid header field name")
		}
	}
	v := line[colon+1:]
	for _, c := range v {
		if c < ' ' && c != '\t' || c == 0x7f {
			return Header{}, refuse(400, "invalid header field value")
		}
	}
	return Header{Name: name, Value: trimOWS(v)}, nil
}

// parseLength parses a Content-Length value: 1*DIGIT, no sign, at most 18
// digits (it fits an int64).
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// validHost reports whether v is a plausible Host value, as Go's
// httpguts.ValidHostHeader decides: no whitespace, control characters,
// or characters outside a host and port.
func validHost(v []byte) bool {
	for _, c := range v {
		if c >= 0x80 || !validHostByte[c] {
			return false
		}
	}
	return true
}

var validHostByte = alnumAnd("!$%&'()*+,-.:;=[]_~")

// isTchar reports whether c is a token character (RFC 9110).
func isTchar(c byte) bool { return c < 0x80 && tchar[c] }

var tchar = alnumAnd("!#$%&'*+-.^_`|~")

// alnumAnd is the table of ASCII letters, digits and the bytes of extra.
func alnumAnd(extra string) (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range extra {
		t[c] = true
	}
	return t
}

// IsToken reports whether b is a non-empty token.
func IsToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !isTchar(c) {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// forEachToken calls f with each element of a comma-separated list,
// trimmed, skipping empty ones.
func forEachToken(v []byte, f func([]byte)) {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		var tok []byte
		if i < 0 {
			tok, v = v, nil
		} else {
			tok, v = v[:i], v[i+1:]
		}
		if tok = trimOWS(tok); len(tok) > 0 {
			f(tok)
		}
	}
}

// ListContains reports whether the comma-separated list v contains token
// tok, compared case-insensitively.
func ListContains(v []byte, tok string) bool {
	found := false
	forEachToken(v, func(t []byte) {
		if equalFoldString(t, tok) {
			found = true
		}
	})
	return found
}

// EqualFold reports whether a and b are equal under ASCII case folding.
func EqualFold(a []byte, b string) bool { return equalFoldString(a, b) }

func equalFold(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

func equalFoldString(a []byte, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func cutPrefixFold(b []byte, prefix string) ([]byte, bool) {
	if len(b) < len(prefix) || !equalFoldString(b[:len(prefix)], prefix) {
		return b, false
	}
	return b[len(prefix):], true
}
