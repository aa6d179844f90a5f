package ctwatch

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/conntrack"
	"github.com/hubwarden/hubwarden/demotion"
)

// Table is the part of the conntrack client the watcher uses.
type Table interface {
	// Walk reads the flows the filter selects, in the kernel, one by one.
	Walk(ctx context.Context, f conntrack.Filter, fn func(*conntrack.Flow) error) error
	// GetZero reads one flow by its original tuple and zeroes its
	// counters; conntrack.ErrNotFound if gone.
	GetZero(ctx context.Context, orig conntrack.Tuple) (conntrack.Flow, error)
	// SetMark sets the bits of mask in the flow's mark to those of mark.
	SetMark(ctx context.Context, orig conntrack.Tuple, mark, mask uint32) error
}

var _ Table = (*conntrack.Conn)(nil)

// Quota is a pod bucket held in the kernel (demotion.NFT).
type Quota interface {
	Quota() (limit, consumed uint64, err error)
	SetLimit(limit uint64) error
}

var _ Quota = (*demotion.NFT)(nil)

// Gate opens and closes a userspace pod bucket's gate (demotion.RecentGate).
type Gate interface {
	Set(open bool) error
}

var _ Gate = demotion.RecentGate{}

// Deadlines of the watcher's kernel requests: a request that hangs (a lost
// netlink reply) must not stop the watcher.
const (
	opTimeout   = time.Second
	walkTimeout = 10 * time.Second
	// fullWalkEvery is the shortest gap between two unfiltered dumps, which
	// find tracked flows whose DESTROY event was lost.
	fullWalkEvery = 10 * time.Second
	// backstopEvery is the gap between two filtered dumps while the kernel's
	// events bring the watcher every flow it must read (Run's events, no
	// loss) and no flow has been busy for as long: a dump walks the whole conntrack hash of the node, every
	// namespace's buckets (262,144 on a 24 GiB machine), whatever the pod
	// holds, so it is the watcher's largest fixed cost.
	backstopEvery = 10 * time.Second
	// maxDemotedReads is how many demoted flows the watcher reads one by one
	// each DumpInterval at most; with more, one dump a DumpInterval is
	// cheaper than that many reads.
	maxDemotedReads = 256
)

// Options are the watcher's injected dependencies besides the table.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Quota is the pod bucket held in the kernel, with SlowBytes the slow
	// class's byte counter. Without a Quota the watcher keeps the bucket
	// from Tx and opens and closes Gate.
	Quota     Quota
	SlowBytes func() (uint64, error)
	Tx        func() (uint64, error)
	Gate      Gate
	// Walker, if set, is a second connection to the same table used only
	// for dumps, which then run in the background: a dump walks the
	// kernel's whole conntrack hash and must not delay the re-arms of busy
	// flows. nil: dumps run in the loop.
	Walker Table
	// DumpOnly keeps a dump every DumpInterval even while Run has events:
	// they do not cover every flow (nf_conntrack_events could not be set
	// to 1, so flows made while no watcher listened send none).
	DumpOnly bool
}

type walkResult struct {
	flows   []conntrack.Flow
	full    bool
	started time.Time // when the watcher asked for it (its clock)
	err     error
	took    time.Duration
}

// Watcher runs the policy against a conntrack table and keeps the pod
// bucket.
type Watcher struct {
	cfg   Config
	table Table
	log   zerolog.Logger
	now   func() time.Time
	opts  Options
	quota *QuotaBucket // kernel-held pod bucket, or
	tx    *TxBucket    // userspace one

	walkReq chan walkResult // to the background walker: a buffer to fill
	walkRes chan walkResult

	mu         sync.Mutex // guards everything below; Stats may be called from any goroutine
	policy     *Policy
	queue      []Action
	keys       []Key
	buf        []conntrack.Flow
	walking    bool
	nextWalk   time.Time
	nextFull   time.Time
	fullDue    bool
	nextTick   time.Time
	lastSave   time.Time
	failing    bool
	podFailing bool
	events     bool      // the kernel's events bring every flow to read: dumps are a backstop
	reading    bool      // demoted flows are read one by one (events, and not too many)
	lastBusy   time.Time // the last event that asked for a read (a flow busy at its tier)
	parking    bool
	gateOpen   bool
	gateKnown  bool
	late       time.Duration
}

