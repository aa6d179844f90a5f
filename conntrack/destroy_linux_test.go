//go:build linux

package conntrack

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestIntegrationDestroyDelay measures how long after a TCP close the
// kernel sends DESTROY when nobody deletes the entry: the entry lives out
// TIME_WAIT (shortened here to 1 s) and is then reaped by the conntrack
// garbage collector, whose scan interval sets the delay.
func TestIntegrationDestroyDelay(t *testing.T) {
	p, c := newBed(t, netEvents+5)
	if err := p.Pod.Do(func() error {
		return os.WriteFile("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait", []byte("1\n"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	events, errs := c.Listen(ctx, GroupDestroy)
	client, server, orig := tcpConn(t, p, p.PeerIP4)
	transfer(t, client, server, 1000)
	client.Close()
	server.Close()
	closed := time.Now()
	deadline := time.After(90 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Flow.Orig == orig {
				t.Logf("DESTROY %v after close (TIME_WAIT 1 s); final counters orig %+v reply %+v",
					time.Since(closed).Round(time.Millisecond), ev.Flow.OrigCounter, ev.Flow.ReplyCounter)
				return
			}
		case err := <-errs:
			t.Fatal(err)
		case <-deadline:
			t.Fatal("no DESTROY within 90 s of close")
		}
	}
}
