//go:build linux

package tcshape

import (
	"context"
	"fmt"
	"net"
	"regexp"
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

var directUsed = regexp.MustCompile(`direct_packets_stat [1-9]`)

// TestIntegrationFastPathThroughput compares the fast path of the default
// tree (no FAST_RATE: the root's direct queue) with no qdisc at all, side
// by side: a paced flow as fast as a real proxy path, and the raw veth. It
// asserts only the paced ratio; the raw figure is for the bench.
func TestIntegrationFastPathThroughput(t *testing.T) {
	nstest.SkipUnlessRoot(t, "tc")
	p := nstest.NewPair(t, 31)
	p.Pod.ServeBulk(8888)
	addr := net.JoinHostPort(p.PodIP4, "8888")
	cfg := Config{SlowRate: mustRate(t, "8mbit")} // no FAST_RATE, the default
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
		// The flows went through the direct queue, not a class.
		if out := p.Pod.MustRun("tc", "-s", "qdisc", "show", "dev", "eth0", "root"); !directUsed.MatchString(out) {
			t.Errorf("no packet took the direct queue:\n%s", out)
		}
		unshape(t, k)
		t.Logf("round %d: paced 2gbit: none %s, hubwarden %s; unpaced: none %s, hubwarden %s", round, nstest.Mbit(base), nstest.Mbit(hw), nstest.Mbit(baseRaw), nstest.Mbit(hwRaw))
	}
	t.Logf("direct queue / no qdisc at 2 Gbit/s: %.3f; raw veth (direct queue / no qdisc): %.3f", hw/base, hwRaw/baseRaw)
	if hw < 0.9*base {
		t.Errorf("the fast path gets %s, less than 0.9x the %s without hubwarden", nstest.Mbit(hw), nstest.Mbit(base))
	}
}

// TestIntegrationClassBytes checks the slow class's byte counter the
// watcher charges the pod bucket with: the slow class is an inner class,
// and HTB charges it with every packet its three leaves send, so it moves
// by what they sent. It also pins why demotion's CLASSIFY rules name the
// leaves: a packet classified into the inner class itself goes to the
// default (fast) class.
func TestIntegrationClassBytes(t *testing.T) {
	nstest.SkipUnlessRoot(t, "tc", "iptables")
	p := nstest.NewPair(t, 32)
	k, cfg := openPod(t, p, Config{FastRate: mustRate(t, "10gbit"), SlowRate: mustRate(t, "8mbit")})
	if _, err := Apply(context.Background(), k, mustPlan(t, k, cfg), zerolog.Nop(), false); err != nil {
		t.Fatal(err)
	}
	// The pod's servers: one to each slow leaf, one to the slow class.
	leaves := []Handle{BulkClass, InteractiveClass, ServedClass}
	ports := map[Handle]int{BulkClass: 8888, InteractiveClass: 8889, ServedClass: 8891, SlowClass: 8890}
	for class, port := range ports {
		p.Pod.ServeBulk(port)
		p.Pod.MustRun("iptables", "-t", "mangle", "-A", "POSTROUTING", "-o", "eth0", "-p", "tcp", "--sport", fmt.Sprint(port),
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
	before := read(SlowClass)
	leaf0 := map[Handle]uint64{}
	for _, h := range leaves {
		leaf0[h] = read(h)
	}
	clients := map[Handle]*nstest.Bulk{}
	for class, port := range ports {
		clients[class] = p.Peer.StartBulk(net.JoinHostPort(p.PodIP4, fmt.Sprint(port)), 0)
	}
	time.Sleep(time.Second)
	for _, c := range clients {
		c.Close()
	}
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
	tcBytes, _ := p.Pod.ClassSent("eth0", SlowClass.String())
	var sum, got uint64
	for _, h := range leaves {
		sent, recv := read(h)-leaf0[h], uint64(clients[h].Got.Load())
		t.Logf("leaf %s sent %d bytes; its client received %d", h, sent, recv)
		// The leaves count frames (headers) and what their queues still
		// held when the clients closed (128 KiB and 500 kB here).
		if sent < recv || sent > recv*11/10+2<<20 {
			t.Errorf("leaf %s sent %d bytes, want what its client received, %d", h, sent, recv)
		}
		sum, got = sum+sent, got+recv
	}
	gotS := uint64(clients[SlowClass].Got.Load())
	t.Logf("slow class: %d bytes (tc -s says %d); its leaves %d; a flow classified into the slow class itself received %d (through the fast class)", after-before, tcBytes, sum, gotS)
	if after-before != sum || after != tcBytes {
		t.Errorf("the slow class moved by %d (tc: %d), want the sum of its leaves %d", after-before, tcBytes, sum)
	}
	if gotS < 10*got {
		t.Errorf("a flow classified into the inner slow class received %d bytes: want it in the fast class (HTB's default), far more than the slow leaves' %d", gotS, got)
	}
	if _, err := k.ClassBytes("eth0", NewHandle(RootMajor, 0x99)); err == nil {
		t.Error("ClassBytes of a class that does not exist: want an error")
	}
}
