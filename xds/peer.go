package xds

import (
	"context"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/realipd/realipd/sockowner"
)

// Who is at the other end of an ADS stream matters to one thing only: an
// ACK of a listener on a capture port makes the native listener hand that
// port to Envoy (origdst.fallback: auto). A node id is whatever the client
// writes, so every connection is tagged, when it is accepted, with what the
// kernel says of its peer (sockowner.PeerOf: SO_PEERCRED on a unix socket,
// the owner of the client's socket for TCP in this network namespace), and
// every event carries it. The Server serves every client the same
// resources; deciding which peers' events count is the receiver's (see
// Events).

// peerCredentials are the gRPC transport credentials of the ADS server:
// no encryption and no handshake bytes (clients use insecure credentials,
// as Envoy does on a plain cluster), only the peer's identity recorded as
// the connection's AuthInfo.
type peerCredentials struct{}

// peerAuthInfo is the AuthInfo of an ADS connection.
type peerAuthInfo struct {
	credentials.CommonAuthInfo
	peer sockowner.Peer
}

func (peerAuthInfo) AuthType() string { return "peercred" }

// ServerHandshake asks the kernel who the peer is; a peer it cannot name is
// served all the same, as an unknown one.
func (peerCredentials) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	p, err := sockowner.PeerOf(unwrapConn(c))
	if err != nil {
		p = sockowner.Peer{}
	}
	return c, peerAuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, peer: p}, nil
}

func (peerCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("xds: the ADS server's credentials make no client connections")
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "insecure"}
}

func (c peerCredentials) Clone() credentials.TransportCredentials { return c }

func (peerCredentials) OverrideServerName(string) error { return nil }

// unwrapConn returns the connection a listener wrapper wraps (one that
// says so with NetConn, as crypto/tls does), down to the socket.
func unwrapConn(c net.Conn) net.Conn {
	for range 8 {
		w, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = w.NetConn()
	}
	return c
}

// peerOf returns the peer of the stream whose context is ctx.
func peerOf(ctx context.Context) sockowner.Peer {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return sockowner.Peer{}
	}
	if ai, ok := p.AuthInfo.(peerAuthInfo); ok {
		return ai.peer
	}
	return sockowner.Peer{}
}
