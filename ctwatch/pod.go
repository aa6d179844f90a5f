package ctwatch

import (
	"math"
	"time"
)

// The pod bucket bounds what the pod sends in all, over every flow: a token
// bucket of PodBudget bytes refilled at PodRefill. Two kinds keep it.
//
// QuotaBucket is the usual one: the kernel holds the bucket (demotion's
// quota gate), counting every fast byte against a quota and demoting the
// flows that send once it is spent; the watcher only raises the quota's
// limit by the refill and lowers it by the bytes the slow class sent. If the
// watcher is late, starved or dead, the refill is late or stops: the bound
// holds without it.
//
// TxBucket is the fallback for kernels without nftables quotas: the watcher
// keeps the bucket from the pod's transmit counter and keeps an xt_recent
// gate open while it holds tokens; the gate closes by itself when the
// watcher stops refreshing it.

// QuotaBucket keeps a pod bucket held in the kernel. It is pure: Tick
// takes the kernel's readings and returns what to write.
//
// The kernel enforces what the bucket holds: the quota's limit is what it
// has counted plus the bucket's level, so the quota runs out exactly when
// the bucket does. The level itself, debt included, is kept here: the
// kernel reports a spent quota's count as its limit (it caps what it dumps),
// so the debt of bytes that left the slow class while the gate was closed
// lives only in the watcher (and its state file, across restarts).
type QuotaBucket struct {
	budget, refill, offLevel float64

	at       time.Time // last Tick
	slow     uint64    // last reading of the slow class's byte counter
	consumed uint64    // last reading of the quota's count
	read     bool      // the readings above are set
	level    float64   // bytes in the bucket (negative: debt)
	closed   bool
	slowSum  uint64 // slow bytes charged since start
}

// NewQuotaBucket returns the keeper of cfg's pod bucket. level is what a
// state file saved (refilled for the time since), or NaN: the bucket then
// starts at what the kernel's quota holds.
func NewQuotaBucket(cfg Config, level float64) *QuotaBucket {
	cfg = cfg.withDefaults()
	b := &QuotaBucket{budget: float64(cfg.PodBudget), refill: float64(cfg.PodRefill), offLevel: float64(cfg.GateOffLevel)}
	b.level = level
	return b
}

// Tick takes the kernel's readings at now: the quota's limit and what it
// has counted, and the slow class's byte counter. It returns the limit to
// write, and false when the limit stays.
//
// The bytes the quota counted since the last Tick (fast bytes) and those
// the slow class sent (they leave the pod too, and count as what actually
// left, after the slow queue's drops) come out of the bucket; the refill
// since goes in, up to the budget. A closed gate opens again only at
// GateOffLevel: a churning client then gets a second of refill at once, not
// a trickle of single packets.
func (b *QuotaBucket) Tick(now time.Time, limit, consumed, slow uint64) (uint64, bool) {
	if !b.read {
		kernel := float64(limit) - float64(consumed)
		if math.IsNaN(b.level) || b.level > kernel {
			b.level = kernel
		}
		b.at, b.slow, b.consumed, b.read = now, slow, consumed, true
		b.closed = b.level <= 0
	} else {
		if dt := now.Sub(b.at).Seconds(); dt > 0 {
			b.level += b.refill * dt
		}
		b.at = now
		fast := consumed - b.consumed
		if consumed < b.consumed {
			fast = consumed // the quota was created again
		}
		d := slow - b.slow
		if slow < b.slow {
			d = slow // the class was created again: its counter restarted
		}
		b.level -= float64(fast) + float64(d)
		b.slowSum += d
		b.slow, b.consumed = slow, consumed
	}
	b.level = math.Min(b.level, b.budget)
	if b.closed {
		b.closed = b.level < b.offLevel
	} else {
		b.closed = b.level <= 0
	}
	next := consumed
	if !b.closed {
		next += uint64(math.Round(b.level))
	}
	if next == limit {
		return 0, false
	}
	return next, true
}

// Level returns the bucket's level at the last Tick (negative: debt).
func (b *QuotaBucket) Level() float64 {
	if !b.read {
		return b.budget
	}
	return b.level
}

// Closed says whether the gate was closed at the last Tick.
func (b *QuotaBucket) Closed() bool { return b.closed }

// Bytes returns what the pod has sent fast (the quota's count) and slow
// (the slow class, since the watcher started).
func (b *QuotaBucket) Bytes() (fast, slow uint64) { return b.consumed, b.slowSum }

// TxBucket keeps a pod bucket in userspace from the pod's transmit counter,
// and says when the recent gate must be open. It is pure.
type TxBucket struct {
	budget, refill, offLevel float64

	at    time.Time
	tx    uint64
	txSet bool
	level float64
	open  bool
	sent  uint64 // bytes the transmit counter moved since start
}

// NewTxBucket returns a bucket holding level bytes.
func NewTxBucket(cfg Config, level float64) *TxBucket {
	cfg = cfg.withDefaults()
	b := &TxBucket{budget: float64(cfg.PodBudget), refill: float64(cfg.PodRefill), offLevel: float64(cfg.GateOffLevel)}
	b.level = math.Min(level, b.budget)
	b.open = b.level > 0
	return b
}

// Tick takes the transmit counter at now (every byte that left the pod's
// interfaces but loopback) and says whether the gate must be open: it
// closes when the bucket is spent and opens again at GateOffLevel.
func (b *TxBucket) Tick(now time.Time, tx uint64) bool {
	if !b.at.IsZero() {
		if dt := now.Sub(b.at).Seconds(); dt > 0 {
			b.level = math.Min(b.budget, b.level+b.refill*dt)
		}
	}
	b.at = now
	if b.txSet && tx >= b.tx {
		d := tx - b.tx
		b.level -= float64(d)
		b.sent += d
	}
	b.tx, b.txSet = tx, true
	switch {
	case b.open && b.level <= 0:
		b.open = false
	case !b.open && b.level >= b.offLevel:
		b.open = true
	}
	return b.open
}

// Level returns the bucket's level at the last Tick.
func (b *TxBucket) Level() float64 { return b.level }

// Closed says whether the gate is closed.
func (b *TxBucket) Closed() bool { return !b.open }

// Next returns when to read the transmit counter again: soon enough that a
// burst at lineRate (bytes/s) spends at most a quarter of what is left,
// between 1 ms and max.
func (b *TxBucket) Next(lineRate float64, most time.Duration) time.Duration {
	if lineRate <= 0 {
		return most
	}
	d := time.Duration(math.Max(b.level, 0) / lineRate / 4 * float64(time.Second))
	return min(max(d, time.Millisecond), most)
}
