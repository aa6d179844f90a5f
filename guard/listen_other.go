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

// dialServer dials the server with d (TCP_QUICKACK is Linux's).
func dialServer(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return d.DialContext
}
