package main

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/realipd/realipd/plugins/sdk"
)

func TestParseTable(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		lookup  map[string]entry
		wantErr string
	}{
		{
			name: "header, comments, asn forms",
			in:   "# c\nnetwork,country,asn,as_org\n192.0.2.0/24,de,AS3320,Example\n2001:db8::/32,FR,64500\n203.0.113.9,us,,\n",
			lookup: map[string]entry{
				"192.0.2.1":   {Country: "DE", ASN: 3320, Org: "Example"},
				"2001:db8::9": {Country: "FR", ASN: 64500},
				"203.0.113.9": {Country: "US"},
			},
		},
		{
			name:   "longest prefix wins",
			in:     "10.0.0.0/8,AA,1\n10.1.0.0/16,BB,2\n",
			lookup: map[string]entry{"10.1.2.3": {Country: "BB", ASN: 2}, "10.2.0.1": {Country: "AA", ASN: 1}, "::ffff:10.1.0.1": {Country: "BB", ASN: 2}},
		},
		{name: "bad country", in: "10.0.0.0/8,USA,1\n", wantErr: "line 1: country"},
		{name: "bad network", in: "ok,US\n10.0.0.0/33,US\n", wantErr: "line 1: network"},
		{name: "bad asn", in: "10.0.0.0/8,US,ASx\n", wantErr: "asn"},
		{name: "too many fields", in: "10.0.0.0/8,US,1,org,extra\n", wantErr: "5 fields"},
		{name: "one field", in: "10.0.0.0/8\n", wantErr: "1 fields"},
		{name: "bad quoting", in: "10.0.0.0/8,\"US\n", wantErr: "table"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, err := parseTable(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for ip, want := range tt.lookup {
				got, ok := tab.lookup(netip.MustParseAddr(ip))
				if !ok || got != want {
					t.Errorf("lookup(%s) = %+v, %v; want %+v", ip, got, ok, want)
				}
			}
		})
	}
}

func TestShippedTable(t *testing.T) {
	tab := mustParseTable(defaultTable)
	if e, ok := tab.lookup(netip.MustParseAddr("2001:4860:4860::8888")); !ok || e.Country != "US" || e.ASN != 15169 {
		t.Errorf("shipped table: 2001:4860:4860::8888 = %+v, %v", e, ok)
	}
}

func TestConfigure(t *testing.T) {
	tests := []struct {
		name    string
		config  map[string]any
		wantErr string
	}{
		{name: "defaults"},
		{name: "custom headers", config: map[string]any{"country_header": "X-Country", "asn_header": "x-asn"}},
		{name: "empty header", config: map[string]any{"asn_header": ""}, wantErr: "not a valid HTTP header name"},
		{name: "bad unknown", config: map[string]any{"unknown_country": "unknown"}, wantErr: "two-letter"},
		{name: "missing table", config: map[string]any{"table": "/nonexistent.csv"}, wantErr: "no such file"},
		{name: "negative ttl", config: map[string]any{"cache_ttl": "-1s"}, wantErr: "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := sdk.NewConfig("geo", tt.config)
			if err != nil {
				t.Fatal(err)
			}
			g := &geotag{}
			err = g.Configure(context.Background(), cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			d, err := g.Decide(context.Background(), &sdk.Request{})
			if err != nil || d.Deny || len(d.Headers) != 2 || d.Headers[0].Value != "ZZ" || d.Headers[1].Value != "AS0" {
				t.Errorf("unresolved client: %+v, %v", d, err)
			}
			for _, h := range d.Headers {
				if h.Name != strings.ToLower(h.Name) {
					t.Errorf("header name %q not lower-case", h.Name)
				}
			}
		})
	}
}

func FuzzParseTable(f *testing.F) {
	f.Add(string(defaultTable))
	f.Add("10.0.0.0/8,AA,1\n10.1.0.0/16,BB,AS2,org\n")
	f.Add("::ffff:1.2.3.4,us\n")
	f.Fuzz(func(t *testing.T, in string) {
		tab, err := parseTable(strings.NewReader(in))
		if err != nil {
			return
		}
		for p, e := range tab.m {
			if p != p.Masked() || p.Addr().Is4In6() || len(e.Country) != 2 {
				t.Fatalf("unnormalised entry %v %+v", p, e)
			}
			if _, ok := tab.lookup(p.Addr()); !ok {
				t.Fatalf("%v does not match its own address", p)
			}
		}
	})
}
