//go:build !linux

package verify

import (
	"context"
	"errors"
	"fmt"
	"syscall"
)

var errEPERM error = syscall.EPERM

func kernelProbes(context.Context) []KernelProbe {
	err := fmt.Errorf("probing kernel permissions: %w", errors.ErrUnsupported)
	return []KernelProbe{{Name: "tc-change-denied", Err: err}, {Name: "netfilter-change-denied", Err: err}}
}
