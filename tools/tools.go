//go:build tools

// Package tools pins the versions of the developer tools hubwarden's Makefile
// builds (golangci-lint), the pattern of kind's hack/tools/go.mod. It is its own
// module so the tools' dependencies never enter hubwarden's go.mod.
package tools

import (
	_ "github.com/golangci/golangci-lint/v2/cmd/golangci-lint"
)
