//go:build linux

package conntrack

import (
	"fmt"
	"os"
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
