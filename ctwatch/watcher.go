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
)

// Table is the part of the conntrack client the watcher uses.
type Table interface {
	// DumpInto reads every flow of the table into buf[:0].
	DumpInto(ctx context.Context, buf []conntrack.Flow) ([]conntrack.Flow, error)
	// Get reads one flow by its original tuple; conntrack.ErrNotFound if gone.
	Get(ctx context.Context, orig conntrack.Tuple) (conntrack.Flow, error)
	// SetMark sets the bits of mask in the flow's mark to those of mark.
	SetMark(ctx context.Context, orig conntrack.Tuple, mark, mask uint32) error
}

var _ Table = (*conntrack.Conn)(nil)

// Deadlines of the watcher's kernel requests: a request that hangs (a lost
// netlink reply) must not stop the watcher.
const (
	opTimeout   = time.Second      // Get, SetMark
	dumpTimeout = 10 * time.Second // DumpInto
)

// Options are the watcher's injected dependencies besides the table.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Tx reads the pod's transmitted-bytes counter (every interface but
	// loopback); nil disables the trigger (Config.TxInterval).
	Tx func() (uint64, error)
	// Dumper, if set, is a second connection to the same table used only
	// for full dumps, which then run in the background: a dump walks the
	// kernel's whole conntrack hash (milliseconds to tens of milliseconds
	// on a busy node) and must not delay the reads of hot flows. nil: dumps
	// run in the loop.
	Dumper Table
	// Gate sets and clears the pod gate (tcshape.PodGate); nil: no gate
	// (Config.Gate is then ignored).
	Gate Gate
}

// Gate is the pod gate: while it is set, the kernel demotes every flow that
// sends.
type Gate interface {
	Set(on bool) error
}

type dumpResult struct {
	flows []conntrack.Flow
	err   error
	took  time.Duration
}

// Watcher runs the policy against a conntrack table.
type Watcher struct {
	cfg   Config
	table Table
	log   zerolog.Logger
	now   func() time.Time
	tx    func() (uint64, error)

	dumper  Table
	gate    Gate
	dumpReq chan []conntrack.Flow // to the background dumper: a buffer to fill
	dumpRes chan dumpResult
	dumping bool // a background dump is in flight (guarded by mu)

	mu          sync.Mutex // guards everything below; Stats may be called from any goroutine
	policy      *Policy
	buf         []conntrack.Flow
	keys        []Key
	lastSave    time.Time
	failing     bool          // the last read failed (log state changes only)
	saveFailing bool          // the last state save failed
	gateFailing bool          // the last gate write failed
	late        time.Duration // decaying maximum of the timer's lateness
	lateAt      time.Time
}

// lateHalfLife is how fast the measured lateness of reads is forgotten.
const lateHalfLife = 10 * time.Second

// noteLate records that a read planned for planned happened at now, and
// passes the decaying maximum of the lateness to the policy as its
// look-ahead.
func (w *Watcher) noteLate(planned, now time.Time) {
	if !w.lateAt.IsZero() {
		w.late = time.Duration(float64(w.late) * math.Exp2(-now.Sub(w.lateAt).Seconds()/lateHalfLife.Seconds()))
	}
	w.lateAt = now
	if d := now.Sub(planned); d > w.late {
		w.late = d
	}
	w.policy.SetLookahead(w.late)
}

// New returns a watcher. The pod bucket starts at the level saved in
// cfg.StateDir, refilled for the time since; full if there is no state file.
// An unreadable state file starts the bucket empty (fail closed) and is
// logged.
func New(cfg Config, table Table, log zerolog.Logger, opts Options) *Watcher {
	w := &Watcher{
		table:  table,
		log:    log.With().Str("component", "ctwatch").Logger(),
		now:    opts.Now,
		tx:     opts.Tx,
		dumper: opts.Dumper,
		gate:   opts.Gate,
	}
	if w.now == nil {
		w.now = time.Now
	}
	cfg = cfg.withDefaults()
	if w.tx == nil {
		cfg.TxInterval = 0
	}
	if w.gate == nil {
		cfg.Gate = false
	}
	w.cfg = cfg
	now := w.now()
	level := float64(cfg.PodBudget)
	if cfg.StateDir != "" {
		s, err := LoadState(cfg.StateDir)
		switch {
		case err == nil:
			level = s.Level(now, float64(cfg.PodBudget), float64(cfg.PodRefill))
			w.log.Info().Float64("saved_tokens", s.PodTokens).Time("saved_at", s.SavedAt).
				Float64("pod_tokens", level).Msg("pod bucket restored")
		case errors.Is(err, os.ErrNotExist):
		default:
			level = 0
			w.log.Warn().Err(err).Msg("pod bucket state unreadable; starting it empty")
		}
	}
	w.policy = NewPolicy(cfg, now, level)
	w.lastSave = now
	return w
}

