package main

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/realipd/realipd/plugins/sdk"
)

func configure(t *testing.T, m map[string]any) (*headerdeny, error) {
	t.Helper()
	cfg, err := sdk.NewConfig("hd", m)
	if err != nil {
		t.Fatal(err)
	}
	p := &headerdeny{}
	return p, p.Configure(context.Background(), cfg)
}

func TestConfigure(t *testing.T) {
	tests := []struct {
		name    string
		config  map[string]any
		inputs  []string
		wantErr string
	}{
		{name: "no config", inputs: nil},
		{name: "header lower-cased", config: map[string]any{"header": "User-Agent", "contains": []string{"evil"}}, inputs: []string{"user-agent"}},
		{name: "header without strings", config: map[string]any{"header": "x-test"}, inputs: []string{"x-test"}},
		{name: "strings without header", config: map[string]any{"contains": []string{"evil"}}, wantErr: "without header"},
		{name: "bad header name", config: map[string]any{"header": "x test"}, wantErr: "not a valid HTTP header name"},
		{name: "empty string", config: map[string]any{"header": "x-test", "contains": []string{"a", ""}}, wantErr: "contains[1] is empty"},
		{name: "bad status", config: map[string]any{"status": 302}, wantErr: "status 302"},
		{name: "negative ttl", config: map[string]any{"cache_ttl": "-1s"}, wantErr: "negative"},
		{name: "unknown key", config: map[string]any{"headers": "x-test"}, wantErr: "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := configure(t, tt.config)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Configure err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			in := p.Inputs()
			if in.All || in.Peer || in.OriginalDst || in.Resolution || in.Listener || in.Route || !slices.Equal(in.Headers, tt.inputs) {
				t.Errorf("Inputs = %+v, want only headers %q", in, tt.inputs)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	p, err := configure(t, map[string]any{"header": "X-Test", "contains": []string{"evil", "\u00e9"}, "status": 429, "body": "no\n"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		headers   []sdk.Header
		wantMatch string // "" allows
	}{
		{name: "no header"},
		{name: "other header", headers: []sdk.Header{{Name: "user-agent", Value: "evil"}}},
		{name: "no match", headers: []sdk.Header{{Name: "x-test", Value: "good"}}},
		{name: "match", headers: []sdk.Header{{Name: "x-test", Value: "very evil"}}, wantMatch: "evil"},
		{name: "case-sensitive", headers: []sdk.Header{{Name: "x-test", Value: "EVIL"}}},
		{name: "not valid UTF-8", headers: []sdk.Header{{Name: "x-test", Value: "evil\xff"}}, wantMatch: "evil"},
		{name: "UTF-8 string, bytes compared", headers: []sdk.Header{{Name: "x-test", Value: "caf\xc3\xa9"}}, wantMatch: "\u00e9"},
		{name: "half a character", headers: []sdk.Header{{Name: "x-test", Value: "caf\xc3"}}},
		{name: "any line", headers: []sdk.Header{{Name: "x-test", Value: "ok"}, {Name: "x-test", Value: "evil"}}, wantMatch: "evil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := p.Decide(context.Background(), &sdk.Request{Headers: tt.headers})
			if err != nil {
				t.Fatal(err)
			}
			if d.CacheTTL != defaultCacheTTL {
				t.Errorf("CacheTTL = %v, want %v", d.CacheTTL, defaultCacheTTL)
			}
			if tt.wantMatch == "" {
				if d.Deny || d.Metadata != nil {
					t.Errorf("decision %+v, want allow", d)
				}
				return
			}
			if !d.Deny || d.Status != 429 || d.Body != "no\n" || d.Metadata["headerdeny_match"] != tt.wantMatch {
				t.Errorf("decision %+v, want deny matching %q", d, tt.wantMatch)
			}
		})
	}
}

func TestNoConfigDeniesNothing(t *testing.T) {
	p, err := configure(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := p.Decide(context.Background(), &sdk.Request{Headers: []sdk.Header{{Name: "", Value: "evil"}}})
	if err != nil || d.Deny {
		t.Errorf("decision %+v, %v; want allow", d, err)
	}
}
