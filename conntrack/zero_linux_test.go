//go:build linux

package conntrack

import (
	"errors"
	"testing"
)

// Subnet indexes used here: netZero (this package owns 40-49).
const netZero = 45

// TestIntegrationGetZero checks that GetZero returns the counters and
// zeroes them in the kernel, so that a connbytes rule counts from zero
// again (the tripwire relies on it), and that Walk's mark filter is applied
// by the kernel: only the flows under the mark come back.
func TestIntegrationGetZero(t *testing.T) {
	p, c := newBed(t, netZero)
	ctx := t.Context()
	// A connbytes rule on the pod's egress that sets mark bit 0x10 once a
	// flow has sent 1 MiB in the original direction: the kernel's view of
	// the counters.
	p.Pod.MustRun("iptables", "-t", "mangle", "-A", "POSTROUTING", "-m", "connbytes",
		"--connbytes", "1048576:", "--connbytes-dir", "original", "--connbytes-mode", "bytes",
		"-j", "CONNMARK", "--set-xmark", "0x10/0x10")
	client, server, orig := tcpConn(t, p, p.PeerIP4)
	_, _, other := tcpConn(t, p, p.PeerIP4)
	const chunk = 768 << 10 // under the 1 MiB threshold
	transfer(t, client, server, chunk)
	f, err := c.GetZero(ctx, orig)
	if err != nil {
		t.Fatal(err)
	}
	if f.OrigCounter.Bytes < chunk {
		t.Fatalf("GetZero returned %d original bytes, want >= %d", f.OrigCounter.Bytes, chunk)
	}
	after, err := c.Get(ctx, orig)
	if err != nil {
		t.Fatal(err)
	}
	if after.OrigCounter.Bytes != 0 || after.ReplyCounter.Bytes != 0 {
		t.Errorf("counters after GetZero: %+v %+v, want zero", after.OrigCounter, after.ReplyCounter)
	}
	// Another 768 KiB: 1.5 MiB in all, but 768 KiB since the reset, so the
	// connbytes rule must not have fired.
	transfer(t, client, server, chunk)
	f, err = c.Get(ctx, orig)
	if err != nil {
		t.Fatal(err)
	}
	if f.Mark&0x10 != 0 {
		t.Errorf("connbytes fired at %d bytes since the reset (mark %#x): GetZero did not reset the kernel's counter", f.OrigCounter.Bytes, f.Mark)
	}
	// Control: without the reset it fires.
	transfer(t, client, server, chunk)
	f, err = c.Get(ctx, orig)
	if err != nil {
		t.Fatal(err)
	}
	if f.Mark&0x10 == 0 {
		t.Errorf("connbytes did not fire at %d bytes since the reset (mark %#x)", f.OrigCounter.Bytes, f.Mark)
	}

	var seen []Tuple
	err = c.Walk(ctx, Filter{Mark: 0x10, MarkMask: 0x10}, func(fl *Flow) error {
		seen = append(seen, fl.Orig)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 || seen[0] != orig {
		t.Errorf("Walk(mark 0x10/0x10) = %v, want only %v (not %v)", seen, orig, other)
	}
	n := 0
	if err := c.Walk(ctx, Filter{}, func(*Flow) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n < 2 {
		t.Errorf("Walk(no filter) saw %d flows, want both", n)
	}
	stop := errors.New("stop")
	if err := c.Walk(ctx, Filter{}, func(*Flow) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("Walk with a failing callback = %v, want it returned", err)
	}
	// The connection is usable after an abandoned walk.
	if _, err := c.Get(ctx, orig); err != nil {
		t.Errorf("Get after an abandoned walk: %v", err)
	}
	gone := orig
	gone.DstPort++
	if _, err := c.GetZero(ctx, gone); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetZero(%s) error = %v, want ErrNotFound", gone, err)
	}
}
