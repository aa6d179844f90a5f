package ctwatch

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/units"
)

const mib = float64(units.MiB)

// TestSimNewFlowLineRate: a new flow at line rate never sends more than the
// flow budget fast, whether the watcher is prompt, late or dead; a prompt
// watcher's re-arms along the way cost it little of the budget.
func TestSimNewFlowLineRate(t *testing.T) {
	for _, delay := range []time.Duration{0, time.Millisecond, 100 * time.Millisecond, -1} {
		t.Run(fmt.Sprint(delay), func(t *testing.T) {
			cfg := testConfig(t)
			s := newSim(t, cfg)
			s.k.delay = delay
			f := s.add(true, 0, xfer{at: 0, size: 256 * mib})
			s.run(3 * time.Second)
			budget := float64(cfg.Contract.Budget())
			t.Logf("event delay %v: fast %.2f MiB of a %.0f MiB budget, then slow %.2f MiB; %d events", delay, f.fast/mib, budget/mib, f.slow/mib, s.k.events)
			if f.fast > budget+pkt {
				t.Errorf("fast %.0f bytes, over the %.0f byte budget", f.fast, budget)
			}
			// The last tier a prompt watcher arms is below its bucket by
			// at most a tier's step (the smallest tier, 1 MiB), plus a
			// packet per re-arm.
			if delay >= 0 && delay <= time.Millisecond && f.fast < budget-2*mib {
				t.Errorf("a prompt watcher demoted after %.2f MiB, more than 2 MiB early", f.fast/mib)
			}
			if delay < 0 && f.fast < budget-pkt {
				t.Errorf("without the watcher the tripwire demoted after %.2f MiB, want the budget", f.fast/mib)
			}
			if f.slow == 0 {
				t.Error("the flow was never slowed")
			}
		})
	}
}

// TestSimWatchedFlowLineRate is issue 21's case: a kept-alive connection the
// watcher has taken over (re-armed) bursts at line rate. The kernel holds
// its budget: the fast bytes of the burst stay within what its bucket
// holds, plus 5% or 1 MiB, however late the watcher is.
func TestSimWatchedFlowLineRate(t *testing.T) {
	for _, delay := range []time.Duration{0, time.Millisecond, 100 * time.Millisecond, -1} {
		t.Run(fmt.Sprint(delay), func(t *testing.T) {
			cfg := testConfig(t)
			s := newSim(t, cfg)
			f := s.add(true, 0, xfer{at: 0, size: 40 * mib}, xfer{at: 5 * time.Second, size: 256 * mib})
			s.run(4 * time.Second)
			// What the bucket holds at the burst: 64 MiB less the first
			// transfer, refilled at 1 MiB/s since it ended.
			first := f.fast
			if f.slow > 0 || first < 40*mib {
				t.Fatalf("the first transfer was slowed: fast %.2f slow %.2f", f.fast/mib, f.slow/mib)
			}
			s.k.delay = delay // from now on: the watcher prompt, late, or dead
			s.run(5 * time.Second)
			s.k.delay = max(delay, 0)
			s.run(6 * time.Second)
			burst := f.fast - first
			tokens := 64*mib - 40*mib + 5*mib // refilled over the ~5 s in between
			limit := tokens + math.Max(0.05*tokens, mib)
			t.Logf("event delay %v: the burst sent %.2f MiB fast against a bucket of about %.2f MiB (%+.1f%%)", delay, burst/mib, tokens/mib, 100*(burst/tokens-1))
			if burst > limit {
				t.Errorf("the burst sent %.2f MiB fast, over its bucket %.2f MiB by more than 5%% or 1 MiB", burst/mib, tokens/mib)
			}
			if burst < 0.5*tokens {
				t.Errorf("the burst was demoted after %.2f MiB of a %.2f MiB bucket", burst/mib, tokens/mib)
			}
		})
	}
}

