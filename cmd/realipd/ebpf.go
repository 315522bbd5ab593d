package main

import (
	"context"
	"errors"
	"io"
)

// runEBPF is `realipd ebpf`; the eBPF capture is not built yet.
func runEBPF(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return failure(errors.New("ebpf: not built yet"))
}
