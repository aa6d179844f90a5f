// Package demotion is the kernel half of hubwarden's demotion policy and the
// contract between it and the conntrack watcher.
//
// The contract is one value, Contract, built once from the configuration
// and given to both sides, so that the rules the kernel runs and the marks
// the watcher reads and writes cannot disagree:
//
//   - the demoted bit D (HUBWARDEN_CTMARK): a flow with D set is in the slow
//     class (CLASSIFY);
//   - the attention bit A (D<<1): the kernel sets it when a flow needs the
//     watcher (it has been demoted, or it is half way to its tripwire); the
//     watcher reads only flows with A set, filtered in the kernel, so flows
//     that send little cost it nothing;
//   - the tier, four bits above A: which of 16 tripwire thresholds guards
//     the flow. A new flow is in tier 0, whose threshold is the flow budget
//     counted from the flow's start. When the watcher takes a flow over (at
//     the busy mark, at promotion), it zeroes the flow's conntrack counters
//     and puts it in the tier whose threshold is the largest at or below
//     what the flow's token bucket holds. The kernel then demotes the flow
//     at the packet that reaches that threshold: a flow's budget is never
//     exceeded, whether the watcher is quick, late, starved or dead.
//
// The pod's aggregate budget is a kernel byte quota (nftables, QuotaGate)
// that every fast packet is counted against; the watcher only raises it by
// the refill. A kernel without nftables quotas falls back to an xt_recent
// gate that the watcher must keep refreshing (RecentGate): a dead watcher
// closes it.
//
// The plan code (Contract, MangleTables, QuotaGate) is pure; the kernel code
// is in *_linux.go. See docs/shaping.md and docs/watcher.md.
package demotion

import (
	"fmt"
	"math"
	"math/bits"

	"github.com/hubwarden/hubwarden/units"
)

// Tiers is the number of tripwire thresholds.
const Tiers = 16

// tierFraction is each tier's threshold as a fraction of the flow budget:
// sixteenths at the top, where the tokens of flows in ordinary use are (a
// tier costs such a flow at most a sixteenth of its budget), halving below,
// down to 1/64: below that, a flow is demoted rather than given a threshold
// above its tokens.
var tierFraction = [Tiers][2]uint64{
	{1, 1}, {15, 16}, {7, 8}, {13, 16}, {3, 4}, {11, 16}, {5, 8}, {9, 16},
	{1, 2}, {3, 8}, {1, 4}, {3, 16}, {1, 8}, {1, 16}, {1, 32}, {1, 64},
}

// MinFlowBudget is the smallest flow budget: every tier's threshold must be
// at least 1 KiB, so that the thresholds are distinct and above one packet.
const MinFlowBudget = 64 * units.KiB

// ownedBits is how many mark bits the contract owns: D, A and the tier.
const ownedBits = 6

// MaxCTMark is the highest demoted bit: the five bits above it are owned too.
const MaxCTMark = uint32(1) << (32 - ownedBits)

// Contract is the demotion contract: the mark bits and the thresholds.
// The zero value is not valid; use New.
type Contract struct {
	demoted   uint32
	threshold [Tiers]uint64
}

// New builds the contract for the demoted bit ctmark and the flow budget.
func New(ctmark uint32, flowBudget units.Size) (Contract, error) {
	if bits.OnesCount32(ctmark) != 1 || ctmark > MaxCTMark {
		return Contract{}, fmt.Errorf("the ctmark %#x must be a single bit at most %#x (hubwarden owns it and the %d bits above it)", ctmark, MaxCTMark, ownedBits-1)
	}
	if flowBudget < MinFlowBudget {
		return Contract{}, fmt.Errorf("the flow budget %s is below the minimum %s (its smallest tripwire tier, 1/64 of it, must be at least 1KiB)", flowBudget, MinFlowBudget)
	}
	c := Contract{demoted: ctmark}
	for k, f := range tierFraction {
		c.threshold[k] = uint64(flowBudget) / f[1] * f[0]
	}
	return c, nil
}

// Demoted returns the demoted bit D.
func (c Contract) Demoted() uint32 { return c.demoted }

// Attention returns the attention bit A.
func (c Contract) Attention() uint32 { return c.demoted << 1 }

// TierMask returns the mask of the tier field.
func (c Contract) TierMask() uint32 { return (Tiers - 1) * (c.demoted << 2) }

// Owned returns every bit of the contract: D, A and the tier field.
// hubwarden never changes any other bit of a flow's mark.
func (c Contract) Owned() uint32 { return c.demoted | c.Attention() | c.TierMask() }

// TierMark returns the tier field holding tier k.
func (c Contract) TierMark(k int) uint32 { return uint32(k) * (c.demoted << 2) }

// Tier returns the tier of a flow with mark.
func (c Contract) Tier(mark uint32) int {
	return int((mark & c.TierMask()) / (c.demoted << 2))
}

// Threshold returns the bytes a flow in tier k may send, counted from the
// flow's start or from its counters' last reset, before the kernel demotes
// it. Threshold(0) is the flow budget.
func (c Contract) Threshold(k int) uint64 { return c.threshold[k] }

// Budget returns the flow budget, the threshold of tier 0.
func (c Contract) Budget() uint64 { return c.threshold[0] }

// BusyAt returns the byte count at which the kernel sets the attention bit
// on a flow in tier k: half its threshold, so that the watcher can re-arm
// the flow with what its bucket has refilled before the tripwire fires. A
// flow in tier 0 that the watcher has never seen counts from its start, and
// the watcher cannot tell how long ago that was (a connection kept alive
// for hours has its bucket refilled many times over): it is taken over at
// an eighth of the budget, so that it loses at most that much of its
// refill.
func (c Contract) BusyAt(k int) uint64 {
	if k == 0 {
		return c.threshold[0] / 8
	}
	return c.threshold[k] / 2
}

// TierFor returns the tier whose threshold is the largest at or below
// tokens, and false when tokens are below the smallest threshold (the flow
// must be demoted).
func (c Contract) TierFor(tokens float64) (int, bool) {
	if math.IsNaN(tokens) {
		return 0, false
	}
	for k, t := range c.threshold {
		if float64(t) <= tokens {
			return k, true
		}
	}
	return Tiers - 1, false
}

// Arm returns the mark and mask that put a flow in tier k, not demoted and
// without the attention bit (a flow the watcher has just taken over).
func (c Contract) Arm(k int) (mark, mask uint32) { return c.TierMark(k), c.Owned() }

// Demote returns the mark and mask that demote a flow (D and A set; the
// tier is kept).
func (c Contract) Demote() (mark, mask uint32) {
	m := c.demoted | c.Attention()
	return m, m
}

// Park returns the mark and mask that clear a flow's attention bit and
// nothing else: a demoted flow the watcher cannot track stays demoted and
// out of its reads.
func (c Contract) Park() (mark, mask uint32) { return 0, c.Attention() }