// TestSimRegularUse: two hours of heavy interactive use over the proxy's
// kept-alive connections (a notebook every 10 s, API polls, kernel output,
// a plot every 30 s; about 200 KiB/s) is never demoted, and costs the
// watcher few reads.
func TestSimRegularUse(t *testing.T) {
	cfg := testConfig(t)
	s := newSim(t, cfg)
	const hours = 2
	var xs [4][]xfer
	for at := time.Duration(0); at < hours*time.Hour; at += 10 * time.Second {
		xs[0] = append(xs[0], xfer{at: at, size: 1.5 * mib}) // a notebook
		xs[1] = append(xs[1], xfer{at: at + 2*time.Second, size: 20 << 10})
		xs[2] = append(xs[2], xfer{at: at + 5*time.Second, size: 64 << 10}) // kernel output
		if at%(30*time.Second) == 0 {
			xs[3] = append(xs[3], xfer{at: at + 7*time.Second, size: 200 << 10})
		}
	}
	var fs []*kflow
	for i := range xs {
		f := s.add(true, 0, xs[i]...)
		f.maxRate = 50e6 // a proxy path
		fs = append(fs, f)
	}
	s.run(hours * time.Hour)
	var fast, slow float64
	for _, f := range fs {
		fast += f.fast
		slow += f.slow
	}
	st := s.w.Stats()
	t.Logf("%d h: %.0f MiB fast, %.0f bytes slow; %d re-arms, %d demotions, %d events", hours, fast/mib, slow, st.Rearms, st.Demotions, s.k.events)
	if slow > 0 || st.Demotions > 0 {
		t.Errorf("regular use was demoted: %.0f slow bytes, %d demotions", slow, st.Demotions)
	}
	if d := s.lines("demote"); len(d) > 0 {
		t.Errorf("demotion lines: %v", d)
	}
}

// TestSimChurn: a new connection per MiB at line rate moves the pod bucket
// fast and then only its refill; the kernel quota holds it even when the
// watcher is dead (no refill at all then).
func TestSimChurn(t *testing.T) {
	for _, delay := range []time.Duration{0, -1} {
		t.Run(fmt.Sprint(delay), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.PodBudget = 32 * units.MiB
			cfg.PodRefill = 64 * units.Rate(units.KiB)
			s := newSim(t, cfg)
			s.k.limit = uint64(cfg.PodBudget)
			s.k.delay = delay
			var fs []*kflow
			const d = 8 * time.Second
			for at := time.Duration(0); at < d; at += 2 * time.Millisecond {
				fs = append(fs, s.add(true, at+time.Millisecond, xfer{at: at, size: mib}))
			}
			s.run(d + time.Second)
			var fast, slow float64
			for _, f := range fs {
				fast += f.fast
				slow += f.slow
			}
			bound := float64(cfg.PodBudget) + float64(cfg.PodRefill)*d.Seconds()
			t.Logf("watcher delay %v: %d connections, %.2f MiB fast (bound %.2f MiB: budget + refill), %.2f MiB slow", delay, len(fs), fast/mib, bound/mib, slow/mib)
			if fast > bound+pkt {
				t.Errorf("churn moved %.2f MiB fast, over the %.2f MiB bound", fast/mib, bound/mib)
			}
			if delay < 0 && fast > float64(cfg.PodBudget)+pkt {
				t.Errorf("with the watcher dead churn moved %.2f MiB fast, over the pod budget (nothing refills it)", fast/mib)
			}
		})
	}
}

// TestSimPromotion: a kept-alive connection demoted by a download is
// promoted once idle, so the next ordinary request on it is fast again.
func TestSimPromotion(t *testing.T) {
	cfg := testConfig(t)
	s := newSim(t, cfg)
	f := s.add(true, 0, xfer{at: 0, size: 80 * mib}, xfer{at: 200 * time.Second, size: 2 * mib})
	s.run(190 * time.Second)
	if f.slow == 0 {
		t.Fatal("the download was not demoted")
	}
	slowBefore := f.slow
	s.run(210 * time.Second)
	p := s.lines("promote")
	t.Logf("fast %.2f MiB, slow %.2f MiB; promotions %v", f.fast/mib, f.slow/mib, p)
	if len(p) == 0 || p[0][FieldWhy] != "idle" {
		t.Fatalf("no idle promotion: %v", p)
	}
	if f.slow != slowBefore {
		t.Errorf("the request after the idle spell sent %.0f bytes slow", f.slow-slowBefore)
	}
}

