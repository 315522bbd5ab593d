package listsource

import (
	"bytes"
	"context"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// provider serves documents as a list provider does, over HTTPS or plain
// HTTP on loopback: each path has a body and an ETag (a conditional
// request with the current ETag gets a 304).
type provider struct {
	srv *httptest.Server

	mu          sync.Mutex
	docs        map[string]providerDoc
	requests    int
	conditional int // requests that carried If-None-Match
}

type providerDoc struct {
	body   []byte
	etag   string
	status int // 0: 200
}

func newProvider(t *testing.T, tlsOn bool) *provider {
	p := &provider{docs: map[string]providerDoc{}}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		d, ok := p.docs[r.URL.Path]
		p.requests++
		inm := r.Header.Get("If-None-Match")
		if inm != "" {
			p.conditional++
		}
		p.mu.Unlock()
		switch {
		case !ok:
			http.NotFound(w, r)
		case d.status != 0:
			w.WriteHeader(d.status)
		case d.etag != "" && inm == d.etag:
			w.Header().Set("ETag", d.etag)
			w.WriteHeader(http.StatusNotModified)
		default:
			if d.etag != "" {
				w.Header().Set("ETag", d.etag)
			}
			w.Write(d.body)
		}
	})
	if tlsOn {
		p.srv = httptest.NewTLSServer(h)
	} else {
		p.srv = httptest.NewServer(h)
	}
	t.Cleanup(p.srv.Close)
	return p
}

func (p *provider) set(path string, body []byte, etag string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.docs[path] = providerDoc{body: body, etag: etag}
}

func (p *provider) setStatus(path string, status int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.docs[path] = providerDoc{status: status}
}

func (p *provider) counts() (requests, conditional int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests, p.conditional
}

// caFile writes the TLS server's certificate as a PEM file, the CA file
// a source trusts.
func (p *provider) caFile(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "ca.pem")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// stage stages one source of spec in a new Set with o and commits nothing.
func stage(t *testing.T, o Options, spec Spec) (*Source, error) {
	t.Helper()
	s := NewSet(o)
	t.Cleanup(s.Close)
	st, err := s.Stage(context.Background(), []Spec{spec})
	if err != nil {
		return nil, err
	}
	return st.sources[spec.Name], nil
}

func lines(n int, format string) []byte {
	var b bytes.Buffer
	for i := range n {
		fmt.Fprintf(&b, format+"\n", i/256, i%256)
	}
	return b.Bytes()
}

// TestPresetFormatsOverHTTPS: each preset's format and filter, with a
// sample document of its provider served over HTTPS (the preset's own URLs
// are never contacted by tests).
func TestPresetFormatsOverHTTPS(t *testing.T) {
	p := newProvider(t, true)
	ca := p.caFile(t)
	files := map[string][]string{
		"cloudflare":   {"cloudflare-ips-v4.txt", "cloudflare-ips-v6.txt"},
		"cloudfront":   {"aws-ip-ranges.json"},
		"fastly":       {"fastly-public-ip-list.json"},
		"google-cloud": {"google-cloud.json"},
	}
	want := map[string]int{"cloudflare": 22, "cloudfront": 4, "fastly": 21, "google-cloud": 7}
	for _, pr := range Presets() {
		t.Run(pr.Name, func(t *testing.T) {
			if len(files[pr.Name]) != len(pr.URLs) {
				t.Fatalf("preset %s has %d URLs; the test serves %d", pr.Name, len(pr.URLs), len(files[pr.Name]))
			}
			var urls []string
			for i, f := range files[pr.Name] {
				path := fmt.Sprintf("/%s/%d", pr.Name, i)
				p.set(path, sample(t, f), "")
				urls = append(urls, p.srv.URL+path)
			}
			src, err := stage(t, Options{}, Spec{Name: pr.Name, URLs: urls, Preset: pr.Name, Format: pr.Format, Filter: pr.Filter, CAFile: ca, Required: true, MaxShrink: 0.5})
			if err != nil {
				t.Fatal(err)
			}
			if got := src.List().Len(); got != want[pr.Name] {
				t.Errorf("%d entries, want %d: %v", got, want[pr.Name], strs(src.List().Prefixes()))
			}
			for _, u := range pr.URLs {
				if err := CheckURL(u); err != nil || !strings.HasPrefix(u, "https://") {
					t.Errorf("preset URL %s: %v", u, err)
				}
			}
		})
	}
}

