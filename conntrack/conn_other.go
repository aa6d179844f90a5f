//go:build !linux

package conntrack

import (
	"context"
	"errors"
	"fmt"
)

var errUnsupported = fmt.Errorf("ctnetlink: %w", errors.ErrUnsupported)

// Conn is a ctnetlink socket; it exists only on Linux.
type Conn struct{}

// Dial returns an error wrapping errors.ErrUnsupported on this OS.
func Dial(Config) (*Conn, error) { return nil, errUnsupported }

// Close does nothing on this OS.
func (c *Conn) Close() error { return nil }

// Dump returns an error wrapping errors.ErrUnsupported on this OS.
func (c *Conn) Dump(context.Context) ([]Flow, error) { return nil, errUnsupported }

// DumpInto returns an error wrapping errors.ErrUnsupported on this OS.
func (c *Conn) DumpInto(_ context.Context, buf []Flow) ([]Flow, error) {
	return buf[:0], errUnsupported
}

// Get returns an error wrapping errors.ErrUnsupported on this OS.
func (c *Conn) Get(context.Context, Tuple) (Flow, error) { return Flow{}, errUnsupported }

// Walk is Walk of the Linux build.
func (c *Conn) Walk(context.Context, Filter, func(*Flow) error) error { return errUnsupported }

// GetZero is GetZero of the Linux build.
func (c *Conn) GetZero(context.Context, Tuple) (Flow, error) { return Flow{}, errUnsupported }

// SetMark returns an error wrapping errors.ErrUnsupported on this OS.
func (c *Conn) SetMark(context.Context, Tuple, uint32, uint32) error { return errUnsupported }

// Listen reports an error wrapping errors.ErrUnsupported on this OS.
func (c *Conn) Listen(context.Context, ...Group) (<-chan Event, <-chan error) {
	events, errs := make(chan Event), make(chan error, 1)
	errs <- errUnsupported
	close(events)
	close(errs)
	return events, errs
}

// EnableAccounting returns an error wrapping errors.ErrUnsupported on this OS.
func EnableAccounting(bool) error { return errUnsupported }

// Accounting returns an error wrapping errors.ErrUnsupported on this OS.
func Accounting() (acct, timestamps bool, err error) { return false, false, errUnsupported }

// EnableEvents returns an error wrapping errors.ErrUnsupported on this OS.
func EnableEvents() error { return errUnsupported }

// EventsForEvery returns an error wrapping errors.ErrUnsupported on this OS.
func EventsForEvery() (bool, error) { return false, errUnsupported }
