package decide

import (
	"strings"
	"testing"
)

// TestCheckClientIPHeader: one rule for the header both doors write the
// client IP to: a header name, lower-cased; never one that frames, routes
// or is hop-by-hop, a pseudo-header, or X-Forwarded-For.
func TestCheckClientIPHeader(t *testing.T) {
	for _, ok := range []string{"x-real-ip", "X-Client-IP", "true-client-ip", "cf-connecting-ip"} {
		if got, err := CheckClientIPHeader(ok); err != nil || got != strings.ToLower(ok) {
			t.Errorf("CheckClientIPHeader(%q) = %q, %v", ok, got, err)
		}
	}
	for _, bad := range []string{"", ":authority", "content-length", "Transfer-Encoding", "host", "connection", "te", "upgrade",
		"keep-alive", "proxy-connection", "trailer", "x-forwarded-for", "X-Forwarded-For", "x real ip", "x-real-ip\r"} {
		if _, err := CheckClientIPHeader(bad); err == nil {
			t.Errorf("CheckClientIPHeader(%q) accepted", bad)
		}
	}
}