// TestSimRestart: a restarted watcher adopts an ongoing download with what
// the kernel still allows it, never a new budget.
func TestSimRestart(t *testing.T) {
	cfg := testConfig(t)
	s := newSim(t, cfg)
	f := s.add(true, 0, xfer{at: 0, size: 512 * mib})
	f.maxRate = 20e6 // 20 MB/s: the budget lasts about 3 s
	s.run(1500 * time.Millisecond)
	s.restart()
	s.run(2500 * time.Millisecond)
	s.restart()
	s.run(8 * time.Second)
	budget := float64(cfg.Contract.Budget())
	t.Logf("fast %.2f MiB of a %.0f MiB budget across two restarts", f.fast/mib, budget/mib)
	if f.fast > budget+3*8*mib { // the refill over 8 s at most
		t.Errorf("the restarts handed the download a new budget: %.2f MiB fast", f.fast/mib)
	}
	if f.fast > budget+8*mib+pkt {
		t.Errorf("fast %.2f MiB, over the budget plus 8 s of refill", f.fast/mib)
	}
}

// TestSimMaxFlows: beyond MaxFlows tracked flows, demoted ones are parked
// (stay demoted, out of the watcher's reads) and busy ones demoted.
func TestSimMaxFlows(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxFlows = 4
	cfg.PodBudget = 8 * units.MiB
	s := newSim(t, cfg)
	s.k.limit = 0 // the gate closed: every flow that sends is demoted
	var fs []*kflow
	for i := range 10 {
		fs = append(fs, s.add(true, 0, xfer{at: time.Duration(i) * time.Millisecond, size: 64 << 10}))
	}
	s.run(3 * time.Second)
	st := s.w.Stats()
	parked := 0
	for _, f := range fs {
		if f.c.Mark&cfg.Contract.Demoted() == 0 {
			t.Errorf("flow %d not demoted: mark %#x", f.c.ID, f.c.Mark)
		}
		if f.c.Mark&cfg.Contract.Attention() == 0 {
			parked++
		}
	}
	t.Logf("tracked %d, parked %d (stats %d)", st.Flows, parked, st.Parked)
	if st.Flows > cfg.MaxFlows || parked != 10-cfg.MaxFlows || st.Parked != uint64(parked) {
		t.Errorf("tracked %d (max %d), parked %d, stats.Parked %d", st.Flows, cfg.MaxFlows, parked, st.Parked)
	}
}

// TestSimFlowEnd: every flow gets a final record, tracked or not.
func TestSimFlowEnd(t *testing.T) {
	cfg := testConfig(t)
	s := newSim(t, cfg)
	small := s.add(false, 2*time.Second, xfer{at: 0, size: 100 << 10})
	big := s.add(true, 5*time.Second, xfer{at: 0, size: 40 * mib})
	s.run(10 * time.Second)
	ends := s.lines("flow_end")
	if len(ends) != 2 {
		t.Fatalf("flow_end lines: %v", ends)
	}
	for _, e := range ends {
		id := uint32(e[FieldFlowID].(float64))
		want := small
		if id == big.c.ID {
			want = big
		}
		sent := e[FieldSentBytes].(float64)
		t.Logf("flow %d: sent %.0f (model %.0f), tracked %v", id, sent, want.fast+want.slow, e[FieldTracked])
		if sent != want.fast+want.slow {
			t.Errorf("flow %d: flow_end says %.0f bytes sent, the model %.0f", id, sent, want.fast+want.slow)
		}
		if (id == big.c.ID) != e[FieldTracked].(bool) {
			t.Errorf("flow %d: tracked %v", id, e[FieldTracked])
		}
	}
}

