//go:build linux

package origdst

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/realipd/realipd/clientip"
)

// framingApp is an upstream answering by path: /len/N (N bytes, with
// Content-Length), /chunked/N (N bytes, chunked, with a trailer),
// /close/N (N bytes, then close), /204, /304, /sum (the sha256 and length
// of the request body), anything else 200 "ok".
func framingApp(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	body := func(n int) []byte { return bytes.Repeat([]byte("0123456789abcdef"), n/16+1)[:n] }
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(r.URL.Path, "/")
		n := 0
		if len(parts) > 2 {
			n, _ = strconv.Atoi(parts[2])
		}
		switch parts[1] {
		case "len":
			w.Header().Set("Content-Length", strconv.Itoa(n))
			w.Write(body(n))
		case "chunked":
			w.Header().Set("Trailer", "X-Sum")
			for i := 0; i < n; i += 1000 {
				w.Write(body(min(1000, n-i)))
				w.(http.Flusher).Flush()
			}
			w.Header().Set("X-Sum", fmt.Sprint(n))
		case "close":
			c, brw, _ := http.NewResponseController(w).Hijack()
			brw.WriteString("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
			brw.Write(body(n))
			brw.Flush()
			c.Close()
		case "204":
			w.WriteHeader(204)
		case "304":
			w.WriteHeader(304)
		case "sum":
			b, err := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%x %d %v", sha256.Sum256(b), len(b), err)
		default:
			io.WriteString(w, "ok")
		}
	}))
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// TestHTTPModeFraming: the HTTP mode relays every response framing and
// request body as the upstream and the client framed them, over one
// keep-alive connection: Content-Length (short and spliced), chunked with
// a trailer, close-delimited, HEAD, 204, 304, request bodies by length
// (short and spliced) and chunked, Expect: 100-continue.
func TestHTTPModeFraming(t *testing.T) {
	app := framingApp(t)
	r := resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})
	c := httpModeConn(t, Settings{Resolver: r}, app)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	do := func(raw string) (*http.Response, []byte) {
		t.Helper()
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		method, _, _ := strings.Cut(raw, " ")
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%.60q: %v", raw, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%.60q: body: %v", raw, err)
		}
		return resp, b
	}
	for _, n := range []int{0, 5, 100_000, 3 << 20} {
		resp, b := do(fmt.Sprintf("GET /len/%d HTTP/1.1\r\nHost: app\r\n\r\n", n))
		if resp.StatusCode != 200 || len(b) != n || resp.ContentLength != int64(n) {
			t.Errorf("/len/%d: %d, %d bytes", n, resp.StatusCode, len(b))
		}
	}
	resp, b := do("GET /chunked/5500 HTTP/1.1\r\nHost: app\r\n\r\n")
	if resp.StatusCode != 200 || len(b) != 5500 || resp.Trailer.Get("X-Sum") != "5500" {
		t.Errorf("chunked: %d, %d bytes, trailer %v", resp.StatusCode, len(b), resp.Trailer)
	}
	resp, b = do("HEAD /len/77 HTTP/1.1\r\nHost: app\r\n\r\n")
	if resp.StatusCode != 200 || len(b) != 0 {
		t.Errorf("HEAD: %d, %d bytes", resp.StatusCode, len(b))
	}
	for _, code := range []string{"204", "304"} {
		if resp, _ := do("GET /" + code + " HTTP/1.1\r\nHost: app\r\n\r\n"); strconv.Itoa(resp.StatusCode) != code {
			t.Errorf("/%s: %d", code, resp.StatusCode)
		}
	}
	sum := func(body []byte) string { return fmt.Sprintf("%x %d <nil>", sha256.Sum256(body), len(body)) }
	for _, n := range []int{10, 200_000} {
		payload := bytes.Repeat([]byte("z"), n)
		if _, b := do(fmt.Sprintf("POST /sum HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n%s", n, payload)); string(b) != sum(payload) {
			t.Errorf("a %d-byte body: the upstream got %s", n, b)
		}
	}
	if _, b := do("POST /sum HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\n\r\n"); string(b) != sum([]byte("abcdefg")) {
		t.Errorf("a chunked body: the upstream got %s", b)
	}
	// Expect: 100-continue: the interim answer comes before the body goes.
	io.WriteString(c, "POST /sum HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("expect: %q, %v", line, err)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("expect: %q after the interim status line", blank)
	}
	io.WriteString(c, "xyz")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != sum([]byte("xyz")) {
		t.Errorf("expect: the upstream got %s", b)
	}
	// An HTTP/1.0 client never gets a chunked response: the request goes
	// upstream in HTTP/1.0.
	io.WriteString(c, "GET /chunked/3000 HTTP/1.0\r\nHost: app\r\nConnection: keep-alive\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(resp.Body); err != nil || len(b) != 3000 || len(resp.TransferEncoding) != 0 {
		t.Errorf("HTTP/1.0: %d bytes, %v, transfer encoding %q", len(b), err, resp.TransferEncoding)
	}
	if resp.Close {
		c = httpModeConn(t, Settings{Resolver: r}, app) // the upstream closed: so did the client
		c.SetDeadline(time.Now().Add(30 * time.Second))
		br = bufio.NewReader(c)
	}
	// Close-delimited: the response ends the connection.
	resp, b = do("GET /close/1234 HTTP/1.1\r\nHost: app\r\n\r\n")
	if resp.StatusCode != 200 || len(b) != 1234 {
		t.Errorf("close-delimited: %d, %d bytes", resp.StatusCode, len(b))
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after a close-delimited response the connection is open: %v", err)
	}
}