// TestRefusedAnswersKeepTheLastGoodList: a garbage, empty, oversized,
// non-UTF-8 or 90 %-shrunk answer is refused with its reason (the status
// counts it and shows it), and the list in force does not change.
func TestRefusedAnswersKeepTheLastGoodList(t *testing.T) {
	p := newProvider(t, true)
	good := lines(100, "10.%d.%d.1")
	p.set("/list", good, `"v1"`)
	src, err := stage(t, Options{}, Spec{Name: "trust.trusted_cidrs[0]", URLs: []string{p.srv.URL + "/list"}, CAFile: p.caFile(t), MaxShrink: 0.5, Required: true})
	if err != nil {
		t.Fatal(err)
	}
	list := src.List()
	if list.Len() != 100 {
		t.Fatalf("%d entries, want 100", list.Len())
	}
	cases := []struct {
		name   string
		body   []byte
		reason string
	}{
		{"garbage", []byte("<html><body>Service Unavailable</body></html>"), ReasonParse},
		{"empty", []byte("# nothing today\n"), ReasonEmpty},
		{"oversized", bytes.Repeat([]byte("10.0.0.0/8\n"), MaxBytes/11+1), ReasonTooLarge},
		{"not utf-8", append(lines(100, "10.%d.%d.1"), "# \xff\xfe\n"...), ReasonNotUTF8},
		{"shrunk by 90 %", lines(10, "10.%d.%d.1"), ReasonShrink},
	}
	for i, tc := range cases {
		p.set("/list", tc.body, fmt.Sprintf(`"bad%d"`, i))
		if src.Refresh(context.Background()) {
			t.Errorf("%s: the list changed", tc.name)
		}
		if src.List() != list {
			t.Fatalf("%s: the list in force was replaced", tc.name)
		}
		st := src.Status()
		if st.Refused[tc.reason] != 1 {
			t.Errorf("%s: refused %v, want one %q", tc.name, st.Refused, tc.reason)
		}
		if d := st.Documents[0]; !strings.HasPrefix(d.LastRefusal, tc.reason+":") || d.Entries != 100 {
			t.Errorf("%s: document status %+v", tc.name, d)
		}
	}
	// A fetch error is counted apart, and keeps the list too.
	p.setStatus("/list", http.StatusServiceUnavailable)
	if src.Refresh(context.Background()); src.List() != list || src.Status().FetchErrors[ErrorStatus] != 1 {
		t.Errorf("after a 503: list replaced or not counted: %+v", src.Status())
	}
	// A good answer replaces it, and a refusal no longer shows as the
	// last error (the last refusal stays, with its time).
	p.set("/list", lines(60, "11.%d.%d.1"), `"v2"`)
	if !src.Refresh(context.Background()) || src.List().Len() != 60 {
		t.Fatalf("a good list shrunk by 40 %% was not taken: %d entries", src.List().Len())
	}
	if d := src.Status().Documents[0]; d.LastError != "" || d.LastRefusal == "" || d.ETag != `"v2"` {
		t.Errorf("status after success: %+v", d)
	}
}

