//go:build !linux

package guard

import (
	"context"
	"errors"
	"fmt"
	"net"
)

// Listen is Linux only: the guard's socket must be transparent.
func Listen(ctx context.Context, port uint16) (net.Listener, error) {
	return nil, fmt.Errorf("listening on HUBWARDEN_GUARD_PORT %d: %w", port, errors.ErrUnsupported)
}
