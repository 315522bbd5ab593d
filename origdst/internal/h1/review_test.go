package h1

import (
	"strings"
	"testing"
	"time"
)

// TestReviewIncrementalParseQuadratic: the HTTP mode parses a request head
// again from its first byte each time more of it arrives (readHead calls
// ParseRequest on the whole buffer after every read), and ParseRequest
// scans all of it (bytes.Index for the end, checkPartial byte by byte): a
// head sent in small TCP segments costs time quadratic in its length. A
// 60 KiB head sent a byte per segment within the 30 s head timeout costs
// about 60 Ki * 30 Ki byte checks (~2e9) per connection. Parsing n bytes
// fed a byte at a time should cost O(n): four times the bytes, about four
// times the time.
func TestReviewIncrementalParseQuadratic(t *testing.T) {
	cost := func(n int) time.Duration {
		head := []byte("GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + strings.Repeat("a", n) + "\r\n\r\n")
		var r Request
		start := time.Now()
		for i := 1; i < len(head); i++ {
			if err := ParseRequest(head[:i], &r); err != ErrIncomplete {
				t.Fatalf("%d: %v", i, err)
			}
		}
		return time.Since(start)
	}
	best := func(n int) time.Duration { return min(cost(n), cost(n), cost(n)) }
	small, large := best(4<<10), best(16<<10)
	if ratio := float64(large) / float64(small); ratio > 8 {
		t.Errorf("4 KiB head fed a byte at a time: %v; 16 KiB: %v (%.1f times): quadratic", small, large, ratio)
	}
}
