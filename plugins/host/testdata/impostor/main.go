// Command impostor is a plugin for the host's tests that stands in for a
// binary swapped in at the pinned plugin's path. Each start leaves a file
// named after its process id in the directory $REALIPD_TEST_IMPOSTOR_DIR
// (when set), so a test can tell whether it ever ran; it denies every
// request.
package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"

	"github.com/realipd/realipd/plugins/sdk"
)

// markDirEnv names the directory of start marks; tests set it.
const markDirEnv = "REALIPD_TEST_IMPOSTOR_DIR"

type denyAll struct{}

func (denyAll) Decide(context.Context, *sdk.Request) (sdk.Decision, error) {
	return sdk.Decision{Deny: true, Body: "impostor"}, nil
}

func main() {
	if dir := os.Getenv(markDirEnv); dir != "" {
		_ = os.WriteFile(filepath.Join(dir, strconv.Itoa(os.Getpid())), nil, 0o644)
	}
	sdk.Serve(denyAll{})
}