// TestNotModified: a 304 answers a conditional request and costs no parse;
// a new ETag brings the new list.
func TestNotModified(t *testing.T) {
	p := newProvider(t, true)
	p.set("/ips-v4", sample(t, "cloudflare-ips-v4.txt"), `"a"`)
	src, err := stage(t, Options{}, Spec{Name: "cf", URLs: []string{p.srv.URL + "/ips-v4"}, CAFile: p.caFile(t), MaxShrink: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	before := src.List()
	for range 3 {
		if src.Refresh(context.Background()) {
			t.Error("unchanged list reported as changed")
		}
	}
	if src.List() != before {
		t.Error("the list was replaced by a 304")
	}
	if req, cond := p.counts(); req != 4 || cond != 3 {
		t.Errorf("%d requests, %d conditional; want 4, 3", req, cond)
	}
	src.mu.Lock()
	parses, nm := src.docs[0].parses, src.docs[0].notModified
	src.mu.Unlock()
	if parses != 1 || nm != 3 {
		t.Errorf("%d parses and %d 304s, want 1 and 3", parses, nm)
	}
	p.set("/ips-v4", append(sample(t, "cloudflare-ips-v4.txt"), "192.0.2.0/24\n"...), `"b"`)
	if !src.Refresh(context.Background()) || src.List().Len() != 16 {
		t.Errorf("the changed list was not taken: %d entries", src.List().Len())
	}
}

// TestCacheAcrossRestarts: the last good list is cached and used at start
// when the source cannot be reached; with neither, a required source fails
// to stage, naming itself, and an optional one stages without a list.
func TestCacheAcrossRestarts(t *testing.T) {
	p := newProvider(t, true)
	p.set("/fastly", sample(t, "fastly-public-ip-list.json"), `"f1"`)
	dir := filepath.Join(t.TempDir(), "cache")
	spec := Spec{Name: "policies[0].deny[0]", URLs: []string{p.srv.URL + "/fastly"}, Format: FormatFastly, CAFile: p.caFile(t), MaxShrink: 0.5, Required: true, Refresh: time.Hour}
	src, err := stage(t, Options{CacheDir: dir}, spec)
	if err != nil {
		t.Fatal(err)
	}
	want := strs(src.List().Prefixes())
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("cache directory: %v %v", fi, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("cache files: %v", ents)
	}
	if fi, _ := os.Stat(filepath.Join(dir, ents[0].Name())); fi.Mode().Perm() != 0o600 {
		t.Errorf("cache file mode %v", fi.Mode())
	}
	if strings.Contains(ents[0].Name(), "fastly") {
		t.Errorf("the cache file is named after the URL: %s", ents[0].Name())
	}

	// Within its refresh, a restart takes the cache without fetching.
	reqs, _ := p.counts()
	src, err = stage(t, Options{CacheDir: dir}, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !src.Status().Documents[0].FromCache {
		t.Error("the restart did not take the cache")
	}
	if got, _ := p.counts(); got != reqs {
		t.Errorf("a fresh cache was fetched again (%d requests, then %d)", reqs, got)
	}
	// Older than its refresh and the source unreachable: still the cache.
	p.srv.Close()
	later := func() time.Time { return time.Now().Add(2 * time.Hour) }
	src, err = stage(t, Options{CacheDir: dir, Now: later}, spec)
	if err != nil {
		t.Fatalf("the cached list was not used with the source down: %v", err)
	}
	if got := strs(src.List().Prefixes()); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("cached list %v, want %v", got, want)
	}
	st := src.Status()
	if !st.Documents[0].FromCache || st.FetchErrors[ErrorNetwork] != 1 || st.Documents[0].ETag != `"f1"` {
		t.Errorf("status %+v", st)
	}

	// Neither cache nor answer.
	_, err = stage(t, Options{CacheDir: t.TempDir()}, spec)
	if err == nil || !strings.Contains(err.Error(), "policies[0].deny[0]") || !strings.Contains(err.Error(), "no list") {
		t.Errorf("required source with no cache and no answer: %v", err)
	}
	spec.Required = false
	src, err = stage(t, Options{CacheDir: t.TempDir()}, spec)
	if err != nil || src.List() != nil {
		t.Errorf("optional source with no cache and no answer: %v, %v", src, err)
	}

	// A cache file of another document is ignored.
	other := spec
	other.Filter = Filter{Service: "X"}
	os.Rename(filepath.Join(dir, ents[0].Name()), cachePath(dir, other.docKey(other.URLs[0])))
	if src, err = stage(t, Options{CacheDir: dir, Now: later}, other); err != nil || src.List() != nil {
		t.Errorf("another document's cache was used: %v %v", src.List(), err)
	}
}

// TestTransport: https needs a trusted certificate; plain http is for
// loopback; a redirect from https to http is refused; a stalled server
// times out.
func TestTransport(t *testing.T) {
	tlsP := newProvider(t, true)
	tlsP.set("/l", []byte("10.0.0.0/8\n"), "")
	if _, err := stage(t, Options{}, Spec{Name: "s", URLs: []string{tlsP.srv.URL + "/l"}, Required: true}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("an untrusted certificate: %v", err)
	} else {
		// The reason is tls.
		s := NewSet(Options{})
		st, _ := s.Stage(context.Background(), []Spec{{Name: "s", URLs: []string{tlsP.srv.URL + "/l"}}})
		if got := st.sources["s"].Status().FetchErrors; got[ErrorTLS] != 1 {
			t.Errorf("fetch errors %v, want one tls", got)
		}
	}
	httpP := newProvider(t, false)
	httpP.set("/l", []byte("10.0.0.0/8\n"), "")
	if src, err := stage(t, Options{}, Spec{Name: "s", URLs: []string{httpP.srv.URL + "/l"}, Required: true}); err != nil || src.List().Len() != 1 {
		t.Errorf("plain http on loopback: %v", err)
	}
	for _, u := range []string{"http://example.com/list", "ftp://127.0.0.1/x", "https:///x", "https://example.com/x#frag", "file:///etc/passwd"} {
		if CheckURL(u) == nil {
			t.Errorf("CheckURL(%s) accepted it", u)
		}
	}
	for _, u := range []string{"https://example.com/x?a=1", "http://127.0.0.1:8080/x", "http://[::1]/x", "http://localhost/x"} {
		if err := CheckURL(u); err != nil {
			t.Errorf("CheckURL(%s): %v", u, err)
		}
	}

	redirect := httptest.NewTLSServer(http.RedirectHandler("http://192.0.2.1/list", http.StatusFound))
	defer redirect.Close()
	caPath := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: redirect.Certificate().Raw}), 0o600)
	if _, err := stage(t, Options{}, Spec{Name: "s", URLs: []string{redirect.URL}, CAFile: caPath, Required: true}); err == nil || !strings.Contains(err.Error(), "plain http") {
		t.Errorf("a redirect to plain http: %v", err)
	}

	stall := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-stall:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(stall)
	s := NewSet(Options{Timeout: 100 * time.Millisecond})
	defer s.Close()
	st, err := s.Stage(context.Background(), []Spec{{Name: "slow", URLs: []string{slow.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := st.sources["slow"].Status().FetchErrors; got[ErrorTimeout] != 1 {
		t.Errorf("fetch errors %v, want one timeout", got)
	}
}

// TestRedactURL: no credential shows.
func TestRedactURL(t *testing.T) {
	got := RedactURL("https://user:secret@lists.example/drop.txt?token=abc&x=1")
	if strings.Contains(got, "secret") || strings.Contains(got, "abc") || strings.Contains(got, "user") {
		t.Errorf("RedactURL = %s", got)
	}
	if got != "https://lists.example/drop.txt?token=REDACTED&x=REDACTED" {
		t.Errorf("RedactURL = %s", got)
	}
}

// TestDelay: jittered refresh, exponential backoff on failure.
func TestDelay(t *testing.T) {
	now := time.Date(2024, 6, 20, 12, 0, 0, 0, time.UTC)
	h12 := 12 * time.Hour
	cases := []struct {
		refresh  time.Duration
		failures int
		oldest   time.Time
		rnd      float64
		want     time.Duration
	}{
		{h12, 0, now, 0.5, h12},
		{h12, 0, now, 0, h12 * 9 / 10},
		{h12, 0, now, 0.999999, h12 * 11 / 10},
		{h12, 0, now.Add(-11 * time.Hour), 0.5, time.Hour}, // a cached list 11 h old
		{h12, 0, now.Add(-13 * time.Hour), 0.5, 0},
		{h12, 1, now, 0.5, 30 * time.Second},
		{h12, 2, now, 0.5, time.Minute},
		{h12, 5, now, 0.5, 8 * time.Minute},
		{h12, 9, now, 0.5, time.Hour},
		{h12, 1000, now, 0.5, time.Hour},
		{time.Second, 3, now, 0.5, time.Second},
	}
	for _, tc := range cases {
		got := delay(tc.refresh, tc.failures, tc.oldest, now, tc.rnd)
		if d := got - tc.want; d < -10*time.Millisecond || d > 10*time.Millisecond {
			t.Errorf("delay(%v, %d failures, oldest %v, %v) = %v, want %v", tc.refresh, tc.failures, now.Sub(tc.oldest), tc.rnd, got, tc.want)
		}
	}
}

// TestFileSource: a file is read once it has settled, refused like a
// fetched answer when bad, and its change is picked up by the loop when
// the watch says so.
func TestFileSource(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lb.txt")
	os.WriteFile(path, []byte("10.0.0.0/8\n192.0.2.7\n"), 0o644)
	watching := make(chan func(), 1)
	changed := make(chan string, 4)
	s := NewSet(Options{
		Settle:  time.Millisecond,
		Watch:   func(ctx context.Context, p string, f func()) error { watching <- f; return nil },
		Changed: func(name string) { changed <- name },
	})
	defer s.Close()
	st, err := s.Stage(context.Background(), []Spec{{Name: "lb", File: path, Required: true, MaxShrink: 0.5, Refresh: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strs(st.List("lb").Prefixes()); strings.Join(got, " ") != "10.0.0.0/8 192.0.2.7/32" {
		t.Fatalf("list %v", got)
	}
	st.Commit()
	var watched func()
	select {
	case watched = <-watching:
	case <-time.After(5 * time.Second):
		t.Fatal("the file is not watched")
	}
	os.WriteFile(path, []byte("10.0.0.0/8\n192.0.2.7\n198.51.100.0/24\n"), 0o644)
	watched()
	select {
	case name := <-changed:
		if name != "lb" || s.List("lb").Len() != 3 {
			t.Errorf("changed %q, %d entries", name, s.List("lb").Len())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the file's change was not picked up")
	}
	src := s.Sources()[0]
	os.WriteFile(path, []byte("not a cidr\n"), 0o644)
	if src.Refresh(context.Background()) || s.List("lb").Len() != 3 || src.Status().Refused[ReasonParse] != 1 {
		t.Errorf("a bad file replaced the list: %+v", src.Status())
	}
	os.Remove(path)
	if src.Refresh(context.Background()) || s.List("lb").Len() != 3 || src.Status().FetchErrors[ErrorRead] != 1 {
		t.Errorf("a removed file replaced the list: %+v", src.Status())
	}
}
