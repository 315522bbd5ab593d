// Command denylist is a realipd policy plugin that denies client IPs listed
// in a file of addresses and CIDRs, reloading the file when it changes.
// See README.md.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/realipd/realipd/plugins/sdk"
)

// config is the plugin's `config` map.
type config struct {
	List           string       `json:"list"`            // file of IPs/CIDRs; "" denies nothing
	Status         int          `json:"status"`          // deny status; 0: realipd's deny_status
	Body           string       `json:"body"`            // deny body
	DenyUnresolved bool         `json:"deny_unresolved"` // deny when realipd found no client IP
	CacheTTL       sdk.Duration `json:"cache_ttl"`       // how long realipd may reuse a decision
}

const (
	defaultBody     = "denied by denylist\n"
	defaultCacheTTL = 5 * time.Second
)

type denylist struct {
	log  *slog.Logger
	cfg  config
	set  atomic.Pointer[prefixSet]
	path string   // absolute list path, "" when none
	sum  [32]byte // sha256 of the loaded list; only the watcher goroutine writes it after Configure
}

func (d *denylist) Configure(_ context.Context, c sdk.Config) error {
	cfg := config{Body: defaultBody, CacheTTL: sdk.Duration{Duration: defaultCacheTTL}}
	if err := c.Decode(&cfg); err != nil {
		return err
	}
	if cfg.Status != 0 && (cfg.Status < 400 || cfg.Status > 599) {
		return fmt.Errorf("status %d: want a 4xx or 5xx code", cfg.Status)
	}
	if cfg.CacheTTL.Duration < 0 {
		return errors.New("cache_ttl must not be negative")
	}
	d.cfg = cfg
	d.log = sdk.Logger().With("policy", c.PolicyName())
	if cfg.List == "" {
		d.set.Store(newPrefixSet(nil))
		d.log.Warn("no list configured: denying nothing")
		return nil
	}
	path, err := filepath.Abs(cfg.List)
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	d.path = path
	if err := d.load(); err != nil {
		return err
	}
	return d.watch()
}

// load reads the list file and swaps it in, unless its content is the one
// already loaded.
func (d *denylist) load() error {
	data, err := os.ReadFile(d.path)
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	sum := sha256.Sum256(data)
	if sum == d.sum {
		return nil
	}
	ps, err := parseList(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("list %s: %w", d.path, err)
	}
	set := newPrefixSet(ps)
	d.set.Store(set)
	d.sum = sum
	d.log.Info("list loaded", "path", d.path, "entries", set.n)
	return nil
}

// watch reloads the list whenever something changes in its directory:
// editors and config management tools replace files rather than write them
// in place, and Kubernetes swaps a symlink next to them. load skips content
// it already has. A list that fails to parse or disappears is logged and the
// previous one stays in force.
func (d *denylist) watch() error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch list: %w", err)
	}
	if err := w.Add(filepath.Dir(d.path)); err != nil {
		w.Close()
		return fmt.Errorf("watch list: %w", err)
	}
	go func() {
		for {
			select {
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if ev.Has(fsnotify.Chmod) && !ev.Has(fsnotify.Write|fsnotify.Create|fsnotify.Rename|fsnotify.Remove) {
					continue
				}
				if err := d.load(); err != nil {
					if errors.Is(err, os.ErrNotExist) {
						d.log.Warn("list file gone; keeping the last list", "path", d.path)
						continue
					}
					d.log.Error("reload failed; keeping the last list", "error", err)
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				d.log.Error("watching list", "error", err)
			}
		}
	}()
	return nil
}

func (d *denylist) Inputs() sdk.Inputs { return sdk.Inputs{} } // the client IP only

func (d *denylist) Decide(_ context.Context, req *sdk.Request) (sdk.Decision, error) {
	ttl := d.cfg.CacheTTL.Duration
	if !req.ClientIP.IsValid() {
		if d.cfg.DenyUnresolved {
			return d.deny("unresolved", ttl), nil
		}
		return sdk.Decision{CacheTTL: ttl}, nil
	}
	if p, ok := d.set.Load().match(req.ClientIP); ok {
		return d.deny(prefixString(p), ttl), nil
	}
	return sdk.Decision{CacheTTL: ttl}, nil
}

func (d *denylist) deny(match string, ttl time.Duration) sdk.Decision {
	return sdk.Decision{
		Deny:     true,
		Status:   d.cfg.Status,
		Body:     d.cfg.Body,
		Metadata: map[string]string{"denylist_match": match},
		CacheTTL: ttl,
	}
}

// prefixString writes single-host prefixes as plain addresses.
func prefixString(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func main() { sdk.Serve(&denylist{}) }