// TestSimSlowCharged: the slow class's bytes are charged to the pod bucket
// as they leave, once: a demoted flow at the slow rate for a minute drains
// the bucket by its rate less the refill.
func TestSimSlowCharged(t *testing.T) {
	cfg := testConfig(t)
	cfg.PodRefill = 64 * units.Rate(units.KiB) // below the slow rate
	s := newSim(t, cfg)
	f := s.add(true, 0, xfer{at: 0, size: 1024 * mib})
	s.run(5 * time.Second)
	level0 := s.w.Stats().PodTokens
	slow0 := s.k.slowSum
	s.run(65 * time.Second)
	level1 := s.w.Stats().PodTokens
	slow := float64(s.k.slowSum - slow0)
	want := level0 + float64(cfg.PodRefill)*60 - slow
	t.Logf("a minute of a demoted flow: %.0f slow bytes; pod level %.0f -> %.0f (want %.0f); fast %.0f", slow, level0, level1, want, f.fast)
	if math.Abs(level1-want) > float64(cfg.PodRefill)*0.5 {
		t.Errorf("pod level %.0f, want %.0f: slow bytes charged %s", level1, want, map[bool]string{true: "too much", false: "too little"}[level1 < want])
	}
}

// TestSimLongLivedFlow: a connection kept alive for ten minutes of ordinary
// use (1 MiB a minute), then a download: its bucket refilled all along, so
// the download gets the whole budget fast, less at most the eighth of it
// the watcher cannot vouch for before it first sees the flow.
func TestSimLongLivedFlow(t *testing.T) {
	cfg := testConfig(t)
	s := newSim(t, cfg)
	var xs []xfer
	for at := time.Duration(0); at < 10*time.Minute; at += time.Minute {
		xs = append(xs, xfer{at: at, size: mib})
	}
	xs = append(xs, xfer{at: 11 * time.Minute, size: 200 * mib})
	f := s.add(true, 0, xs...)
	s.run(11 * time.Minute)
	before := f.fast
	s.run(12 * time.Minute)
	burst := f.fast - before
	budget := float64(cfg.Contract.Budget())
	t.Logf("after 10 MiB over 10 minutes, the download sent %.2f MiB fast of a %.0f MiB budget", burst/mib, budget/mib)
	if burst > budget+pkt || burst < budget*7/8-mib {
		t.Errorf("the download sent %.2f MiB fast; want the budget less at most an eighth", burst/mib)
	}
}

// TestSimEventsLost: a DESTROY event the kernel dropped leaves a tracked
// flow behind until the watcher hears that events were lost; then an
// unfiltered dump finds the flow gone and writes its record, and the loss
// is counted for the metrics.
func TestSimEventsLost(t *testing.T) {
	cfg := testConfig(t)
	s := newSim(t, cfg)
	f := s.add(true, 3*time.Second, xfer{at: 0, size: 40 * mib})
	s.run(2 * time.Second)
	if s.w.Stats().Flows != 1 {
		t.Fatalf("the busy flow is not tracked: %+v", s.w.Stats())
	}
	s.k.delay = -1 // its DESTROY is lost
	s.run(5 * time.Second)
	s.k.delay = 0
	if s.w.Stats().Flows != 1 || len(s.lines("flow_end")) != 0 {
		t.Fatalf("without the event the flow should still be tracked: %+v", s.w.Stats())
	}
	s.w.EventsLost()
	s.run(7 * time.Second)
	st := s.w.Stats()
	ends := s.lines("flow_end")
	t.Logf("after the loss: %d tracked, %d lost reports, flow_end %v", st.Flows, st.EventsLost, ends)
	if st.Flows != 0 || st.EventsLost != 1 || len(ends) != 1 || ends[0][FieldFinal] != false {
		t.Errorf("tracked %d, lost %d, flow_end lines %v", st.Flows, st.EventsLost, ends)
	}
	// The kernel's counters went with the entry: the record carries the
	// last ones the watcher read (final_counters false), never more than
	// left and at least what had left by its last look.
	if got := ends[0][FieldSentBytes].(float64); got > f.fast+f.slow || got < 16*mib {
		t.Errorf("flow_end says %.0f bytes, the model %.0f sent", got, f.fast+f.slow)
	}
}

