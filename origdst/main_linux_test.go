//go:build linux

package origdst

import (
	"os"
	"testing"

	"github.com/realipd/realipd/internal/netnstest"
)

// TestMain lets the namespace tests run this binary as a listener of
// another user (netnstest.ListenAs).
func TestMain(m *testing.M) {
	netnstest.RunChild()
	os.Exit(m.Run())
}
