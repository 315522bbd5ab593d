package listsource

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// Set runs the list sources of one configuration at a time: Stage loads
// the sources of a new configuration beside those running, Commit makes
// them the running ones. Create it with NewSet; Close stops it.
type Set struct {
	o      Options
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	active map[string]*Source // by name
	closed bool
}

// NewSet returns a Set with no source.
func NewSet(o Options) *Set {
	ctx, cancel := context.WithCancel(context.Background())
	return &Set{o: o, ctx: ctx, cancel: cancel, active: map[string]*Source{}}
}

// Staged is the sources of a configuration, loaded and not yet running:
// Commit makes them the Set's, and Abort drops them. A Staged that is
// neither can still be read (List): a one-shot command (resolve,
// validate) uses it so.
type Staged struct {
	set     *Set
	sources map[string]*Source
	fresh   []*Source // created by Stage (the others were running)
}

// Stage loads the sources of specs (their names must be unique). A source
// the Set runs with the same Spec is taken as it is; another one is
// created, takes the lists of the running documents it shares (the same
// URL, format and filter), then its cache, then fetches what it still
// lacks or what is older than its Refresh (Source.load). A Required source
// still without a list fails Stage; another one is staged without a list
// (it contributes nothing until a refresh gives it one), with a warning.
// ctx bounds the loading.
func (s *Set) Stage(ctx context.Context, specs []Spec) (*Staged, error) {
	s.mu.Lock()
	active := maps.Clone(s.active)
	s.mu.Unlock()
	st := &Staged{set: s, sources: make(map[string]*Source, len(specs))}
	var errs []error
	for _, spec := range specs {
		if _, dup := st.sources[spec.Name]; dup {
			return nil, fmt.Errorf("listsource: two sources named %q", spec.Name)
		}
		if cur, ok := active[spec.Name]; ok && cur.spec.key() == spec.key() {
			st.sources[spec.Name] = cur
			continue
		}
		src, err := newSource(spec, &s.o)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, name := range slices.Sorted(maps.Keys(active)) {
			src.seed(active[name])
		}
		if err := src.load(ctx); err != nil {
			if spec.Required {
				errs = append(errs, err)
				continue
			}
			src.log.Warn("list source: starting without this list; it is fetched again in the background", "error", err)
		}
		st.sources[spec.Name] = src
		st.fresh = append(st.fresh, src)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return st, nil
}

// List returns the list of the staged source name: nil when there is no
// such source or it has no list.
func (st *Staged) List(name string) *List {
	if src := st.sources[name]; src != nil {
		return src.List()
	}
	return nil
}

// Commit makes the staged sources the Set's: the new ones start refreshing
// in the background, and the running ones not staged stop.
func (st *Staged) Commit() {
	s := st.set
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	old := s.active
	s.active = st.sources
	for _, src := range st.fresh {
		ctx, cancel := context.WithCancel(s.ctx)
		src.cancel = cancel
		s.wg.Go(func() { src.run(ctx) })
	}
	s.mu.Unlock()
	for name, src := range old {
		if st.sources[name] != src && src.cancel != nil {
			src.cancel()
		}
	}
}

// Abort drops the staged sources the Set does not run.
func (st *Staged) Abort() {}

// List returns the list of the running source name: nil when there is no
// such source or it has no list yet.
func (s *Set) List(name string) *List {
	s.mu.Lock()
	src := s.active[name]
	s.mu.Unlock()
	if src == nil {
		return nil
	}
	return src.List()
}

// Sources returns the running sources, by name.
func (s *Set) Sources() []*Source {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Source, 0, len(s.active))
	for _, name := range slices.Sorted(maps.Keys(s.active)) {
		out = append(out, s.active[name])
	}
	return out
}

// Close stops every source and waits for their goroutines.
func (s *Set) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// Status is what a source shows (/config_dump, metrics).
type Status struct {
	Name     string   `json:"name"`
	Preset   string   `json:"preset,omitempty"`
	File     string   `json:"file,omitempty"`
	URLs     []string `json:"urls,omitempty"` // redacted (RedactURL)
	Format   Format   `json:"format"`
	Required bool     `json:"required"`
	Refresh  string   `json:"refresh"`
	// Entries is the number of prefixes of the list in force, merged; 0
	// while it has none.
	Entries int `json:"entries"`
	// LastSuccess is when every document was last fetched or confirmed
	// (the oldest of them); zero while one has no list.
	LastSuccess time.Time `json:"last_success,omitzero"`
	// AgeSeconds is how long ago that was.
	AgeSeconds float64     `json:"age_seconds"`
	Documents  []DocStatus `json:"documents"`
	// FetchErrors and Refused count, by reason, the answers that could not
	// be had and those refused, since the source started.
	FetchErrors map[string]uint64 `json:"fetch_errors"`
	Refused     map[string]uint64 `json:"refused"`
}

// DocStatus is one document's part of a Status.
type DocStatus struct {
	Where        string    `json:"where"` // the file, or the URL redacted
	Entries      int       `json:"entries"`
	ETag         string    `json:"etag,omitempty"`
	LastModified string    `json:"last_modified,omitempty"`
	Fetched      time.Time `json:"fetched,omitzero"` // last fetched or confirmed
	Changed      time.Time `json:"changed,omitzero"` // when its list last changed
	FromCache    bool      `json:"from_cache,omitempty"`
	LastError    string    `json:"last_error,omitempty"`   // of the last attempt, "" when it succeeded
	LastRefusal  string    `json:"last_refusal,omitempty"` // the reason and detail of the last refusal
	RefusedAt    time.Time `json:"refused_at,omitzero"`
}

// Status returns the source's status.
func (src *Source) Status() Status {
	src.mu.Lock()
	defer src.mu.Unlock()
	st := Status{
		Name: src.spec.Name, Preset: src.spec.Preset, File: src.spec.File, Format: src.spec.format(),
		Required: src.spec.Required, Refresh: src.spec.Refresh.String(), Entries: src.List().Len(),
		FetchErrors: map[string]uint64{}, Refused: map[string]uint64{},
	}
	for _, u := range src.spec.URLs {
		st.URLs = append(st.URLs, RedactURL(u))
	}
	for _, d := range src.docs {
		st.Documents = append(st.Documents, DocStatus{
			Where: d.show(), Entries: len(d.list), ETag: d.etag, LastModified: d.lastModified, Fetched: d.fetched, Changed: d.changed,
			FromCache: d.fromCache, LastError: d.lastError, LastRefusal: d.lastRefusal, RefusedAt: d.lastRefusalAt,
		})
		for k, v := range d.fetchErrors {
			st.FetchErrors[k] += v
		}
		for k, v := range d.refusals {
			st.Refused[k] += v
		}
	}
	if oldest := src.oldestLocked(); !oldest.IsZero() {
		st.LastSuccess = oldest
		st.AgeSeconds = src.o.now().Sub(oldest).Seconds()
	}
	return st
}