// New returns a watcher. The pod bucket starts at the level saved in
// cfg.StateDir, refilled for the time since; full if there is no state file;
// empty (fail closed, logged) if the file is unreadable. A kernel-held
// bucket starts at the least of that and what the kernel's quota holds (the
// file keeps a debt the kernel does not show).
func New(cfg Config, table Table, log zerolog.Logger, opts Options) *Watcher {
	cfg = cfg.withDefaults()
	w := &Watcher{cfg: cfg, table: table, log: log.With().Str("component", "ctwatch").Logger(), now: opts.Now, opts: opts}
	if w.now == nil {
		w.now = time.Now
	}
	now := w.now()
	level := float64(cfg.PodBudget)
	if cfg.StateDir != "" {
		level = w.loadLevel(now)
	}
	if opts.Quota != nil {
		w.quota = NewQuotaBucket(cfg, level)
	} else {
		w.tx = NewTxBucket(cfg, level)
	}
	w.policy = NewPolicy(cfg)
	w.lastSave = now
	return w
}

func (w *Watcher) loadLevel(now time.Time) float64 {
	s, err := LoadState(w.cfg.StateDir)
	switch {
	case err == nil:
		level := s.Level(now, float64(w.cfg.PodBudget), float64(w.cfg.PodRefill))
		w.log.Info().Float64("saved_tokens", s.PodTokens).Time("saved_at", s.SavedAt).Float64("pod_tokens", level).Msg("pod bucket restored")
		return level
	case errors.Is(err, os.ErrNotExist):
		if w.opts.Quota != nil {
			return math.NaN() // the kernel's quota says
		}
		return float64(w.cfg.PodBudget)
	default:
		w.log.Warn().Err(err).Msg("pod bucket state unreadable; starting it empty")
		return 0
	}
}

// Stats returns a snapshot of the watcher's counters.
func (w *Watcher) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.policy.Stats()
	s.RefillLate = w.late
	return s
}

// Run reads the flows the kernel marked for attention once, adopting them
// (flows already demoted stay demoted), then keeps the pod bucket, reads,
// decides and applies until ctx is done, taking events as hints: events
// and errs are what conntrack.(*Conn).Listen returns for the UPDATE and
// DESTROY groups (either may be nil). An error wrapping
// conntrack.ErrEventsLost brings an unfiltered dump forward; any other error
// on errs ends the hints, not the watcher (dumps are the truth). It returns
// an error only if the first dump fails; later failures are counted in
// Stats, logged when they start and stop, and retried.
func (w *Watcher) Run(ctx context.Context, events <-chan conntrack.Event, errs <-chan error) error {
	w.mu.Lock()
	w.tick(ctx)
	err := w.walk(ctx, false)
	w.events = events != nil && !w.opts.DumpOnly
	w.mu.Unlock()
	if err != nil {
		return err
	}
	defer w.save()
	var walkRes <-chan walkResult
	if w.opts.Walker != nil {
		w.walkReq = make(chan walkResult, 1)
		w.walkRes = make(chan walkResult, 1)
		walkRes = w.walkRes
		go w.walkLoop(ctx)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		w.mu.Lock()
		next := w.nextWakeup()
		w.mu.Unlock()
		timer.Reset(max(next.Sub(w.now()), 0))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-events:
			if !ok {
				events = nil
				w.SetEvents(false)
				continue
			}
			w.HandleEvent(ctx, ev)
		case err, ok := <-errs:
			switch {
			case !ok:
				errs = nil
			case errors.Is(err, conntrack.ErrEventsLost):
				w.EventsLost()
			default:
				w.log.Warn().Err(err).Msg("conntrack events stopped; going on with dumps only")
				events = nil
				w.SetEvents(false)
			}
		case r := <-walkRes:
			w.mu.Lock()
			w.walking = false
			w.policy.DumpTook(r.took)
			w.buf = r.flows
			w.noteError(r.err)
			if r.err == nil {
				w.feedWalk(ctx, r.started, r.flows, r.full)
			}
			w.mu.Unlock()
		case <-timer.C:
		}
		w.mu.Lock()
		w.step(ctx)
		w.mu.Unlock()
	}
}

