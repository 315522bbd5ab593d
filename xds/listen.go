package xds

import (
	"fmt"
	"net"

	"github.com/realipd/realipd/listenaddr"
)

// Listen opens the listener for an xds.listen address: TCP "host:port" or
// "unix:///path". A stale unix socket file (one nobody accepts on) is removed
// first; a live one, or a path that is not a socket, is an error. A unix
// socket is for this process's user alone (mode 0600); listenaddr.Listen
// shares one with a group (xds.socket_group).
func Listen(addr string) (net.Listener, error) {
	ln, err := listenaddr.Listen(addr, listenaddr.Options{})
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	return ln, nil
}

// addrString names ln's address as xds.listen spells it.
func addrString(ln net.Listener) string { return listenaddr.String(ln) }
