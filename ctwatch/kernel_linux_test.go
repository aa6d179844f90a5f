//go:build linux

package ctwatch

import (
	"context"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/internal/nstest"
	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/units"
	"github.com/hubwarden/hubwarden/xtables"
)

const itWatched = itMark << 1

// nsGate sets the pod gate from a thread in the pod's namespace: the gate's
// files are per network namespace, and the test process is in the host's.
type nsGate struct{ ns *nstest.NS }

func (g nsGate) Set(on bool) error {
	return g.ns.Do(func() error { return tcshape.PodGate{IPv6: true}.Set(on) })
}

// kernelRules applies hubwarden's mangle rules (tcshape.MangleTables: the
// tripwire at budget and the gate) in the pod, as the sidecar does, in
// front of the bed's own CLASSIFY rule (which wins: it runs last).
func (b *bed) kernelRules(budget units.Size) {
	b.t.Helper()
	tables, err := tcshape.MangleTables(tcshape.Config{Interface: "eth0", CTMark: itMark, WatchedMark: itWatched,
		Tripwire: true, TripwireBudget: budget, Gate: true, IPv6: true})
	if err != nil {
		b.t.Fatal(err)
	}
	x := xtables.New(xtables.NFT, xtables.ExecRunner{LockFile: filepath.Join(b.t.TempDir(), "xtables.lock")}, zerolog.Nop())
	if err := b.pair.Pod.Do(func() error {
		_, err := x.Apply(context.Background(), tables)
		return err
	}); err != nil {
		b.t.Fatal(err)
	}
	b.gate = nsGate{b.pair.Pod}
}

// kernelConfig is the bed's watcher configuration with the tripwire and
// the gate, as the sidecar runs it.
func (b *bed) kernelConfig(budget units.Size) Config {
	cfg := b.config()
	cfg.FlowBudget = budget
	cfg.Tripwire, cfg.WatchedMark, cfg.Gate = true, itWatched, true
	return cfg
}

// fastSent returns the bytes that left the pod undemoted, in both families,
// counted by the bed's counting rule in conntrack's units.
func (b *bed) fastSent() int64 {
	b.t.Helper()
	var n int64
	for _, ipt := range []string{"iptables", "ip6tables"} {
		out := b.pair.Pod.MustRun(ipt, "-t", "mangle", "-L", "POSTROUTING", "-v", "-x", "-n")
		m := regexp.MustCompile(`(?m)^\s*\d+\s+(\d+)\s.*hubwarden-test/fast-bytes`).FindStringSubmatch(out)
		if m == nil {
			b.t.Fatalf("no fast-bytes counter in %s's mangle POSTROUTING:\n%s", ipt, out)
		}
		v, _ := strconv.ParseInt(m[1], 10, 64)
		n += v
	}
	return n
}

// TestIntegrationKernelDemotion: with the tripwire, a download at line rate
// is demoted at its budget to within a packet, on IPv4 and IPv6, at 32 and
// 256 MiB: a counting rule after hubwarden's says how much left undemoted.
func TestIntegrationKernelDemotion(t *testing.T) {
	b := newBed(t, 53)
	for _, budget := range []units.Size{32 * units.MiB, 256 * units.MiB} {
		for _, fam := range []struct{ name, addr string }{{"IPv4", b.pair.PodIP4}, {"IPv6", b.pair.PodIP6}} {
			t.Run(fam.name+"/"+budget.String(), func(t *testing.T) {
				b.t = t
				b.kernelRules(budget)
				cfg := b.kernelConfig(budget)
				cfg.PodBudget = 4 * budget
				log := &auditLog{}
				b.runWatcher(cfg, log)
				cl := b.dial(fam.addr)
				if _, err := cl.get(1); err != nil {
					t.Fatal(err)
				}
				port := cl.orig().SrcPort
				fast0 := b.fastSent()
				start := time.Now()
				errc := make(chan error, 1)
				go func() { _, err := cl.get(int64(budget) + 16<<20); errc <- err }()
				// When the receiver has 99% of the budget: the fast phase's rate.
				nearly := make(chan time.Duration, 1)
				go func() {
					for cl.read.Load() < int64(budget)*99/100 {
						time.Sleep(100 * time.Microsecond)
					}
					nearly <- time.Since(start)
				}()
				poll(t, 20*time.Second, "the demotion", func() bool { return len(log.find("demote", port)) > 0 })
				d := log.find("demote", port)[0]
				// The slow phase: the bytes queued in the fast class drain
				// within milliseconds; then measure.
				time.Sleep(300 * time.Millisecond)
				fast := b.fastSent() - fast0
				fastDur := <-nearly
				r0, t0 := cl.read.Load(), time.Now()
				time.Sleep(time.Second)
				slowRate := float64(cl.read.Load()-r0) / time.Since(t0).Seconds()
				over := float64(fast-int64(budget)) / float64(budget)
				t.Logf("%s: %d bytes of the flow left undemoted: %+.4f%% of the %s budget; the demote line: by %v, reason %v, demoted_at %v; at %.0f MB/s (99%% of the budget in %s); then %.2f MB/s",
					fam.name, fast, 100*over, budget, d[FieldBy], d[FieldReason], d[FieldDemotedAt], 0.99*float64(budget)/fastDur.Seconds()/1e6, fastDur.Round(time.Millisecond), slowRate/1e6)
				if d[FieldBy] != "kernel" || d[FieldReason] != "flow_budget" || num(d, FieldDemotedAt) != float64(budget) {
					t.Errorf("demote line %v", d)
				}
				// The packet that reaches the budget (a GSO packet: up to
				// 64 KiB) goes slow; the handshake is before fast0, the
				// receiver's ACKs are not counted (they enter the pod).
				if fast < int64(budget)-64<<10 || fast > int64(budget)+16<<10 {
					t.Errorf("%d bytes left undemoted, want the %d byte budget to within a packet", fast, budget)
				}
				if slowRate > 2*itSlowRate {
					t.Errorf("after demotion %.0f B/s, above the slow rate", slowRate)
				}
				cl.c.Close()
				<-errc
			})
		}
	}
}

