package listsource

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Fetch error reasons (the label values of
// realipd_list_source_fetch_errors_total): the document could not be
// had, as opposed to refused once had.
const (
	ErrorNetwork = "network" // no connection, or it broke
	ErrorTLS     = "tls"     // the server's certificate was not trusted, or the handshake failed
	ErrorTimeout = "timeout" // Options.Timeout passed
	ErrorStatus  = "status"  // an HTTP status other than 200 and 304
	ErrorRead    = "read"    // a file that cannot be read (missing, not a regular file, changing)
)

// Options are what a Set's sources share. The zero value fetches with the
// system's certificate authorities, keeps no cache and logs nothing.
type Options struct {
	// CacheDir is where the last good list of every fetched document is
	// kept, and read at start; "" keeps none.
	CacheDir string
	// CacheReadOnly reads the cache and never writes it: for one-shot
	// commands (resolve, validate), which may run as another user than
	// serve and must not leave files it cannot replace.
	CacheReadOnly bool
	// Logger receives the sources' logs; nil discards them.
	Logger *slog.Logger
	// Client returns the HTTP client of a source; nil: NewClient.
	Client func(Spec) (*http.Client, error)
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Timeout bounds one fetch (default DefaultTimeout).
	Timeout time.Duration
	// Watch, when set, calls changed whenever the file at path may have
	// changed, until ctx ends (the configuration file's watch); a file
	// source is otherwise re-read only every Refresh.
	Watch func(ctx context.Context, path string, changed func()) error
	// Settle is how long a file must be unchanged to be read: it is read
	// until two reads Settle apart agree (default 250 ms).
	Settle time.Duration
	// Changed is called, from the source's goroutine, after the list of
	// one of the Set's sources changed; nil: nothing is told.
	Changed func(name string)
	// Observe is called after each load and refresh of a source, once
	// for each document that failed (with its reason) and once more with
	// neither reason set: metrics. nil: nothing is told.
	Observe func(name string, o Observation)
}

// Observation is what Options.Observe hears of a source.
type Observation struct {
	FetchError  string    // a document could not be had: its reason (ErrorNetwork...)
	Refused     string    // a document was refused: its reason (ReasonParse...)
	Entries     int       // the source's list's prefixes, merged
	LastSuccess time.Time // the oldest fetch or confirmation of its documents' lists; zero while one has none
}

func (o *Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// NewClient returns the HTTP client of a source: TLS 1.2 or later with the
// system's certificate authorities, or only those of the PEM file caFile;
// proxies from the environment; redirects followed (at most 5) only to
// URLs CheckURL accepts, so that https never becomes http.
func NewClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("listsource: ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("listsource: ca_file %s: no PEM certificate in it", caFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("more than 5 redirects")
			}
			if err := CheckURL(req.URL.String()); err != nil {
				return fmt.Errorf("redirected to %s: %v", RedactURL(req.URL.String()), err)
			}
			return nil
		},
	}, nil
}

// List is one source's list: its prefixes merged (Merge). It is immutable;
// a new list is a new *List, so that a consumer can tell by the pointer
// whether what it built from a list is still current.
type List struct {
	prefixes []netip.Prefix
}

// Prefixes returns the list's prefixes; the caller must not modify them.
// A nil List has none.
func (l *List) Prefixes() []netip.Prefix {
	if l == nil {
		return nil
	}
	return l.prefixes
}

// Len returns the number of prefixes (merged).
func (l *List) Len() int { return len(l.Prefixes()) }

// NewList returns a List of ps, merged.
func NewList(ps []netip.Prefix) *List { return &List{prefixes: Merge(ps)} }

// Source is one running list source. Its documents are refreshed on its
// own goroutine (started by Staged.Commit); List and Status may be called
// from any goroutine.
type Source struct {
	spec   Spec
	o      *Options
	client *http.Client
	log    *slog.Logger

	list    atomic.Pointer[List] // nil while no document has a list
	trigger chan struct{}        // a watched file changed
	cancel  context.CancelFunc
	done    chan struct{}

	mu       sync.Mutex // guards the fields below and the docs' state
	docs     []*doc
	failures int           // consecutive refreshes with a failed document
	events   []Observation // the failures not yet told to Observe
}

