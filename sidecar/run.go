package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/conntrack"
	"github.com/hubwarden/hubwarden/ctwatch"
	"github.com/hubwarden/hubwarden/guard"
	"github.com/hubwarden/hubwarden/health"
	"github.com/hubwarden/hubwarden/nflog"
	"github.com/hubwarden/hubwarden/selftest"
	"github.com/hubwarden/hubwarden/units"
	"github.com/hubwarden/hubwarden/warden"
)

// Names of the loops /healthz watches.
const (
	loopWatcher   = "watcher"
	loopReconcile = "reconcile"
	loopGuard     = "guard"
)

// cmdRun is the sidecar: serve health at once (so probes get an answer while
// starting), apply and check the rules, prove them with the self-test, then
// watch, reconcile and log denials until SIGTERM. /readyz turns 200 only
// after apply and self-test passed. The rules stay when it exits.
func cmdRun(ctx context.Context, cfg *Config, log zerolog.Logger) error {
	st := health.NewStatus(time.Now)
	if cfg.Watch && cfg.Shape {
		// Ready only once the watcher has read the table: a flow the
		// notebook opens after that (a native sidecar's start-up probe
		// holds the notebook until then) is one the watcher sees begin,
		// and a demotion of it is audited with its reason, not adopted as
		// found at start.
		st.Await(loopWatcher)
	}
	m := health.NewMetrics(version)
	mux := http.NewServeMux()
	health.Register(mux, st, m)
	for _, d := range cfg.Deprecated {
		log.Warn().Msg(d)
	}
	// The probe listener serves the kubelet (and a scraper) from outside
	// the pod; the local one the pod itself, which cannot reach the
	// other's connection slots (see health.Listen, egress ProbePort).
	probe, local, err := health.Listen(cfg.HealthAddr)
	if err != nil {
		return fmt.Errorf("listening on HUBWARDEN_HEALTH_ADDR %s: %w", cfg.HealthAddr, err)
	}
	srv := health.NewServer(cfg.HealthAddr, mux)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() {
		if err := srv.ServeProbe(probe); err != nil {
			log.Error().Err(err).Msg("health server stopped")
		}
	})
	if local != nil {
		wg.Go(func() {
			if err := srv.ServeLocal(local); err != nil {
				log.Error().Err(err).Msg("local health server stopped")
			}
		})
	}
	wg.Go(func() {
		<-ctx.Done()
		sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
		defer c()
		_ = srv.HTTP.Shutdown(sctx)
	})

	// The guard listens before the redirect to it is applied, so that the
	// server's port is never redirected to nothing while run is up (before
	// run, in the init container's window, it is: connections are
	// refused, never passed on).
	if cfg.Guard.Mode != guard.Off {
		g, err := guard.New(cfg.Guard, log, guard.NewMetrics(m.Registry()), guard.Options{})
		if err != nil {
			return err
		}
		ln, err := guard.Listen(ctx, cfg.Guard.GuardPort)
		if err != nil {
			return err
		}
		st.AddLoop(loopGuard, math.MaxInt64) // it does not beat: it fails only if it stops
		wg.Go(func() {
			if err := g.Serve(ctx, ln); err != nil && ctx.Err() == nil {
				st.Fail(loopGuard, err)
				log.Error().Err(err).Msg("the HTTP guard stopped")
			}
		})
		log.Info().Str("component", "guard").Str("mode", string(cfg.Guard.Mode)).Str("base_url", cfg.Guard.BaseURL).
			Uint16("port", cfg.Guard.GuardPort).Uint16("server_port", cfg.Guard.ServerPort).Msg("guard listening")
	}

	start := time.Now()
	k, err := startup(ctx, cfg, log)
	m.ObserveApply(time.Since(start), err)
	st.SetApplied(err)
	if err != nil {
		return err
	}
	defer k.Close()

	res := runSelftest(ctx, cfg, k)
	if ctx.Err() != nil {
		return ctx.Err() // SIGTERM while starting: not a failed self-test
	}
	st.SetSelftest(res.Health())
	for _, c := range res.Checks {
		ev := log.Info()
		if !c.Passed {
			ev = log.Error()
		}
		ev.Str("component", "selftest").Str("check", c.Name).Bool("passed", c.Passed).Str("reason", c.Reason).Dur("dur", c.Duration).Msg("self-test check")
	}
	if err := res.Err(); err != nil {
		return err
	}
	log.Info().Msg("ready: rules applied, self-test passed")

	if cfg.Watch && cfg.Shape {
		w, events, errs, err := startWatcher(ctx, cfg, log, m, k)
		if err != nil {
			return err
		}
		st.AddLoop(loopWatcher, watcherStale)
		wg.Go(func() {
			if err := w.Run(ctx, events, errs); err != nil && ctx.Err() == nil {
				st.Fail(loopWatcher, err)
				log.Error().Err(err).Msg("conntrack watcher stopped")
			}
		})
		wg.Go(func() { beatWatcher(ctx, st, w, log) })
		wg.Go(func() { awaitFirstWalk(ctx, st, w) })
	}
	if cfg.Egress {
		r, err := nflog.Open(nflog.Config{Group: cfg.NFLogGroup, ReadBuffer: 1 << 20})
		if err != nil {
			return fmt.Errorf("opening the denial log (NFLOG group %d, HUBWARDEN_NFLOG_GROUP): %w", cfg.NFLogGroup, err)
		}
		dlog := log.With().Str("component", "denylog").Logger()
		wg.Go(func() {
			if err := nflog.Run(ctx, r, nflog.RunConfig{Window: cfg.DenyLogWindow, Log: &dlog, Counter: m}); err != nil {
				log.Error().Err(err).Msg("denial log stopped")
			}
		})
	}
	st.AddLoop(loopReconcile, 3*cfg.ReconcileInterval)
	wg.Go(func() { reconcile(ctx, k, cfg.ReconcileInterval, st, m, log) })
	wg.Go(func() { k.Follow(ctx) })

	<-ctx.Done()
	// The rules stay: removing them on exit would open the pod while the
	// container restarts.
	log.Info().Msg("stopping; the kernel rules stay in place")
	return nil
}

