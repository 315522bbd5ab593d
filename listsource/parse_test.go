package listsource

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
)

func sample(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func strs(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// TestParseSamples parses a sample document of every format, written for
// these tests in each provider's structure.
func TestParseSamples(t *testing.T) {
	cases := []struct {
		name   string
		file   string
		format Format
		filter Filter
		count  int
		has    []string
		hasNot []string
	}{
		{"cloudflare v4", "cloudflare-ips-v4.txt", FormatText, Filter{}, 15, []string{"173.245.48.0/20", "131.0.72.0/22"}, nil},
		{"cloudflare v6, no final newline", "cloudflare-ips-v6.txt", FormatText, Filter{}, 7, []string{"2400:cb00::/32", "2c0f:f248::/32"}, nil},
		{"firehol netset", "firehol_level1.netset", FormatText, Filter{}, 9, []string{"0.0.0.0/8", "224.0.0.0/3"}, nil},
		{"spamhaus drop, CR LF, ; comments", "spamhaus-drop.txt", FormatText, Filter{}, 5, []string{"1.10.16.0/20", "5.134.128.0/19"}, nil},
		{"aws cloudfront", "aws-ip-ranges.json", FormatAWS, Filter{Service: "CLOUDFRONT"}, 4,
			[]string{"13.32.0.0/15", "52.84.0.0/15", "120.52.22.96/27", "2600:9000::/28"}, []string{"130.176.0.0/18", "3.2.34.0/26"}},
		{"aws service case-insensitive", "aws-ip-ranges.json", FormatAWS, Filter{Service: "cloudfront_origin_facing"}, 1, []string{"130.176.0.0/18"}, nil},
		{"aws region", "aws-ip-ranges.json", FormatAWS, Filter{Service: "EC2", Region: "us-east-1"}, 2, []string{"18.34.0.0/19", "2600:1f18::/33"}, nil},
		{"aws everything", "aws-ip-ranges.json", FormatAWS, Filter{}, 13, nil, nil},
		{"google cloud", "google-cloud.json", FormatGoogle, Filter{}, 7, []string{"34.1.208.0/20", "2600:1900:4030::/44"}, nil},
		{"google cloud scope", "google-cloud.json", FormatGoogle, Filter{Region: "asia-east1"}, 3, []string{"34.80.0.0/15", "35.185.128.0/19", "2600:1900:4030::/44"}, []string{"34.35.0.0/16"}},
		{"goog", "goog.json", FormatGoogle, Filter{}, 9, []string{"35.191.0.0/16", "2001:4860::/32"}, nil},
		{"fastly", "fastly-public-ip-list.json", FormatFastly, Filter{}, 21, []string{"151.101.0.0/16", "2a04:4e42::/32"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := Parse(tc.format, sample(t, tc.file), tc.filter, 0)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			got := strs(ps)
			if len(got) != tc.count {
				t.Errorf("%d entries, want %d: %v", len(got), tc.count, got)
			}
			for _, s := range tc.has {
				if !slices.Contains(got, s) {
					t.Errorf("%s missing from %v", s, got)
				}
			}
			for _, s := range tc.hasNot {
				if slices.Contains(got, s) {
					t.Errorf("%s should have been filtered out of %v", s, got)
				}
			}
		})
	}
	// The preset's wrappers parse the same way.
	if ps, err := ParseText(sample(t, "cloudflare-ips-v4.txt")); err != nil || len(ps) != 15 {
		t.Errorf("ParseText: %d, %v", len(ps), err)
	}
	if ps, err := ParseAWS(sample(t, "aws-ip-ranges.json"), Filter{Service: "CLOUDFRONT"}); err != nil || len(ps) != 4 {
		t.Errorf("ParseAWS: %d, %v", len(ps), err)
	}
	if ps, err := ParseGoogle(sample(t, "goog.json"), Filter{}); err != nil || len(ps) != 9 {
		t.Errorf("ParseGoogle: %d, %v", len(ps), err)
	}
	if ps, err := ParseFastly(sample(t, "fastly-public-ip-list.json")); err != nil || len(ps) != 21 {
		t.Errorf("ParseFastly: %d, %v", len(ps), err)
	}
}

// TestParseRefuses: what cannot replace a list, with its reason.
func TestParseRefuses(t *testing.T) {
	big := strings.Repeat("10.0.0.0/8\n", MaxBytes/len("10.0.0.0/8\n")+1)
	many := strings.Repeat("10.0.0.1\n", 11)
	cases := []struct {
		name   string
		format Format
		filter Filter
		data   string
		reason string
		detail string
	}{
		{"html page", FormatText, Filter{}, "<!DOCTYPE html>\n<html><body>Just a moment...</body></html>\n", ReasonParse, "line 1"},
		{"one bad line", FormatText, Filter{}, "10.0.0.0/8\n10.0.0.0/33\n", ReasonParse, "line 2"},
		{"host bits", FormatText, Filter{}, "10.0.0.1/8\n", ReasonParse, "bits set past /8"},
		{"zone", FormatText, Filter{}, "fe80::1%eth0\n", ReasonParse, "not a CIDR or an IP"},
		{"two on a line", FormatText, Filter{}, "10.0.0.0/8 10.1.0.0/16\n", ReasonParse, "line 1"},
		{"empty", FormatText, Filter{}, "", ReasonEmpty, ""},
		{"comments only", FormatText, Filter{}, "# nothing\n; here\n\n", ReasonEmpty, ""},
		{"not utf-8", FormatText, Filter{}, "10.0.0.0/8\n# caf\xe9\n", ReasonNotUTF8, ""},
		{"too large", FormatText, Filter{}, big, ReasonTooLarge, ""},
		{"aws not json", FormatAWS, Filter{}, "10.0.0.0/8\n", ReasonParse, "not an AWS"},
		{"aws other json", FormatAWS, Filter{}, `{"addresses": ["10.0.0.0/8"]}`, ReasonParse, "no prefixes"},
		{"aws filtered to nothing", FormatAWS, Filter{Service: "NOPE"}, string(sample(t, "aws-ip-ranges.json")), ReasonEmpty, ""},
		{"aws bad prefix", FormatAWS, Filter{}, `{"prefixes": [{"ip_prefix": "10.0.0.0/40", "service": "X"}]}`, ReasonParse, "prefixes[0]"},
		{"aws entry without prefix", FormatAWS, Filter{}, `{"prefixes": [{"service": "X"}]}`, ReasonParse, "no ip_prefix"},
		{"aws trailing data", FormatAWS, Filter{}, `{"prefixes": []} {}`, ReasonParse, "data after"},
		{"google both", FormatGoogle, Filter{}, `{"prefixes": [{"ipv4Prefix": "10.0.0.0/8", "ipv6Prefix": "::/0"}]}`, ReasonParse, "one of"},
		{"google truncated", FormatGoogle, Filter{}, `{"prefixes": [{"ipv4Prefix": "10.0.0.0/8"`, ReasonParse, "not a Google"},
		{"fastly empty", FormatFastly, Filter{}, `{"addresses": [], "ipv6_addresses": []}`, ReasonEmpty, ""},
		{"fastly not a list", FormatFastly, Filter{}, `{"addresses": "10.0.0.0/8"}`, ReasonParse, "not a Fastly"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := Parse(tc.format, []byte(tc.data), tc.filter, 0)
			if err == nil {
				t.Fatalf("accepted: %v", strs(ps))
			}
			if got := RefusalReason(err); got != tc.reason {
				t.Errorf("reason %q (%v), want %q", got, err, tc.reason)
			}
			if !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("error %q does not say %q", err, tc.detail)
			}
		})
	}
	if _, err := Parse(FormatText, []byte(many), Filter{}, 10); RefusalReason(err) != ReasonTooMany {
		t.Errorf("11 entries with a bound of 10: %v", err)
	}
	if _, err := Parse(FormatText, []byte(many), Filter{}, 11); err != nil {
		t.Errorf("11 entries with a bound of 11: %v", err)
	}
}

