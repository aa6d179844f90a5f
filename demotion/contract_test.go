package demotion

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hubwarden/hubwarden/units"
)

func mustContract(t testing.TB, mark uint32, budget units.Size) Contract {
	t.Helper()
	c, err := New(mark, budget)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		mark   uint32
		budget units.Size
		want   string
	}{
		{0, 64 * units.MiB, "single bit"},
		{0x300000, 64 * units.MiB, "single bit"},
		{1 << 27, 64 * units.MiB, "at most 0x4000000"},
		{0x100000, 63 * units.KiB, "below the minimum 64KiB"},
	} {
		_, err := New(tc.mark, tc.budget)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%#x, %s) = %v, want an error containing %q", tc.mark, tc.budget, err, tc.want)
		}
	}
}

func TestContractBits(t *testing.T) {
	c := mustContract(t, 0x100000, 64*units.MiB)
	got := []uint32{c.Demoted(), c.Attention(), c.TierMask(), c.Owned(), c.TierMark(0), c.TierMark(1), c.TierMark(15)}
	want := []uint32{0x100000, 0x200000, 0x3c00000, 0x3f00000, 0, 0x400000, 0x3c00000}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("bits (-want +got):\n%s", diff)
	}
	for k := range Tiers {
		// Other bits of the mark are someone else's and never change the tier.
		if got := c.Tier(c.TierMark(k) | c.Demoted() | 0xff | 0x80000000); got != k {
			t.Errorf("Tier(TierMark(%d) | others) = %d", k, got)
		}
	}
	if m, mask := c.Arm(3); m != c.TierMark(3) || mask != c.Owned() {
		t.Errorf("Arm(3) = %#x/%#x", m, mask)
	}
	if m, mask := c.Demote(); m != 0x300000 || mask != 0x300000 {
		t.Errorf("Demote() = %#x/%#x", m, mask)
	}
	if m, mask := c.Park(); m != 0 || mask != 0x200000 {
		t.Errorf("Park() = %#x/%#x", m, mask)
	}
	// The highest allowed demoted bit keeps the whole contract inside 32 bits.
	hi := mustContract(t, MaxCTMark, 64*units.MiB)
	if hi.Owned() != 0xfc000000 {
		t.Errorf("Owned() at MaxCTMark = %#x", hi.Owned())
	}
}

func TestThresholds(t *testing.T) {
	c := mustContract(t, 0x100000, 64*units.MiB)
	var got []uint64
	for k := range Tiers {
		got = append(got, c.Threshold(k)/uint64(units.MiB))
	}
	want := []uint64{64, 60, 56, 52, 48, 44, 40, 36, 32, 24, 16, 12, 8, 4, 2, 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("thresholds in MiB (-want +got):\n%s", diff)
	}
	if c.Budget() != 64<<20 || c.BusyAt(0) != 8<<20 || c.BusyAt(1) != 30<<20 || c.BusyAt(15) != 512<<10 {
		t.Errorf("Budget %d, BusyAt(0) %d, BusyAt(15) %d", c.Budget(), c.BusyAt(0), c.BusyAt(15))
	}
	for _, tc := range []struct {
		tokens float64
		tier   int
		ok     bool
	}{
		{64 << 20, 0, true},
		{math.Inf(1), 0, true},
		{64<<20 - 1, 1, true},
		{33 << 20, 8, true},
		{1 << 20, 15, true},
		{1<<20 - 1, 15, false},
		{0, 15, false},
		{-5, 15, false},
		{math.NaN(), 0, false},
	} {
		k, ok := c.TierFor(tc.tokens)
		if k != tc.tier || ok != tc.ok {
			t.Errorf("TierFor(%g) = %d, %v; want %d, %v", tc.tokens, k, ok, tc.tier, tc.ok)
		}
	}
}

// FuzzTierFor checks the invariant the kernel bound rests on: the tier
// chosen for a bucket never lets a flow send more than the bucket holds,
// and it is the best such tier.
func FuzzTierFor(f *testing.F) {
	f.Add(uint64(64<<20), float64(33<<20))
	f.Add(uint64(16<<20), float64(100))
	f.Add(uint64(64<<10), float64(64<<10))
	f.Fuzz(func(t *testing.T, budget uint64, tokens float64) {
		c, err := New(0x100000, units.Size(budget))
		if err != nil {
			return
		}
		k, ok := c.TierFor(tokens)
		for i := 1; i < Tiers; i++ {
			if c.Threshold(i) >= c.Threshold(i-1) || c.BusyAt(i) >= c.Threshold(i) {
				t.Fatalf("thresholds not strictly decreasing at %d: %d %d", i, c.Threshold(i-1), c.Threshold(i))
			}
		}
		if !ok {
			if tokens >= float64(c.Threshold(Tiers-1)) {
				t.Fatalf("TierFor(%g) refused with the smallest threshold %d", tokens, c.Threshold(Tiers-1))
			}
			return
		}
		if float64(c.Threshold(k)) > tokens {
			t.Fatalf("TierFor(%g) = %d, threshold %d above the tokens", tokens, k, c.Threshold(k))
		}
		if k > 0 && float64(c.Threshold(k-1)) <= tokens {
			t.Fatalf("TierFor(%g) = %d, but tier %d (%d) fits too", tokens, k, k-1, c.Threshold(k-1))
		}
	})
}
