// Package ctwatch is hubwarden's conntrack watcher: it reads the pod's
// connection tracking table, keeps a token bucket of the bytes the pod sends
// per flow and one over the whole pod, demotes flows that run out of tokens to
// the slow traffic class by setting a connection-mark bit, promotes demoted
// flows back once they have gone idle and the pod bucket allows, and writes
// one audit line per finished flow, demotion and promotion.
//
// The package has two halves. Policy is pure: it is fed conntrack flows and
// the time, and returns the actions to take (set or clear a mark, write an
// audit line) and when to look next; it does no I/O and never reads the
// clock, so every rule is unit-tested with a fake clock. Watcher is the loop
// around it: it dumps the table, reads single hot flows, consumes event
// hints, applies marks and writes the audit log and the state file.
//
// See docs/watcher.md for the policy and its defaults, docs/audit.md for the
// audit fields.
package ctwatch

import (
	"math"
	"net/netip"
	"time"

	"github.com/hubwarden/hubwarden/conntrack"
	"github.com/hubwarden/hubwarden/units"
)

// minRateInterval is the shortest interval a rate is measured over.
const minRateInterval = 200e-6

// idleBytes is how much a flow may send within PromoteIdle and still count
// as idle. An idle keep-alive connection is not silent: the peer's TCP
// keep-alive probes (Node's http.Agent, hence CHP, probes its idle upstream
// sockets every second) are each answered by a bare ACK from the pod, 52
// bytes a second that would otherwise keep a demoted flow from ever being
// promoted. Real traffic, even one small response at the slow rate, is
// larger.
const idleBytes = 4096

// Defaults of the Config fields that sidecar/config.go does not set.
const (
	DefaultMinInterval     = 500 * time.Microsecond
	DefaultMinDumpInterval = 5 * time.Millisecond
	DefaultNewFlowProbe    = 10 * time.Millisecond
	DefaultMaxGets         = 16
	DefaultSaveInterval    = 5 * time.Second
)

// Config is the watcher's configuration. The first group comes from
// sidecar/config.go (HUBWARDEN_*); the second has defaults and exists for
// tests and tuning.
type Config struct {
	FlowBudget       units.Size    // per-flow bucket burst
	FlowRefill       units.Rate    // per-flow bucket refill
	PodBudget        units.Size    // per-pod bucket burst
	PodRefill        units.Rate    // per-pod bucket refill
	PromoteIdle      time.Duration // a demoted flow that sent nothing this long may be promoted
	DumpInterval     time.Duration // longest gap between full dumps
	ProgressInterval time.Duration // gap between progress lines of a long-lived flow
	CTMark           uint32        // the mark bit of demoted flows (exactly one bit)
	User, Server     string        // written on every audit line
	StateDir         string        // where the pod bucket level is saved; "" disables saving

	// LocalAddrs are the pod's own addresses. A flow whose original
	// destination is local was accepted by the pod, which sends in the reply
	// direction; otherwise the pod opened it and sends in the original
	// direction. Flows between two local addresses never leave the pod and are
	// ignored. Loopback addresses are always local.
	LocalAddrs []netip.Addr

	// Tripwire says that the kernel demotes a flow that is neither demoted
	// nor watched when it has sent FlowBudget bytes (tcshape's tripwire,
	// exact to a packet). The policy then leaves the first budget of every
	// flow to the kernel, and marks the flows it takes over with
	// WatchedMark: the ones it promotes (connbytes counts from a flow's
	// start, so the tripwire would fire again at once) and the ones the
	// tripwire demoted while their bucket, refilled over a long life, still
	// held more than a twentieth of the budget.
	Tripwire    bool
	WatchedMark uint32
	// Gate says that the watcher can set the pod gate (tcshape's gate
	// rule): while it is set, the kernel demotes every flow that sends.
	// The policy sets it when the pod bucket runs out and clears it once
	// GateOffLevel has come back.
	Gate bool
	// GateOffLevel is the pod bucket level at which the gate is cleared.
	// 0 means one second of PodRefill, at least 64 KiB, at most
	// PromoteLevel.
	GateOffLevel units.Size

	// PromoteLevel is the pod bucket level (bytes) at or above which idle
	// demoted flows are promoted. 0 means PodBudget/16.
	PromoteLevel units.Size
	// MinInterval is the shortest gap between two reads of one flow, and the
	// look-ahead of demotion: a flow whose tokens would run out within
	// MinInterval at its current rate is demoted now rather than after the
	// next read. 0 means DefaultMinInterval.
	MinInterval time.Duration
	// MinDumpInterval is the shortest gap between two full dumps.
	// 0 means DefaultMinDumpInterval.
	MinDumpInterval time.Duration
	// NewFlowProbe is when a flow whose rate is not known yet (first seen by
	// a NEW event) is read again. 0 means DefaultNewFlowProbe.
	NewFlowProbe time.Duration
	// MaxGets is how many flows may be due at once before one full dump is
	// cheaper than reading them one by one. 0 means DefaultMaxGets.
	MaxGets int
	// TxInterval is how often the watcher reads the pod's transmitted-bytes
	// counter (Policy.Tx). Bytes that no tracked flow explains (a flow
	// resuming from idle, a flow that appeared without a NEW event) bring
	// the next dump forward once they pass TxTrigger. 0 disables it.
	TxInterval time.Duration
	// TxMaxInterval and LineRate make the transmit-counter readings
	// adaptive: every TxInterval while a burst at LineRate (bytes/s) could
	// spend a quarter of the least of the pod bucket and the buckets of
	// fast watched flows within it, up to TxMaxInterval apart while
	// nothing could. Each reading wakes the process: at 1 ms on an idle
	// pod that is most of the sidecar's CPU. 0 (either): every TxInterval.
	TxMaxInterval time.Duration
	LineRate      units.Rate
	// TxTrigger is the unexplained byte count that triggers a dump.
	// 0 means min(FlowBudget, PodBudget)/64.
	TxTrigger units.Size
	// SaveInterval is the gap between two saves of the pod bucket level.
	// 0 means DefaultSaveInterval.
	SaveInterval time.Duration
}