// checkEntries fails unless every prefix is valid, masked and has no zone
// (what a consumer may assume of a parser's answer).
func checkEntries(t *testing.T, ps []netip.Prefix) {
	t.Helper()
	for _, p := range ps {
		if !p.IsValid() || p != p.Masked() || p.Addr().Zone() != "" {
			t.Fatalf("invalid entry %v", p)
		}
	}
}

func FuzzParseText(f *testing.F) {
	for _, name := range []string{"cloudflare-ips-v4.txt", "cloudflare-ips-v6.txt", "firehol_level1.netset", "spamhaus-drop.txt"} {
		f.Add(sample(f, name))
	}
	f.Add([]byte("10.0.0.1/8\n::ffff:1.2.3.4\n# x\n;y\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := ParseText(data)
		if err != nil {
			if RefusalReason(err) == "" {
				t.Fatalf("an error without a reason: %v", err)
			}
			return
		}
		if len(ps) == 0 {
			t.Fatal("no error and no entry")
		}
		checkEntries(t, ps)
		checkEntries(t, Merge(ps))
	})
}

func FuzzParseJSON(f *testing.F) {
	for _, s := range []struct {
		format Format
		file   string
	}{{FormatAWS, "aws-ip-ranges.json"}, {FormatGoogle, "google-cloud.json"}, {FormatGoogle, "goog.json"}, {FormatFastly, "fastly-public-ip-list.json"}} {
		for i, fm := range Formats() {
			if fm == s.format {
				f.Add(uint8(i), sample(f, s.file), "")
			}
		}
	}
	f.Add(uint8(1), []byte(`{"prefixes":[{"ip_prefix":"10.0.0.0/8","service":"X"}]}`), "x")
	f.Fuzz(func(t *testing.T, format uint8, data []byte, service string) {
		fm := Formats()[int(format)%len(Formats())]
		ps, err := Parse(fm, data, Filter{Service: service}, 0)
		if err != nil {
			if RefusalReason(err) == "" {
				t.Fatalf("an error without a reason: %v", err)
			}
			return
		}
		if len(ps) == 0 {
			t.Fatal("no error and no entry")
		}
		checkEntries(t, ps)
	})
}