// observe tells Options.Observe of the recorded failures and the state.
func (src *Source) observe() {
	src.mu.Lock()
	events := append(src.events, Observation{})
	src.events = nil
	last := src.oldestLocked()
	src.mu.Unlock()
	if src.o.Observe == nil {
		return
	}
	entries := src.List().Len()
	for _, e := range events {
		e.Entries, e.LastSuccess = entries, last
		src.o.Observe(src.spec.Name, e)
	}
}

// doc is one document of a source (a URL or the file) and its state.
type doc struct {
	where string // URL or file path
	key   string // Spec.docKey
	file  bool

	list               []netip.Prefix // the last good list, merged; nil when none
	etag, lastModified string
	fetched            time.Time // when list was fetched, or confirmed by a 304
	changed            time.Time // when list last changed
	fromCache          bool      // list came from the cache file and no fetch confirmed it yet
	lastError          string    // the last fetch error or refusal
	lastRefusal        string    // the last refusal, "reason: detail"
	lastRefusalAt      time.Time
	fetchErrors        map[string]uint64
	refusals           map[string]uint64
	parses             uint64 // documents parsed (a 304 is not)
	notModified        uint64 // 304 answers
}

func newSource(spec Spec, o *Options) (*Source, error) {
	if spec.Refresh <= 0 {
		spec.Refresh = DefaultRefresh
	}
	src := &Source{spec: spec, o: o, trigger: make(chan struct{}, 1), done: make(chan struct{})}
	src.log = slog.New(slog.DiscardHandler)
	if o.Logger != nil {
		src.log = o.Logger
	}
	src.log = src.log.With("source", spec.Name)
	if spec.File != "" {
		src.docs = []*doc{{where: spec.File, key: spec.docKey("file:" + spec.File), file: true}}
	}
	for _, u := range spec.URLs {
		src.docs = append(src.docs, &doc{where: u, key: spec.docKey(u)})
	}
	for _, d := range src.docs {
		d.fetchErrors, d.refusals = map[string]uint64{}, map[string]uint64{}
	}
	if len(spec.URLs) > 0 {
		newClient := o.Client
		if newClient == nil {
			newClient = func(s Spec) (*http.Client, error) { return NewClient(s.CAFile) }
		}
		c, err := newClient(spec)
		if err != nil {
			return nil, fmt.Errorf("listsource: %s: %w", spec.Name, err)
		}
		src.client = c
	}
	return src, nil
}

// Name returns the source's name (Spec.Name).
func (src *Source) Name() string { return src.spec.Name }

// Spec returns the source's Spec.
func (src *Source) Spec() Spec { return src.spec }

// List returns the source's list: the union of its documents' last good
// lists; nil while none has one.
func (src *Source) List() *List { return src.list.Load() }

// seed takes the state of documents with the same key from other, a
// source of the configuration being replaced, so that a source whose
// settings changed keeps its list instead of starting over.
func (src *Source) seed(other *Source) {
	other.mu.Lock()
	defer other.mu.Unlock()
	for _, d := range src.docs {
		for _, od := range other.docs {
			if od.key == d.key && od.list != nil && d.list == nil {
				d.list, d.etag, d.lastModified, d.fetched, d.changed, d.fromCache = od.list, od.etag, od.lastModified, od.fetched, od.changed, od.fromCache
			}
		}
	}
}

