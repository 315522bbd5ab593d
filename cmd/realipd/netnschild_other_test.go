//go:build !linux

package main

func netnstestRunChild() {}
