//go:build linux

package conntrack

import (
	"fmt"
	"os"
	"strings"
)

// EnableAccounting turns on nf_conntrack_acct (per-direction counters) and,
// when timestamps is true, nf_conntrack_timestamp (Flow.Start and Stop) in
// the network namespace of the calling thread, by writing under
// /proc/sys/net/netfilter. Both only affect flows created afterwards: the
// kernel attaches the extensions when it creates an entry. A new network
// namespace starts with both off, whatever the host's values are.
func EnableAccounting(timestamps bool) error {
	names := []string{"nf_conntrack_acct"}
	if timestamps {
		names = append(names, "nf_conntrack_timestamp")
	}
	for _, n := range names {
		p := "/proc/sys/net/netfilter/" + n
		if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("enabling %s: %w", n, err)
		}
	}
	return nil
}

// EnableEvents sets nf_conntrack_events to 1 in the network namespace of
// the calling thread. Its default, 2, attaches the event extension only to
// flows created while some socket listens for events: a flow created while
// the watcher is down (starting, restarting) would never report UPDATE or
// DESTROY, not even after a listener appears. With 1 every flow does.
func EnableEvents() error {
	if err := os.WriteFile("/proc/sys/net/netfilter/nf_conntrack_events", []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enabling nf_conntrack_events: %w", err)
	}
	return nil
}

// EventsForEvery reports whether nf_conntrack_events is 1 in the network
// namespace of the calling thread: every flow sends events (with 2, only
// flows made while some socket listened; with 0, none).
func EventsForEvery() (bool, error) {
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_events")
	if err != nil {
		return false, fmt.Errorf("reading nf_conntrack_events: %w", err)
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// Accounting reports whether nf_conntrack_acct and nf_conntrack_timestamp
// are on in the network namespace of the calling thread.
func Accounting() (acct, timestamps bool, err error) {
	read := func(n string) (bool, error) {
		b, err := os.ReadFile("/proc/sys/net/netfilter/" + n)
		if err != nil {
			return false, fmt.Errorf("reading %s: %w", n, err)
		}
		return len(b) > 0 && b[0] != '0', nil
	}
	if acct, err = read("nf_conntrack_acct"); err != nil {
		return false, false, err
	}
	if timestamps, err = read("nf_conntrack_timestamp"); err != nil {
		return false, false, err
	}
	return acct, timestamps, nil
}
