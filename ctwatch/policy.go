package ctwatch

import (
	"math"
	"net/netip"
	"time"

	"github.com/hubwarden/hubwarden/conntrack"
	"github.com/hubwarden/hubwarden/demotion"
)

// flow is the policy's state of one tracked flow.
type flow struct {
	key         Key
	id          uint32
	inbound     bool
	local, peer netip.AddrPort
	start       time.Time
	seen        time.Time         // last observation
	sent, recv  conntrack.Counter // the kernel's counters at seen: since the flow's start or the last re-arm
	baseSent    conntrack.Counter // what the counters held before the last re-arm(s)
	baseRecv    conntrack.Counter
	tokens      float64 // the bucket's level at seen
	tier        int
	demoted     bool
	reason      Reason
	demotedAt   uint64
	demotions   uint32
	promotions  uint32
	fast, slow  uint64
	rate        float64   // bytes/s sent between the last two observations
	active      time.Time // last time the flow sent more than idleBytes within PromoteIdle
	quiet       uint64
	quietFrom   time.Time
	progress    time.Time
	progSent    uint64
	adopted     bool
	rearming    bool      // a Rearm is out: its Zeroed has not come back
	promoting   bool      // ... and it is for a promotion
	next        time.Time // when to re-arm it unasked (a better tier, or a check that it still exists)
	walkGen     uint64
	zeroedSince bool // its counters were reset while the watcher tracked it
}

// totalSent returns what the flow has sent since it started.
func (f *flow) totalSent() conntrack.Counter {
	return conntrack.Counter{Packets: f.baseSent.Packets + f.sent.Packets, Bytes: f.baseSent.Bytes + f.sent.Bytes}
}

func (f *flow) totalRecv() conntrack.Counter {
	return conntrack.Counter{Packets: f.baseRecv.Packets + f.recv.Packets, Bytes: f.baseRecv.Bytes + f.recv.Bytes}
}

// Stats is a snapshot of the watcher's counters, for metrics.
type Stats struct {
	Flows       int     // flows tracked now
	Demoted     int     // of which demoted now
	Demotions   uint64  // demotions by the kernel or the watcher
	Promotions  uint64  // promotions
	Rearms      uint64  // flows re-armed (counters zeroed, tier set)
	Parked      uint64  // flows left to the kernel because MaxFlows were tracked
	Finished    uint64  // final records written
	Gate        bool    // the pod gate is closed (the pod bucket is spent)
	GateCloses  uint64  // times the gate closed
	PodTokens   float64 // pod bucket level in bytes (negative: in debt)
	PodBudget   uint64  // pod bucket burst in bytes
	FastBytes   uint64  // bytes the pod sent on flows that were not demoted
	SlowBytes   uint64  // bytes the slow class sent
	Walks       uint64  // dumps read
	Reads       uint64  // flows read and zeroed one by one
	Events      uint64  // conntrack events taken
	EventsLost  uint64  // ErrEventsLost reports
	Errors      uint64  // failed reads and mark updates
	LastWalk    time.Time
	LastRefill  time.Time // last pod bucket tick
	RefillLate  time.Duration
	DumpLatency time.Duration
}

// Policy is the pure flow policy. It is not safe for concurrent use; the
// Watcher serialises access.
type Policy struct {
	cfg        Config
	c          demotion.Contract
	local      []netip.Addr
	flows      map[Key]*flow
	ended      map[Key]endedFlow
	acts       []Action
	started    bool
	gen        uint64 // of the walk in progress
	full       bool   // the walk in progress is unfiltered
	pod        float64
	gate       bool
	gateKnown  bool
	stats      Stats
	flowBudget float64
	flowRefill float64
	earliest   time.Time    // a lower bound of the flows' next (zero: none due)
	pending    map[Key]bool // flows first read (Rearm) and not tracked yet
	walkStart  time.Time    // when the dump being fed was asked for
	// readDemoted: demoted flows are read one by one every DumpInterval
	// (to promote them once idle) rather than found by dumps; the watcher
	// sets it while the kernel's events bring it every flow it must see.
	readDemoted bool
	nDemoted    int // tracked flows that are demoted
}

// NewPolicy returns a policy for cfg.
func NewPolicy(cfg Config) *Policy {
	cfg = cfg.withDefaults()
	p := &Policy{
		cfg:        cfg,
		c:          cfg.Contract,
		local:      cfg.LocalAddrs,
		flows:      map[Key]*flow{},
		ended:      map[Key]endedFlow{},
		pending:    map[Key]bool{},
		pod:        float64(cfg.PodBudget),
		flowBudget: float64(cfg.Contract.Budget()),
		flowRefill: float64(cfg.FlowRefill),
	}
	p.stats.PodBudget = uint64(cfg.PodBudget)
	return p
}

