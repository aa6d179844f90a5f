//go:build linux

package conntrack

import (
	"context"
	"os"
	"strconv"
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

// TestIntegrationUpdateOnSetMark shows that a mark change made through
// ctnetlink is itself reported as an UPDATE event carrying the new mark.
func TestIntegrationUpdateOnSetMark(t *testing.T) {
	p, c := newBed(t, 48)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// Listen first: see TestIntegrationEventsForEarlierFlows.
	events, errs := c.Listen(ctx, GroupUpdate)
	_, _, orig := tcpConn(t, p, p.PeerIP6)
	if err := c.SetMark(ctx, orig, 0x42, 0xff); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(20 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Flow.Orig == orig && ev.Type == EventUpdate && ev.Flow.Mark == 0x42 {
				return
			}
		case err := <-errs:
			t.Fatal(err)
		case <-deadline:
			t.Fatal("no UPDATE event with the new mark")
		}
	}
}

// TestIntegrationEventsForEarlierFlows: with nf_conntrack_events=1
// (EnableEvents) a flow created before the listener reports DESTROY. With
// the default, 2, the kernel attaches the event extension only if some
// ctnetlink listener exists at creation, tracked in a host-wide bitmask
// (nf_ctnetlink_has_listener), so the outcome depends on other processes on
// the host: it is only logged.
func TestIntegrationEventsForEarlierFlows(t *testing.T) {
	p, c := newBed(t, 49)
	destroyed := func(eventsOn bool) bool {
		if eventsOn {
			if err := p.Pod.Do(EnableEvents); err != nil {
				t.Fatal(err)
			}
		}
		_, _, early := tcpConn(t, p, p.PeerIP4) // no listener yet
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		events, errs := c.Listen(ctx, GroupDestroy)
		_, _, late := tcpConn(t, p, p.PeerIP4) // made while listening: a marker
		for _, tu := range []Tuple{early, late} {
			p.Pod.MustRun("conntrack", "-D", "-p", "tcp", "--sport", strconv.Itoa(int(tu.SrcPort)))
		}
		sawEarly := false
		for {
			select {
			case ev := <-events:
				switch ev.Flow.Orig {
				case early:
					sawEarly = true
				case late: // sent after early's, had there been one
					return sawEarly
				}
			case err := <-errs:
				t.Fatal(err)
			case <-time.After(20 * time.Second):
				t.Fatal("no DESTROY for the marker flow")
			}
		}
	}
	t.Logf("nf_conntrack_events=2: DESTROY for a flow created before the listener: %v", destroyed(false))
	if !destroyed(true) {
		t.Error("nf_conntrack_events=1: no DESTROY for a flow created before the listener")
	}
}
