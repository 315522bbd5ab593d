package plugins

import "testing"

func TestValidHeader(t *testing.T) {
	for _, tc := range []struct {
		h    Header
		want bool
	}{
		{Header{"x-geo", "DE"}, true},
		{Header{"x-a!#$%&'*+-.^_`|~9", ""}, true},
		{Header{"", "v"}, false},
		{Header{"X-Geo", "DE"}, false},     // upper case: Envoy refuses it in HTTP/2
		{Header{":path", "/"}, false},      // a pseudo-header
		{Header{"x geo", "v"}, false},      // not a token
		{Header{"x-geo", "a\r\nb"}, false}, // header injection
		{Header{"x-geo", "a\x00"}, false},
		{Header{"x-geo", "\xff\xfe"}, true}, // bytes, not necessarily UTF-8
	} {
		if got := ValidHeader(tc.h); got != tc.want {
			t.Errorf("ValidHeader(%q) = %v, want %v", tc.h, got, tc.want)
		}
	}
}
