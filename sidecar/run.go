package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/conntrack"
	"github.com/hubwarden/hubwarden/ctwatch"
	"github.com/hubwarden/hubwarden/health"
	"github.com/hubwarden/hubwarden/nflog"
	"github.com/hubwarden/hubwarden/selftest"
	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/xtables"
)

// Names of the loops /healthz watches.
const (
	loopWatcher   = "watcher"
	loopReconcile = "reconcile"
)

// cmdRun is the sidecar: serve health at once (so probes get an answer while
// starting), apply and check the rules, prove them with the self-test, then
// watch, reconcile and log denials until SIGTERM. /readyz turns 200 only
// after apply and self-test passed. The rules stay when it exits.
func cmdRun(ctx context.Context, cfg *Config, log zerolog.Logger) error {
	st := health.NewStatus(time.Now)
	m := health.NewMetrics(version)
	mux := http.NewServeMux()
	health.Register(mux, st, m)
	ln, err := net.Listen("tcp", cfg.HealthAddr)
	if err != nil {
		return fmt.Errorf("listening on HUBWARDEN_HEALTH_ADDR %s: %w", cfg.HealthAddr, err)
	}
	srv := health.NewServer(cfg.HealthAddr, mux)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("health server stopped")
		}
	})
	wg.Go(func() {
		<-ctx.Done()
		sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
		defer c()
		_ = srv.HTTP.Shutdown(sctx)
	})

	start := time.Now()
	k, err := startup(ctx, cfg, log)
	m.ObserveApply(time.Since(start), err)
	st.SetApplied(err)
	if err != nil {
		return err
	}
	defer k.plan.shape.Close()

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
		w, events, errs, err := startWatcher(ctx, cfg, log, m, k.plan.shape.gated(), k.plan.ipv6)
		if err != nil {
			return err
		}
		st.AddLoop(loopWatcher, 5*cfg.DumpInterval+5*time.Second)
		wg.Go(func() {
			if err := w.Run(ctx, events, errs); err != nil && ctx.Err() == nil {
				st.Fail(loopWatcher, err)
				log.Error().Err(err).Msg("conntrack watcher stopped")
			}
		})
		wg.Go(func() { beatWatcher(ctx, st, w, cfg.DumpInterval) })
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
	wg.Go(func() { k.reconcile(ctx, cfg.ReconcileInterval, st, m) })
	wg.Go(func() { k.follow(ctx) })

	<-ctx.Done()
	// The rules stay: removing them on exit would open the pod while the
	// container restarts.
	log.Info().Msg("stopping; the kernel rules stay in place")
	return nil
}

// runSelftest proves what start-up applied: accounting on, the HTB classes
// and the chains as planned, and the blocked test address refused.
func runSelftest(ctx context.Context, cfg *Config, k *kernel) selftest.Result {
	// The same comparisons as the reconcile loop's drift, one check each.
	p := selftest.Probes{
		Chains: func(ctx context.Context) error { return driftErr(k.chainsDrift(ctx)) },
	}
	if cfg.Shape {
		p.ReadFile = os.ReadFile
		p.HTBClasses = func(context.Context) error { return driftErr(k.plan.shape.check()) }
	}
	if cfg.Egress {
		p.Dial = (&net.Dialer{}).DialContext
	}
	return selftest.Run(ctx, selftest.Options{Target: cfg.SelftestTarget}, p)
}

