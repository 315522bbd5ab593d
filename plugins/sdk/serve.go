package sdk

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	policypb "github.com/realipd/realipd/plugins/proto"
)

// Serve serves p to realipd and returns when realipd closes the plugin. It
// is what a plugin's main function calls. Run outside realipd, it prints a
// note and exits with status 1.
func Serve(p Policy) {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{
			ProtocolVersion: {PluginName: &GRPCPlugin{Impl: p}},
		},
		GRPCServer: plugin.DefaultGRPCServer,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:       "go-plugin",
			Output:     stderr,
			JSONFormat: true,
			Level:      hclog.LevelFromString(logLevelName()),
		}),
	})
}

// GRPCPlugin is the go-plugin plugin type of a policy. Serve uses it; it is
// exported for hosts and tests that drive go-plugin themselves. On the
// server side it serves Impl; on the client side it returns a
// policypb.PolicyClient.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Policy
}

// GRPCServer registers the policy service on s.
func (g *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	policypb.RegisterPolicyServer(s, &server{impl: g.Impl})
	return nil
}

// GRPCClient returns a policypb.PolicyClient on c.
func (g *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return policypb.NewPolicyClient(c), nil
}

var (
	_ plugin.GRPCPlugin = (*GRPCPlugin)(nil)
	_ plugin.Plugin     = (*GRPCPlugin)(nil)
)

// server adapts a Policy to the generated gRPC service.
type server struct {
	policypb.UnimplementedPolicyServer
	impl Policy
}

func (s *server) Configure(ctx context.Context, req *policypb.ConfigureRequest) (*policypb.ConfigureResponse, error) {
	cfg := Config{policy: req.GetPolicyName(), raw: req.GetConfigJson()}
	if c, ok := s.impl.(Configurer); ok {
		if err := c.Configure(ctx, cfg); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	} else if !cfg.Empty() {
		return nil, status.Error(codes.InvalidArgument, "this policy takes no config")
	}
	resp := &policypb.ConfigureResponse{Inputs: &policypb.Inputs{All: true}}
	if d, ok := s.impl.(InputDeclarer); ok {
		in := d.Inputs()
		names := make([]string, len(in.Headers))
		for i, h := range in.Headers {
			names[i] = strings.ToLower(h)
		}
		resp.Inputs = &policypb.Inputs{
			All:         in.All,
			Peer:        in.Peer,
			OriginalDst: in.OriginalDst,
			Resolution:  in.Resolution,
			Listener:    in.Listener,
			Route:       in.Route,
			Headers:     names,
		}
	}
	return resp, nil
}

func (s *server) Decide(ctx context.Context, pr *policypb.DecideRequest) (*policypb.DecideResponse, error) {
	req, err := requestFromProto(pr)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	d, err := s.impl.Decide(ctx, req)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Error(codes.Unknown, err.Error())
	}
	return decisionToProto(d), nil
}

func (s *server) Ping(_ context.Context, req *policypb.PingRequest) (*policypb.PingResponse, error) {
	return &policypb.PingResponse{Payload: req.GetPayload()}, nil
}

func requestFromProto(pr *policypb.DecideRequest) (*Request, error) {
	req := &Request{
		Peer:     pr.GetPeer(),
		Listener: pr.GetListener(),
		Route:    pr.GetRoute(),
	}
	if s := pr.GetClientIp(); s != "" {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("client_ip: %w", err)
		}
		req.ClientIP = ip
	}
	if s := pr.GetOriginalDst(); s != "" {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return nil, fmt.Errorf("original_dst: %w", err)
		}
		req.OriginalDst = ap
	}
	if r := pr.GetResolution(); r != nil {
		req.Strategy = r.GetStrategy()
		req.ResolvedFrom = r.GetResolvedFrom()
		req.Reason = r.GetReason()
		req.Position = int(r.GetPosition())
	}
	if hs := pr.GetHeaders(); len(hs) > 0 {
		req.Headers = make([]Header, len(hs))
		for i, h := range hs {
			req.Headers[i] = Header{Name: h.GetName(), Value: string(h.GetValue())}
		}
	}
	return req, nil
}

// decisionToProto converts d. Header values go as bytes; the string fields
// are made valid UTF-8, as protobuf requires: a policy that copies a header
// value into its metadata or body must not turn its decision into a
// marshalling error, and so into its on_error, for a client who sent one
// byte that is not UTF-8.
func decisionToProto(d Decision) *policypb.DecideResponse {
	resp := &policypb.DecideResponse{
		Deny:     d.Deny,
		Status:   int32(d.Status),
		Body:     validUTF8(d.Body),
		Metadata: validUTF8Map(d.Metadata),
	}
	if len(d.Headers) > 0 {
		resp.Headers = make([]*policypb.Header, len(d.Headers))
		for i, h := range d.Headers {
			resp.Headers[i] = &policypb.Header{Name: validUTF8(h.Name), Value: []byte(h.Value)}
		}
	}
	if d.CacheTTL > 0 {
		resp.CacheTtl = durationpb.New(d.CacheTTL)
	}
	return resp
}

// validUTF8 returns s with each run of invalid UTF-8 replaced by U+FFFD; s
// itself when it is valid.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// validUTF8Map returns m with its keys and values made valid UTF-8 by
// validUTF8; m itself when they all are. Keys that become equal keep one
// of their values.
func validUTF8Map(m map[string]string) map[string]string {
	for k, v := range m {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			out := make(map[string]string, len(m))
			for k, v := range m {
				out[validUTF8(k)] = validUTF8(v)
			}
			return out
		}
	}
	return m
}
