//go:build !linux

package tcshape

import (
	"errors"
	"fmt"

	"github.com/rs/zerolog"
)

// TC is the Kernel of one network namespace; it exists only on Linux.
type TC struct{}

var _ Kernel = (*TC)(nil)

var errNotLinux = fmt.Errorf("traffic shaping needs Linux: %w", errors.ErrUnsupported)

// Open fails: traffic control needs Linux.
func Open(netnsFD int) (*TC, error) { return nil, errNotLinux }

// Close does nothing.
func (k *TC) Close() error { return nil }

// Read fails: traffic control needs Linux.
func (k *TC) Read(iface string) (State, error) { return State{}, errNotLinux }

// Do fails: traffic control needs Linux.
func (k *TC) Do(iface string, op Op) error { return errNotLinux }

// Detect fails: traffic control needs Linux.
func (k *TC) Detect(cfg Config, log zerolog.Logger) (Config, error) { return cfg, errNotLinux }

// EnableAccounting fails: conntrack needs Linux.
func EnableAccounting() error { return errNotLinux }

// ClassBytes fails: traffic control needs Linux.
func (k *TC) ClassBytes(iface string, class Handle) (uint64, error) { return 0, errNotLinux }

// Environment fails: traffic control needs Linux.
func (k *TC) Environment(cfg Config) (Config, error) { return cfg, errNotLinux }

// DetectLeaves finds nothing: traffic control needs Linux.
func (k *TC) DetectLeaves() (LeafKind, string) { return LeafFIFO, errNotLinux.Error() }

// DefaultRouteInterface fails: routes are read over rtnetlink, Linux only.
func (k *TC) DefaultRouteInterface() (string, error) { return "", errNotLinux }