// startWatcher dials conntrack, starts listening before the first dump (so no
// flow falls between them) and builds the watcher.
//
// The mangle rules hold the tripwire at FLOW_BUDGET (MangleTables, as
// newShaper plans it whenever the watcher runs), and the pod gate when gated.
func startWatcher(ctx context.Context, cfg *Config, log zerolog.Logger, m *health.Metrics, gated, ipv6 bool) (*ctwatch.Watcher, <-chan conntrack.Event, <-chan error, error) {
	if err := conntrack.EnableAccounting(true); err != nil {
		// The mangle table's connbytes rule turns accounting on anyway (the
		// self-test checked it); timestamps are a nicety for the audit.
		log.Debug().Err(err).Msg("cannot write the conntrack accounting sysctls; relying on the connbytes rule")
	}
	if err := conntrack.EnableEvents(); err != nil {
		// /proc/sys is read-only in most containers. Events are hints only:
		// the watcher's dumps find every flow anyway.
		log.Debug().Err(err).Msg("cannot enable conntrack events for every flow; relying on dumps")
	}
	local, err := ctwatch.LocalAddrs()
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := conntrack.Dial(conntrack.Config{})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("dialling conntrack: %w", err)
	}
	// Full dumps walk the whole conntrack table (milliseconds), so they run on
	// a second connection while the first reads hot flows one at a time.
	dumper, err := conntrack.Dial(conntrack.Config{})
	if err != nil {
		c.Close()
		return nil, nil, nil, fmt.Errorf("dialling conntrack: %w", err)
	}
	context.AfterFunc(ctx, func() { c.Close(); dumper.Close() })
	events, errs := c.Listen(ctx)
	opts := ctwatch.Options{Tx: ctwatch.TxBytes("/proc/net/dev"), Dumper: dumper}
	if gated {
		opts.Gate = tcshape.PodGate{IPv6: ipv6}
	}
	w := ctwatch.New(ctwatch.Config{
		FlowBudget:       cfg.FlowBudget,
		FlowRefill:       cfg.FlowRefill,
		PodBudget:        cfg.PodBudget,
		PodRefill:        cfg.PodRefill,
		PromoteIdle:      cfg.PromoteIdle,
		DumpInterval:     cfg.DumpInterval,
		ProgressInterval: cfg.ProgressInterval,
		CTMark:           cfg.CTMark,
		Tripwire:         true,
		WatchedMark:      cfg.watchedMark(),
		Gate:             gated,
		User:             cfg.User,
		Server:           cfg.Server,
		StateDir:         cfg.StateDir,
		LocalAddrs:       local,
		// Reading the pod's transmit counter every millisecond finds a
		// kept-alive flow that starts a burst long before the next dump.
		TxInterval: time.Millisecond,
		// ... but only while a burst at the fast rate could spend a quarter
		// of a bucket that quickly: an idle pod is read every 20 ms.
		TxMaxInterval: 20 * time.Millisecond,
		LineRate:      cfg.FastRate,
	}, c, log, opts)
	m.SetWatcher(func() health.WatcherStats {
		s := w.Stats()
		return health.WatcherStats{
			FlowsTracked:   s.Flows,
			Demotions:      s.Demotions,
			Promotions:     s.Promotions,
			BytesFast:      s.FastBytes,
			BytesSlow:      s.SlowBytes,
			PodBucketBytes: s.PodTokens,
			PodGate:        s.Gate,
			PodGateSets:    s.GateSets,
		}
	})
	return w, events, errs, nil
}

// beatWatcher tells /healthz the watcher is alive while its dumps advance.
func beatWatcher(ctx context.Context, st *health.Status, w *ctwatch.Watcher, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var last uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if d := w.Stats().Dumps; d != last {
			last = d
			st.Beat(loopWatcher)
		}
	}
}

// reconcile compares the kernel with the plan every interval and re-applies
// when anything of hubwarden's drifted or vanished, loudly.
func (k *kernel) reconcile(ctx context.Context, every time.Duration, st *health.Status, m *health.Metrics) {
	st.Beat(loopReconcile)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		drift, err := k.drift(ctx)
		if err != nil {
			st.Fail(loopReconcile, err)
			k.log.Error().Err(err).Msg("reconcile: reading the kernel")
			continue
		}
		if drift == "" {
			st.Beat(loopReconcile)
			continue
		}
		m.AddDrift()
		k.log.Warn().Str("component", "reconcile").Str("drift", drift).Msg("hubwarden's kernel state drifted; re-applying")
		start := time.Now()
		err = k.apply(ctx)
		m.ObserveApply(time.Since(start), err)
		if err != nil {
			st.Fail(loopReconcile, err)
			k.log.Error().Err(err).Msg("reconcile: re-applying")
			continue
		}
		k.log.Info().Str("component", "reconcile").Dur("dur", time.Since(start)).Msg("re-applied")
		st.Beat(loopReconcile)
	}
}

// drift returns a readable difference between the kernel and the plan, for
// both the iptables tables and the qdiscs; "" when they match.
func (k *kernel) drift(ctx context.Context) (string, error) {
	text, err := k.chainsDrift(ctx)
	if err != nil {
		return "", err
	}
	tc, err := k.plan.shape.check()
	if err != nil {
		return "", err
	}
	if tc != "" {
		text += "qdiscs: " + tc
	}
	return text, nil
}

// chainsDrift returns a readable difference between the kernel's iptables
// chains and the current plan; "" when they match.
func (k *kernel) chainsDrift(ctx context.Context) (string, error) {
	d, err := k.ipt.Check(ctx, k.currentTables())
	if err != nil {
		return "", err
	}
	return driftText(d), nil
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

// currentTables returns the tables of the current plan (host names re-resolve).
func (k *kernel) currentTables() []xtables.Table {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.tables
}