// TestIntegrationKernelPromotion: a kept-alive connection that the tripwire
// demoted, once idle, is promoted and watched: its later small requests are
// fast although it is far past the budget (connbytes counts from its start),
// and a second download on it is demoted again, by the watcher, after the
// tokens its bucket refilled.
func TestIntegrationKernelPromotion(t *testing.T) {
	b := newBed(t, 54)
	const budget = 32 * units.MiB
	b.kernelRules(budget)
	cfg := b.kernelConfig(budget)
	log := &auditLog{}
	w, _ := b.runWatcher(cfg, log)
	a := b.dial(b.pair.PodIP4)
	c := b.dial(b.pair.PodIP4) // never demoted
	const small = 64 << 10
	if _, err := a.get(int64(budget) + 1<<20); err != nil {
		t.Fatal(err)
	}
	port := a.orig().SrcPort
	poll(t, 2*time.Second, "the demotion", func() bool { return len(log.find("demote", port)) > 0 })
	sticky, err := a.get(small)
	if err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "the promotion", func() bool { return len(log.find("promote", port)) > 0 })
	p := log.find("promote", port)[0]
	f, err := b.conn.Get(context.Background(), a.orig())
	if err != nil || f.Mark&(itMark|itWatched) != itWatched {
		t.Fatalf("mark after promotion %#x (%v), want the watched bit alone", f.Mark, err)
	}
	ma, mc := alternate(t, 5, small, a, c)
	// A second download on the watched connection: its bucket refilled at
	// 1 MiB/s while it idled, so it goes slow after a few MiB, by the
	// watcher.
	r0 := a.read.Load()
	errc := make(chan error, 1)
	go func() { _, err := a.get(int64(budget)); errc <- err }()
	poll(t, 10*time.Second, "the second demotion", func() bool { return len(log.find("demote", port)) > 1 })
	d2 := log.find("demote", port)[1]
	second := a.read.Load() - r0
	a.c.Close()
	<-errc
	t.Logf("64 KiB on the demoted connection %s; after promotion (why %v, watched %v) %s, on a fresh one %s; the second download was demoted by the %v after %.0f bytes (flow tokens were %v at promotion); %d demotions, %d promotions",
		sticky.Round(time.Microsecond), p[FieldWhy], p[FieldWatched], ma.Round(time.Microsecond), mc.Round(time.Microsecond),
		d2[FieldBy], num(d2, FieldSentBytes)-num(p, FieldSentBytes), p[FieldFlowTok], w.Stats().Demotions, w.Stats().Promotions)
	if p[FieldWhy] != "idle" || p[FieldWatched] != true {
		t.Errorf("promote line %v", p)
	}
	if 10*ma > sticky || ma > 8*mc+5*time.Millisecond {
		t.Errorf("after promotion a small request took %s: the fresh connection took %s, the demoted one %s", ma, mc, sticky)
	}
	if d2[FieldBy] != "watcher" || second > int64(budget)/2 {
		t.Errorf("second download: demote line %v after %d bytes read", d2, second)
	}
}

