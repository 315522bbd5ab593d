package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/realipd/realipd/internal/config"
	"github.com/realipd/realipd/xds"
)

// bootstrapFlags are the flags of bootstrap.
type bootstrapFlags struct{ config, nodeID, nodeCluster, admin *string }

// bootstrapFlagSet builds bootstrap's FlagSet without running it.
func bootstrapFlagSet() (*flag.FlagSet, bootstrapFlags) {
	fs := newFlagSet("bootstrap", "bootstrap [--config FILE] [--node-id ID] [--node-cluster NAME] [--admin-address IP:PORT]", `
Print the Envoy bootstrap (YAML) for realipd's xDS control plane: Envoy
takes its listeners and clusters over ADS from xds.listen (a pipe for
unix://). Without --config the defaults are used, and the output is
envoy/envoy-ads.yaml. The bootstrap is checked against Envoy's Bootstrap
proto before it is printed.`, `
  realipd bootstrap > envoy-ads.yaml
  realipd bootstrap --config /etc/realipd/realipd.yaml > /etc/envoy/bootstrap.yaml
  realipd bootstrap --node-id payments-1 --node-cluster payments --admin-address 127.0.0.1:9901`)
	var f bootstrapFlags
	f.config = fs.String("config", "", "configuration `FILE` whose xds.listen Envoy dials (default: the built-in defaults)")
	f.nodeID = fs.String("node-id", xds.DefaultNodeID, "the Envoy node `ID`")
	f.nodeCluster = fs.String("node-cluster", xds.DefaultNodeCluster, "the Envoy node's `CLUSTER`")
	f.admin = fs.String("admin-address", xds.DefaultAdminAddress, "Envoy's own admin listener, `IP:PORT`")
	return fs, f
}

func runBootstrap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := bootstrapFlagSet()
	path, nodeID, nodeCluster, admin := f.config, f.nodeID, f.nodeCluster, f.admin
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	cfg := config.Default()
	if *path != "" {
		loaded, err := config.LoadContext(ctx, *path)
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