// runSelftest proves what start-up applied: accounting on, the HTB classes
// and the chains as planned, and the blocked test address refused.
func runSelftest(ctx context.Context, cfg *Config, w *warden.Warden) selftest.Result {
	// The same comparisons as the reconcile loop's drift, one check each.
	p := selftest.Probes{
		Chains: func(ctx context.Context) error { return driftErr(w.ChainsDrift(ctx)) },
	}
	if cfg.Shape {
		p.ReadFile = os.ReadFile
		p.HTBClasses = func(context.Context) error { return driftErr(w.QdiscDrift()) }
	}
	if cfg.Egress {
		p.Dial = (&net.Dialer{}).DialContext
	}
	if cfg.Guard.Mode != guard.Off {
		p.GuardRedirect = func(ctx context.Context) error { return guard.Probe(ctx, cfg.Guard.ServerPort) }
	}
	return selftest.Run(ctx, selftest.Options{Target: cfg.SelftestTarget}, p)
}

// startWatcher dials conntrack, starts listening before the first dump (so no
// flow falls between them) and builds the watcher, with the pod bucket the
// composition chose (the kernel's quota, or a userspace one).
func startWatcher(ctx context.Context, cfg *Config, log zerolog.Logger, m *health.Metrics, wd *warden.Warden) (*ctwatch.Watcher, <-chan conntrack.Event, <-chan error, error) {
	if err := conntrack.EnableAccounting(true); err != nil {
		// The mangle table's connbytes rule turns accounting on anyway (the
		// self-test checked it); timestamps are a nicety for the audit.
		log.Debug().Err(err).Msg("cannot write the conntrack accounting sysctls; relying on the connbytes rule")
	}
	dumpOnly := false
	if err := conntrack.EnableEvents(); err != nil {
		// /proc/sys is read-only in most containers. Events are hints: the
		// watcher's dumps find every flow anyway, but it dumps once a
		// DUMP_INTERVAL, not every 10 s, unless every flow sends events.
		if every, rerr := conntrack.EventsForEvery(); rerr != nil || !every {
			dumpOnly = true
			log.Info().Err(err).Msg("cannot enable conntrack events for every flow; dumping every DUMP_INTERVAL")
		}
	}
	local, err := ctwatch.LocalAddrs()
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := conntrack.Dial(conntrack.Config{})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("dialling conntrack: %w", err)
	}
	// Dumps walk the whole conntrack hash (the kernel filters them by mark,
	// but still walks), so they run on a second connection while the first
	// re-arms busy flows.
	walker, err := conntrack.Dial(conntrack.Config{})
	if err != nil {
		c.Close()
		return nil, nil, nil, fmt.Errorf("dialling conntrack: %w", err)
	}
	context.AfterFunc(ctx, func() { c.Close(); walker.Close() })
	events, errs := c.Listen(ctx, conntrack.GroupUpdate, conntrack.GroupDestroy)
	wcfg := ctwatch.Config{
		Contract:         cfg.Contract,
		FlowRefill:       cfg.FlowRefill,
		PodBudget:        cfg.PodBudget,
		PodRefill:        cfg.PodRefill,
		PromoteIdle:      cfg.PromoteIdle,
		DumpInterval:     cfg.DumpInterval,
		ProgressInterval: cfg.ProgressInterval,
		LocalAddrs:       local,
		LineRate:         lineRate(cfg.FastRate),
		StateDir:         cfg.StateDir,
	}
	opts := wd.WatcherOptions()
	opts.Walker = walker
	opts.DumpOnly = dumpOnly
	w := ctwatch.New(wcfg, c, log, opts)
	m.SetWatcher(func() health.WatcherStats {
		s := w.Stats()
		age := 0.0
		if !s.LastRefill.IsZero() {
			age = time.Since(s.LastRefill).Seconds()
		}
		return health.WatcherStats{
			FlowsTracked:   s.Flows,
			Demotions:      s.Demotions,
			Promotions:     s.Promotions,
			BytesFast:      s.FastBytes,
			BytesSlow:      s.SlowBytes,
			PodBucketBytes: s.PodTokens,
			PodGate:        s.Gate,
			PodGateSets:    s.GateCloses,
			Rearms:         s.Rearms,
			Parked:         s.Parked,
			Events:         s.Events,
			EventsLost:     s.EventsLost,
			Errors:         s.Errors,
			RefillAge:      age,
			RefillLate:     s.RefillLate.Seconds(),
			DumpSeconds:    s.DumpLatency.Seconds(),
			Dumps:          s.Walks,
			Reads:          s.Reads,
		}
	})
	return w, events, errs, nil
}