// nextWakeup returns when the loop must next act.
func (w *Watcher) nextWakeup() time.Time {
	t := w.nextTick
	if !w.walking && w.nextWalk.Before(t) {
		t = w.nextWalk
	}
	if n := w.policy.Next(); !n.IsZero() && n.Before(t) {
		t = n
	}
	return t
}

// SetEvents says whether the kernel's events bring the watcher every flow
// it must read (Run sets it from its arguments; tests that drive the
// watcher with Step and HandleEvent set it themselves). With events the
// watcher reads demoted flows one by one to promote them, and dumps every
// DumpInterval only while a flow is busy (an event asked for a read within
// the last 10 s), else every 10 s as a backstop; without, it dumps every
// DumpInterval.
func (w *Watcher) SetEvents(live bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events = live && !w.opts.DumpOnly
	w.setMode(w.now())
}

// setMode chooses between reading demoted flows one by one and dumping
// every DumpInterval, and brings the next dump forward when it switches to
// dumps.
func (w *Watcher) setMode(now time.Time) {
	reading := w.events && w.policy.Demoted() <= maxDemotedReads
	if reading == w.reading {
		return
	}
	w.reading = reading
	w.policy.SetReadDemoted(reading)
	if !reading && w.nextWalk.After(now) {
		w.nextWalk = now
	}
}

// walkEvery is the gap between two filtered dumps at now: every
// DumpInterval while flows are busy (an event asked for a read within the
// last backstopEvery) or without events; else the backstop.
func (w *Watcher) walkEvery(now time.Time) time.Duration {
	if w.reading && now.Sub(w.lastBusy) > backstopEvery {
		return max(w.cfg.DumpInterval, backstopEvery)
	}
	return w.cfg.DumpInterval
}

// Step does what is due at the clock's now: the pod bucket's tick, a dump,
// re-arms. Run calls it; tests that drive a fake clock call it themselves.
func (w *Watcher) Step(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.step(ctx)
}

// Start does Run's first dump and tick, for tests that drive the watcher
// with Step and HandleEvent instead of Run.
func (w *Watcher) Start(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tick(ctx)
	return w.walk(ctx, false)
}

// step does what is due now: the pod bucket's tick, a dump, re-arms.
func (w *Watcher) step(ctx context.Context) {
	now := w.now()
	w.setMode(now)
	if !now.Before(w.nextTick) {
		if late := now.Sub(w.nextTick); late > w.late || now.Sub(w.policy.LastRefill()) > 10*time.Second {
			w.late = late
		}
		w.tick(ctx)
	}
	if !w.walking && !now.Before(w.nextWalk) {
		full := w.fullDue && !now.Before(w.nextFull)
		if w.walkReq != nil {
			w.walking = true
			w.walkReq <- walkResult{flows: w.buf[:0], full: full, started: now}
			w.afterWalkStarted(now, full)
		} else {
			w.noteError(w.walk(ctx, full))
		}
	}
	w.keys = w.policy.Due(now, w.keys[:0])
	for _, k := range w.keys {
		w.run(ctx, Action{Kind: Rearm, Key: k})
	}
}

func (w *Watcher) afterWalkStarted(now time.Time, full bool) {
	w.nextWalk = now.Add(w.walkEvery(now))
	if full {
		w.fullDue = false
		w.nextFull = now.Add(fullWalkEvery)
	}
}

// walk dumps in the loop (no Walker).
func (w *Watcher) walk(ctx context.Context, full bool) error {
	now := w.now()
	w.afterWalkStarted(now, full)
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, walkTimeout)
	flows, err := w.dump(dctx, w.table, w.buf[:0], full)
	cancel()
	w.policy.DumpTook(time.Since(start))
	w.buf = flows
	if err != nil {
		return fmt.Errorf("dumping the conntrack table: %w", err)
	}
	w.feedWalk(ctx, now, flows, full)
	return nil
}

func (w *Watcher) filter(full bool) conntrack.Filter {
	if full {
		return conntrack.Filter{}
	}
	a := w.cfg.Contract.Attention()
	return conntrack.Filter{Mark: a, MarkMask: a}
}

