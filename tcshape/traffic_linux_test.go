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
	cfg := Config{FastRate: mustRate(t, "10gbit"), SlowRate: mustRate(t, "8mbit")}
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
	t.Logf("fast class / no qdisc at 2 Gbit/s: %.3f; raw veth (10gbit fast class / no qdisc): %.3f", hw/base, hwRaw/baseRaw)
	if hw < 0.9*base {
		t.Errorf("fast class gets %s, less than 0.9x the %s without hubwarden", nstest.Mbit(hw), nstest.Mbit(base))
	}
}

// TestIntegrationClassBytes checks the slow class's byte counter the
// watcher charges the pod bucket with: it moves by what the class sent.
func TestIntegrationClassBytes(t *testing.T) {
	nstest.SkipUnlessRoot(t, "tc", "iptables")
	p := nstest.NewPair(t, 32)
	p.Pod.ServeBulk(8888)
	k, cfg := openPod(t, p, Config{FastRate: mustRate(t, "10gbit"), SlowRate: mustRate(t, "8mbit")})
	if _, err := Apply(context.Background(), k, mustPlan(t, k, cfg), zerolog.Nop(), false); err != nil {
		t.Fatal(err)
	}
	// Every packet of the pod's server to the slow class.
	p.Pod.MustRun("iptables", "-t", "mangle", "-A", "POSTROUTING", "-o", "eth0", "-p", "tcp", "--sport", "8888",
		"-j", "CLASSIFY", "--set-class", SlowClass.String())
	before, err := k.ClassBytes("eth0", SlowClass)
	if err != nil {
		t.Fatal(err)
	}
	b := p.Peer.StartBulk(net.JoinHostPort(p.PodIP4, "8888"), 0)
	time.Sleep(time.Second)
	b.Close()
	// Once the class has drained (the counter stands still), the two
	// readings are of the same thing.
	var after, tcBytes uint64
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		a, err := k.ClassBytes("eth0", SlowClass)
		if err != nil {
			t.Fatal(err)
		}
		if a == after {
			break
		}
		after = a
	}
	tcBytes, _ = p.Pod.ClassSent("eth0", SlowClass.String())
	got := b.Got.Load()
	t.Logf("slow class: %d bytes (tc -s says %d); the client received %d", after-before, tcBytes, got)
	if after-before < uint64(got) || after-before > uint64(got)+256<<10 || after != tcBytes {
		t.Errorf("ClassBytes moved by %d (tc: %d), want what the class sent: at least the %d bytes received", after-before, tcBytes, got)
	}
	if _, err := k.ClassBytes("eth0", NewHandle(RootMajor, 0x99)); err == nil {
		t.Error("ClassBytes of a class that does not exist: want an error")
	}
}
