//go:build !linux

package guard

import (
	"context"
	"errors"
	"fmt"
)

// Probe is Linux only (SO_MARK).
func Probe(ctx context.Context, serverPort uint16) error {
	return fmt.Errorf("probing the guard: %w", errors.ErrUnsupported)
}
