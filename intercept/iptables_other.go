//go:build !linux

package intercept

import (
	"context"
	"errors"
	"fmt"
)

// ApplyIPTables installs the rules of opts for family f. iptables exists
// on Linux only; elsewhere it fails with errors.ErrUnsupported.
func ApplyIPTables(ctx context.Context, opts IPTablesOptions, f Family) error {
	if _, err := RenderIPTables(opts, f); err != nil {
		return err
	}
	return fmt.Errorf("intercept: iptables rules can only be applied on Linux: %w", errors.ErrUnsupported)
}

// RemoveIPTables deletes what ApplyIPTables added. iptables exists on
// Linux only; elsewhere it fails with errors.ErrUnsupported.
func RemoveIPTables(ctx context.Context, opts IPTablesOptions, f Family) error {
	if err := opts.Validate(f); err != nil {
		return err
	}
	return fmt.Errorf("intercept: iptables rules can only be removed on Linux: %w", errors.ErrUnsupported)
}
