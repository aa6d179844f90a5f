//go:build !linux

package demotion

import (
	"errors"
	"fmt"
)

var errUnsupported = fmt.Errorf("nftables: %w", errors.ErrUnsupported)

// NFT is the quota gate's kernel side; only Linux has one.
type NFT struct{}

// OpenNFT returns an error wrapping errors.ErrUnsupported on this OS.
func OpenNFT(int) (*NFT, error) { return nil, errUnsupported }

// Close does nothing on this OS.
func (n *NFT) Close() error { return nil }

// Check returns an error wrapping errors.ErrUnsupported on this OS.
func (n *NFT) Check(QuotaGate) (string, error) { return "", errUnsupported }

// Apply returns an error wrapping errors.ErrUnsupported on this OS.
func (n *NFT) Apply(QuotaGate, uint64) (bool, error) { return false, errUnsupported }

// Remove returns an error wrapping errors.ErrUnsupported on this OS.
func (n *NFT) Remove() error { return errUnsupported }

// Quota returns an error wrapping errors.ErrUnsupported on this OS.
func (n *NFT) Quota() (uint64, uint64, error) { return 0, 0, errUnsupported }

// SetLimit returns an error wrapping errors.ErrUnsupported on this OS.
func (n *NFT) SetLimit(uint64) error { return errUnsupported }

// Probe returns an error wrapping errors.ErrUnsupported on this OS.
func (n *NFT) Probe() error { return errUnsupported }
