// Command benchserver runs one ext_proc server for the comparison benchmark
// in package extproc: realipd's (-mode realipd) or a no-op one built on the
// generated envoy.service.ext_proc.v3 server (-mode noop), which answers
// every message with an empty response of the matching oneof and does no
// other work. Running each in its own process keeps the two from sharing a
// Go runtime with each other or with the benchmark's client.
//
// It listens on -listen (default 127.0.0.1:0), prints "listening ADDR" on
// stdout, and serves until SIGTERM, SIGINT or stdin closes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"

	"github.com/realipd/realipd/clientip"
	"github.com/realipd/realipd/decide"
	"github.com/realipd/realipd/extproc"
	"github.com/realipd/realipd/plugins"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchserver:", err)
		os.Exit(1)
	}
}

func run() error {
	mode := flag.String("mode", "realipd", "server to run: realipd or noop")
	listen := flag.String("listen", "127.0.0.1:0", "listen address")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // stdin closing (the benchmark exiting) stops the server too
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr())

	switch *mode {
	case "realipd":
		return serveRealipd(ctx, ln)
	case "noop":
		return serveNoop(ctx, ln)
	}
	return fmt.Errorf("unknown -mode %q", *mode)
}

// serveRealipd serves realipd's ext_proc with a typical configuration:
// rightmost_trusted_range through 10.0.0.0/8, Envoy's XFF hop removed, and a
// cidr blocklist policy.
func serveRealipd(ctx context.Context, ln net.Listener) error {
	r, err := clientip.New(clientip.Config{
		Strategy:     clientip.RightmostTrustedRange,
		TrustedCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	})
	if err != nil {
		return err
	}
	chain, err := plugins.NewChain(plugins.ChainEntry{Name: "blocklist", Policy: plugins.NewCIDR(nil, []netip.Prefix{
		netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8:dead::/48"),
	})})
	if err != nil {
		return err
	}
	d, err := decide.New(decide.Settings{Resolver: r, Chain: chain, XFFAppendedByEnvoy: true}, nil)
	if err != nil {
		return err
	}
	srv, err := extproc.New(decide.NewCurrent(d), extproc.Options{})
	if err != nil {
		return err
	}
	return srv.ServeListener(ctx, ln)
}

// noop answers every message with an empty response of the matching oneof.
type noop struct {
	extprocv3.UnimplementedExternalProcessorServer
}

func (noop) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		resp := &extprocv3.ProcessingResponse{}
		switch req.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			resp.Response = &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			resp.Response = &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}
		case *extprocv3.ProcessingRequest_RequestBody:
			resp.Response = &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}
		case *extprocv3.ProcessingRequest_ResponseBody:
			resp.Response = &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}
		case *extprocv3.ProcessingRequest_RequestTrailers:
			resp.Response = &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}
		case *extprocv3.ProcessingRequest_ResponseTrailers:
			resp.Response = &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}
		default:
			continue
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func serveNoop(ctx context.Context, ln net.Listener) error {
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, noop{})
	go func() {
		<-ctx.Done()
		gs.GracefulStop()
	}()
	return gs.Serve(ln)
}