// Stats returns a snapshot of the watcher's counters.
func (w *Watcher) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.policy.refillPod(w.now())
	return w.policy.Stats()
}

// Run dumps the table once, adopting every flow in it (flows already marked
// stay demoted), then reads, decides and applies until ctx is done, taking
// events as hints: events and errs are what conntrack.(*Conn).Listen
// returns (either may be nil). An error wrapping conntrack.ErrEventsLost
// brings the next dump forward; any other error on errs ends the hints, not
// the watcher (dumps are the truth). Run saves the pod bucket level
// periodically and on return. It returns an error only if the first dump
// fails; later failures are counted in Stats, logged when they start and
// stop, and retried.
func (w *Watcher) Run(ctx context.Context, events <-chan conntrack.Event, errs <-chan error) error {
	if err := w.Step(ctx); err != nil {
		return err
	}
	defer w.save()
	var dumpRes <-chan dumpResult
	if w.dumper != nil {
		w.dumpReq = make(chan []conntrack.Flow, 1)
		w.dumpRes = make(chan dumpResult, 1)
		dumpRes = w.dumpRes
		go w.dumpLoop(ctx)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		w.mu.Lock()
		next := w.policy.Next()
		if save := w.lastSave.Add(w.cfg.SaveInterval); w.cfg.StateDir != "" && save.Before(next) {
			next = save
		}
		w.mu.Unlock()
		waitFrom := w.now()
		timer.Reset(max(next.Sub(waitFrom), 0))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			w.HandleEvent(ctx, ev)
		case err, ok := <-errs:
			switch {
			case !ok:
				errs = nil
				continue
			case errors.Is(err, conntrack.ErrEventsLost):
				w.EventsLost()
			default:
				w.log.Warn().Err(err).Msg("conntrack events stopped; going on with dumps only")
			}
		case r := <-dumpRes:
			w.mu.Lock()
			w.dumping = false
			w.policy.SetDumpCost(r.took)
			if r.err != nil {
				w.noteError(fmt.Errorf("dumping the conntrack table: %w", r.err))
			} else {
				w.buf = r.flows
				w.apply(ctx, w.policy.Dump(w.now(), r.flows))
				w.reassertGate()
			}
			w.mu.Unlock()
		case <-timer.C:
			w.mu.Lock()
			// Only the timer's lateness: a read planned during a long
			// dump is late by the dump, which SetDumpCost accounts for.
			w.noteLate(maxTime(next, waitFrom), w.now())
			w.mu.Unlock()
		}
		// Errors are counted and logged on change by Step; keep going.
		_ = w.Step(ctx)
	}
}

// HandleEvent takes one event as a hint: a NEW flow is looked at right away
// (and demoted if the pod bucket is empty), a DESTROY event writes the
// flow's final record with its final counters.
func (w *Watcher) HandleEvent(ctx context.Context, ev conntrack.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	switch ev.Type {
	case conntrack.EventNew:
		w.apply(ctx, w.policy.Observe(now, ev.Flow))
	case conntrack.EventDestroy:
		w.apply(ctx, w.policy.Destroyed(now, ev.Flow))
	}
}

// EventsLost brings the next dump forward: the kernel dropped events.
func (w *Watcher) EventsLost() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.policy.ForceDump(w.now())
}

// Step does the reads that are due now: a full dump, or single reads of the
// hot flows; applies the resulting actions; and saves the state if due.
func (w *Watcher) Step(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	if w.tx != nil && !now.Before(w.policy.txNext) {
		if tx, err := w.tx(); err == nil {
			w.policy.Tx(now, tx)
			w.apply(ctx, w.policy.CheckGate(now))
		}
	}
	var dump bool
	w.keys, dump = w.policy.Due(now, w.keys[:0])
	var err error
	switch {
	case dump && w.dumpReq != nil && !w.dumping:
		// In the background; the due flows are read meanwhile.
		w.dumping = true
		w.policy.DumpStarted(now)
		if w.tx != nil {
			if tx, err := w.tx(); err == nil {
				w.policy.Tx(now, tx)
			}
		}
		w.dumpReq <- w.buf[:0]
	case dump && w.dumpReq == nil:
		err = w.dump(ctx)
		w.keys = w.keys[:0]
	}
	for _, k := range w.keys {
		if e := w.get(ctx, k); e != nil {
			err = e
		}
	}
	w.noteError(err)
	if w.cfg.StateDir != "" && !now.Before(w.lastSave.Add(w.cfg.SaveInterval)) {
		w.saveLocked(now)
	}
	return err
}

// dumpLoop runs the background dumps on the Dumper connection.
func (w *Watcher) dumpLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case buf := <-w.dumpReq:
			dctx, cancel := context.WithTimeout(ctx, dumpTimeout)
			start := time.Now()
			flows, err := w.dumper.DumpInto(dctx, buf)
			took := time.Since(start)
			cancel()
			select {
			case w.dumpRes <- dumpResult{flows: flows, err: err, took: took}:
			case <-ctx.Done():
				return
			}
		}
	}
}