// load gives the source its lists at start: each document's cache file,
// then a refresh of the documents that have none or whose list is older
// than Refresh (every file is read). It returns an error naming the
// documents still without a list.
func (src *Source) load(ctx context.Context) error {
	now := src.o.now()
	stale := false
	src.mu.Lock()
	for _, d := range src.docs {
		if d.list == nil && !d.file && src.o.CacheDir != "" {
			e, ps, err := readCache(src.o.CacheDir, d.key)
			switch {
			case err == nil:
				d.list, d.etag, d.lastModified, d.fetched, d.changed, d.fromCache = Merge(ps), e.ETag, e.LastModified, e.Fetched, e.Fetched, true
				src.log.Info("list source: cached list loaded", "document", d.show(), "entries", len(d.list), "fetched", e.Fetched)
			case !errors.Is(err, fs.ErrNotExist):
				src.log.Warn("list source: cache file ignored", "document", d.show(), "error", err)
			}
		}
		if d.list == nil || d.file || now.Sub(d.fetched) >= src.spec.Refresh {
			stale = true
		}
	}
	src.mu.Unlock()
	if stale {
		src.refresh(ctx, true)
	} else {
		src.publish()
		src.observe()
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	var missing []string
	for _, d := range src.docs {
		if d.list == nil {
			missing = append(missing, fmt.Sprintf("%s (%s)", d.show(), d.lastError))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("listsource: %s: no list, neither cached nor fetched: %s", src.spec.Name, strings.Join(missing, "; "))
	}
	return nil
}

// Refresh fetches (or reads) every document of the source now and
// reports whether the source's list changed. Its background goroutine
// calls it; tests call it directly.
func (src *Source) Refresh(ctx context.Context) bool { return src.refresh(ctx, false) }

// refresh refreshes the documents (with onlyStale, those without a list
// or older than Refresh, and files) and publishes the union.
func (src *Source) refresh(ctx context.Context, onlyStale bool) bool {
	failed := false
	for _, d := range src.docs {
		if onlyStale {
			src.mu.Lock()
			fresh := d.list != nil && !d.file && src.o.now().Sub(d.fetched) < src.spec.Refresh
			src.mu.Unlock()
			if fresh {
				continue
			}
		}
		if !src.refreshDoc(ctx, d) {
			failed = true
		}
	}
	src.mu.Lock()
	if failed {
		src.failures++
	} else {
		src.failures = 0
	}
	src.mu.Unlock()
	changed := src.publish()
	src.observe()
	return changed
}

// publish stores the union of the documents' lists, if it changed, and
// reports whether it did.
func (src *Source) publish() bool {
	src.mu.Lock()
	var lists [][]netip.Prefix
	for _, d := range src.docs {
		if d.list != nil {
			lists = append(lists, d.list)
		}
	}
	src.mu.Unlock()
	var next *List
	switch len(lists) {
	case 0:
		next = nil
	case 1:
		next = &List{prefixes: lists[0]}
	default:
		next = NewList(slices.Concat(lists...))
	}
	old := src.list.Load()
	if next == nil || old != nil && slices.Equal(old.prefixes, next.prefixes) {
		return false
	}
	src.list.Store(next)
	return true
}

// show is how a document appears in logs and /config_dump.
func (d *doc) show() string {
	if d.file {
		return d.where
	}
	return RedactURL(d.where)
}

// fetchError is a document that could not be had.
type fetchError struct {
	reason string
	err    error
}

func (e *fetchError) Error() string { return e.err.Error() }

// refreshDoc fetches or reads one document, and replaces its list when
// the answer is acceptable. It reports whether the document is fine (its
// list replaced or confirmed), and records a failure for Observe.
func (src *Source) refreshDoc(ctx context.Context, d *doc) bool {
	src.mu.Lock()
	etag, lastModified, have := d.etag, d.lastModified, d.list != nil
	src.mu.Unlock()

	var (
		body    []byte
		res     fetched
		err     error
		started = src.o.now()
	)
	if d.file {
		body, err = src.readSettled(ctx, d.where)
	} else {
		if !have {
			etag, lastModified = "", ""
		}
		res, err = src.fetch(ctx, d.where, etag, lastModified)
		body = res.body
	}
	now := src.o.now()

	src.mu.Lock()
	defer src.mu.Unlock()
	if err != nil {
		if reason := RefusalReason(err); reason != "" {
			src.refuseLocked(d, now, reason, err)
			return false
		}
		reason := ErrorNetwork
		if fe, ok := errors.AsType[*fetchError](err); ok {
			reason = fe.reason
		}
		d.fetchErrors[reason]++
		src.events = append(src.events, Observation{FetchError: reason})
		d.lastError = err.Error()
		src.log.Warn("list source: fetch failed; the last good list keeps serving", "document", d.show(), "reason", reason, "error", err,
			"entries", len(d.list))
		return false
	}
	if res.notModified {
		d.notModified++
		d.fetched, d.lastError, d.etag = now, "", cmpOr(res.etag, d.etag)
		src.log.Debug("list source: not modified", "document", d.show(), "took", now.Sub(started))
		src.writeCacheLocked(d)
		return true
	}
	d.parses++
	ps, err := Parse(src.spec.format(), body, src.spec.Filter, MaxEntries)
	if err != nil {
		src.refuseLocked(d, now, RefusalReason(err), err)
		return false
	}
	merged := Merge(ps)
	if d.list != nil && src.spec.MaxShrink < 1 && float64(len(merged)) < float64(len(d.list))*(1-src.spec.MaxShrink) {
		src.refuseLocked(d, now, ReasonShrink, fmt.Errorf("from %d to %d entries, more than max_shrink %g allows", len(d.list), len(merged), src.spec.MaxShrink))
		return false
	}
	if !slices.Equal(merged, d.list) {
		if d.list != nil {
			src.log.Info("list source: list changed", "document", d.show(), "entries", len(merged), "was", len(d.list))
		} else {
			src.log.Info("list source: list loaded", "document", d.show(), "entries", len(merged))
		}
		d.list, d.changed = merged, now
	}
	d.etag, d.lastModified, d.fetched, d.fromCache, d.lastError = res.etag, res.lastModified, now, false, ""
	src.writeCacheLocked(d)
	return true
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// refuseLocked records a refused document.
func (src *Source) refuseLocked(d *doc, now time.Time, reason string, err error) {
	if reason == "" {
		reason = ReasonParse
	}
	d.refusals[reason]++
	src.events = append(src.events, Observation{Refused: reason})
	d.lastRefusal, d.lastRefusalAt, d.lastError = err.Error(), now, err.Error()
	if !strings.HasPrefix(d.lastRefusal, reason) {
		d.lastRefusal = reason + ": " + d.lastRefusal
	}
	src.log.Warn("list source: answer refused; the last good list keeps serving", "document", d.show(), "reason", reason, "error", err,
		"entries", len(d.list))
}

// writeCacheLocked writes a fetched document's list to the cache.
func (src *Source) writeCacheLocked(d *doc) {
	if d.file || src.o.CacheDir == "" || src.o.CacheReadOnly || d.list == nil {
		return
	}
	e := &cacheEntry{Document: d.key, ETag: d.etag, LastModified: d.lastModified, Fetched: d.fetched}
	if err := writeCache(src.o.CacheDir, e, d.list); err != nil {
		src.log.Warn("list source: the cache file could not be written; a restart without network will not have this list", "document", d.show(), "error", err)
	}
}

// fetched is a fetch's answer.
type fetched struct {
	body               []byte
	notModified        bool
	etag, lastModified string
}

// fetch GETs url, conditionally when etag or lastModified is set, within
// Options.Timeout, reading at most MaxBytes.
func (src *Source) fetch(ctx context.Context, u, etag, lastModified string) (fetched, error) {
	timeout := src.o.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fetched{}, &fetchError{ErrorNetwork, fmt.Errorf("request: %w", err)}
	}
	req.Header.Set("User-Agent", "realipd-list-source")
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	if lastModified != "" {
		req.Header.Set("If-Modified-Since", lastModified)
	}
	resp, err := src.client.Do(req)
	if err != nil {
		return fetched{}, classify(ctx, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotModified:
		if etag == "" && lastModified == "" {
			return fetched{}, &fetchError{ErrorStatus, errors.New("304 Not Modified to an unconditional request")}
		}
		return fetched{notModified: true, etag: resp.Header.Get("ETag")}, nil
	default:
		return fetched{}, &fetchError{ErrorStatus, fmt.Errorf("HTTP status %s", resp.Status)}
	}
	if resp.ContentLength > MaxBytes {
		return fetched{}, refused(ReasonTooLarge, "%d bytes announced, more than %d", resp.ContentLength, MaxBytes)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBytes+1))
	if err != nil {
		return fetched{}, classify(ctx, err)
	}
	if len(body) > MaxBytes {
		return fetched{}, refused(ReasonTooLarge, "more than %d bytes", MaxBytes)
	}
	return fetched{body: body, etag: resp.Header.Get("ETag"), lastModified: resp.Header.Get("Last-Modified")}, nil
}

// classify gives a failed request its reason.
func classify(ctx context.Context, err error) error {
	var (
		certErr  *tls.CertificateVerificationError
		recErr   tls.RecordHeaderError
		alertErr tls.AlertError
		unknown  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		netErr   net.Error
	)
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return &fetchError{ErrorTimeout, err}
	case errors.As(err, &certErr), errors.As(err, &recErr), errors.As(err, &alertErr), errors.As(err, &unknown), errors.As(err, &hostErr):
		return &fetchError{ErrorTLS, err}
	case errors.As(err, &netErr) && netErr.Timeout():
		return &fetchError{ErrorTimeout, err}
	}
	var ue *url.Error
	if errors.As(err, &ue) && strings.Contains(ue.Err.Error(), "redirect") {
		return &fetchError{ErrorStatus, err}
	}
	return &fetchError{ErrorNetwork, err}
}

// readSettled reads a file once two reads Settle apart agree: a file
// being written in place is used only once its writer is done.
func (src *Source) readSettled(ctx context.Context, path string) ([]byte, error) {
	settle := src.o.Settle
	if settle <= 0 {
		settle = 250 * time.Millisecond
	}
	prev, err := readRegular(path)
	if err != nil {
		return nil, err
	}
	for range 10 {
		t := time.NewTimer(settle)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, &fetchError{ErrorRead, ctx.Err()}
		case <-t.C:
		}
		data, err := readRegular(path)
		if err != nil {
			return nil, err
		}
		if bytes.Equal(data, prev) {
			return data, nil
		}
		prev = data
	}
	return nil, &fetchError{ErrorRead, fmt.Errorf("%s kept changing; write it atomically (a rename over it)", path)}
}

