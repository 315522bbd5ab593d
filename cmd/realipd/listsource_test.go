package main

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// listProvider serves one list as a provider does, over HTTPS on
// loopback, with an ETag (a conditional request with the current one gets
// a 304), and counts the requests.
type listProvider struct {
	srv *httptest.Server
	ca  string // a PEM file of its certificate

	mu          sync.Mutex
	body        []byte
	etag        string
	requests    int
	notModified int
}

func newListProvider(t *testing.T, body, etag string) *listProvider {
	p := &listProvider{body: []byte(body), etag: etag}
	p.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.requests++
		if r.Header.Get("If-None-Match") == p.etag {
			p.notModified++
			w.Header().Set("ETag", p.etag)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", p.etag)
		w.Write(p.body)
	}))
	t.Cleanup(p.srv.Close)
	p.ca = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p.ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// serveList makes the provider answer body with etag from the next request
// on, and returns how many requests it has seen so far.
func (p *listProvider) serveList(body, etag string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.body, p.etag = []byte(body), etag
	return p.requests
}

func (p *listProvider) counts() (requests, notModified int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests, p.notModified
}

// trustList is a list of n entries (n >= 2): the given ones, then distinct
// /32s of 198.18.0.0/15 that merge with nothing.
func trustList(n int, first ...string) string {
	var b strings.Builder
	b.WriteString("# the load balancers, a sample written for realipd's tests\n")
	for _, s := range first {
		b.WriteString(s + "\n")
	}
	for i := len(first); i < n; i++ {
		fmt.Fprintf(&b, "198.18.%d.1\n", i)
	}
	return b.String()
}

// listSourceConfig is a serve configuration whose trusted proxies come
// from url (credentials in it, which nothing may show), refreshed every
// 200 ms, cached in cache.
func listSourceConfig(url, ca, cache string) string {
	return fmt.Sprintf(`
trust:
  strategy: rightmost_trusted_range
  trusted_cidrs: [10.0.0.0/8, {url: %q, ca_file: %q, refresh: 200ms}]
  cache_dir: %q
extproc: {listen: 127.0.0.1:0}
admin: {listen: 127.0.0.1:0}
xds: {enabled: false}
`, url, ca, cache)
}