// TestSimEventsBackstop is issue 20's watcher: with the kernel's events a
// dump, which walks the node's whole conntrack hash, comes only every 10 s
// as a backstop; a demoted flow is read on its own every DumpInterval and
// promoted as soon after it goes idle as with a dump a DumpInterval.
func TestSimEventsBackstop(t *testing.T) {
	for _, dumpOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("dumpOnly=%v", dumpOnly), func(t *testing.T) {
			cfg := testConfig(t)
			s := &sim{t: t, cfg: cfg, start: t0, dumpOnly: dumpOnly}
			s.k = newKernel(t, cfg.Contract, uint64(cfg.PodBudget))
			s.restart()
			f := s.add(true, 0, xfer{at: 0, size: 66 * mib}, xfer{at: 100 * time.Second, size: 2 * mib})
			var end time.Duration
			for d := 100 * time.Millisecond; d < 100*time.Second && end == 0; d += 100 * time.Millisecond {
				s.run(d)
				if f.slow > 0 && !f.sending {
					end = d
				}
			}
			if end == 0 {
				t.Fatal("the download did not end")
			}
			walks0 := s.w.Stats().Walks
			s.run(100 * time.Second)
			st := s.w.Stats()
			walks := st.Walks - walks0
			p := s.lines("promote")
			if len(p) == 0 {
				t.Fatal("no promotion")
			}
			at := time.Duration(p[0]["duration_s"].(float64) * float64(time.Second))
			t.Logf("download ended at %v, promoted at %v (%v later); %d dumps in the %v after, %d reads in all", end, at, at-end, walks, 100*time.Second-end, st.Reads)
			// Promotion: PromoteIdle after the last read that saw it send,
			// which is at most DumpInterval before it stopped, plus the
			// sim's steps.
			if late := at - end; late > cfg.PromoteIdle+cfg.DumpInterval+200*time.Millisecond {
				t.Errorf("promoted %v after the download ended, want at most PromoteIdle + DumpInterval", late)
			}
			span := 100*time.Second - end
			if dumpOnly {
				if least := uint64(span/cfg.DumpInterval) - 2; walks < least {
					t.Errorf("%d dumps without events in %v, want at least %d", walks, span, least)
				}
			} else if most := uint64(span/backstopEvery) + 1; walks > most {
				t.Errorf("%d dumps with events in %v, want at most %d (one every %v)", walks, span, most, backstopEvery)
			}
			if f.slow > 0 && s.lines("promote")[0]["why"] != "idle" {
				t.Errorf("promotion %v", p[0])
			}
		})
	}
}

// TestSimManyDemoted: with more demoted flows than the watcher reads one by
// one, it dumps every DumpInterval again, and reads them one by one once
// they are few.
func TestSimManyDemoted(t *testing.T) {
	cfg := testConfig(t)
	cfg.Contract = testContract(t, 2*units.MiB)
	s := newSim(t, cfg)
	var fs []*kflow
	for range maxDemotedReads + 44 {
		fs = append(fs, s.add(true, 0, xfer{at: 0, size: 3 * mib}))
	}
	s.run(2 * time.Second)
	if n := s.w.policy.Demoted(); n <= maxDemotedReads || s.w.reading {
		t.Fatalf("%d flows demoted, reading them one by one %v; want more than %d, dumps", n, s.w.reading, maxDemotedReads)
	}
	w0 := s.w.Stats().Walks
	s.run(12 * time.Second)
	if w := s.w.Stats().Walks - w0; w < 9 {
		t.Errorf("%d dumps in 10 s with %d demoted flows, want one a DumpInterval", w, s.w.policy.Demoted())
	}
	// Most of them end: the few left are read one by one again.
	for _, f := range fs[:100] {
		f.queue, f.sending, f.closeAt = nil, false, time.Second
	}
	s.run(30 * time.Second)
	if n := s.w.policy.Demoted(); n > maxDemotedReads || !s.w.reading {
		t.Errorf("%d flows demoted, reading them one by one %v; want at most %d, reading", n, s.w.reading, maxDemotedReads)
	}
}
