package tcshape

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"
)

// Kernel is what Apply needs from the kernel: read one interface's tree and
// change it one op at a time.
type Kernel interface {
	Read(iface string) (State, error)
	Do(iface string, op Op) error
}

// Apply makes the interface's qdisc tree equal to the spec, changing only
// what differs, and returns the ops it ran (none when the tree already
// matched). It refuses, with a *ForeignRootError, to touch a root that is
// not hubwarden's or a kernel default. With dryRun it logs the ops and
// changes nothing.
func Apply(ctx context.Context, k Kernel, want Spec, log zerolog.Logger, dryRun bool) ([]Op, error) {
	start := time.Now()
	cur, err := k.Read(want.Interface)
	if err != nil {
		return nil, fmt.Errorf("reading the qdisc tree of %s: %w", want.Interface, err)
	}
	ops, err := Diff(cur, want)
	if err != nil {
		return nil, err
	}
	for _, op := range ops {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		log.Debug().Str("dev", want.Interface).Bool("dry_run", dryRun).Msg(op.String())
		if dryRun {
			continue
		}
		if err := k.Do(want.Interface, op); err != nil {
			return nil, fmt.Errorf("applying %q on %s: %w", op, want.Interface, err)
		}
	}
	if len(ops) > 0 {
		log.Info().Str("dev", want.Interface).Int("ops", len(ops)).Bool("dry_run", dryRun).
			Str("replaced_root", cur.RootKind).Dur("dur", time.Since(start)).Msg("shaping applied")
	}
	return ops, nil
}

// Check reads the interface's tree and returns a readable difference from
// the spec, one line per op Apply would run; empty when they agree.
func Check(k Kernel, want Spec) (string, error) {
	cur, err := k.Read(want.Interface)
	if err != nil {
		return "", fmt.Errorf("reading the qdisc tree of %s: %w", want.Interface, err)
	}
	return CheckText(cur, want)
}
