// Command headerdeny is a realipd policy plugin that denies requests whose
// configured request header contains any of a list of strings. It declares
// that one header as its only input besides the client IP. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/realipd/realipd/plugins/sdk"
)

// config is the plugin's `config` map.
type config struct {
	Header   string       `json:"header"`    // request header to look at; "" denies nothing
	Contains []string     `json:"contains"`  // deny when the header contains any of these
	Status   int          `json:"status"`    // deny status; 0: realipd's deny_status
	Body     string       `json:"body"`      // deny body
	CacheTTL sdk.Duration `json:"cache_ttl"` // how long realipd may reuse a decision
}

const (
	defaultBody     = "denied by headerdeny\n"
	defaultCacheTTL = 5 * time.Second
)

type headerdeny struct {
	cfg config
}

func (p *headerdeny) Configure(_ context.Context, c sdk.Config) error {
	cfg := config{Body: defaultBody, CacheTTL: sdk.Duration{Duration: defaultCacheTTL}}
	if err := c.Decode(&cfg); err != nil {
		return err
	}
	log := sdk.Logger().With("policy", c.PolicyName())
	if cfg.Header == "" {
		if len(cfg.Contains) > 0 {
			return errors.New("contains given without header")
		}
		log.Warn("no header configured: denying nothing")
	} else if !httpguts.ValidHeaderFieldName(cfg.Header) {
		return fmt.Errorf("header %q is not a valid HTTP header name", cfg.Header)
	}
	cfg.Header = strings.ToLower(cfg.Header)
	for i, s := range cfg.Contains {
		if s == "" {
			return fmt.Errorf("contains[%d] is empty: it would match every value", i)
		}
	}
	if cfg.Header != "" && len(cfg.Contains) == 0 {
		log.Warn("contains is empty: denying nothing", "header", cfg.Header)
	}
	if cfg.Status != 0 && (cfg.Status < 400 || cfg.Status > 599) {
		return fmt.Errorf("status %d: want a 4xx or 5xx code", cfg.Status)
	}
	if cfg.CacheTTL.Duration < 0 {
		return errors.New("cache_ttl must not be negative")
	}
	p.cfg = cfg
	return nil
}

// Inputs declares the configured header as the only input besides the
// client IP: realipd sends nothing else and caches per (IP, header value).
func (p *headerdeny) Inputs() sdk.Inputs {
	if p.cfg.Header == "" {
		return sdk.Inputs{}
	}
	return sdk.Inputs{Headers: []string{p.cfg.Header}}
}

// Decide denies when any line of the header contains one of the strings.
// Values are compared byte for byte: they need not be valid UTF-8.
func (p *headerdeny) Decide(_ context.Context, req *sdk.Request) (sdk.Decision, error) {
	ttl := p.cfg.CacheTTL.Duration
	for _, h := range req.Headers {
		if h.Name != p.cfg.Header {
			continue
		}
		for _, s := range p.cfg.Contains {
			if strings.Contains(h.Value, s) {
				return sdk.Decision{
					Deny:   true,
					Status: p.cfg.Status,
					Body:   p.cfg.Body,
					// The configured string, never the client's bytes.
					Metadata: map[string]string{"headerdeny_match": s},
					CacheTTL: ttl,
				}, nil
			}
		}
	}
	return sdk.Decision{CacheTTL: ttl}, nil
}

func main() { sdk.Serve(&headerdeny{}) }