// readRegular reads the regular file at path, at most MaxBytes. Anything
// else (a named pipe, a device, a directory) is refused without being
// read; the open does not block.
func readRegular(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, &fetchError{ErrorRead, err}
	}
	if !fi.Mode().IsRegular() {
		return nil, &fetchError{ErrorRead, fmt.Errorf("%s is not a regular file", path)}
	}
	if fi.Size() > MaxBytes {
		return nil, refused(ReasonTooLarge, "%s: %d bytes, more than %d", path, fi.Size(), MaxBytes)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, &fetchError{ErrorRead, err}
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, &fetchError{ErrorRead, fmt.Errorf("%s is not a regular file", path)}
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxBytes+1))
	if err != nil {
		return nil, &fetchError{ErrorRead, err}
	}
	if len(data) > MaxBytes {
		return nil, refused(ReasonTooLarge, "%s: more than %d bytes", path, MaxBytes)
	}
	return data, nil
}

// maxBackoff bounds the wait after failed refreshes.
const maxBackoff = time.Hour

// nextDelay is how long the source waits before its next refresh: after a
// failure, an exponential backoff from min(Refresh, 30 s) doubling up to
// min(Refresh, 1 h); otherwise until its oldest document is Refresh old.
// Either is jittered by ±10 %, so that many realipd instances do not
// fetch in step.
func (src *Source) nextDelay(rnd float64) time.Duration {
	src.mu.Lock()
	defer src.mu.Unlock()
	return delay(src.spec.Refresh, src.failures, src.oldestLocked(), src.o.now(), rnd)
}

