package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	for _, tt := range []struct {
		name   string
		raw    string
		status int // 0: accepted
		check  func(t *testing.T, r *Request)
	}{
		{name: "simple", raw: "GET /x?q=1 HTTP/1.1\r\nHost: app\r\nX-A:  b \r\n\r\n", check: func(t *testing.T, r *Request) {
			if string(r.Method) != "GET" || string(r.Path) != "/x?q=1" || string(r.Host) != "app" || r.Minor != 1 || !r.KeepAlive || r.ContentLength != -1 || r.Chunked {
				t.Errorf("%+v", r)
			}
			if len(r.Headers) != 2 || string(r.Headers[1].Value) != "b" {
				t.Errorf("headers %q", r.Headers)
			}
		}},
		{name: "content-length", raw: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nContent-Length: 12\r\n\r\n", check: func(t *testing.T, r *Request) {
			if r.ContentLength != 12 {
				t.Errorf("length %d", r.ContentLength)
			}
		}},
		{name: "chunked", raw: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", check: func(t *testing.T, r *Request) {
			if !r.Chunked || r.ContentLength != -1 {
				t.Errorf("%+v", r)
			}
		}},
		{name: "absolute form", raw: "GET http://app:8080/admin?x HTTP/1.1\r\nHost: other\r\n\r\n", check: func(t *testing.T, r *Request) {
			if !r.Absolute || string(r.Host) != "app:8080" || string(r.Path) != "/admin?x" {
				t.Errorf("%+v", r)
			}
		}},
		{name: "absolute form without path", raw: "GET http://app HTTP/1.1\r\nHost: app\r\n\r\n", check: func(t *testing.T, r *Request) {
			if !r.Absolute || r.Path != nil {
				t.Errorf("%+v", r)
			}
		}},
		{name: "options *", raw: "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"},
		{name: "http/1.0 keep-alive", raw: "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", check: func(t *testing.T, r *Request) {
			if r.Minor != 0 || !r.KeepAlive {
				t.Errorf("%+v", r)
			}
		}},
		{name: "close", raw: "GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n", check: func(t *testing.T, r *Request) {
			if r.KeepAlive {
				t.Error("keep-alive")
			}
		}},
		{name: "upgrade", raw: "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", check: func(t *testing.T, r *Request) {
			if string(r.Upgrade) != "websocket" {
				t.Errorf("upgrade %q", r.Upgrade)
			}
		}},
		{name: "upgrade header without connection", raw: "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", check: func(t *testing.T, r *Request) {
			if r.Upgrade != nil {
				t.Errorf("upgrade %q", r.Upgrade)
			}
		}},
		{name: "expect", raw: "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n", check: func(t *testing.T, r *Request) {
			if !r.ExpectContinue {
				t.Error("no expect")
			}
		}},

		{name: "CL with TE", raw: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", status: 400},
		{name: "TE with CL", raw: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", status: 400},
		{name: "differing CL", raw: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", status: 400},
		{name: "CL list", raw: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", status: 400},
		{name: "CL sign", raw: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", status: 400},
		{name: "CL empty", raw: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", status: 400},
		{name: "TE gzip", raw: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", status: 501},
		{name: "two TE", raw: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", status: 400},
		{name: "TE in 1.0", raw: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", status: 400},
		{name: "obs-fold", raw: "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", status: 400},
		{name: "space before colon", raw: "GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", status: 400},
		{name: "bare LF", raw: "GET / HTTP/1.1\nHost: a\r\n\r\n", status: 400},
		{name: "bare LF in a field", raw: "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", status: 400},
		{name: "bare CR", raw: "GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", status: 400},
		{name: "NUL in a value", raw: "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", status: 400},
		{name: "no host", raw: "GET / HTTP/1.1\r\n\r\n", status: 400},
		{name: "two hosts", raw: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", status: 400},
		{name: "bad host", raw: "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", status: 400},
		{name: "HTTP/2", raw: "GET / HTTP/2.0\r\nHost: a\r\n\r\n", status: 400},
		{name: "lower-case version", raw: "GET / http/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "two spaces", raw: "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "space in target", raw: "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "bad escape", raw: "GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "star not options", raw: "GET * HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "relative target", raw: "GET x HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "userinfo", raw: "GET http://u@app/ HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "other scheme", raw: "GET ftp://app/ HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "empty line first", raw: "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "expect other", raw: "GET / HTTP/1.1\r\nHost: a\r\nExpect: gift\r\n\r\n", status: 417},
		{name: "too large", raw: "GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("a", MaxHeadBytes) + "\r\n\r\n", status: 431},
		{name: "too many", raw: "GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X: y\r\n", MaxHeaders) + "\r\n", status: 431},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var r Request
			err := ParseRequest([]byte(tt.raw), &r)
			var he *Error
			switch {
			case tt.status == 0 && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.status != 0 && (!errors.As(err, &he) || he.Status != tt.status):
				t.Fatalf("err %v, want status %d", err, tt.status)
			case tt.status == 0 && r.HeadLen != len(tt.raw):
				t.Errorf("head length %d, want %d", r.HeadLen, len(tt.raw))
			}
			if tt.check != nil && err == nil {
				tt.check(t, &r)
			}
		})
	}
}

// TestParseRequestIncomplete: every strict prefix of a head is incomplete,
// never an error and never a head.
func TestParseRequestIncomplete(t *testing.T) {
	raw := "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"
	var r Request
	for i := range len(raw) {
		if err := ParseRequest([]byte(raw[:i]), &r); err != ErrIncomplete {
			t.Fatalf("prefix %q: %v", raw[:i], err)
		}
	}
}

func TestParseRequestAllocs(t *testing.T) {
	raw := []byte("GET /x?q=1 HTTP/1.1\r\nHost: app\r\nUser-Agent: wrk\r\nAccept: */*\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.2\r\nConnection: keep-alive\r\n\r\n")
	var r Request
	if err := ParseRequest(raw, &r); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = ParseRequest(raw, &r) }); n != 0 {
		t.Errorf("%v allocations per head, want 0", n)
	}
}

func BenchmarkParseRequest(b *testing.B) {
	raw := []byte("GET /x?q=1 HTTP/1.1\r\nHost: app\r\nUser-Agent: wrk\r\nAccept: */*\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.2\r\nConnection: keep-alive\r\n\r\n")
	var r Request
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if err := ParseRequest(raw, &r); err != nil {
			b.Fatal(err)
		}
	}
}

// decodeChunked decodes a chunked body at the start of b with a
// ChunkScanner fed in pieces of step bytes; it returns the data, the
// bytes after the body and whether the body ended.
func decodeChunked(b []byte, step int) (data, rest []byte, done bool, err error) {
	var s ChunkScanner
	avail := 0
	for !s.Done() {
		n, seg, err := s.Next(b[:avail])
		if err != nil {
			return nil, nil, false, err
		}
		if n == 0 && seg.Kind != SegEnd {
			if avail == len(b) {
				return data, nil, false, nil
			}
			avail = min(avail+step, len(b))
			continue
		}
		if seg.Kind == SegData {
			data = append(data, seg.Data...)
		}
		b, avail = b[n:], avail-n
	}
	return data, b, true, nil
}

func TestChunkScanner(t *testing.T) {
	for _, tt := range []struct {
		body, data, rest string
		bad              bool
	}{
		{body: "3\r\nabc\r\n0\r\n\r\nnext", data: "abc", rest: "next"},
		{body: "A;ext=1\r\n0123456789\r\n2 ; q\r\nxy\r\n0\r\nTrailer: v\r\n\r\n", data: "0123456789xy"},
		{body: "0\r\n\r\n"},
		{body: "3\r\nabcX\r\n0\r\n\r\n", bad: true},
		{body: "-3\r\nabc\r\n0\r\n\r\n", bad: true},
		{body: " 3\r\nabc\r\n0\r\n\r\n", bad: true},
		{body: "0x3\r\nabc\r\n0\r\n\r\n", bad: true},
		{body: "3\nabc\r\n0\r\n\r\n", bad: true},
		{body: "1000000000000000\r\n", bad: true},
		{body: "3\r\nabc\r\n0\r\nBad Trailer\r\n\r\n", bad: true},
		{body: "3;\x01\r\nabc\r\n0\r\n\r\n", bad: true},
	} {
		for _, step := range []int{1, 3, 1000} {
			data, rest, done, err := decodeChunked([]byte(tt.body), step)
			if tt.bad {
				if err == nil {
					t.Errorf("%q: accepted", tt.body)
				}
				continue
			}
			if err != nil || !done || string(data) != tt.data || string(rest) != tt.rest {
				t.Errorf("%q step %d: data %q rest %q done %v err %v", tt.body, step, data, rest, done, err)
			}
		}
	}
}

func TestParseResponse(t *testing.T) {
	var r Response
	if err := ParseResponse([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"), &r); err != nil || r.Status != 200 || r.ContentLength != 3 || !r.KeepAlive || r.BodyFraming(false) != FramingLength || r.BodyFraming(true) != FramingNone {
		t.Errorf("%+v %v", r, err)
	}
	if err := ParseResponse([]byte("HTTP/1.0 204 No Content\r\n\r\n"), &r); err != nil || r.KeepAlive || r.BodyFraming(false) != FramingNone {
		t.Errorf("%+v %v", r, err)
	}
	if err := ParseResponse([]byte("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"), &r); err != nil || r.KeepAlive || r.BodyFraming(false) != FramingClose {
		t.Errorf("%+v %v", r, err)
	}
	for _, bad := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/2 200 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nBad\r\n\r\n",
	} {
		if err := ParseResponse([]byte(bad), &r); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzRequestAgainstNetHTTP is the differential test of the request
// parser: whatever ParseRequest accepts, Go's net/http must accept too
// (http.ReadRequest, and the checks its server adds), and frame the same
// way: the same method, target, version, host, header values, keep-alive,
// and the same body, ending at the same byte. ParseRequest may refuse
// what net/http accepts, never the reverse.
func FuzzRequestAgainstNetHTTP(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"GET http://app/p?q HTTP/1.1\r\nHost: b\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
		"GET /%41 HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Request
		if err := ParseRequest(data, &r); err != nil {
			return
		}
		src := bytes.NewReader(data)
		br := bufio.NewReader(src)
		std, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("ParseRequest accepted what net/http refuses (%v):\n%q", err, data)
		}
		if string(r.Method) != std.Method || string(r.Target) != std.RequestURI || r.Minor != std.ProtoMinor || std.ProtoMajor != 1 {
			t.Fatalf("request line: %q %q %d, net/http %q %q 1.%d", r.Method, r.Target, r.Minor, std.Method, std.RequestURI, std.ProtoMinor)
		}
		if string(r.Host) != std.Host {
			t.Fatalf("host %q, net/http %q", r.Host, std.Host)
		}
		if r.KeepAlive == std.Close {
			t.Fatalf("keep-alive %v, net/http close %v: %q", r.KeepAlive, std.Close, data)
		}
		// Header values, in order, per name (net/http drops Host and
		// Transfer-Encoding from the map).
		got := map[string][]string{}
		for _, h := range r.Headers {
			k := http.CanonicalHeaderKey(string(h.Name))
			if k == "Host" || k == "Transfer-Encoding" {
				continue
			}
			got[k] = append(got[k], string(h.Value))
		}
		for k, v := range std.Header {
			if k == "Transfer-Encoding" {
				continue
			}
			if strings.Join(got[k], "\x00") != strings.Join(v, "\x00") {
				t.Fatalf("header %s: %q, net/http %q", k, got[k], v)
			}
			delete(got, k)
		}
		if len(got) > 0 {
			t.Fatalf("headers net/http does not have: %q", got)
		}
		// The body, and where it ends.
		rest := data[r.HeadLen:]
		var body []byte
		switch {
		case r.Chunked:
			var done bool
			body, rest, done, err = decodeChunked(rest, 7)
			if err != nil || !done {
				return // a body realipd refuses or that is not whole yet
			}
			if len(std.TransferEncoding) != 1 || std.TransferEncoding[0] != "chunked" {
				t.Fatalf("chunked; net/http %q", std.TransferEncoding)
			}
		case r.ContentLength > 0:
			if int64(len(rest)) < r.ContentLength {
				return
			}
			body, rest = rest[:r.ContentLength], rest[r.ContentLength:]
			if std.ContentLength != r.ContentLength {
				t.Fatalf("length %d, net/http %d", r.ContentLength, std.ContentLength)
			}
		default:
			if std.ContentLength > 0 || len(std.TransferEncoding) > 0 {
				t.Fatalf("no body; net/http length %d, %q", std.ContentLength, std.TransferEncoding)
			}
		}
		stdBody, err := io.ReadAll(std.Body)
		if err != nil {
			t.Fatalf("net/http cannot read the body realipd read (%q): %v", body, err)
		}
		if !bytes.Equal(body, stdBody) {
			t.Fatalf("body %q, net/http %q", body, stdBody)
		}
		// The next request starts at the same byte.
		if left := br.Buffered() + src.Len(); left != len(rest) {
			t.Fatalf("%d bytes after the request, net/http %d: %q", len(rest), left, data)
		}
	})
}