// watcherStale is how long the watcher may go without keeping the pod
// bucket before /healthz fails (it keeps it every 100 ms; a dump that
// takes this long is a watcher in trouble too).
const watcherStale = 15 * time.Second

// beatWatcher tells /healthz the watcher is alive while it keeps the pod
// bucket, and logs when it falls behind (a starved watcher refills late;
// the kernel's bounds hold regardless) or the kernel drops its events.
// awaitFirstWalk marks the watcher's start-up step done once its first
// dump has been read (Run reads it before anything else).
func awaitFirstWalk(ctx context.Context, st *health.Status, w *ctwatch.Watcher) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for w.Stats().Walks == 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	st.Arrived(loopWatcher)
}

func beatWatcher(ctx context.Context, st *health.Status, w *ctwatch.Watcher, log zerolog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var last time.Time
	var lost uint64
	behind := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := w.Stats()
		if s.LastRefill.After(last) {
			last = s.LastRefill
			st.Beat(loopWatcher)
		}
		if s.EventsLost != lost {
			log.Warn().Str("component", "ctwatch").Uint64("events_lost", s.EventsLost-lost).Msg("the kernel dropped conntrack events: the watcher fell behind (the next dump catches up)")
			lost = s.EventsLost
		}
		late := s.RefillLate > time.Second
		if late != behind {
			if late {
				log.Warn().Str("component", "ctwatch").Dur("late", s.RefillLate).Msg("the watcher is behind: its pod bucket ticks come late (starved of CPU?); the kernel holds the budgets meanwhile")
			} else {
				log.Info().Str("component", "ctwatch").Msg("the watcher caught up")
			}
			behind = late
		}
	}
}

// reconcile compares the kernel with the plan every interval and re-applies
// when anything of hubwarden's drifted or vanished, loudly.
func reconcile(ctx context.Context, w *warden.Warden, every time.Duration, st *health.Status, m *health.Metrics, log zerolog.Logger) {
	st.Beat(loopReconcile)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		d, err := w.Reconcile(ctx)
		if !d.Empty() {
			m.AddDrift()
			m.ObserveApply(time.Since(start), err)
		}
		if err != nil {
			st.Fail(loopReconcile, err)
			log.Error().Err(err).Msg("reconcile")
			continue
		}
		if !d.Empty() {
			log.Info().Str("component", "reconcile").Dur("dur", time.Since(start)).Msg("re-applied")
		}
		st.Beat(loopReconcile)
	}
}

// driftErr turns a drift result into a check's error: the failure to read,
// or the drift itself.
func driftErr(drift string, err error) error {
	if err != nil {
		return err
	}
	if drift != "" {
		return errors.New(drift)
	}
	return nil
}

// lineRate is the fastest the pod can send, for the watcher: FAST_RATE when
// it caps the pod, else the fastest rate a userspace pod bucket is read for.
func lineRate(fast units.Rate) units.Rate {
	if fast == 0 {
		return ctwatch.MaxLineRate
	}
	return fast
}
