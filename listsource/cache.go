package listsource

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// cacheVersion is the version of the cache files' format.
const cacheVersion = 1

// maxCacheBytes bounds a cache file (its list is at most MaxEntries
// prefixes written as text).
const maxCacheBytes = 64 << 20

// cacheEntry is the cache file of one document: its last good list and
// what a conditional request needs.
type cacheEntry struct {
	Version      int       `json:"version"`
	Document     string    `json:"document"` // the document's key (Spec.docKey): a file that is not this document's is ignored
	ETag         string    `json:"etag,omitempty"`
	LastModified string    `json:"last_modified,omitempty"`
	Fetched      time.Time `json:"fetched"` // when the list was last fetched or confirmed (a 304)
	Prefixes     []string  `json:"prefixes"`
}

// cachePath is the cache file of the document with key docKey in dir:
// named by a hash of the key, so that a URL (and what it may hold) is not
// a file name.
func cachePath(dir, docKey string) string {
	sum := sha256.Sum256([]byte(docKey))
	return filepath.Join(dir, "list-"+hex.EncodeToString(sum[:16])+".json")
}

// readCache reads the cache file of a document. It returns an error for a
// file that is missing (fs.ErrNotExist), unreadable, not this document's,
// or whose list is empty or invalid.
func readCache(dir, docKey string) (*cacheEntry, []netip.Prefix, error) {
	path := cachePath(dir, docKey)
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCacheBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("listsource: read cache %s: %w", path, err)
	}
	if len(data) > maxCacheBytes {
		return nil, nil, fmt.Errorf("listsource: cache %s: larger than %d MiB", path, maxCacheBytes>>20)
	}
	var e cacheEntry
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, nil, fmt.Errorf("listsource: cache %s: %w", path, err)
	}
	switch {
	case e.Version != cacheVersion:
		return nil, nil, fmt.Errorf("listsource: cache %s: version %d, want %d", path, e.Version, cacheVersion)
	case e.Document != docKey:
		return nil, nil, fmt.Errorf("listsource: cache %s: holds another document", path)
	case len(e.Prefixes) == 0:
		return nil, nil, fmt.Errorf("listsource: cache %s: empty list", path)
	case len(e.Prefixes) > MaxEntries:
		return nil, nil, fmt.Errorf("listsource: cache %s: more than %d entries", path, MaxEntries)
	}
	ps := make([]netip.Prefix, len(e.Prefixes))
	for i, s := range e.Prefixes {
		if ps[i], err = parseEntry(s); err != nil {
			return nil, nil, fmt.Errorf("listsource: cache %s: entry %d: %w", path, i, err)
		}
	}
	return &e, ps, nil
}

// writeCache writes the cache file of a document atomically: a temporary
// file in dir (mode 0600, synced) renamed over the old one, so that a
// crash leaves the old file or the new one, never half of one. dir is
// created (mode 0700) if missing.
func writeCache(dir string, e *cacheEntry, ps []netip.Prefix) (err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("listsource: cache directory: %w", err)
	}
	e.Version = cacheVersion
	e.Prefixes = make([]string, len(ps))
	for i, p := range ps {
		e.Prefixes[i] = p.String()
	}
	data, err := json.Marshal(e)
	e.Prefixes = nil
	if err != nil {
		return fmt.Errorf("listsource: cache: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".list-*.tmp") // mode 0600
	if err != nil {
		return fmt.Errorf("listsource: cache: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("listsource: cache: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("listsource: cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("listsource: cache: %w", err)
	}
	path := cachePath(dir, e.Document)
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("listsource: cache: %w", err)
	}
	if d, err := os.Open(dir); err == nil { // the rename itself, durable
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// errNoCache is readCache's error when the directory is not set.
var errNoCache = fmt.Errorf("no cache directory (trust.cache_dir): %w", fs.ErrNotExist)

// Cached returns the list a source would start with from the cache in dir
// alone, with no fetch: the union of its documents' cached lists (a file
// source's file is read and parsed). It fails when dir is "" or a
// document has no usable cache file (an error wrapping fs.ErrNotExist
// when it has none at all).
func Cached(dir string, spec Spec) (*List, error) {
	if spec.File != "" {
		data, err := readRegular(spec.File)
		if err != nil {
			return nil, fmt.Errorf("listsource: %s: %w", spec.Name, err)
		}
		ps, err := Parse(spec.format(), data, spec.Filter, MaxEntries)
		if err != nil {
			return nil, fmt.Errorf("listsource: %s: %s: %w", spec.Name, spec.File, err)
		}
		return NewList(ps), nil
	}
	if dir == "" {
		return nil, fmt.Errorf("listsource: %s: %w", spec.Name, errNoCache)
	}
	var all []netip.Prefix
	for _, u := range spec.URLs {
		_, ps, err := readCache(dir, spec.docKey(u))
		if err != nil {
			return nil, fmt.Errorf("listsource: %s: %s: %w", spec.Name, RedactURL(u), err)
		}
		all = append(all, ps...)
	}
	return NewList(all), nil
}
