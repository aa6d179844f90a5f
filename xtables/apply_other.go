//go:build !linux

package xtables

import (
	"context"
	"errors"
	"fmt"
)

// ExecRunner runs the iptables tools; iptables exists only on Linux.
type ExecRunner struct {
	LockFile string
}

var _ Runner = ExecRunner{}

// Run returns an error wrapping errors.ErrUnsupported.
func (ExecRunner) Run(_ context.Context, _ []byte, name string, _ ...string) ([]byte, error) {
	return nil, fmt.Errorf("running %s: %w", name, errors.ErrUnsupported)
}
