//go:build !linux

package main

import (
	"errors"
	"fmt"

	"github.com/hubwarden/hubwarden/tcshape"
)

// defaultRouteInterface fails: routes are read over rtnetlink, Linux only.
func defaultRouteInterface(*tcshape.TC) (string, error) {
	return "", fmt.Errorf("finding the default route's interface: %w", errors.ErrUnsupported)
}