// waitFor polls cond every 10 ms until it holds, or fails the test after
// 10 s with what last returned.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s; last: %s", what, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServeTrustListFromURL is issue 20's acceptance on the ext_proc path:
// a trust list fetched over HTTPS decides requests; a garbage answer and
// a 90 %-shrunk one are refused (the reason in the log, the metric and
// /config_dump) and the same request resolves the same way after them; a
// 304 costs nothing; a changed list (new ETag) is used at the next
// refresh, without a restart.
func TestServeTrustListFromURL(t *testing.T) {
	// 192.168.1.1 is a load balancer of the list: the request's client is
	// 203.0.113.9 while the list trusts it, and 192.168.1.1 once it no
	// longer does.
	p := newListProvider(t, trustList(20, "192.168.0.0/16"), `"v1"`)
	url := strings.Replace(p.srv.URL, "https://", "https://ops:s3cret@", 1) + "/lb.txt?token=t0ken"
	dir := t.TempDir()
	cfg := writeFile(t, "trust.yaml", listSourceConfig(url, p.ca, filepath.Join(dir, "cache")))
	s := startServe(t, cfg, nil)
	if got := s.outcome(t); got != "203.0.113.9" {
		t.Fatalf("with the fetched list: %q, want 203.0.113.9\n%s", got, s.logs)
	}
	if m := s.metric(t, "realipd_list_source_entries"); m != `realipd_list_source_entries{source="trust.trusted_cidrs[1]"} 20` {
		t.Errorf("entries metric:\n%s", m)
	}
	// 304s: no new list, no parse, no error.
	p.serveList(trustList(20, "192.168.0.0/16"), `"v1"`)
	waitFor(t, "conditional refreshes", func() (bool, string) {
		_, nm := p.counts()
		return nm >= 3, fmt.Sprint(nm, " 304s")
	})

	refusals := []struct{ body, reason string }{
		{"<html><body>502 Bad Gateway</body></html>\n", "parse"},
		{trustList(2, "10.0.0.0/8"), "shrink"}, // 20 entries to 2: 90 %
	}
	for i, r := range refusals {
		p.serveList(r.body, fmt.Sprintf(`"bad%d"`, i))
		want := fmt.Sprintf(`realipd_list_source_refused_total{reason=%q,source="trust.trusted_cidrs[1]"}`, r.reason)
		waitFor(t, "the refusal of "+r.reason, func() (bool, string) {
			m := s.metric(t, "realipd_list_source_refused_total")
			return strings.Contains(m, want), m
		})
		if got := s.outcome(t); got != "203.0.113.9" {
			t.Errorf("after a %s answer: %q, want the old list's 203.0.113.9", r.reason, got)
		}
		s.logs.wait(t, regexp.MustCompile(`msg="list source: answer refused; the last good list keeps serving".* reason=`+r.reason), 0)
		body, _ := get(t, s.admin+"/config_dump")
		var dump struct {
			ListSources []struct {
				Name      string
				Entries   int
				URLs      []string
				Documents []struct {
					ETag        string
					LastRefusal string `json:"last_refusal"`
				}
				AgeSeconds *float64 `json:"age_seconds"`
			} `json:"list_sources"`
		}
		if err := json.Unmarshal([]byte(body), &dump); err != nil || len(dump.ListSources) != 1 {
			t.Fatalf("/config_dump: %v\n%s", err, body)
		}
		ls := dump.ListSources[0]
		if ls.Name != "trust.trusted_cidrs[1]" || ls.Entries != 20 || ls.AgeSeconds == nil || len(ls.Documents) != 1 ||
			!strings.HasPrefix(ls.Documents[0].LastRefusal, r.reason+":") || ls.Documents[0].ETag != `"v1"` ||
			!strings.HasSuffix(ls.URLs[0], "/lb.txt?token=REDACTED") {
			t.Errorf("/config_dump list source after a %s answer: %+v", r.reason, ls)
		}
	}

	// A new list (new ETag), shrunk by 5 %: used at the next refresh.
	p.serveList(trustList(19, "10.0.0.0/8"), `"v2"`)
	waitFor(t, "the new list", func() (bool, string) {
		got := s.outcome(t)
		return got == "192.168.1.1", got
	})
	s.logs.wait(t, regexp.MustCompile(`msg="list sources changed: new lists in force"`), 0)

	body, _ := get(t, s.admin+"/config_dump")
	all := s.logs.String() + body + s.metric(t, "realipd_list_source")
	for _, secret := range []string{"s3cret", "t0ken"} {
		if strings.Contains(all, secret) {
			t.Errorf("a credential of the URL shows in the logs, /config_dump or /metrics: %q", secret)
		}
	}
	if strings.Contains(s.logs.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", s.logs)
	}
}

// TestServeTrustListAtStart: a restart with the source unreachable uses
// the cached list; with neither cache nor source, serve exits 1 naming
// the source.
func TestServeTrustListAtStart(t *testing.T) {
	p := newListProvider(t, trustList(5, "192.168.0.0/16"), `"v1"`)
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	cfg := writeFile(t, "trust.yaml", listSourceConfig(p.srv.URL+"/lb.txt", p.ca, cache))
	s := startServe(t, cfg, nil)
	if got := s.outcome(t); got != "203.0.113.9" {
		t.Fatalf("with the fetched list: %q", got)
	}
	s.stop()

	p.srv.Close() // unreachable from now on
	s = startServe(t, cfg, nil)
	if got := s.outcome(t); got != "203.0.113.9" {
		t.Errorf("restarted with the source down: %q, want the cached list's 203.0.113.9\n%s", got, s.logs)
	}
	s.logs.wait(t, regexp.MustCompile(`msg="list source: cached list loaded"`), 0)
	s.stop()

	cfg = writeFile(t, "nocache.yaml", listSourceConfig(p.srv.URL+"/lb.txt", p.ca, filepath.Join(dir, "empty")))
	var out, errb bytes.Buffer
	err := run(t.Context(), []string{"serve", "--config", cfg}, &out, &errb)
	if exitCode(err) != 1 || !strings.Contains(errb.String(), "trust.trusted_cidrs[1]: no list, neither cached nor fetched") {
		t.Errorf("serve with neither cache nor source = exit %d\n%s", exitCode(err), errb.String())
	}
	if strings.Contains(errb.String(), "realipd running") {
		t.Errorf("roles ran:\n%s", errb.String())
	}
}