// walkLoop runs the dumps on the Walker connection.
func (w *Watcher) walkLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case req := <-w.walkReq:
			dctx, cancel := context.WithTimeout(ctx, walkTimeout)
			start := time.Now()
			flows, err := w.dump(dctx, w.opts.Walker, req.flows, req.full)
			cancel()
			select {
			case w.walkRes <- walkResult{flows: flows, full: req.full, started: req.started, err: err, took: time.Since(start)}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// errWalkFull stops a dump that returned more flows than the watcher keeps.
var errWalkFull = errors.New("dump limit reached")

// dump reads the flows of a dump into buf[:0]: at most 2*MaxFlows, the rest
// come in a later dump, once those are parked.
func (w *Watcher) dump(ctx context.Context, t Table, buf []conntrack.Flow, full bool) ([]conntrack.Flow, error) {
	buf = buf[:0]
	limit := 2 * w.cfg.MaxFlows
	err := t.Walk(ctx, w.filter(full), func(f *conntrack.Flow) error {
		if len(buf) >= limit {
			return errWalkFull
		}
		buf = append(buf, *f)
		return nil
	})
	if errors.Is(err, errWalkFull) {
		err = nil
	}
	return buf, err
}

// feedWalk feeds a dump asked for at started to the policy and applies
// what it decides.
func (w *Watcher) feedWalk(ctx context.Context, started time.Time, flows []conntrack.Flow, full bool) {
	now := w.now()
	w.policy.BeginWalk(started, full)
	for i := range flows {
		w.apply(ctx, w.policy.Observe(now, &flows[i]))
	}
	w.apply(ctx, w.policy.EndWalk(now))
}

// HandleEvent takes one event: an UPDATE of a flow the kernel marked for
// attention (busy, or demoted by the tripwire or the gate) is read at once;
// a DESTROY writes the flow's final record.
func (w *Watcher) HandleEvent(ctx context.Context, ev conntrack.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	switch ev.Type {
	case conntrack.EventNew, conntrack.EventUpdate:
		acts := w.policy.Hint(now, &ev.Flow)
		if len(acts) > 0 {
			// A busy flow: dumps every DumpInterval again for a while,
			// as without events.
			w.lastBusy = now
			if next := now.Add(w.cfg.DumpInterval); w.nextWalk.After(next) {
				w.nextWalk = next
			}
		}
		w.apply(ctx, acts)
	case conntrack.EventDestroy:
		w.apply(ctx, w.policy.Destroyed(now, &ev.Flow))
	}
}

// EventsLost brings an unfiltered dump forward: the kernel dropped events,
// DESTROY events among them.
func (w *Watcher) EventsLost() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.policy.EventsLost()
	w.fullDue = true
	w.nextWalk = w.now()
}

// apply runs the actions, and those their results ask for, in order.
func (w *Watcher) apply(ctx context.Context, acts []Action) {
	start := len(w.queue)
	w.queue = append(w.queue, acts...)
	if start > 0 {
		return // an outer apply drains the queue
	}
	for i := 0; i < len(w.queue); i++ {
		w.run(ctx, w.queue[i])
	}
	w.queue = w.queue[:0]
}

// run does one action.
func (w *Watcher) run(ctx context.Context, a Action) {
	switch a.Kind {
	case Rearm:
		rctx, cancel := context.WithTimeout(ctx, opTimeout)
		f, err := w.table.GetZero(rctx, a.Key.Orig)
		cancel()
		switch {
		case errors.Is(err, conntrack.ErrNotFound):
			w.apply(ctx, w.policy.Gone(w.now(), a.Key))
		case err != nil:
			w.policy.RearmFailed(a.Key)
			w.log.Debug().Err(err).Msg("re-arming a flow failed; the next read retries")
		default:
			w.apply(ctx, w.policy.Zeroed(w.now(), &f))
		}
		return
	case Arm, Demote, Park:
		mctx, cancel := context.WithTimeout(ctx, opTimeout)
		err := w.table.SetMark(mctx, a.Key.Orig, a.Mark, a.Mask)
		cancel()
		switch {
		case errors.Is(err, conntrack.ErrNotFound):
			if a.Kind != Park {
				defer w.apply(ctx, w.policy.Gone(w.now(), a.Key))
			}
		case err != nil:
			w.policy.CountError()
			w.log.Debug().Err(err).Str("action", a.Kind.String()).Msg("setting a conntrack mark failed; the kernel's tripwire keeps the flow's budget meanwhile")
		}
		if a.Kind == Park && !w.parking {
			w.parking = true
			w.log.Warn().Int("max_flows", w.cfg.MaxFlows).Msg("tracking as many flows as it may: flows beyond are left to the kernel (demoted, never promoted)")
		}
	}
	writeAudit(&w.log, &a)
}