// TestHTTPModeUpstreamClosesKeptAlive: a request that goes out on a kept
// alive upstream connection the upstream closes after one answer (whether
// the close arrives before the request goes or after) is sent once more
// on a new one, as Go's Transport does; the client sees nothing.
func TestHTTPModeUpstreamClosesKeptAlive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Each upstream connection answers one request, keeps the connection
	// as if alive, then closes it without a word.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}()
		}
	}()
	r := resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})
	c := httpModeConn(t, Settings{Resolver: r}, ln.Addr().(*net.TCPAddr).AddrPort())
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for i := range 3 {
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || string(b) != "ok" {
			t.Errorf("request %d: %d %q", i, resp.StatusCode, b)
		}
	}
}

// TestHTTPModeUpstreamToldOfClose: a request that ends the client's
// connection (Connection: close) goes upstream with Connection: close, so
// the upstream closes first and keeps the TIME_WAIT rather than realipd's
// dials; a kept-alive request goes without it. The upstream closing first
// does not cut the answer.
func TestHTTPModeUpstreamToldOfClose(t *testing.T) {
	heads := make(chan string, 4)
	up := scriptedUpstream(t, func(c net.Conn, _ int) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			heads <- fmt.Sprintf("%s close=%v", req.URL.Path, req.Close)
			if req.Close {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nbye!\n")
				c.Close() // the upstream closes first, as told
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
		}
	})
	r := resolver(t, clientip.Config{Strategy: clientip.RemoteAddr})
	c := httpModeConn(t, Settings{Resolver: r}, up)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	io.WriteString(c, "GET /kept HTTP/1.1\r\nHost: app\r\n\r\nGET /last HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
	for _, want := range []string{"ok\n", "bye!\n"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if b, err := io.ReadAll(resp.Body); err != nil || string(b) != want {
			t.Errorf("got %q, %v; want %q", b, err, want)
		}
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the client's last request the connection is open: %v", err)
	}
	for _, want := range []string{"/kept close=false", "/last close=true"} {
		if got := <-heads; got != want {
			t.Errorf("the upstream saw %q, want %q", got, want)
		}
	}
}