// TestValidateAndResolveWithListSources: validate fetches and parses every
// source (and names a refused one); --offline checks the cache instead;
// resolve --config resolves with the file's trust source.
func TestValidateAndResolveWithListSources(t *testing.T) {
	p := newListProvider(t, trustList(5, "192.168.0.0/16"), `"v1"`)
	cache := filepath.Join(t.TempDir(), "cache")
	cfg := writeFile(t, "trust.yaml", listSourceConfig(p.srv.URL+"/lb.txt", p.ca, cache))

	out, errOut, code := runCmd(t, "validate", "--config", cfg)
	if code != 0 || !strings.Contains(out, "list sources: trust.trusted_cidrs[1] 5 entries") {
		t.Errorf("validate: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(cache); !os.IsNotExist(err) {
		t.Errorf("validate wrote the cache: %v", err)
	}
	// Offline, with no cache yet: serve could not start without network.
	if out, errOut, code := runCmd(t, "validate", "--config", cfg, "--offline"); code != 1 || !strings.Contains(errOut, "offline: listsource: trust.trusted_cidrs[1]") {
		t.Errorf("validate --offline without a cache: exit %d\n%s%s", code, out, errOut)
	}
	// resolve uses the source (and writes no cache either).
	if out, errOut, code := runCmd(t, "resolve", "--config", cfg, "--remote-addr", "10.0.0.5:4321", "-H", "X-Forwarded-For: 203.0.113.9, 192.168.1.1"); code != 0 || out != "203.0.113.9\n" {
		t.Errorf("resolve --config: exit %d %q\n%s", code, out, errOut)
	}
	// serve caches the list; then validate --offline finds it.
	s := startServe(t, cfg, nil)
	s.stop()
	if out, errOut, code := runCmd(t, "validate", "--config", cfg, "--offline"); code != 0 || !strings.Contains(out, "trust.trusted_cidrs[1] 5 entries") {
		t.Errorf("validate --offline with the cache: exit %d\n%s%s", code, out, errOut)
	}
	// A garbage answer fails validate, with its reason.
	p.serveList("<html>maintenance</html>\n", `"x"`)
	if out, errOut, code := runCmd(t, "validate", "--config", cfg); code != 1 || !strings.Contains(errOut, "parse: line 1") {
		t.Errorf("validate with a garbage answer: exit %d\n%s%s", code, out, errOut)
	}
}

// TestReloadAddsAndRemovesAListSource: a reload that adds a trust source
// loads it and applies it; one that removes it drops it and its metrics.
func TestReloadAddsAndRemovesAListSource(t *testing.T) {
	p := newListProvider(t, trustList(5, "192.168.0.0/16"), `"v1"`)
	cache := filepath.Join(t.TempDir(), "cache")
	inline := fmt.Sprintf(`
trust:
  strategy: rightmost_trusted_range
  trusted_cidrs: [10.0.0.0/8]
  cache_dir: %q
extproc: {listen: 127.0.0.1:0}
admin: {listen: 127.0.0.1:0}
xds: {enabled: false}
`, cache)
	cfg := writeFile(t, "trust.yaml", inline)
	s := startServe(t, cfg, nil)
	if got := s.outcome(t); got != "192.168.1.1" {
		t.Fatalf("without the source: %q", got)
	}
	replaceFile(t, cfg, listSourceConfig(p.srv.URL+"/lb.txt", p.ca, cache))
	if line := s.nextReload(t); !strings.Contains(line, `msg="configuration reloaded"`) {
		t.Fatalf("adding a source: %s\n%s", line, s.logs)
	}
	if got := s.outcome(t); got != "203.0.113.9" {
		t.Errorf("with the source: %q", got)
	}
	if m := s.metric(t, "realipd_list_source_entries"); m != `realipd_list_source_entries{source="trust.trusted_cidrs[1]"} 5` {
		t.Errorf("metrics with the source:\n%s", m)
	}
	replaceFile(t, cfg, inline)
	if line := s.nextReload(t); !strings.Contains(line, `msg="configuration reloaded"`) {
		t.Fatalf("removing the source: %s", line)
	}
	if got := s.outcome(t); got != "192.168.1.1" {
		t.Errorf("after removing the source: %q", got)
	}
	if m := s.metric(t, "realipd_list_source_entries"); m != "" {
		t.Errorf("metrics of a removed source:\n%s", m)
	}
	// A reload adding a source that cannot be had is rejected.
	p.srv.Close()
	replaceFile(t, cfg, listSourceConfig(p.srv.URL+"/other.txt", p.ca, cache))
	if line := s.nextReload(t); !strings.Contains(line, "rejected") {
		t.Errorf("adding a source that cannot be had: %s", line)
	}
	if got := s.outcome(t); got != "192.168.1.1" {
		t.Errorf("after the rejected reload: %q", got)
	}
}
