// Command geotag is a realipd policy plugin that labels requests with the
// client IP's country and autonomous system from a CSV table, as request
// headers and dynamic metadata. It never denies. See README.md.
package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/realipd/realipd/plugins/sdk"
)

//go:embed table.csv
var defaultTable []byte

// config is the plugin's `config` map.
type config struct {
	Table          string       `json:"table"`           // CSV file; "" uses the shipped table.csv
	CountryHeader  string       `json:"country_header"`  // request header for the country code
	ASNHeader      string       `json:"asn_header"`      // request header for "AS<number>"
	UnknownCountry string       `json:"unknown_country"` // country of IPs not in the table
	CacheTTL       sdk.Duration `json:"cache_ttl"`       // how long realipd may reuse a decision
}

func defaults() config {
	return config{
		CountryHeader:  "x-client-country",
		ASNHeader:      "x-client-asn",
		UnknownCountry: "ZZ",
		CacheTTL:       sdk.Duration{Duration: time.Minute},
	}
}

type geotag struct {
	cfg   config
	table *table
}

func (g *geotag) Configure(_ context.Context, c sdk.Config) error {
	cfg := defaults()
	if err := c.Decode(&cfg); err != nil {
		return err
	}
	for _, h := range []string{cfg.CountryHeader, cfg.ASNHeader} {
		if !httpguts.ValidHeaderFieldName(h) {
			return fmt.Errorf("header name %q is not a valid HTTP header name", h)
		}
	}
	cfg.UnknownCountry = strings.ToUpper(cfg.UnknownCountry)
	if len(cfg.UnknownCountry) != 2 || !isAlpha(cfg.UnknownCountry) {
		return fmt.Errorf("unknown_country %q: want a two-letter code", cfg.UnknownCountry)
	}
	cfg.CountryHeader = strings.ToLower(cfg.CountryHeader)
	cfg.ASNHeader = strings.ToLower(cfg.ASNHeader)
	if cfg.CacheTTL.Duration < 0 {
		return errors.New("cache_ttl must not be negative")
	}
	log := sdk.Logger().With("policy", c.PolicyName())
	if cfg.Table == "" {
		g.table = mustParseTable(defaultTable)
		log.Info("using the shipped illustrative table", "entries", len(g.table.m))
	} else {
		f, err := os.Open(cfg.Table)
		if err != nil {
			return err
		}
		defer f.Close()
		t, err := parseTable(f)
		if err != nil {
			return fmt.Errorf("%s: %w", cfg.Table, err)
		}
		g.table = t
		log.Info("table loaded", "path", cfg.Table, "entries", len(t.m))
	}
	g.cfg = cfg
	return nil
}

func (g *geotag) Inputs() sdk.Inputs { return sdk.Inputs{} } // the client IP only

// Decide always allows. It sets both headers on every request, also for
// unknown IPs, so that a client-sent value never reaches the upstream.
func (g *geotag) Decide(_ context.Context, req *sdk.Request) (sdk.Decision, error) {
	e, ok := g.table.lookup(req.ClientIP)
	if !ok {
		e = entry{Country: g.cfg.UnknownCountry}
	}
	asn := "AS" + strconv.FormatUint(uint64(e.ASN), 10)
	md := map[string]string{"geo_country": e.Country, "geo_asn": asn}
	if e.Org != "" {
		md["geo_org"] = e.Org
	}
	return sdk.Decision{
		Headers: []sdk.Header{
			{Name: g.cfg.CountryHeader, Value: e.Country},
			{Name: g.cfg.ASNHeader, Value: asn},
		},
		Metadata: md,
		CacheTTL: g.cfg.CacheTTL.Duration,
	}, nil
}

func main() { sdk.Serve(&geotag{}) }
