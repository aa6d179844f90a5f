// Package ctwatch is hubwarden's conntrack watcher: the userspace half of the
// demotion policy, beside the kernel half in package demotion.
//
// The kernel holds every bound (see package demotion): a tripwire demotes
// each flow at the threshold of its tier, and the pod's aggregate budget is
// a kernel quota (or, on kernels without one, a gate the watcher must keep
// refreshing). The watcher keeps the bookkeeping that makes those bounds
// fair to ordinary use:
//
//   - it keeps a token bucket per flow (burst FlowBudget, refill FlowRefill)
//     and re-arms a flow the kernel marked busy (half way to its tripwire):
//     it reads and zeroes the flow's counters and puts it in the tier of
//     what its bucket holds, so that a connection kept alive for hours (the
//     z2jh proxy's) is never demoted while its bucket refills;
//   - it promotes a demoted flow once it has been idle for PromoteIdle and
//     the pod bucket allows, so the next request on a kept-alive connection
//     is fast again;
//   - it refills the pod bucket and charges it with what the slow class sent;
//   - it writes the audit trail: one line per finished flow (every flow,
//     from conntrack's DESTROY events), demotion, promotion and gate change,
//     and progress lines for long flows.
//
// It reads only the flows the kernel marked for its attention (the dumps
// are filtered in the kernel by mark), so a flow that sends little costs it
// nothing, and it tracks at most MaxFlows: a flow beyond that is left to the
// kernel (a busy one demoted), never given more.
//
// The package has two halves. Policy and the buckets are pure: fed
// conntrack flows, readings and the time, they return the actions to take;
// they do no I/O and never read the clock. Watcher is the loop around them.
// See docs/watcher.md for the policy and its defaults, docs/audit.md for the
// audit fields.
package ctwatch

import (
	"net/netip"
	"time"

	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/units"
)

// idleBytes is how much a flow may send within PromoteIdle and still count
// as idle. An idle keep-alive connection is not silent: the peer's TCP
// keep-alive probes (Node's http.Agent, hence CHP, probes its idle upstream
// sockets every second) are each answered by a bare ACK from the pod, 52
// bytes a second that would otherwise keep a demoted flow from ever being
// promoted. Real traffic, even one small response at the slow rate, is
// larger.
const idleBytes = 4096

// Defaults of the Config fields that the sidecar does not set.
const (
	DefaultRefillInterval = 100 * time.Millisecond
	DefaultMaxFlows       = 8192
	DefaultSaveInterval   = 5 * time.Second
	// DefaultCheckAfter is how long a tracked flow may go unseen before the
	// watcher asks the kernel whether it still exists (its DESTROY event
	// may have been lost).
	DefaultCheckAfter = 5 * time.Minute
)

// Config is the watcher's configuration. The first group comes from the
// sidecar (HUBWARDEN_*); the second has defaults and exists for tests and
// tuning.
type Config struct {
	Contract         demotion.Contract // the mark bits and tripwire tiers, shared with the rules
	FlowRefill       units.Rate        // per-flow bucket refill (the burst is Contract.Budget())
	PodBudget        units.Size        // per-pod bucket burst
	PodRefill        units.Rate        // per-pod bucket refill
	PromoteIdle      time.Duration     // a demoted flow that sent nothing this long may be promoted
	DumpInterval     time.Duration     // gap between the filtered dumps (the truth when events are lost)
	ProgressInterval time.Duration     // gap between progress lines of a long-lived flow
	StateDir         string            // where a userspace pod bucket's level is saved; "" disables saving

	// LocalAddrs are the pod's own addresses. A flow whose original
	// destination is local was accepted by the pod, which sends in the reply
	// direction; otherwise the pod opened it and sends in the original
	// direction. Loopback addresses are always local.
	LocalAddrs []netip.Addr

	// PromoteLevel is the pod bucket level (bytes) at or above which idle
	// demoted flows are promoted. 0 means PodBudget/16.
	PromoteLevel units.Size
	// GateOffLevel is the pod bucket level at which a closed gate opens
	// again. 0 means one second of PodRefill, at least 64 KiB, at most
	// PromoteLevel.
	GateOffLevel units.Size
	// RefillInterval is the gap between two refills of a kernel-held pod
	// bucket, and the longest gap between two readings of the transmit
	// counter for a userspace one. 0 means DefaultRefillInterval.
	RefillInterval time.Duration
	// LineRate is the fastest the pod can send (bytes/s): a userspace pod
	// bucket is read often enough that a burst at this rate spends at most a
	// quarter of what is left. 0 means 1.25 GB/s.
	LineRate units.Rate
	// MaxFlows is how many flows the watcher tracks at most. 0 means
	// DefaultMaxFlows.
	MaxFlows int
	// CheckAfter: see DefaultCheckAfter. 0 means DefaultCheckAfter.
	CheckAfter time.Duration
	// SaveInterval is the gap between two saves of a userspace pod bucket's
	// level. 0 means DefaultSaveInterval.
	SaveInterval time.Duration
}

func (c Config) withDefaults() Config {
	if c.PromoteLevel == 0 {
		c.PromoteLevel = c.PodBudget / 16
	}
	if c.GateOffLevel == 0 {
		c.GateOffLevel = min(max(units.Size(c.PodRefill), 64*units.KiB), c.PromoteLevel)
	}
	if c.RefillInterval <= 0 {
		c.RefillInterval = DefaultRefillInterval
	}
	if c.LineRate == 0 {
		c.LineRate = 1_250_000_000
	}
	if c.MaxFlows <= 0 {
		c.MaxFlows = DefaultMaxFlows
	}
	if c.CheckAfter <= 0 {
		c.CheckAfter = DefaultCheckAfter
	}
	if c.SaveInterval <= 0 {
		c.SaveInterval = DefaultSaveInterval
	}
	if c.DumpInterval <= 0 {
		c.DumpInterval = time.Second
	}
	if c.PromoteIdle <= 0 {
		c.PromoteIdle = 2 * time.Second
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = time.Minute
	}
	return c
}