func (c Config) withDefaults() Config {
	if c.PromoteLevel == 0 {
		c.PromoteLevel = c.PodBudget / 16
	}
	if c.GateOffLevel == 0 {
		c.GateOffLevel = min(max(units.Size(c.PodRefill), 64*units.KiB), c.PromoteLevel)
	}
	if c.MinInterval <= 0 {
		c.MinInterval = DefaultMinInterval
	}
	if c.MinDumpInterval <= 0 {
		c.MinDumpInterval = DefaultMinDumpInterval
	}
	if c.NewFlowProbe <= 0 {
		c.NewFlowProbe = DefaultNewFlowProbe
	}
	if c.MaxGets <= 0 {
		c.MaxGets = DefaultMaxGets
	}
	if c.TxTrigger == 0 {
		c.TxTrigger = min(c.FlowBudget, c.PodBudget) / 64
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

// Key identifies a flow: its original tuple and its conntrack zone.
type Key struct {
	Orig conntrack.Tuple
	Zone uint16
}

// Reason says why a flow is demoted.
type Reason uint8

// The reasons for a demotion.
const (
	ReasonNone   Reason = iota
	ReasonFlow          // the flow's own bucket ran out
	ReasonPod           // the flow sent (or opened) while the pod bucket was empty
	ReasonKernel        // the mark was already set when the watcher saw the flow (kernel backstop, or an earlier watcher run)
)

// Why says why a flow is promoted.
type Why uint8

// The causes of a promotion.
const (
	WhyNone       Why = iota
	WhyIdle           // idle for PromoteIdle, and the pod bucket allows
	WhyTokensLeft     // the tripwire demoted it, but its bucket (refilled over a long life) was far from empty
)

// String returns the cause as written in audit lines.
func (w Why) String() string {
	switch w {
	case WhyIdle:
		return "idle"
	case WhyTokensLeft:
		return "tokens_left"
	}
	return ""
}

// String returns the reason as written in audit lines.
func (r Reason) String() string {
	switch r {
	case ReasonFlow:
		return "flow_budget"
	case ReasonPod:
		return "pod_budget"
	case ReasonKernel:
		return "kernel"
	}
	return ""
}

// Kind is what an Action asks for.
type Kind uint8

// The kinds of Action.
const (
	// Demote: set the mark bit on the flow and write a demotion line.
	Demote Kind = iota + 1
	// Reapply: set the mark bit again; the watcher had demoted the flow but
	// the kernel's mark is clear (a lost update). Not an audit event.
	Reapply
	// Promote: clear the mark bit (with the tripwire: and set the watched
	// bit) and write a promotion line.
	Promote
	// Watch: set the watched bit; the watcher keeps the flow's budget from
	// now on. Not an audit event.
	Watch
	// Adopt: the mark was set by someone else; record the flow as demoted
	// and write a demotion line. Nothing to apply.
	Adopt
	// Progress: write a progress line for a long-lived flow.
	Progress
	// Finish: the flow is gone; write its final record.
	Finish
	// KernelDemote: the kernel demoted the flow (the tripwire or the pod
	// gate); write a demotion line. Nothing to apply.
	KernelDemote
	// GateSet and GateClear: set or clear the pod gate and write a line.
	// Their Key is zero; the Record has only PodTokens.
	GateSet
	GateClear
)

// String returns the kind as written in audit lines.
func (k Kind) String() string {
	switch k {
	case Demote:
		return "demote"
	case Reapply:
		return "reapply"
	case Watch:
		return "watch"
	case Promote:
		return "promote"
	case Adopt:
		return "adopt"
	case Progress:
		return "progress"
	case Finish:
		return "flow_end"
	case KernelDemote:
		return "demote"
	case GateSet, GateClear:
		return "pod_gate"
	}
	return "unknown"
}

// Action is one thing the watcher must do: change a mark, write a line.
type Action struct {
	Kind   Kind
	Key    Key
	Record Record
}

// Record is a flow as the audit log describes it, from the pod's side.
type Record struct {
	ID          uint32
	Proto       uint8
	Local, Peer netip.AddrPort
	Inbound     bool              // the peer opened the connection (the pod accepted it)
	Sent, Recv  conntrack.Counter // what the pod sent and received, as counted by conntrack
	FastBytes   uint64            // sent bytes counted while the flow was not demoted
	SlowBytes   uint64            // sent bytes counted while it was
	Start       time.Time         // kernel start time if known, else first seen
	End         time.Time         // last observation (Finish: when it was found gone)
	Demoted     bool              // demoted now
	Reason      Reason            // reason of the latest demotion
	DemotedAt   uint64            // sent bytes at the first demotion, 0 if never demoted
	Demotions   uint32
	Promotions  uint32
	FlowTokens  int64 // the flow bucket's level in bytes (negative: overshoot)
	PodTokens   int64 // the pod bucket's level in bytes
	Overshoot   int64 // Demote only: bytes sent beyond the bucket when demoted (negative: demoted early)
	Unfinished  bool  // Finish only: the final counters are the last seen ones (no DESTROY event)
	Adopted     bool  // the flow existed before the watcher started
	Watched     bool  // the watcher, not the tripwire, keeps this flow's budget
	Why         Why   // Promote only
}

// flow is the policy's state of one tracked flow.
type flow struct {
	key        Key
	id         uint32
	inbound    bool
	local      netip.AddrPort
	peer       netip.AddrPort
	sent, recv conntrack.Counter // last seen
	tokens     float64
	rate       float64 // bytes/s sent, estimated over the last interval; <0: unknown
	delta      uint64  // bytes sent in the last observation
	seen       time.Time
	active     time.Time // last time the flow sent more than idleBytes within PromoteIdle
	quiet      uint64    // bytes sent since quietFrom, while they stay within idleBytes
	quietFrom  time.Time // start of the current idleBytes window
	start      time.Time
	progress   time.Time // last progress line (or start)
	progSent   uint64
	next       time.Time // next individual read; zero: none
	hot        bool      // in Policy.hot
	probe      bool      // started sending after being idle: measure its rate soon
	sustained  bool      // sent in this observation and the one before
	gen        uint64
	demoted    bool
	reason     Reason
	demotedAt  uint64
	demotions  uint32
	promotions uint32
	fast, slow uint64
	adopted    bool
	watched    bool // has (or is being given) the watched mark
	tripped    bool // the tripwire's demotion was found in this observation
}

// Stats is a snapshot of the watcher's counters, for metrics.
type Stats struct {
	Flows      int     // flows tracked now
	Demoted    int     // of which demoted now
	Demotions  uint64  // demotions by the watcher or the kernel (flow or pod budget)
	Gate       bool    // the pod gate is set
	GateSets   uint64  // times the pod gate was set
	Adoptions  uint64  // flows found marked by someone else
	Promotions uint64  // promotions
	Reapplied  uint64  // marks set again after the kernel lost them
	Finished   uint64  // final records written
	FastBytes  uint64  // bytes the pod sent on flows that were not demoted
	SlowBytes  uint64  // bytes the pod sent on demoted flows
	PodTokens  float64 // pod bucket level in bytes (negative: in debt)
	PodBudget  uint64  // pod bucket burst in bytes
	Dumps      uint64  // full dumps read
	Gets       uint64  // single-flow reads and NEW events
	EventsLost uint64  // ErrEventsLost reports
	Errors     uint64  // failed reads and mark updates
	LastDump   time.Time
}

// Policy is the pure budget policy. It is not safe for concurrent use; the
// Watcher serialises access.
type Policy struct {
	cfg        Config
	local      []netip.Addr
	flows      map[Key]*flow
	hot        []*flow
	acts       []Action
	pod        float64
	podRate    float64
	podSeen    time.Time
	gen        uint64
	started    bool
	lastDump   time.Time
	nextDump   time.Time
	stats      Stats
	txSet      bool
	txLast     uint64 // last transmitted-bytes reading
	txBase     uint64 // reading at the last dump
	gotSince   uint64 // bytes charged by single reads since the last dump
	txNext     time.Time
	ended      map[Key]endedFlow // flows finished lately (endedFor), by key
	leastTok   float64           // least tokens of a fast watched flow, as of the last dump and reads since
	recentAt   time.Time         // last probeRecent
	dumpStart  time.Time         // start of the background dump in flight (DumpStarted)
	recent     []*flow           // probeRecent's scratch
	lookahead  float64           // seconds: how far ahead demotion looks (SetLookahead)
	minDump    time.Duration
	flowBudget float64
	flowRefill float64
	podBudget  float64
	podRefill  float64
	gate       bool // the pod gate is set (as last asked)
	gateKnown  bool // the gate has been set or cleared since start
}

// NewPolicy returns a policy whose pod bucket holds podTokens bytes at now
// (use PodBudget for a fresh start, or the level from LoadState).
func NewPolicy(cfg Config, now time.Time, podTokens float64) *Policy {
	cfg = cfg.withDefaults()
	p := &Policy{
		cfg:        cfg,
		local:      cfg.LocalAddrs,
		flows:      map[Key]*flow{},
		ended:      map[Key]endedFlow{},
		pod:        math.Min(podTokens, float64(cfg.PodBudget)),
		podSeen:    now,
		nextDump:   now,
		leastTok:   math.Inf(1),
		flowBudget: float64(cfg.FlowBudget),
		flowRefill: float64(cfg.FlowRefill),
		podBudget:  float64(cfg.PodBudget),
		podRefill:  float64(cfg.PodRefill),
	}
	p.stats.PodBudget = uint64(cfg.PodBudget)
	p.lookahead = cfg.MinInterval.Seconds()
	p.minDump = cfg.MinDumpInterval
	return p
}

// Config returns the configuration with defaults filled in.
func (p *Policy) Config() Config { return p.cfg }

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

// PodTokens returns the pod bucket's level in bytes at now.
func (p *Policy) PodTokens(now time.Time) float64 {
	p.refillPod(now)
	return p.pod
}

func (p *Policy) refillPod(now time.Time) {
	if dt := now.Sub(p.podSeen).Seconds(); dt > 0 {
		p.pod = math.Min(p.podBudget, p.pod+p.podRefill*dt)
		p.podSeen = now
	}
}

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

// counters returns what the pod sent and received on c.
func counters(inbound bool, c *conntrack.Flow) (sent, recv conntrack.Counter) {
	if inbound {
		return c.ReplyCounter, c.OrigCounter
	}
	return c.OrigCounter, c.ReplyCounter
}

// track returns the state of c, creating it if new; nil for flows that never
// leave the pod.
func (p *Policy) track(now time.Time, c *conntrack.Flow, adopt bool) (*flow, bool) {
	k := Key{Orig: c.Orig, Zone: c.Zone}
	if f, ok := p.flows[k]; ok {
		if f.id == c.ID || c.ID == 0 || f.id == 0 {
			return f, false
		}
		// Same tuple, another entry: the old flow died unseen.
		p.finish(f, true)
	}
	inbound := p.isLocal(c.Orig.Dst)
	if inbound && p.isLocal(c.Orig.Src) {
		return nil, false
	}
	f := &flow{key: k, id: c.ID, inbound: inbound, tokens: p.flowBudget, rate: -1, seen: now, active: now, start: now, progress: now, adopted: adopt}
	if !c.Start.IsZero() && c.Start.Before(now) {
		f.start = c.Start
	}
	o, r := c.Orig, c.Reply
	if inbound {
		f.local = netip.AddrPortFrom(o.Dst, o.DstPort)
		f.peer = netip.AddrPortFrom(o.Src, o.SrcPort)
	} else {
		f.local = netip.AddrPortFrom(o.Src, o.SrcPort)
		f.peer = netip.AddrPortFrom(r.Src, r.SrcPort)
	}
	if adopt {
		// Bytes sent before the watcher started were counted by the previous
		// run (whose pod level was saved) or predate tracking: don't charge.
		f.sent, f.recv = counters(inbound, c)
		f.progSent = f.sent.Bytes
		if p.cfg.Tripwire && c.Mark&p.cfg.WatchedMark == 0 {
			// Not yet taken over: the tripwire has counted its whole
			// history, so its bucket holds what the tripwire has left,
			// not a fresh budget (a restart must not give an ongoing
			// download one).
			f.tokens = math.Max(p.flowBudget-float64(f.sent.Bytes), 0)
		}
	}
	p.flows[k] = f
	return f, true
}

// observe charges the bytes sent since the last observation of f to its
// bucket and the pod's, and reconciles the mark with the kernel's.
func (p *Policy) observe(now time.Time, f *flow, c *conntrack.Flow, isNew bool) {
	sent, recv := counters(f.inbound, c)
	var delta uint64
	if sent.Bytes >= f.sent.Bytes {
		delta = sent.Bytes - f.sent.Bytes
	} else {
		delta = sent.Bytes // counters were zeroed
	}
	dt := now.Sub(f.seen).Seconds()
	if isNew && !f.adopted {
		// Appeared since the last dump: its bytes were sent after it.
		dt = now.Sub(p.lastDump).Seconds()
	}
	if dt > 0 {
		f.tokens = math.Min(p.flowBudget, f.tokens+p.flowRefill*dt)
	}
	f.tokens -= float64(delta)
	p.refillPod(now)
	p.pod -= float64(delta)
	if f.demoted {
		f.slow += delta
		p.stats.SlowBytes += delta
	} else {
		f.fast += delta
		p.stats.FastBytes += delta
	}
	old := math.Max(f.rate, 0)
	// A flow that starts sending after an idle spell (or that is new) has a
	// rate diluted over the idle time: read it again after MinInterval to
	// measure it.
	f.probe = delta > 0 && f.rate <= 0
	// Look ahead only for a flow that kept sending between two reads: a
	// single short burst (one request on a keep-alive connection) measures a
	// line-rate "rate" that does not last.
	f.sustained = delta > 0 && f.delta > 0
	switch {
	case delta > 0 && dt >= minRateInterval:
		f.rate = float64(delta) / dt
	case delta > 0:
		// Too short an interval to measure: assume fast, read again soon.
		f.rate = math.Max(f.rate, float64(delta)/minRateInterval)
	case isNew:
		f.rate = -1 // unknown: probe soon
	case dt >= minRateInterval:
		f.rate = 0
	}
	p.podRate += math.Max(f.rate, 0) - old
	p.noteActivity(now, f, delta)
	f.delta = delta
	f.sent, f.recv = sent, recv
	f.seen = now

	marked := c.Mark&p.cfg.CTMark != 0
	if p.cfg.Tripwire && c.Mark&p.cfg.WatchedMark != 0 {
		f.watched = true
	}
	switch {
	case marked && !f.demoted:
		f.demoted = true
		f.demotions++
		byKernel := true // the tripwire's or the gate's
		switch {
		case p.gate:
			// The gate marks every flow that sends while it is set.
			f.reason = ReasonPod
		case p.cfg.Tripwire && !f.watched && sent.Bytes >= uint64(p.cfg.FlowBudget):
			// The tripwire fired at the packet that reached the budget.
			// A flow adopted at start is never given its budget back
			// (tokensLeft): its bucket started full at adoption, without
			// the history the tripwire counted, and a restart must not
			// hand an ongoing download a new budget.
			f.reason, f.tripped = ReasonFlow, !f.adopted
			if f.demotedAt == 0 {
				f.demotedAt = uint64(p.cfg.FlowBudget)
			}
		default:
			f.reason, byKernel = ReasonKernel, false
		}
		if f.demotedAt == 0 {
			f.demotedAt = sent.Bytes
		}
		if byKernel && p.started {
			p.stats.Demotions++
			p.emit(KernelDemote, f, now, 0)
		} else {
			// Found demoted at start: an earlier run's (or the kernel's,
			// while no watcher ran) demotion.
			p.stats.Adoptions++
			p.emit(Adopt, f, now, 0)
		}
	case !marked && f.demoted:
		p.stats.Reapplied++
		p.emit(Reapply, f, now, 0)
	}
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

// SetLookahead sets how late the watcher's reads may come: the watcher
// measures how late its timer fires (a busy machine wakes it milliseconds
// late). A flow whose tokens would run out within the look-ahead is demoted
// now, and reads are scheduled that much early. It is never below
// MinInterval.
func (p *Policy) SetLookahead(d time.Duration) {
	p.lookahead = max(d, p.cfg.MinInterval).Seconds()
}

// SetDumpCost tells the policy how long a full dump takes: dumps brought
// forward are then spaced by at least four times that (and MinDumpInterval),
// so that they take at most a fifth of the watcher's time.
func (p *Policy) SetDumpCost(d time.Duration) {
	p.minDump = max(4*d, p.cfg.MinDumpInterval)
}

// empty says whether a bucket of burst budget at tokens, drained at rate
// and refilled at refill, runs out within the look-ahead. Demoting early
// costs at most a twentieth of the budget, however late the reads come: a
// busy machine then overshoots instead of demoting ordinary bursts.
func (p *Policy) empty(tokens, rate, refill, budget float64) bool {
	return tokens-math.Min(math.Max(rate-refill, 0)*p.lookahead, budget/20) <= 0
}

// podEmpty says whether the pod bucket runs out within the look-ahead.
func (p *Policy) podEmpty() bool { return p.empty(p.pod, p.podRate, p.podRefill, p.podBudget) }

// kernelKept says whether the tripwire keeps f's flow budget: the kernel
// demotes it exactly at FlowBudget, so the watcher need not look ahead.
func (p *Policy) kernelKept(f *flow) bool { return p.cfg.Tripwire && !f.watched }

// decide demotes or promotes f and schedules its next read.
func (p *Policy) decide(now time.Time, f *flow, podEmpty bool) {
	tripped := f.tripped
	f.tripped = false
	switch {
	case !f.demoted:
		switch {
		case f.tokens <= 0 || !p.kernelKept(f) && f.sustained && p.empty(f.tokens, math.Max(f.rate, 0), p.flowRefill, p.flowBudget):
			p.demote(now, f, ReasonFlow, f.tokens)
		case podEmpty && f.delta > 0:
			p.demote(now, f, ReasonPod, p.pod)
		case p.kernelKept(f) && f.tokens-(p.flowBudget-float64(f.sent.Bytes)) > p.flowBudget/20:
			// The bucket has refilled past what the tripwire counts by
			// more than a twentieth of the budget (a flow that has lived
			// for seconds): the watcher keeps its budget from now on, so
			// that the tripwire never demotes it early.
			f.watched = true
			p.emit(Watch, f, now, 0)
		}
	case tripped && !podEmpty && p.tokensLeft(f):
		// The tripwire counts from the flow's start; the bucket refills.
		// A flow that reached the budget over a long life, before the
		// watcher took it over (below), still has a bucket far from
		// empty: give it back and watch it from now on.
		p.promote(now, f, WhyTokensLeft)
	case now.Sub(f.active) >= p.cfg.PromoteIdle && p.pod >= float64(p.cfg.PromoteLevel) && f.tokens >= p.flowBudget/16:
		p.promote(now, f, WhyIdle)
	}
	p.schedule(now, f)
}

// tokensLeft says whether f's bucket holds more than a twentieth of the
// budget and, at its current rate, would not run out within PromoteIdle:
// the tripwire demoted it well before the policy would have.
func (p *Policy) tokensLeft(f *flow) bool {
	if f.tokens <= p.flowBudget/20 {
		return false
	}
	net := f.rate - p.flowRefill
	return net <= 0 || f.tokens/net > p.cfg.PromoteIdle.Seconds()
}

func (p *Policy) promote(now time.Time, f *flow, why Why) {
	f.demoted = false
	f.promotions++
	if p.cfg.Tripwire {
		f.watched = true
	}
	p.stats.Promotions++
	p.emit(Promote, f, now, 0)
	p.acts[len(p.acts)-1].Record.Why = why
}

func (p *Policy) demote(now time.Time, f *flow, r Reason, tokens float64) {
	f.demoted = true
	f.reason = r
	f.demotions++
	if f.demotedAt == 0 {
		f.demotedAt = f.sent.Bytes
	}
	p.stats.Demotions++
	p.emit(Demote, f, now, int64(math.Round(-tokens)))
}

// schedule sets when f must be read on its own, before the next dump.
func (p *Policy) schedule(now time.Time, f *flow) {
	f.next = time.Time{}
	if f.demoted {
		// Read a demoted flow often enough to see it go idle and promote it
		// soon after PromoteIdle, if the pod bucket would allow it.
		if p.pod >= float64(p.cfg.PromoteLevel) {
			at := f.active.Add(p.cfg.PromoteIdle)
			if soon := now.Add(p.cfg.PromoteIdle / 4); soon.Before(at) {
				at = soon
			}
			f.next = maxTime(at, now.Add(p.cfg.MinInterval))
		}
	} else if f.probe {
		f.next = now.Add(p.cfg.MinInterval)
	} else if f.rate < 0 {
		f.next = now.Add(p.cfg.NewFlowProbe)
	} else if f.rate > 0 {
		tte, trip := math.Inf(1), math.Inf(1)
		if p.kernelKept(f) {
			// The tripwire demotes it exactly; read it right after, to
			// write the demotion line or give a long-lived flow its
			// budget back.
			if left := float64(p.cfg.FlowBudget) - float64(f.sent.Bytes); left > 0 {
				trip = left/f.rate + p.cfg.MinInterval.Seconds()
			}
		} else if net := f.rate - p.flowRefill; net > 0 {
			tte = f.tokens / net
		}
		if net := p.podRate - p.podRefill; net > 0 {
			tte = math.Min(tte, p.pod/net)
		}
		// Halve the distance to the look-ahead each time: timer lateness
		// and a growing rate (TCP slow start) then cost little.
		wait := time.Duration(math.Min((tte-p.lookahead)/2, trip) * float64(time.Second))
		if wait < p.cfg.DumpInterval {
			f.next = now.Add(max(wait, p.cfg.MinInterval))
		}
	}
	if f.next.IsZero() || !f.next.Before(p.nextDump) {
		f.next = time.Time{}
		return
	}
	if !f.hot {
		f.hot = true
		p.hot = append(p.hot, f)
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (p *Policy) emit(k Kind, f *flow, now time.Time, overshoot int64) {
	p.acts = append(p.acts, Action{Kind: k, Key: f.key, Record: p.record(f, now, overshoot)})
}

func (p *Policy) record(f *flow, end time.Time, overshoot int64) Record {
	return Record{
		ID:         f.id,
		Proto:      f.key.Orig.Proto,
		Local:      f.local,
		Peer:       f.peer,
		Inbound:    f.inbound,
		Sent:       f.sent,
		Recv:       f.recv,
		FastBytes:  f.fast,
		SlowBytes:  f.slow,
		Start:      f.start,
		End:        end,
		Demoted:    f.demoted,
		Reason:     f.reason,
		DemotedAt:  f.demotedAt,
		Demotions:  f.demotions,
		Promotions: f.promotions,
		FlowTokens: int64(math.Round(f.tokens)),
		PodTokens:  int64(math.Round(p.pod)),
		Overshoot:  overshoot,
		Adopted:    f.adopted,
		Watched:    f.watched,
	}
}

// unexplained returns the bytes the pod has transmitted since the last dump
// that no read has charged yet (Tx).
func (p *Policy) unexplained() float64 {
	if !p.txSet || p.txLast < p.txBase+p.gotSince {
		return 0
	}
	return float64(p.txLast - p.txBase - p.gotSince)
}

// gateCheck sets the pod gate when the pod bucket runs out (counting the
// bytes the transmit counter saw that no read has charged yet) and clears
// it once the bucket is back at GateOffLevel. The first call after start
// says the state either way: a gate left set by an earlier run is cleared.
func (p *Policy) gateCheck(now time.Time) {
	if !p.cfg.Gate {
		return
	}
	p.refillPod(now)
	empty := p.podEmpty() || p.pod-p.unexplained() <= 0
	on := p.gate
	switch {
	case !p.gate && empty:
		on = true
	case p.gate && !empty && p.pod >= float64(p.cfg.GateOffLevel):
		on = false
	}
	if on == p.gate && p.gateKnown {
		return
	}
	p.gate, p.gateKnown = on, true
	k := GateClear
	if on {
		k = GateSet
		p.stats.GateSets++
	}
	p.acts = append(p.acts, Action{Kind: k, Record: Record{PodTokens: int64(math.Round(p.pod)), End: now}})
}

// CheckGate re-evaluates the pod gate at now (after a Tx reading) and
// returns the action to take, if any. The returned actions are valid until
// the next call.
func (p *Policy) CheckGate(now time.Time) []Action {
	p.acts = p.acts[:0]
	p.gateCheck(now)
	return p.acts
}

// GateOn reports whether the policy has the pod gate set.
func (p *Policy) GateOn() bool { return p.gate }

// finish writes f's final record and forgets it.
func (p *Policy) finish(f *flow, unfinished bool) {
	p.podRate -= math.Max(f.rate, 0)
	delete(p.flows, f.key)
	p.ended[f.key] = endedFlow{id: f.id, sent: f.sent.Bytes, demoted: f.demoted, at: f.seen}
	f.hot = false // dropped from p.hot lazily
	f.next = time.Time{}
	p.stats.Finished++
	p.acts = append(p.acts, Action{Kind: Finish, Key: f.key, Record: p.record(f, f.seen, 0)})
	p.acts[len(p.acts)-1].Record.Unfinished = unfinished
}

// Dump feeds a full dump of the table taken at now. Flows missing from it
// are finished with their last seen counters. The returned actions are valid
// until the next call.
func (p *Policy) Dump(now time.Time, flows []conntrack.Flow) []Action {
	p.acts = p.acts[:0]
	p.gen++
	adopt := !p.started
	p.stats.Dumps++
	p.stats.LastDump = now
	start := now
	if !p.dumpStart.IsZero() {
		start, p.dumpStart = p.dumpStart, time.Time{}
	}
	for i := range flows {
		c := &flows[i]
		if p.lateForEnded(now, c) {
			continue
		}
		f, isNew := p.track(now, c, adopt)
		if f == nil {
			continue
		}
		f.gen = p.gen
		if !isNew && f.seen.After(start) {
			continue // read on its own since the dump started: newer counters
		}
		p.observe(now, f, c, isNew)
	}
	for _, f := range p.flows {
		if f.gen != p.gen && !f.seen.After(start) {
			p.finish(f, true)
		}
	}
	for k, e := range p.ended {
		if now.Sub(e.at) > endedFor {
			delete(p.ended, k)
		}
	}
	// Recompute the pod's rate exactly (Get observations update it by delta).
	p.podRate = 0
	for _, f := range p.flows {
		p.podRate += math.Max(f.rate, 0)
	}
	p.started = true
	p.txBase, p.gotSince = p.txLast, 0
	p.lastDump = now
	p.nextDump = now.Add(p.cfg.DumpInterval)
	clear(p.hot)
	p.hot = p.hot[:0]
	podEmpty := p.podEmpty()
	p.leastTok = math.Inf(1)
	for _, f := range p.flows {
		f.hot = false
		p.decide(now, f, podEmpty)
		p.noteTokens(f)
		if now.Sub(f.progress) >= p.cfg.ProgressInterval {
			if f.sent.Bytes != f.progSent {
				p.emit(Progress, f, now, 0)
			}
			f.progress, f.progSent = now, f.sent.Bytes
		}
	}
	p.scheduleDump(now)
	p.gateCheck(now)
	return p.acts
}

// scheduleDump brings the next dump forward when the pod bucket is about to
// run out and too many flows feed it to read them one by one.
func (p *Policy) scheduleDump(now time.Time) {
	net := p.podRate - p.podRefill
	if net <= 0 || p.pod <= 0 {
		return
	}
	tte := time.Duration(p.pod / net / 2 * float64(time.Second))
	if at := now.Add(max(tte, p.minDump)); at.Before(p.nextDump) {
		p.nextDump = at
	}
}

// Observe feeds one flow read on its own (a Get, or a NEW event) at now.
func (p *Policy) Observe(now time.Time, c conntrack.Flow) []Action {
	p.acts = p.acts[:0]
	p.stats.Gets++
	f, isNew := p.track(now, &c, !p.started)
	if f == nil {
		return p.acts
	}
	f.gen = p.gen
	p.observe(now, f, &c, isNew)
	p.gotSince += f.delta
	if isNew && !f.adopted && f.delta == 0 {
		if p.pod <= 0 && !f.demoted {
			// Opening flows while the pod is empty is how churn would
			// otherwise get a few fast bytes each.
			p.demote(now, f, ReasonPod, p.pod)
		}
	}
	p.decide(now, f, p.podEmpty())
	p.noteTokens(f)
	p.gateCheck(now)
	return p.acts
}

// Destroyed feeds a DESTROY event (final counters) at now.
func (p *Policy) Destroyed(now time.Time, c conntrack.Flow) []Action {
	p.acts = p.acts[:0]
	if p.lateForEnded(now, &c) {
		return p.acts
	}
	f, isNew := p.track(now, &c, !p.started)
	if f == nil {
		return p.acts
	}
	n := len(p.acts) // track may have finished an older flow on the tuple
	p.observe(now, f, &c, isNew)
	// Drop the Adopt/Reapply the observation may have emitted: the flow is
	// gone, there is nothing to mark.
	p.acts = p.acts[:n]
	p.finish(f, false)
	return p.acts
}

// endedFor is how long the policy remembers a finished flow: longer than a
// DESTROY event can lag the dump that no longer showed the flow (the kernel
// keeps a dying entry out of dumps until its event is delivered), and than
// a background dump can take.
const endedFor = 30 * time.Second

// endedFlow is what the policy remembers of a finished flow.
type endedFlow struct {
	id      uint32
	sent    uint64
	demoted bool
	at      time.Time
}

// lateForEnded says whether c is a flow already finished (its final record
// written): a DESTROY event after the dump that no longer showed it, or a
// background dump that started before its DESTROY. Bytes it sent after its
// last observation are charged; no second record is written, and it is not
// taken for a new flow (which would charge all of its bytes again).
func (p *Policy) lateForEnded(now time.Time, c *conntrack.Flow) bool {
	k := Key{Orig: c.Orig, Zone: c.Zone}
	e, ok := p.ended[k]
	if !ok || e.id != c.ID || c.ID == 0 {
		return false
	}
	inbound := p.isLocal(c.Orig.Dst)
	sent, _ := counters(inbound, c)
	if sent.Bytes > e.sent {
		d := sent.Bytes - e.sent
		p.refillPod(now)
		p.pod -= float64(d)
		if e.demoted {
			p.stats.SlowBytes += d
		} else {
			p.stats.FastBytes += d
		}
		e.sent = sent.Bytes
		p.ended[k] = e
	}
	return true
}

// Gone finishes the flow k with its last seen counters (a Get said it no
// longer exists).
func (p *Policy) Gone(now time.Time, k Key) []Action {
	p.acts = p.acts[:0]
	if f, ok := p.flows[k]; ok {
		p.finish(f, true)
	}
	return p.acts
}

// Due appends to buf the keys of the flows to read one by one at now, and
// reports whether a full dump is due (the dump time has come, or more than
// MaxGets flows are due, in which case no keys are returned). A watcher that
// dumps synchronously skips the keys when a dump is due.
func (p *Policy) Due(now time.Time, buf []Key) ([]Key, bool) {
	dump := !now.Before(p.nextDump)
	n := 0
	for _, f := range p.hot {
		if !f.hot {
			continue
		}
		p.hot[n] = f
		n++
		if !f.next.IsZero() && !now.Before(f.next) {
			buf = append(buf, f.key)
		}
	}
	clear(p.hot[n:])
	p.hot = p.hot[:n]
	if len(buf) > p.cfg.MaxGets {
		if !p.dumpStart.IsZero() {
			// A dump is in flight and will cover the rest.
			return buf[:p.cfg.MaxGets], true
		}
		return buf[:0], true
	}
	return buf, dump
}

// DumpStarted tells the policy that a dump started at now runs in the
// background: the flows read one by one meanwhile keep their newer counters
// when its result comes (Dump), and no other dump is asked for until then.
func (p *Policy) DumpStarted(now time.Time) {
	p.dumpStart = now
	p.nextDump = now.Add(p.cfg.DumpInterval)
}

// Tx feeds a reading of the pod's transmitted-bytes counter (all interfaces
// but loopback) at now, and reports whether a full dump should be done now
// because bytes that no tracked flow explains have passed TxTrigger. The
// watcher reads it every TxInterval, and right before every dump.
func (p *Policy) Tx(now time.Time, tx uint64) bool {
	p.txNext = now.Add(p.txEvery())
	if !p.txSet || tx < p.txLast {
		p.txSet, p.txLast, p.txBase, p.gotSince = true, tx, tx, 0
		return false
	}
	p.txLast = tx
	// Bytes the hot flows have sent since their last read are expected:
	// they are read one by one anyway, and a dump (which walks the kernel's
	// whole conntrack hash, tens of milliseconds on a busy node) would only
	// delay those reads.
	seen := float64(p.txBase+p.gotSince) + float64(p.cfg.TxTrigger)
	for _, f := range p.hot {
		if f.hot && !f.demoted && f.rate > 0 {
			seen += f.rate * now.Sub(f.seen).Seconds()
		}
	}
	if float64(tx) < seen {
		return false
	}
	at := maxTime(now, p.lastDump.Add(p.minDump))
	// Most likely a keep-alive flow that was idle has resumed: read the
	// most recently active ones at once (cheap single reads), and dump a
	// little later in case it was another flow.
	if now.Sub(p.recentAt) >= p.minDump && p.probeRecent(now) {
		p.recentAt = now
		at = maxTime(at, now.Add(p.minDump))
	}
	if at.Before(p.nextDump) {
		p.nextDump = at
	}
	return !now.Before(p.nextDump)
}

// txEvery returns the gap to the next transmit-counter reading (see
// Config.TxMaxInterval).
func (p *Policy) txEvery() time.Duration {
	lo, hi := p.cfg.TxInterval, p.cfg.TxMaxInterval
	if hi <= lo || p.cfg.LineRate == 0 {
		return lo
	}
	least := math.Min(p.pod, p.leastTok)
	d := time.Duration(math.Max(least, 0) / float64(p.cfg.LineRate) / 4 * float64(time.Second))
	return min(max(d, lo), hi)
}

// noteTokens keeps leastTok, the least tokens of a fast flow whose budget
// the watcher keeps (a watched one, or any without the tripwire).
func (p *Policy) noteTokens(f *flow) {
	if !f.demoted && !p.kernelKept(f) && f.tokens < p.leastTok {
		p.leastTok = f.tokens
	}
}

// probeRecent schedules an immediate read of the fast flows that sent most
// recently and are not read one by one already (at most MaxGets/2), and
// reports whether there were any.
func (p *Policy) probeRecent(now time.Time) bool {
	k := max(p.cfg.MaxGets/2, 1)
	top := p.recent[:0]
	for _, f := range p.flows {
		if f.demoted || f.hot {
			continue
		}
		if len(top) < k {
			top = append(top, f)
		} else if f.active.After(top[k-1].active) {
			top[k-1] = f
		} else {
			continue
		}
		for i := len(top) - 1; i > 0 && top[i].active.After(top[i-1].active); i-- {
			top[i], top[i-1] = top[i-1], top[i]
		}
	}
	for _, f := range top {
		f.next = now
		f.hot = true
		p.hot = append(p.hot, f)
	}
	p.recent = top
	clear(top)
	return len(top) > 0
}

// Next returns when the policy next wants to read the table (or the
// transmitted-bytes counter).
func (p *Policy) Next() time.Time {
	t := p.nextDump
	if !p.dumpStart.IsZero() {
		// A background dump is in flight; its result wakes the watcher.
		t = p.dumpStart.Add(time.Hour)
	}
	if p.cfg.TxInterval > 0 && p.txNext.Before(t) {
		t = p.txNext
	}
	for _, f := range p.hot {
		if f.hot && !f.next.IsZero() && f.next.Before(t) {
			t = f.next
		}
	}
	return t
}

// ForceDump makes the next read a full dump (events were lost).
func (p *Policy) ForceDump(now time.Time) {
	p.stats.EventsLost++
	p.nextDump = now
}

// CountError counts a failed read or mark update for Stats.
func (p *Policy) CountError() { p.stats.Errors++ }
