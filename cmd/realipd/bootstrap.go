package main

import (
	"context"
	"fmt"
	"io"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/xds"
)

func runBootstrap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bootstrap", "bootstrap [--config FILE] [--node-id ID] [--node-cluster NAME] [--admin-address IP:PORT]", `
Print the Envoy bootstrap (YAML) for realipd's xDS control plane: Envoy
takes its listeners and clusters over ADS from xds.listen (a pipe for
unix://). Without --config the defaults are used, and the output is
envoy/envoy-ads.yaml. The bootstrap is checked against Envoy's Bootstrap
proto before it is printed.

Example:
  realipd bootstrap --config /etc/realipd/realipd.yaml > /etc/envoy/bootstrap.yaml`)
	path := fs.String("config", "", "configuration `FILE` whose xds.listen Envoy dials (default: the built-in defaults)")
	nodeID := fs.String("node-id", xds.DefaultNodeID, "the Envoy node `ID`")
	nodeCluster := fs.String("node-cluster", xds.DefaultNodeCluster, "the Envoy node's `CLUSTER`")
	admin := fs.String("admin-address", xds.DefaultAdminAddress, "Envoy's own admin listener, `IP:PORT`")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	cfg := config.Default()
	if *path != "" {
		loaded, err := config.Load(*path)
		if err != nil {
			return failure(err)
		}
		cfg = *loaded
	}
	out, err := xds.Bootstrap(xds.BootstrapOptions{
		XDSAddress:   cfg.XDS.Listen,
		NodeID:       *nodeID,
		NodeCluster:  *nodeCluster,
		AdminAddress: *admin,
	})
	if err != nil {
		return usageError("bootstrap: %v", err)
	}
	if _, err := stdout.Write(out); err != nil {
		return failure(fmt.Errorf("bootstrap: write: %w", err))
	}
	return nil
}
