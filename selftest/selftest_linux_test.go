//go:build linux

package selftest

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/internal/nstest"
)

// TestIntegrationSelftest runs the accounting and blocked-target checks for
// real inside a fresh pod namespace: they fail before the rules and the
// sysctl are in place, and pass after.
func TestIntegrationSelftest(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables", "sysctl")
	p := nstest.NewPair(t, 63)
	p.Peer.Serve(p.PeerIP4+":80", func(net.Conn) {})
	opts := Options{Target: netip.MustParseAddrPort(p.PeerIP4 + ":80"), Timeout: 2 * time.Second}
	run := func() (r Result) {
		var d net.Dialer
		if err := p.Pod.Do(func() error {
			// Probes run on the namespace's thread, as the sidecar's do in
			// its own netns: /proc/sys/net reflects the thread's namespace.
			r = Run(context.Background(), opts, Probes{ReadFile: os.ReadFile, Dial: d.DialContext})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return r
	}
	before := run()
	if before.OK() || len(before.Checks) != 2 || before.Checks[0].Passed || before.Checks[1].Passed {
		t.Fatalf("before rules: %+v, want both checks failed", before.Checks)
	}
	p.Pod.MustRun("iptables", "-A", "OUTPUT", "-d", p.PeerIP4, "-j", "REJECT")
	p.Pod.MustRun("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
	after := run()
	if err := after.Err(); err != nil {
		t.Fatalf("after rules: %v", err)
	}
	t.Logf("%+v", after.Checks)
}
