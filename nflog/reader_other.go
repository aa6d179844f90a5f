//go:build !linux

package nflog

import (
	"errors"
	"fmt"
)

// Config configures a Reader.
type Config struct {
	Group      uint16
	CopyRange  uint32
	NetNS      int
	ReadBuffer int
}

// DefaultCopyRange covers an IPv6 header with a few extension headers plus
// a TCP header.
const DefaultCopyRange = 128

// Reader receives the packets logged to one NFLOG group (Linux only).
type Reader struct{}

// Open fails: NFLOG is Linux only.
func Open(Config) (*Reader, error) {
	return nil, fmt.Errorf("opening nflog reader: %w", errors.ErrUnsupported)
}

// Receive fails: NFLOG is Linux only.
func (*Reader) Receive() ([]Packet, error) {
	return nil, fmt.Errorf("receiving nflog messages: %w", errors.ErrUnsupported)
}

// Close does nothing.
func (*Reader) Close() error { return nil }
