//go:build linux

package tcshape

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/internal/nstest"
)

// measure runs one bulk transfer from the pod's server for d after a short
// warm-up and returns its goodput in bytes/s.
func measure(p *nstest.Pair, addr string, pace uint64, d time.Duration) float64 {
	b := p.Peer.StartBulk(addr, pace)
	from := time.Now().Add(200 * time.Millisecond)
	to := from.Add(d)
	time.Sleep(time.Until(to.Add(5 * time.Millisecond)))
	r := b.Rate(from, to)
	b.Close()
	return r
}

func unshape(t *testing.T, k *TC) {
	t.Helper()
	if err := k.Do("eth0", Op{Kind: OpDeleteRoot}); err != nil {
		t.Fatal(err)
	}
}

func mustPlan(t *testing.T, k *TC, cfg Config) Spec {
	t.Helper()
	cfg, err := k.Detect(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	s, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestIntegrationFastClassThroughput compares the fast class with no qdisc
// at all, side by side: a paced flow as fast as a real proxy path, and the
// raw veth. It asserts only the paced ratio; the raw figure is for the bench.
func TestIntegrationFastClassThroughput(t *testing.T) {
	nstest.SkipUnlessRoot(t, "tc")
	p := nstest.NewPair(t, 31)
	p.Pod.ServeBulk(8888)
	addr := net.JoinHostPort(p.PodIP4, "8888")
	cfg := Config{FastRate: mustRate(t, "1tbit"), SlowRate: mustRate(t, "8mbit")} // FAST_RATE's default
	k, _ := openPod(t, p, cfg)
	const pace = 250_000_000 // 2 Gbit/s: what a real proxy path reaches
	const d = 1500 * time.Millisecond
	var base, hw, baseRaw, hwRaw float64
	// Two rounds, back to back, best of each: the machine is shared.
	for round := range 2 {
		base = max(base, measure(p, addr, pace, d))
		baseRaw = max(baseRaw, measure(p, addr, 0, d))
		if _, err := Apply(context.Background(), k, mustPlan(t, k, cfg), zerolog.Nop(), false); err != nil {
			t.Fatal(err)
		}
		hw = max(hw, measure(p, addr, pace, d))
		hwRaw = max(hwRaw, measure(p, addr, 0, d))
		unshape(t, k)
		t.Logf("round %d: paced 2gbit: none %s, hubwarden %s; unpaced: none %s, hubwarden %s", round, nstest.Mbit(base), nstest.Mbit(hw), nstest.Mbit(baseRaw), nstest.Mbit(hwRaw))
	}
	t.Logf("fast class / no qdisc at 2 Gbit/s: %.3f; raw veth (1tbit fast class / no qdisc): %.3f", hw/base, hwRaw/baseRaw)
	if hw < 0.9*base {
		t.Errorf("fast class gets %s, less than 0.9x the %s without hubwarden", nstest.Mbit(hw), nstest.Mbit(base))
	}
}

// TestIntegrationClassBytes checks the slow class's byte counter the
// watcher charges the pod bucket with: the slow class is an inner class,
// and HTB charges it with every packet its two leaves send, so it moves by
// what both sent. It also pins why demotion's CLASSIFY rules name the
// leaves: a packet classified into the inner class itself goes to the
// default (fast) class.
func TestIntegrationClassBytes(t *testing.T) {
	nstest.SkipUnlessRoot(t, "tc", "iptables")
	p := nstest.NewPair(t, 32)
	p.Pod.ServeBulk(8888)
	p.Pod.ServeBulk(8889)
	p.Pod.ServeBulk(8890)
	k, cfg := openPod(t, p, Config{FastRate: mustRate(t, "10gbit"), SlowRate: mustRate(t, "8mbit")})
	if _, err := Apply(context.Background(), k, mustPlan(t, k, cfg), zerolog.Nop(), false); err != nil {
		t.Fatal(err)
	}
	// The pod's servers: one to each slow leaf, one to the slow class.
	for port, class := range map[string]Handle{"8888": BulkClass, "8889": InteractiveClass, "8890": SlowClass} {
		p.Pod.MustRun("iptables", "-t", "mangle", "-A", "POSTROUTING", "-o", "eth0", "-p", "tcp", "--sport", port,
			"-j", "CLASSIFY", "--set-class", class.String())
	}
	read := func(h Handle) uint64 {
		t.Helper()
		n, err := k.ClassBytes("eth0", h)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before, bulk0, inter0 := read(SlowClass), read(BulkClass), read(InteractiveClass)
	bb := p.Peer.StartBulk(net.JoinHostPort(p.PodIP4, "8888"), 0)
	bi := p.Peer.StartBulk(net.JoinHostPort(p.PodIP4, "8889"), 0)
	bs := p.Peer.StartBulk(net.JoinHostPort(p.PodIP4, "8890"), 0)
	time.Sleep(time.Second)
	bb.Close()
	bi.Close()
	bs.Close()
	// Once the classes have drained (the counter stands still), the
	// readings are of the same thing.
	var after uint64
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		if a := read(SlowClass); a != after {
			after = a
			continue
		}
		break
	}
	bulk, inter := read(BulkClass)-bulk0, read(InteractiveClass)-inter0
	tcBytes, _ := p.Pod.ClassSent("eth0", SlowClass.String())
	gotB, gotI, gotS := uint64(bb.Got.Load()), uint64(bi.Got.Load()), uint64(bs.Got.Load())
	t.Logf("slow class: %d bytes (tc -s says %d); bulk leaf %d, interactive leaf %d; the clients received %d, %d (and %d through the fast class)", after-before, tcBytes, bulk, inter, gotB, gotI, gotS)
	if after-before != bulk+inter || after != tcBytes {
		t.Errorf("the slow class moved by %d (tc: %d), want the sum of its leaves %d + %d", after-before, tcBytes, bulk, inter)
	}
	// The leaves count frames (headers) and what their queues still held
	// when the clients closed (128 KiB and 500 kB here).
	if bulk < gotB || inter < gotI || bulk+inter > (gotB+gotI)*11/10+2<<20 {
		t.Errorf("the leaves sent %d and %d, want what their clients received, %d and %d", bulk, inter, gotB, gotI)
	}
	if gotS < 10*(gotB+gotI) {
		t.Errorf("a flow classified into the inner slow class received %d bytes: want it in the fast class (HTB's default), far more than the slow leaves' %d", gotS, gotB+gotI)
	}
	if _, err := k.ClassBytes("eth0", NewHandle(RootMajor, 0x99)); err == nil {
		t.Error("ClassBytes of a class that does not exist: want an error")
	}
}
