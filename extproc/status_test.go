package extproc

import (
	"testing"

	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/realipd/realipd/plugins"
)

// TestValidDenyStatusIsEnvoys: the statuses a deny may carry are exactly
// Envoy's type.v3.StatusCode values of at least 200, which is what an
// ImmediateResponse accepts; the native listener's HTTP mode uses the same
// list, so both paths answer a deny alike.
func TestValidDenyStatusIsEnvoys(t *testing.T) {
	for code := -1; code <= 1000; code++ {
		_, defined := typev3.StatusCode_name[int32(code)]
		want := defined && code >= 200
		if got := plugins.ValidDenyStatus(code); got != want {
			t.Errorf("ValidDenyStatus(%d) = %v, Envoy defines it: %v", code, got, defined)
		}
	}
}
