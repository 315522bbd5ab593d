// Command hostbin is a minimal realipd stand-in for the host's tests: it
// starts the plugin given by -plugin and -sha256, prints the plugin's
// process id (from a decision's metadata) on stdout and waits to be killed.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"github.com/realipd/realipd/plugins"
	"github.com/realipd/realipd/plugins/host"
)

func main() {
	path := flag.String("plugin", "", "plugin binary")
	sum := flag.String("sha256", "", "its sha256")
	flag.Parse()
	h, err := host.New(host.Config{
		Name:   "hostbin",
		Path:   *path,
		SHA256: *sum,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	d, err := h.Decide(context.Background(), &plugins.Request{ClientIP: netip.MustParseAddr("192.0.2.1")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(d.Metadata["pid"])
	select {}
}
