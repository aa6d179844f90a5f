//go:build linux

package demotion

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/internal/nstest"
	"github.com/hubwarden/hubwarden/units"
	"github.com/hubwarden/hubwarden/xtables"
)

// TestIntegrationDemotedRate shows what the demoted bit does to a flow at
// line rate: its goodput falls to the slow rate (HTB's slow class, by the
// CLASSIFY rule), and stays there.
func TestIntegrationDemotedRate(t *testing.T) {
	b := newBed(t, 35, 1*units.GiB, GateRecent, xtables.NFT)
	b.Pod.ServeBulk(8888)
	b.Pod.Do(func() error { return RecentGate{IPv6: true}.Set(true) })
	for _, fam := range []struct{ name, addr string }{{"ipv4", b.PodIP4}, {"ipv6", b.PodIP6}} {
		t.Run(fam.name, func(t *testing.T) {
			b.Pod.Do(func() error { return RecentGate{IPv6: true}.Set(true) })
			bulk := b.Peer.StartBulk(net.JoinHostPort(fam.addr, "8888"), 0)
			time.Sleep(300 * time.Millisecond)
			before := bulk.Rate(time.Now().Add(-200*time.Millisecond), time.Now())
			start := time.Now()
			b.Pod.MustRun("conntrack", "-U", "-f", fam.name, "-p", "tcp", "--orig-port-dst", "8888",
				"--mark", strconv.Itoa(int(b.c.Demoted()))+"/"+strconv.Itoa(int(b.c.Demoted())))
			time.Sleep(2500 * time.Millisecond)
			// The fast class's queue (20 ms at 10 gbit) and the sockets'
			// buffers drain first; then the flow is at the slow rate.
			drop, ok := bulk.DropTime(start, 50*time.Millisecond, 2*b.slow)
			if !ok {
				t.Fatalf("the flow never dropped to the slow rate (before: %s)", nstest.Mbit(before))
			}
			agg := bulk.Rate(start.Add(time.Second), start.Add(2500*time.Millisecond))
			ct := b.Pod.MustRun("conntrack", "-L", "-f", fam.name, "-p", "tcp", "--orig-port-dst", "8888")
			t.Logf("before %s; below 2x the slow rate %v after the mark; then %s (%.3f of %s)\n%s",
				nstest.Mbit(before), drop.Sub(start).Round(time.Millisecond), nstest.Mbit(agg), agg/b.slow, nstest.Mbit(b.slow), ct)
			if agg < 0.85*b.slow || agg > 1.15*b.slow {
				t.Errorf("demoted goodput %s is not within 15%% of the slow rate %s", nstest.Mbit(agg), nstest.Mbit(b.slow))
			}
			if !strings.Contains(ct, "bytes=") {
				t.Errorf("conntrack shows no byte counters (accounting off?):\n%s", ct)
			}
			bulk.Close()
		})
	}
}

// TestIntegrationLatencyBesideDemoted shows that a demoted bulk flow does
// not delay the pod's other flows: the slow class has its own queue.
func TestIntegrationLatencyBesideDemoted(t *testing.T) {
	b := newBed(t, 34, 1*units.GiB, GateRecent, xtables.NFT)
	b.Pod.ServeBulk(8888)
	b.Pod.ServeBulk(8889)
	if err := b.Pod.Do(func() error { return RecentGate{IPv6: true}.Set(true) }); err != nil {
		t.Fatal(err)
	}
	echo := b.Peer.Echo(net.JoinHostPort(b.PodIP4, "8889"))
	nstest.EchoP95(t, echo, 100) // warm up
	idle := nstest.EchoP95(t, echo, 1000)
	bulk := b.Peer.StartBulk(net.JoinHostPort(b.PodIP4, "8888"), 0)
	time.Sleep(300 * time.Millisecond)
	fastBulk := nstest.EchoP95(t, echo, 1000) // for the record: beside an undemoted bulk flow
	b.Pod.MustRun("conntrack", "-U", "-f", "ipv4", "-p", "tcp", "--orig-port-dst", "8888",
		"--mark", strconv.Itoa(int(b.c.Demoted()))+"/"+strconv.Itoa(int(b.c.Demoted())))
	time.Sleep(300 * time.Millisecond)
	if err := b.Pod.Do(func() error { return RecentGate{IPv6: true}.Set(true) }); err != nil {
		t.Fatal(err)
	}
	demoted := nstest.EchoP95(t, echo, 1000)
	bulk.Close()
	idle2 := nstest.EchoP95(t, echo, 1000)
	ref := max(idle, idle2)
	t.Logf("echo p95: idle %v / %v, beside a fast bulk flow %v, beside a demoted bulk flow %v (%.2fx idle)", idle, idle2, fastBulk, demoted, float64(demoted)/float64(ref))
	// Idle round trips here are tens of microseconds, where a busy shared
	// machine alone adds jitter of that order; so the bound is 1.5x idle or
	// idle + 200us, whichever is larger. Queueing behind the demoted flow
	// would cost far more: one 1514-byte frame at 8 Mbit/s takes 1.5 ms, a
	// 64 KB GSO packet 65 ms.
	if limit := max(ref*3/2, ref+200*time.Microsecond); demoted > limit {
		t.Errorf("p95 beside a demoted flow %v is above %v (idle %v)", demoted, limit, ref)
	}
}