// Config returns the configuration with defaults filled in.
func (p *Policy) Config() Config { return p.cfg }

// SetReadDemoted says whether demoted flows are read one by one, every
// DumpInterval, to see when they go idle (on), or left to the dumps, which
// show them as often (off). A flow already scheduled keeps its time.
func (p *Policy) SetReadDemoted(on bool) { p.readDemoted = on }

// Demoted returns how many tracked flows are demoted.
func (p *Policy) Demoted() int { return p.nDemoted }

// scheduleDemoted sets when the demoted f is read next: after DumpInterval
// when demoted flows are read one by one (a dump may not come), else a
// check after CheckAfter that it still exists.
func (p *Policy) scheduleDemoted(now time.Time, f *flow) {
	if p.readDemoted {
		p.setNext(f, now.Add(p.cfg.DumpInterval))
	} else {
		p.setNext(f, now.Add(p.cfg.CheckAfter))
	}
}

func (p *Policy) isLocal(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	a = a.Unmap()
	for _, l := range p.local {
		if l.Unmap() == a {
			return true
		}
	}
	return false
}

// counters returns what the pod sent and received on c.
func counters(inbound bool, c *conntrack.Flow) (sent, recv conntrack.Counter) {
	if inbound {
		return c.ReplyCounter, c.OrigCounter
	}
	return c.OrigCounter, c.ReplyCounter
}

func keyOf(c *conntrack.Flow) Key { return Key{Orig: c.Orig, Zone: c.Zone} }

// Stats returns a snapshot of the counters.
func (p *Policy) Stats() Stats {
	s := p.stats
	s.Flows = len(p.flows)
	s.Demoted = 0
	for _, f := range p.flows {
		if f.demoted {
			s.Demoted++
		}
	}
	s.PodTokens = p.pod
	s.Gate = p.gate
	return s
}

// Pod tells the policy the pod bucket's level and whether the gate is
// closed, as the bucket read them at now, and returns the gate's
// transition, if any, as an action. The first call states the gate either
// way.
func (p *Policy) Pod(now time.Time, level float64, closed bool) []Action {
	p.acts = p.acts[:0]
	p.pod = level
	p.stats.LastRefill = now
	if closed == p.gate && p.gateKnown {
		return p.acts
	}
	p.gate, p.gateKnown = closed, true
	k := GateOpen
	if closed {
		k = GateClose
		p.stats.GateCloses++
	}
	p.acts = append(p.acts, Action{Kind: k, Record: Record{PodTokens: int64(math.Round(level)), End: now}})
	return p.acts
}

// Bytes sets the pod-level byte counters reported in Stats.
func (p *Policy) Bytes(fast, slow uint64) { p.stats.FastBytes, p.stats.SlowBytes = fast, slow }

// charge takes the counters of c (read at now) into f: the bytes sent since
// the last observation come out of the flow's bucket, which refills for the
// time between.
func (p *Policy) charge(now time.Time, f *flow, c *conntrack.Flow) uint64 {
	sent, recv := counters(f.inbound, c)
	delta := sent.Bytes - f.sent.Bytes
	if sent.Bytes < f.sent.Bytes {
		delta = sent.Bytes // reset by someone else since
	}
	dt := now.Sub(f.seen).Seconds()
	if dt > 0 {
		f.tokens = math.Min(p.flowBudget, f.tokens+p.flowRefill*dt)
	}
	f.tokens -= float64(delta)
	if f.demoted {
		f.slow += delta
	} else {
		f.fast += delta
	}
	switch {
	case delta > 0 && dt >= 200e-6:
		f.rate = float64(delta) / dt
	case delta == 0 && dt > 0:
		f.rate = 0
	}
	p.noteActivity(now, f, delta)
	f.sent, f.recv = sent, recv
	f.seen = now
	return delta
}

// noteActivity moves f.active to now when f has sent more than idleBytes
// within PromoteIdle: a trickle of keep-alive ACKs is not activity.
func (p *Policy) noteActivity(now time.Time, f *flow, delta uint64) {
	if delta == 0 {
		return
	}
	if now.Sub(f.quietFrom) >= p.cfg.PromoteIdle {
		f.quiet, f.quietFrom = 0, now
	}
	f.quiet += delta
	if f.quiet > idleBytes {
		f.active = now
		f.quiet, f.quietFrom = 0, now
	}
}