// tick keeps the pod bucket: a kernel-held one is refilled; a userspace one
// is charged from the transmit counter and its gate opened or closed.
func (w *Watcher) tick(ctx context.Context) {
	now := w.now()
	var level float64
	var closed bool
	var err error
	if w.quota != nil {
		level, closed, err = w.tickQuota(now)
		// A full bucket has nothing to refill: look again in a second (a
		// burst that spends it meanwhile is stopped by the kernel, and its
		// refill is counted from this tick). Otherwise every RefillInterval.
		w.nextTick = now.Add(w.cfg.RefillInterval)
		if err == nil && !closed && level >= float64(w.cfg.PodBudget) {
			w.nextTick = now.Add(max(w.cfg.RefillInterval, time.Second))
		}
	} else {
		level, closed, err = w.tickTx(now)
		w.nextTick = now.Add(w.tx.Next(float64(w.cfg.LineRate), min(w.cfg.RefillInterval, demotion.RecentWindowSeconds*time.Second/4)))
	}
	if err != nil {
		w.policy.CountError()
		if !w.podFailing {
			w.log.Warn().Err(err).Msg("keeping the pod bucket failed; the kernel's gate stays as it is (a quota is not refilled; a recent gate closes)")
		}
		w.podFailing = true
		return
	}
	if w.podFailing {
		w.log.Info().Msg("keeping the pod bucket works again")
	}
	w.podFailing = false
	w.apply(ctx, w.policy.Pod(now, level, closed))
	if w.cfg.StateDir != "" && !now.Before(w.lastSave.Add(w.cfg.SaveInterval)) {
		w.saveLocked(now)
	}
}

func (w *Watcher) tickQuota(now time.Time) (float64, bool, error) {
	limit, consumed, err := w.opts.Quota.Quota()
	if err != nil {
		return 0, false, err
	}
	var slow uint64
	if w.opts.SlowBytes != nil {
		if slow, err = w.opts.SlowBytes(); err != nil {
			return 0, false, err
		}
	}
	if next, write := w.quota.Tick(now, limit, consumed, slow); write {
		if err := w.opts.Quota.SetLimit(next); err != nil {
			return 0, false, err
		}
	}
	w.policy.Bytes(w.quota.Bytes())
	return w.quota.Level(), w.quota.Closed(), nil
}

func (w *Watcher) tickTx(now time.Time) (float64, bool, error) {
	tx, err := w.opts.Tx()
	if err != nil {
		return 0, false, err
	}
	open := w.tx.Tick(now, tx)
	// An open gate is refreshed at every tick: it closes by itself
	// RecentWindowSeconds after the last.
	if open || !w.gateKnown || w.gateOpen {
		if err := w.opts.Gate.Set(open); err != nil {
			return 0, false, err
		}
		w.gateOpen, w.gateKnown = open, true
	}
	w.policy.Bytes(w.tx.sent, 0)
	return w.tx.Level(), w.tx.Closed(), nil
}

func (w *Watcher) noteError(err error) {
	if err != nil {
		w.policy.CountError()
		if !w.failing {
			w.log.Warn().Err(err).Msg("conntrack dumps failing")
		}
		w.failing = true
		return
	}
	if w.failing {
		w.log.Info().Msg("conntrack dumps recovered")
	}
	w.failing = false
}

func (w *Watcher) save() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cfg.StateDir != "" {
		w.saveLocked(w.now())
	}
}

func (w *Watcher) saveLocked(now time.Time) {
	w.lastSave = now
	level := w.policy.PodLevel()
	err := SaveState(w.cfg.StateDir, State{PodTokens: level, SavedAt: now})
	if err != nil {
		w.policy.CountError()
		w.log.Debug().Err(err).Msg("saving the pod bucket level failed")
	}
}
