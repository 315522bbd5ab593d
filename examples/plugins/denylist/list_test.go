package main

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/realipd/realipd/plugins/sdk"
)

func TestParseList(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr string
	}{
		{name: "empty", in: ""},
		{name: "comments and blanks", in: "# x\n\n  \n10.0.0.0/8 # private\n", want: []string{"10.0.0.0/8"}},
		{name: "bare addresses", in: "192.0.2.1\n2001:db8::1\n", want: []string{"192.0.2.1/32", "2001:db8::1/128"}},
		{name: "host bits masked", in: "10.1.2.3/8\n", want: []string{"10.0.0.0/8"}},
		{name: "mapped", in: "::ffff:192.0.2.1\n::ffff:192.0.2.0/120\n", want: []string{"192.0.2.1/32", "192.0.2.0/24"}},
		{name: "crlf", in: "192.0.2.1\r\n", want: []string{"192.0.2.1/32"}},
		{name: "bad line", in: "192.0.2.1\nnope\n", wantErr: "line 2"},
		{name: "bad prefix", in: "10.0.0.0/33\n", wantErr: "line 1"},
		{name: "zone", in: "fe80::1%eth0\n", wantErr: "zones"},
		{name: "short mapped prefix", in: "::ffff:0:0/90\n", wantErr: "shorter than /96"},
		{name: "line too long", in: strings.Repeat("1", maxLineBytes+1) + "\n", wantErr: "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseList(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var s []string
			for _, p := range got {
				s = append(s, p.String())
			}
			if strings.Join(s, ",") != strings.Join(tt.want, ",") {
				t.Errorf("got %v, want %v", s, tt.want)
			}
		})
	}
}

func TestPrefixSetMatch(t *testing.T) {
	ps, err := parseList(strings.NewReader("10.0.0.0/8\n10.1.0.0/16\n2001:db8::/32\n192.0.2.7\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := newPrefixSet(ps)
	tests := []struct{ ip, want string }{
		{"10.1.2.3", "10.1.0.0/16"},
		{"10.2.0.1", "10.0.0.0/8"},
		{"11.0.0.1", ""},
		{"192.0.2.7", "192.0.2.7/32"},
		{"192.0.2.8", ""},
		{"::ffff:10.1.0.1", "10.1.0.0/16"},
		{"2001:db8::1", "2001:db8::/32"},
		{"fe80::1%eth0", ""},
		{"2001:db8::1%eth0", "2001:db8::/32"},
	}
	for _, tt := range tests {
		p, ok := s.match(netip.MustParseAddr(tt.ip))
		got := ""
		if ok {
			got = p.String()
		}
		if got != tt.want {
			t.Errorf("match(%s) = %q, want %q", tt.ip, got, tt.want)
		}
	}
	if _, ok := s.match(netip.Addr{}); ok {
		t.Error("invalid address matched")
	}
}

func TestDecide(t *testing.T) {
	list := filepath.Join(t.TempDir(), "deny.txt")
	if err := os.WriteFile(list, []byte("198.51.100.0/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		config   map[string]any
		ip       string
		wantDeny bool
		wantErr  string
	}{
		{name: "listed", config: map[string]any{"list": list}, ip: "198.51.100.1", wantDeny: true},
		{name: "not listed", config: map[string]any{"list": list}, ip: "192.0.2.1"},
		{name: "no config", ip: "198.51.100.1"},
		{name: "unresolved allowed", config: map[string]any{"list": list}},
		{name: "unresolved denied", config: map[string]any{"deny_unresolved": true}, wantDeny: true},
		{name: "bad status", config: map[string]any{"status": 302}, wantErr: "status 302"},
		{name: "bad ttl", config: map[string]any{"cache_ttl": "soon"}, wantErr: "invalid duration"},
		{name: "unknown key", config: map[string]any{"lists": list}, wantErr: "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := sdk.NewConfig("deny", tt.config)
			if err != nil {
				t.Fatal(err)
			}
			d := &denylist{}
			err = d.Configure(context.Background(), cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Configure err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			req := &sdk.Request{}
			if tt.ip != "" {
				req.ClientIP = netip.MustParseAddr(tt.ip)
			}
			dec, err := d.Decide(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if dec.Deny != tt.wantDeny || dec.CacheTTL != defaultCacheTTL {
				t.Errorf("decision %+v, want deny=%v ttl=%v", dec, tt.wantDeny, defaultCacheTTL)
			}
		})
	}
}

func FuzzParseList(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8\n", "192.0.2.1 # x\n2001:db8::/32\n", "::ffff:1.2.3.4/128", "fe80::1%x", "#\n\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		ps, err := parseList(strings.NewReader(in))
		if err != nil {
			return
		}
		s := newPrefixSet(ps)
		for _, p := range ps {
			if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
				t.Fatalf("parsed an unnormalised prefix %v", p)
			}
			if _, ok := s.match(p.Addr()); !ok {
				t.Fatalf("%v does not match its own address", p)
			}
		}
	})
}