// kernelDemoted records that the kernel demoted f: the tripwire (its
// counters reached its tier's threshold) or the pod gate.
func (p *Policy) kernelDemoted(now time.Time, f *flow, mark uint32) {
	f.demoted = true
	p.nDemoted++
	f.demotions++
	f.reason = ReasonPod
	if f.sent.Bytes >= p.c.Threshold(p.c.Tier(mark)) {
		f.reason = ReasonFlow
	}
	if f.demotedAt == 0 {
		f.demotedAt = max(f.totalSent().Bytes, 1)
	}
	if !p.started {
		// Found demoted at start: an earlier run's (or the kernel's, while
		// no watcher ran) demotion.
		f.reason = ReasonKernel
		p.emit(Adopt, f, now)
		return
	}
	p.stats.Demotions++
	p.emit(KernelDemote, f, now)
}

// promotable says whether the demoted f may be promoted at now.
func (p *Policy) promotable(now time.Time, f *flow) bool {
	return f.demoted && now.Sub(f.active) >= p.cfg.PromoteIdle &&
		p.pod >= float64(p.cfg.PromoteLevel) && f.tokens >= p.flowBudget/16
}

// rearm asks the watcher to read and zero f's counters (Zeroed decides).
func (p *Policy) rearm(f *flow, promote bool) {
	if f.rearming {
		return
	}
	f.rearming, f.promoting = true, promote
	p.acts = append(p.acts, Action{Kind: Rearm, Key: f.key})
}

// Hint feeds an UPDATE event at now. Events are late snapshots (the
// kernel queues them; the watcher's own mark changes come back as events
// too), so they change nothing: a flow the kernel marked for attention is
// read afresh (Rearm), which decides. The returned actions are valid until
// the next call.
func (p *Policy) Hint(now time.Time, c *conntrack.Flow) []Action {
	p.acts = p.acts[:0]
	p.stats.Events++
	if c.Mark&p.c.Attention() == 0 {
		return p.acts
	}
	p.attend(c)
	return p.acts
}

// attend asks for a fresh read of a flow marked for attention: a Rearm,
// unless one is out already; a flow the watcher cannot track is parked.
func (p *Policy) attend(c *conntrack.Flow) {
	f, ok := p.flows[keyOf(c)]
	switch {
	case ok && (f.id == c.ID || c.ID == 0 || f.id == 0):
		if !f.demoted {
			p.rearm(f, false)
		}
	case p.lateForEnded(c) || p.pending[keyOf(c)]:
	case p.local2(c):
	case len(p.flows)+len(p.pending) >= p.cfg.MaxFlows:
		p.park(c)
	default:
		p.pending[keyOf(c)] = true
		p.acts = append(p.acts, Action{Kind: Rearm, Key: keyOf(c)})
	}
}

// local2 says whether c never leaves the pod (both ends local).
func (p *Policy) local2(c *conntrack.Flow) bool {
	return p.isLocal(c.Orig.Dst) && p.isLocal(c.Orig.Src)
}

// Observe feeds one flow of a dump read at now. A flow the watcher tracks
// and has read on its own since the dump began keeps its newer reading (a
// dump's snapshot may predate the watcher's own mark changes). For the
// others: a flow the kernel demoted is recorded; a busy one is read afresh
// (Rearm); a demoted one that has gone idle is promoted when the pod bucket
// allows. The returned actions are valid until the next call.
func (p *Policy) Observe(now time.Time, c *conntrack.Flow) []Action {
	p.acts = p.acts[:0]
	f, ok := p.flows[keyOf(c)]
	if !ok || (f.id != c.ID && c.ID != 0 && f.id != 0) {
		if c.Mark&p.c.Attention() != 0 {
			p.attend(c)
		}
		return p.acts
	}
	f.walkGen = p.gen
	if f.seen.After(p.walkStart) || f.rearming {
		return p.acts
	}
	p.charge(now, f, c)
	if c.Mark&p.c.Demoted() != 0 && !f.demoted {
		p.kernelDemoted(now, f, c.Mark)
	}
	switch {
	case !f.demoted && c.Mark&p.c.Attention() != 0:
		p.rearm(f, false)
	case p.promotable(now, f):
		p.rearm(f, true)
	case f.demoted && p.readDemoted && (f.next.IsZero() || f.next.After(now.Add(p.cfg.DumpInterval))):
		p.setNext(f, now.Add(p.cfg.DumpInterval))
	}
	p.progressLine(now, f)
	return p.acts
}