// delay computes nextDelay; rnd is in [0, 1).
func delay(refresh time.Duration, failures int, oldest, now time.Time, rnd float64) time.Duration {
	var d time.Duration
	if failures > 0 {
		base := min(refresh, 30*time.Second)
		d = min(refresh, maxBackoff, base<<min(failures-1, 20))
	} else {
		d = oldest.Add(refresh).Sub(now)
	}
	d = time.Duration(float64(d) * (0.9 + 0.2*rnd))
	return max(d, 0)
}

// oldestLocked is the fetch time of the source's oldest list (zero when a
// document has none).
func (src *Source) oldestLocked() time.Time {
	var oldest time.Time
	for i, d := range src.docs {
		if d.list == nil {
			return time.Time{}
		}
		if i == 0 || d.fetched.Before(oldest) {
			oldest = d.fetched
		}
	}
	return oldest
}

// run refreshes the source until ctx ends, telling Options.Changed of
// every change.
func (src *Source) run(ctx context.Context) {
	defer close(src.done)
	if src.spec.File != "" && src.o.Watch != nil {
		err := src.o.Watch(ctx, src.spec.File, func() {
			select {
			case src.trigger <- struct{}{}:
			default:
			}
		})
		if err != nil {
			src.log.Warn("list source: not watching the file; it is re-read every refresh", "file", src.spec.File, "refresh", src.spec.Refresh, "error", err)
		}
	}
	for {
		t := time.NewTimer(src.nextDelay(rand.Float64()))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-src.trigger:
			t.Stop()
		}
		if src.refresh(ctx, false) && ctx.Err() == nil && src.o.Changed != nil {
			src.o.Changed(src.spec.Name)
		}
	}
}
