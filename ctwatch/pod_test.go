package ctwatch

import (
	"math"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/units"
)

func TestQuotaBucket(t *testing.T) {
	cfg := testConfig(t)
	cfg.PodBudget = 10 * units.MiB
	cfg.PodRefill = units.Rate(units.MiB)
	b := NewQuotaBucket(cfg, math.NaN())
	if b.Level() != float64(cfg.PodBudget) || b.Closed() {
		t.Fatalf("a new bucket: level %.0f closed %v", b.Level(), b.Closed())
	}
	const M = 1 << 20
	type step struct {
		at                    time.Duration
		limit, consumed, slow uint64 // what the kernel reports (consumed capped at the limit)
		want                  uint64 // 0: no write
		level                 float64
		closed                bool
	}
	steps := []step{
		// Full, nothing sent: nothing to write.
		{0, 10 * M, 0, 0, 0, 10 * M, false},
		{time.Second, 10 * M, 0, 0, 0, 10 * M, false},
		// 4 MiB sent fast: a second of refill: limit = counted + 7 MiB.
		{2 * time.Second, 10 * M, 4 * M, 0, 11 * M, 7 * M, false},
		// 1 MiB left the slow class: charged, with 1 MiB of refill.
		{3 * time.Second, 11 * M, 4 * M, 1 * M, 0, 7 * M, false},
		// Spent: 7 MiB more counted, and 1 MiB slow; half a second of
		// refill: -0.5 MiB, the gate closed (limit = count).
		{3*time.Second + 500*time.Millisecond, 11 * M, 11 * M, 2 * M, 0, -512 << 10, true},
		// Another 2 MiB left slow while closed: the debt grows, though the
		// kernel shows its count capped at the limit.
		{4*time.Second + 500*time.Millisecond, 11 * M, 11 * M, 4 * M, 0, -1*M - 512<<10, true},
		// 2 s of refill: +0.5 MiB, below GateOffLevel (1 MiB): closed.
		{6*time.Second + 500*time.Millisecond, 11 * M, 11 * M, 4 * M, 0, 512 << 10, true},
		// 1 s more: 1.5 MiB, open: limit = count + 1.5 MiB.
		{7*time.Second + 500*time.Millisecond, 11 * M, 11 * M, 4 * M, 12*M + 512<<10, 1*M + 512<<10, false},
		// The slow class was created again (its counter restarted at 256 KiB).
		{8*time.Second + 500*time.Millisecond, 12*M + 512<<10, 11 * M, 256 << 10, 13*M + 256<<10, 2*M + 256<<10, false},
	}
	for i, s := range steps {
		next, write := b.Tick(t0.Add(s.at), s.limit, s.consumed, s.slow)
		if s.want == 0 && write || s.want != 0 && (!write || next != s.want) {
			t.Errorf("step %d: Tick = %d, %v; want %d", i, next, write, s.want)
		}
		if b.Level() != s.level || b.Closed() != s.closed {
			t.Errorf("step %d: level %.0f closed %v; want %.0f %v", i, b.Level(), b.Closed(), s.level, s.closed)
		}
	}
	fast, slow := b.Bytes()
	if fast != 11*M || slow != 4*M+256<<10 {
		t.Errorf("Bytes = %d, %d", fast, slow)
	}
	// A saved level below the kernel's (a debt) wins; one above does not.
	for _, tc := range []struct{ saved, want float64 }{{-3 * M, -3 * M}, {20 * M, 5 * M}} {
		b := NewQuotaBucket(cfg, tc.saved)
		b.Tick(t0, 10*M, 5*M, 0)
		if b.Level() != tc.want {
			t.Errorf("saved %.0f, kernel 5 MiB: level %.0f, want %.0f", tc.saved, b.Level(), tc.want)
		}
	}
}

func TestTxBucket(t *testing.T) {
	cfg := testConfig(t)
	cfg.PodBudget = 10 * units.MiB
	cfg.PodRefill = units.Rate(units.MiB)
	b := NewTxBucket(cfg, 2<<20)
	const M = 1 << 20
	for i, s := range []struct {
		at    time.Duration
		tx    uint64
		open  bool
		level float64
	}{
		{0, 100, true, 2 * M},
		{time.Second, 100 + 2*M, true, 1 * M},
		{1500 * time.Millisecond, 100 + 4*M, false, -1*M + 512<<10},
		{2 * time.Second, 100 + 4*M, false, 0},
		{3 * time.Second, 100 + 4*M, true, 1 * M}, // at GateOffLevel
		{100 * time.Second, 100 + 4*M, true, 10 * M},
	} {
		if open := b.Tick(t0.Add(s.at), s.tx); open != s.open || b.Level() != s.level {
			t.Errorf("step %d: open %v level %.0f; want %v %.0f", i, open, b.Level(), s.open, s.level)
		}
	}
	// A quarter of 10 MiB at 1 GB/s.
	if d, want := b.Next(1e9, 500*time.Millisecond), time.Duration(10*M/4)*time.Nanosecond; d != want {
		t.Errorf("Next with a full bucket = %v, want %v", d, want)
	}
	if d := b.Next(1e6, 500*time.Millisecond); d != 500*time.Millisecond {
		t.Errorf("Next at a slow line rate = %v, want the 500ms cap", d)
	}
	b.level = 1000
	if d := b.Next(1e9, 500*time.Millisecond); d != time.Millisecond {
		t.Errorf("Next with 1000 bytes left = %v, want the 1ms floor", d)
	}
}
