// Command badversion is a plugin for the host's tests that speaks a plugin
// API version realipd does not know.
package main

import (
	"context"

	"github.com/hashicorp/go-plugin"

	"github.com/realipd/realipd/plugins/sdk"
)

type allow struct{}

func (allow) Decide(context.Context, *sdk.Request) (sdk.Decision, error) { return sdk.Decision{}, nil }

func main() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: sdk.Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{
			sdk.ProtocolVersion + 98: {sdk.PluginName: &sdk.GRPCPlugin{Impl: allow{}}},
		},
		GRPCServer: plugin.DefaultGRPCServer,
	})
}
