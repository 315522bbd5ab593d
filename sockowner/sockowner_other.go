//go:build !linux

package sockowner

import (
	"net"
	"net/netip"
)

func dumpListening(bool) ([]Socket, error) { return nil, ErrUnsupported }

func lookupTCP(_, _ netip.AddrPort) (Socket, bool, error) { return Socket{}, false, ErrUnsupported }

func unixPeer(*net.UnixConn) (Peer, error) { return Peer{}, ErrUnsupported }

func fdInode(int) (uint64, error) { return 0, ErrUnsupported }