// TestIntegrationGateChurn: a connection per chunk (the churn a user would
// try against per-flow budgets), at line rate, against a 16 MiB pod budget,
// for 3 s. Side by side: the watcher alone finds each new flow only after it
// sent (NEW events lost: the transmit-counter trigger), the gate demotes new
// flows from their first packet while the pod bucket is empty.
func TestIntegrationGateChurn(t *testing.T) {
	b := newBed(t, 55)
	const podBudget = 16 * units.MiB
	const chunk = 1 << 20
	const span = 3 * time.Second
	run := func(kernel bool) (fast int64, n int, dur time.Duration, gates uint64) {
		var cfg Config
		if kernel {
			b.kernelRules(64 * units.MiB)
			cfg = b.kernelConfig(64 * units.MiB)
		} else {
			cfg = b.config()
			cfg.FlowBudget = 64 * units.MiB
			b.gate = nil
		}
		cfg.PodBudget = podBudget
		cfg.PodRefill = 256 * units.Rate(units.KiB)
		cfg.StateDir = t.TempDir()
		log := &auditLog{}
		// Without events: the worst case, a kernel that drops them.
		w, stop := b.runWatcherNoEvents(cfg, log)
		fast0 := b.fastSent()
		start := time.Now()
		for time.Since(start) < span {
			cl := b.dial(b.pair.PodIP4)
			if _, err := cl.get(chunk); err != nil {
				t.Fatal(err)
			}
			cl.c.Close()
			n++
		}
		dur = time.Since(start)
		fast = b.fastSent() - fast0
		gates = w.Stats().GateSets
		stop()
		b.pair.Pod.MustRun("conntrack", "-F")
		return fast, n, dur, gates
	}
	fastW, nW, durW, _ := run(false)
	// The kernel rules stay in the namespace for the second run only.
	fastK, nK, durK, gates := run(true)
	// The watcher sets the gate at the first transmit-counter reading (one
	// a millisecond) that shows the pod bucket spent: allow 4 MiB, about
	// 5 ms at this bed's line rate, each time.
	boundK := float64(podBudget) + 256*1024*durK.Seconds() + float64(gates)*(4<<20)
	t.Logf("a new connection per MiB for %s: the watcher alone let %.1f MiB of %d through fast in %s; with the gate %.1f MiB of %d in %s (%d gate sets; bound %.1f MiB)",
		span, float64(fastW)/(1<<20), nW, durW.Round(time.Millisecond), float64(fastK)/(1<<20), nK, durK.Round(time.Millisecond), gates, boundK/(1<<20))
	if float64(fastK) > boundK {
		t.Errorf("with the gate %d bytes went fast, more than the pod budget and refill allow (%.0f)", fastK, boundK)
	}
	if gates == 0 {
		t.Errorf("the gate was never set")
	}
}

// TestIntegrationKernelRestart: a watcher restarted while a download the
// tripwire demoted is running adopts it, keeps it demoted, and does not give
// it its budget back (its bucket would start full: the history is the
// tripwire's).
func TestIntegrationKernelRestart(t *testing.T) {
	b := newBed(t, 57)
	const budget = 32 * units.MiB
	b.kernelRules(budget)
	cfg := b.kernelConfig(budget)
	log1 := &auditLog{}
	_, stop1 := b.runWatcher(cfg, log1)
	a := b.dial(b.pair.PodIP4)
	errc := make(chan error, 1)
	go func() { _, err := a.get(int64(budget) + 64<<20); errc <- err }()
	port := a.orig().SrcPort
	poll(t, 10*time.Second, "the demotion", func() bool { return len(log1.find("demote", port)) > 0 })
	stop1()
	log2 := &auditLog{}
	w2, _ := b.runWatcher(cfg, log2)
	r0 := a.read.Load()
	time.Sleep(2500 * time.Millisecond) // longer than PromoteIdle: a stays busy
	rate := float64(a.read.Load()-r0) / 2.5
	f, err := b.conn.Get(context.Background(), a.orig())
	ad := log2.find("adopt", port)
	t.Logf("after the restart: adopt lines %v; %d promote lines; the download ran at %.2f MB/s; mark %#x; stats %+v", ad, len(log2.find("promote", port)), rate/1e6, f.Mark, w2.Stats())
	if err != nil || f.Mark&itMark == 0 || len(log2.find("promote", port)) != 0 || rate > 2*itSlowRate {
		t.Errorf("the restarted watcher let the demoted download go (mark %#x, %v)", f.Mark, err)
	}
	if len(ad) != 1 || ad[0][FieldReason] != "flow_budget" {
		t.Errorf("adopt lines %v, want one with reason flow_budget", ad)
	}
	a.c.Close()
	<-errc
}
