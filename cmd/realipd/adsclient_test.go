package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	sotwclient "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// adsClientEnv makes the test binary an ADS client (adsClientChild):
// "ADDRESS NODE_ID".
const adsClientEnv = "REALIPD_TEST_ADS_CLIENT"

// adsClientChild is a process that pretends to be Envoy: it connects to
// the ADS server at the spec's address as the spec's node, fetches and
// ACKs the clusters and the listeners, prints "acked", and holds its
// stream until its stdin closes. Tests start it as another user, to show
// what such a client can and cannot make realipd do. It returns the exit
// code.
func adsClientChild(spec string) int {
	addr, node, _ := strings.Cut(spec, " ")
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := &corev3.Node{Id: node, Cluster: "realipd"}
	for _, typ := range []string{resource.ClusterType, resource.ListenerType} {
		c := sotwclient.NewADSClient(ctx, n, typ)
		if err := c.InitConnect(conn); err != nil {
			fmt.Println(err)
			return 1
		}
		if _, err := c.Fetch(); err != nil {
			fmt.Println(err)
			return 1
		}
		if err := c.Ack(); err != nil {
			fmt.Println(err)
			return 1
		}
	}
	fmt.Println("acked")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}
