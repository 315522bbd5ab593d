package main

import (
	"context"
	"errors"
	"io"
)

// runIPTables is `realipd iptables`; the interception role is not built yet.
func runIPTables(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return failure(errors.New("iptables: not built yet"))
}