// park leaves a flow the watcher cannot track (MaxFlows) to the kernel: a
// demoted one stays demoted, a busy one is demoted (the watcher cannot
// re-arm it), and its attention bit is cleared so that the watcher's reads
// skip it.
func (p *Policy) park(c *conntrack.Flow) {
	p.stats.Parked++
	mark, mask := p.c.Demoted(), p.c.Demoted()|p.c.Attention()
	p.acts = append(p.acts, Action{Kind: Park, Key: keyOf(c), Mark: mark, Mask: mask})
}

// Zeroed feeds the answer to a Rearm: the flow as it was read at now, with
// the counters the read reset to zero. It returns the mark to set: the
// tier of what the flow's bucket holds (and, for a promotion, the demoted
// bit cleared), or a demotion when the bucket is below the smallest tier.
func (p *Policy) Zeroed(now time.Time, c *conntrack.Flow) []Action {
	p.acts = p.acts[:0]
	p.stats.Reads++
	k := keyOf(c)
	f, ok := p.flows[k]
	if !ok || (f.id != c.ID && c.ID != 0 && f.id != 0) {
		if !p.pending[k] {
			return p.acts
		}
		// First read of a flow the kernel marked: track it from here.
		delete(p.pending, k)
		if f, _ = p.track(now, c); f == nil {
			return p.acts
		}
	}
	promoting := f.promoting
	f.rearming, f.promoting = false, false
	p.charge(now, f, c)
	if c.Mark&p.c.Demoted() != 0 && !f.demoted {
		// The kernel demoted it since the last read (its counters, before
		// the reset, tell the tripwire from the gate).
		p.kernelDemoted(now, f, c.Mark)
		promoting = false
	}
	// The counters are zero now: keep what they held.
	f.baseSent.Bytes += f.sent.Bytes
	f.baseSent.Packets += f.sent.Packets
	f.baseRecv.Bytes += f.recv.Bytes
	f.baseRecv.Packets += f.recv.Packets
	f.sent, f.recv = conntrack.Counter{}, conntrack.Counter{}
	f.zeroedSince = true
	p.stats.Rearms++
	p.setNext(f, now.Add(p.cfg.CheckAfter))
	if f.demoted {
		if !promoting || !p.promotable(now, f) {
			// Still demoted; zeroing a demoted flow changes nothing.
			p.scheduleDemoted(now, f)
			p.progressLine(now, f)
			return p.acts
		}
		k, _ := p.c.TierFor(f.tokens)
		f.demoted = false
		p.nDemoted--
		f.tier = k
		f.promotions++
		p.stats.Promotions++
		mark, mask := p.c.Arm(k)
		p.acts = append(p.acts, Action{Kind: Arm, Key: f.key, Mark: mark, Mask: mask})
		p.emit(Promote, f, now)
		p.acts[len(p.acts)-1].Record.Why = WhyIdle
		p.scheduleUp(now, f)
		return p.acts
	}
	tier, fits := p.c.TierFor(f.tokens)
	if !fits {
		// Below the smallest tier: demote now rather than give it more
		// than its bucket holds.
		f.demoted = true
		p.nDemoted++
		p.scheduleDemoted(now, f)
		f.demotions++
		f.reason = ReasonFlow
		if f.demotedAt == 0 {
			f.demotedAt = max(f.totalSent().Bytes, 1)
		}
		p.stats.Demotions++
		mark, mask := p.c.Demote()
		p.acts = append(p.acts, Action{Kind: Demote, Key: f.key, Mark: mark, Mask: mask, Record: p.record(f, now)})
		return p.acts
	}
	f.tier = tier
	mark, mask := p.c.Arm(tier)
	p.acts = append(p.acts, Action{Kind: Arm, Key: f.key, Mark: mark, Mask: mask})
	p.scheduleUp(now, f)
	p.progressLine(now, f)
	return p.acts
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// endedFor is how long the policy remembers a finished flow: longer than a
// DESTROY event can lag the read that no longer found the flow.
const endedFor = 30 * time.Second

type endedFlow struct {
	id uint32
	at time.Time
}

// EventsLost counts a report that the kernel dropped events.
func (p *Policy) EventsLost() { p.stats.EventsLost++ }

// CountError counts a failed read or mark update for Stats.
func (p *Policy) CountError() { p.stats.Errors++ }

// LastRefill returns when the pod bucket was last kept.
func (p *Policy) LastRefill() time.Time { return p.stats.LastRefill }

// PodLevel returns the pod bucket's level in bytes (negative: in debt).
func (p *Policy) PodLevel() float64 { return p.pod }

// DumpTook notes how long the last dump took.
func (p *Policy) DumpTook(d time.Duration) { p.stats.DumpLatency = d }

// CountEvent counts a conntrack event taken.
func (p *Policy) CountEvent() { p.stats.Events++ }
