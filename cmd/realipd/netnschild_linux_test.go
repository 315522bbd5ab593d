//go:build linux

package main

import "github.com/realipd/realipd/internal/netnstest"

// netnstestRunChild runs the child part of netnstest.ListenAs.
func netnstestRunChild() { netnstest.RunChild() }