func (w *Watcher) dump(ctx context.Context) error {
	if w.tx != nil {
		if tx, err := w.tx(); err == nil {
			w.policy.Tx(w.now(), tx)
		}
	}
	dctx, cancel := context.WithTimeout(ctx, dumpTimeout)
	start := time.Now()
	buf, err := w.table.DumpInto(dctx, w.buf[:0])
	w.policy.SetDumpCost(time.Since(start))
	cancel()
	if err != nil {
		// Don't spin: try again after the usual interval.
		w.policy.nextDump = w.now().Add(w.cfg.DumpInterval)
		return fmt.Errorf("dumping the conntrack table: %w", err)
	}
	w.buf = buf
	w.apply(ctx, w.policy.Dump(w.now(), buf))
	w.reassertGate()
	return nil
}

// reassertGate writes a set gate again after each dump: re-applying the
// gate rule (the reconcile loop after drift) starts its table empty.
func (w *Watcher) reassertGate() {
	if w.cfg.Gate && w.policy.GateOn() {
		w.setGate(true)
	}
}

func (w *Watcher) get(ctx context.Context, k Key) error {
	gctx, cancel := context.WithTimeout(ctx, opTimeout)
	f, err := w.table.Get(gctx, k.Orig)
	cancel()
	switch {
	case errors.Is(err, conntrack.ErrNotFound):
		w.apply(ctx, w.policy.Gone(w.now(), k))
		return nil
	case err != nil:
		// Leave it to the next dump.
		return fmt.Errorf("reading conntrack flow %v: %w", k.Orig, err)
	}
	w.apply(ctx, w.policy.Observe(w.now(), f))
	return nil
}

// apply changes the marks the actions ask for and writes their audit lines.
func (w *Watcher) apply(ctx context.Context, acts []Action) {
	var gone []Key
	for i := range acts {
		a := &acts[i]
		var err error
		switch a.Kind {
		case Demote, Reapply:
			err = w.setMark(ctx, a.Key.Orig, w.cfg.CTMark, w.cfg.CTMark)
		case Promote:
			if w.cfg.Tripwire {
				// Watched from now on: the tripwire counts from the
				// flow's start and would fire again at once.
				err = w.setMark(ctx, a.Key.Orig, w.cfg.WatchedMark, w.cfg.CTMark|w.cfg.WatchedMark)
			} else {
				err = w.setMark(ctx, a.Key.Orig, 0, w.cfg.CTMark)
			}
		case Watch:
			err = w.setMark(ctx, a.Key.Orig, w.cfg.WatchedMark, w.cfg.WatchedMark)
		case GateSet, GateClear:
			w.setGate(a.Kind == GateSet)
		}
		writeAudit(&w.log, w.cfg.User, w.cfg.Server, a)
		switch {
		case errors.Is(err, conntrack.ErrNotFound):
			gone = append(gone, a.Key) // finished below: Gone reuses acts
		case err != nil:
			w.policy.CountError()
			w.log.Debug().Err(err).Str("action", a.Kind.String()).Msg("setting conntrack mark failed; the next dump retries")
		}
	}
	for _, k := range gone {
		rec := w.policy.Gone(w.now(), k)
		for j := range rec {
			writeAudit(&w.log, w.cfg.User, w.cfg.Server, &rec[j])
		}
	}
}

func (w *Watcher) setMark(ctx context.Context, orig conntrack.Tuple, mark, mask uint32) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	return w.table.SetMark(ctx, orig, mark, mask)
}

// setGate sets or clears the pod gate. A failure is counted and logged; the
// next dump writes the gate again.
func (w *Watcher) setGate(on bool) {
	if err := w.gate.Set(on); err != nil {
		w.policy.CountError()
		if !w.gateFailing {
			w.log.Warn().Err(err).Msg("setting the pod gate failed; new flows get fast bytes while the pod bucket is empty")
		}
		w.gateFailing = true
		return
	}
	w.gateFailing = false
}

func (w *Watcher) noteError(err error) {
	if err != nil {
		w.policy.CountError()
		if !w.failing {
			w.log.Warn().Err(err).Msg("conntrack read failing")
		}
		w.failing = true
		return
	}
	if w.failing {
		w.log.Info().Msg("conntrack reads recovered")
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
	s := State{PodTokens: w.policy.PodTokens(now), SavedAt: now}
	err := SaveState(w.cfg.StateDir, s)
	switch {
	case err != nil && !w.saveFailing:
		w.log.Warn().Err(err).Msg("saving the pod bucket level failed")
	case err == nil && w.saveFailing:
		w.log.Info().Msg("saving the pod bucket level works again")
	}
	if err != nil {
		w.policy.CountError()
	}
	w.saveFailing = err != nil
}
