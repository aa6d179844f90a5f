// Package warden puts hubwarden's parts together in the pod's network
// namespace: it detects (or recalls) what the kernel offers, plans the
// iptables tables (egress, demotion), the qdisc tree and the pod gate from
// the configuration, applies them in order, checks the kernel against the
// plan, re-applies on drift and re-plans when the allow-list's host names
// resolve to new addresses.
//
// Everything it does to the kernel goes through Kernel, so the composition
// is tested against fakes (warden_test.go); the sidecar gives it Linux().
// What a command may do is its Mode: plan and check never write to the
// kernel.
package warden

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/ctwatch"
	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/resolve"
	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/xtables"
)

// Mode is what a command may do to the kernel.
type Mode int

const (
	// Preview plans from the configuration and what can be read without
	// privileges (the default route's interface, its MTU); it writes
	// nothing and detects nothing by trying (plan).
	Preview Mode = iota
	// ReadOnly plans what start-up applied, from what it recorded in
	// HUBWARDEN_STATE_DIR, reads the kernel and writes nothing (check).
	ReadOnly
	// Write detects what the kernel offers, trying where it must (a probe
	// device for fq, a probe table for nftables quotas, the iptables
	// backends), records it, and applies (init, run).
	Write
)

func (m Mode) String() string {
	return [...]string{"preview", "read-only", "write"}[m]
}

// Options are how a Warden is opened.
type Options struct {
	Mode Mode
	// Offline does not resolve the allow-list's host names (plan
	// --offline: checking a configuration sends no DNS query); they
	// contribute no rules.
	Offline bool
	Kernel  Kernel
	Log     zerolog.Logger
}

// Warden is the composition of one pod's kernel state.
type Warden struct {
	cfg       *Config
	opts      Options
	log       zerolog.Logger
	tc        TC                // nil with shaping off
	nft       NFT               // nil unless the plan holds a quota gate and the mode reads the kernel
	ipt       *xtables.Iptables // nil in Preview
	refresher *resolve.Refresher
	followCtx context.Context // Follow's, for the refresher's callback
	// level is what a pod quota created by the next apply holds: the level
	// saved in STATE_DIR (or the whole budget) at start, nothing after (a
	// quota someone deleted comes back empty; the watcher refills it).
	level uint64

	mu       sync.Mutex // serialises apply and re-plan
	plan     Plan
	resolved map[string][]netip.Addr // the answers the plan was made with
}

// ErrReadOnly is returned by Apply in a mode that does not write.
var ErrReadOnly = errors.New("this command does not change the kernel")

// Open detects or recalls the kernel's environment as the mode allows,
// resolves the host names (unless offline) and plans.
func Open(ctx context.Context, cfg *Config, opts Options) (_ *Warden, err error) {
	w := &Warden{cfg: cfg, opts: opts, log: opts.Log}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	ipv6, err := IPv6Decision(cfg.IPv6, opts.Kernel.HasIPv6())
	if err != nil {
		return nil, err
	}
	env := Env{IPv6: ipv6, Gate: gateFor(cfg), Probed: opts.Mode == Write}
	var rec Detected
	if opts.Mode != Preview {
		if rec, err = loadDetected(cfg.StateDir); err != nil {
			return nil, err
		}
	}
	// The interactive classification is tried by applying it (Apply
	// degrades and records a refusal); what an earlier start-up recorded
	// wins.
	env.Interactive = !rec.HashlimitRefused
	if cfg.Shape {
		if env.Shape, err = w.shapeEnv(rec); err != nil {
			return nil, err
		}
		if env.Gate, err = w.gate(rec); err != nil {
			return nil, err
		}
		if opts.Mode == Write && (rec.Leaves != env.Shape.Leaves || rec.Gate != env.Gate) {
			if err := saveDetected(cfg.StateDir, Detected{Gate: env.Gate, Leaves: env.Shape.Leaves, HashlimitRefused: rec.HashlimitRefused}); err != nil {
				return nil, err
			}
		}
	}
	if opts.Mode != Preview {
		if err := w.openIptables(ctx, ipv6); err != nil {
			return nil, err
		}
		if env.Gate == demotion.GateQuota {
			if w.nft, err = opts.Kernel.NFT(); err != nil {
				return nil, fmt.Errorf("opening nftables: %w", err)
			}
		}
	}
	if hosts := cfg.egressConfig(ipv6).Hosts(); cfg.Egress && len(hosts) > 0 {
		w.refresher = resolve.NewRefresher(opts.Kernel.Resolver(cfg.DNSServers, w.log), hosts, cfg.ResolveMinTTL, w.log,
			func(resolved map[string][]netip.Addr) { w.onAnswers(resolved) })
	}
	var resolved map[string][]netip.Addr
	if !opts.Offline {
		resolved = w.resolveNow(ctx)
	}
	if w.plan, err = NewPlan(cfg, env, resolved); err != nil {
		return nil, err
	}
	w.resolved = resolved
	w.level = initialPodLevel(cfg)
	return w, nil
}

// shapeEnv finds the qdisc side's environment: read from the kernel, with
// the leaf kind recalled, tried (Write, the first time) or assumed FIFO
// (Preview).
func (w *Warden) shapeEnv(rec Detected) (tcshape.Config, error) {
	cfg := tcshape.Config{Interface: w.cfg.Interface, FastRate: w.cfg.FastRate, SlowRate: w.cfg.SlowRate}
	tc, err := w.opts.Kernel.TC()
	if err != nil {
		return cfg, fmt.Errorf("opening traffic control: %w", err)
	}
	w.tc = tc
	if w.opts.Mode == Preview {
		// A preview plans for the configured interface even where it does
		// not exist (checking a configuration): the MTU and clock the
		// kernel would report are not needed to show the plan.
		if cfg.Interface == "" {
			cfg.Interface, err = tc.DefaultRouteInterface()
		}
	} else {
		cfg, err = tc.Environment(cfg)
	}
	if err != nil {
		return cfg, fmt.Errorf("detecting the shaping environment (set HUBWARDEN_INTERFACE, or HUBWARDEN_SHAPE=false): %w", err)
	}
	switch {
	case w.opts.Mode == Preview:
	case rec.Leaves != "":
		cfg.Leaves = rec.Leaves // a restart, or check: the kernel is the same
	case cfg.FastRate == 0:
		// Only a fast class's leaf can be fq (the slow leaves are byte
		// fifos everywhere): without FAST_RATE there is none, and nothing
		// to try. Trying costs a device created and deleted, and a device's
		// deletion waits for the kernel (tens of milliseconds of start-up).
		// Nothing is recorded, so a start with FAST_RATE tries.
		w.log.Info().Str("component", "tcshape").Str("dev", cfg.Interface).Uint32("mtu", cfg.MTU).Str("reason", "no FAST_RATE: no fast class, whose leaf alone could be fq").Msg("shaping environment detected")
	case w.opts.Mode == Write:
		kind, reason := tc.DetectLeaves()
		cfg.Leaves = kind
		w.log.Info().Str("component", "tcshape").Str("dev", cfg.Interface).Uint32("mtu", cfg.MTU).Str("leaf", string(kind)).Str("reason", reason).Msg("shaping environment detected")
	default: // ReadOnly
		return cfg, w.notRecorded("the leaf qdisc kind")
	}
	return cfg, nil
}

// gate decides how the kernel holds the pod budget: the nftables quota
// where the kernel has one (tried once and recorded, like the iptables
// backend), else the recent gate, logged; what an earlier start-up found
// (a kernel that refused both has "none" recorded) wins.
func (w *Warden) gate(rec Detected) (demotion.Gate, error) {
	want := gateFor(w.cfg)
	if want == demotion.GateNone {
		return want, nil
	}
	switch w.opts.Mode {
	case Preview:
		return want, nil
	case ReadOnly:
		if rec.Gate == "" {
			return "", w.notRecorded("the pod gate")
		}
		return rec.Gate, nil
	}
	if rec.Gate != "" {
		return rec.Gate, nil
	}
	n, err := w.opts.Kernel.NFT()
	if err == nil {
		err = n.Probe()
		n.Close()
	}
	if err != nil {
		w.log.Warn().Err(err).Msg("the kernel has no nftables quota: the pod budget falls back to the recent gate, which the watcher must keep open (root in the notebook container could write its /proc file)")
		return demotion.GateRecent, nil
	}
	return demotion.GateQuota, nil
}

func (w *Warden) notRecorded(what string) error {
	return fmt.Errorf("%s is not recorded in %s (has hubwarden init run in this pod?)", what, filepath.Join(w.cfg.StateDir, DetectedFile))
}

// openIptables chooses (Write) or recalls (ReadOnly) the iptables backend.
func (w *Warden) openIptables(ctx context.Context, ipv6 bool) error {
	run := w.opts.Kernel.Iptables(filepath.Join(w.cfg.StateDir, lockFile))
	stateFile := filepath.Join(w.cfg.StateDir, BackendFile)
	var override xtables.Backend
	if w.cfg.IptablesBackend != "auto" {
		override = xtables.Backend(w.cfg.IptablesBackend)
	}
	var b xtables.Backend
	var err error
	if w.opts.Mode == Write {
		if err := os.MkdirAll(w.cfg.StateDir, 0o755); err != nil {
			return fmt.Errorf("creating HUBWARDEN_STATE_DIR: %w", err)
		}
		d := xtables.Detector{Runner: run, StateFile: stateFile, Override: override, IPv6: ipv6, ProcNet: w.opts.Kernel.ProcNet, Log: w.log}
		if b, err = d.Detect(ctx); err != nil {
			return err
		}
	} else {
		b, err = xtables.ReadBackend(stateFile)
		switch {
		case errors.Is(err, fs.ErrNotExist) && override != "":
			b = override
		case errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("no iptables backend recorded in %s (has hubwarden init run in this pod?) and HUBWARDEN_IPTABLES_BACKEND=auto", stateFile)
		case err != nil:
			return err
		}
	}
	w.ipt = xtables.New(b, run, w.log)
	return nil
}

// initialPodLevel is what a new pod quota holds: the level a userspace
// bucket saved in STATE_DIR (an upgrade from it), refilled since, or the
// whole pod budget.
func initialPodLevel(cfg *Config) uint64 {
	s, err := ctwatch.LoadState(cfg.StateDir)
	if err != nil {
		return uint64(cfg.PodBudget)
	}
	return uint64(max(s.Level(time.Now(), float64(cfg.PodBudget), float64(cfg.PodRefill)), 0))
}

// resolveNow looks every host name up once. A name that does not resolve
// allows nothing (fail closed) until it does; that is logged, not fatal.
func (w *Warden) resolveNow(ctx context.Context) map[string][]netip.Addr {
	if w.refresher == nil {
		return nil
	}
	if _, err := w.refresher.Refresh(ctx); err != nil {
		w.log.Warn().Err(err).Msg("resolving allow-list host names; a name without an answer allows nothing until it resolves")
	}
	return w.refresher.Snapshot()
}

// Plan returns the current plan.
func (w *Warden) Plan() Plan {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.plan
}

// Backend returns the iptables backend in use ("" in Preview).
func (w *Warden) Backend() xtables.Backend {
	if w.ipt == nil {
		return ""
	}
	return w.ipt.Backend()
}

// Apply makes the kernel equal to the plan, in order: the qdisc tree (the
// classify rules need its classes), the pod gate (the tripwire must never
// run without the pod budget), the iptables tables; then checks what it
// changed. On a kernel that refuses the recent gate's rule it goes on
// without a pod gate, logged and recorded.
func (w *Warden) Apply(ctx context.Context) error {
	if w.opts.Mode != Write {
		return ErrReadOnly
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// The raw tables first, before anything that turns conntrack on in the
	// pod's namespace (the pod gate's ct expressions, filter's state
	// matches, nat, mangle's connmark): they keep the pod's loopback out of
	// conntrack, and a loopback connection open across the apply (a
	// kernel's sockets when the sidecar restarts) would otherwise be picked
	// up mid-stream in between and kept for days. They need no match a
	// kernel may lack, so the degraded plans share them.
	var raw []xtables.Table
	for _, t := range w.plan.Tables {
		if t.Name == "raw" {
			raw = append(raw, t)
		}
	}
	if _, err := w.ipt.Apply(ctx, raw); err != nil {
		return fmt.Errorf("applying the raw tables: %w", err)
	}
	if p := w.plan; p.TC != nil {
		if _, err := tcshape.Apply(ctx, w.tc, *p.TC, w.log.With().Str("component", "tcshape").Logger(), false); err != nil {
			return err
		}
		if d, err := tcshape.Check(w.tc, *p.TC); err != nil || d != "" {
			return fmt.Errorf("checking qdiscs after apply: %w%s", err, d)
		}
	}
	if q := w.plan.Quota; q != nil {
		changed, err := w.nft.Apply(*q, w.level)
		if err != nil {
			return err
		}
		if changed {
			if d, err := w.nft.Check(*q); err != nil || d != "" {
				return fmt.Errorf("checking the pod gate after apply: %w%s", err, d)
			}
		}
		w.level = 0
	}
	res, err := w.ipt.Apply(ctx, w.plan.Tables)
	if err != nil {
		res, err = w.applyDegraded(ctx, err)
	}
	if err != nil {
		return err
	}
	if len(res.Changed) == 0 {
		return nil // Apply's own read of the kernel was the check
	}
	drift, err := w.ipt.Check(ctx, w.plan.Tables)
	if err != nil {
		return fmt.Errorf("checking after apply: %w", err)
	}
	if len(drift) > 0 {
		return fmt.Errorf("checking after apply: the kernel differs from the plan:\n%s", driftText(drift))
	}
	return nil
}

// applyDegraded runs after the plan failed with first. Two of its rules
// need matches not every kernel has, and the error iptables gives for a
// missing module does not always name it: the recent gate (xt_recent) and
// the interactive classification (xt_hashlimit's rate match). If the plan fails once
// more but applies without one of them, that is what the kernel refused,
// and hubwarden goes on without it (logged, and recorded so that check and
// a restart plan the same). The interactive classification is given up
// first: it only spares the user's own requests the served queue, while the
// gate bounds the pod. Every apply is atomic per table, so nothing of a
// refused plan is left in place. Otherwise first is returned, the plan
// kept.
func (w *Warden) applyDegraded(ctx context.Context, first error) (xtables.Result, error) {
	if res, err := w.ipt.Apply(ctx, w.plan.Tables); err == nil {
		return res, nil
	}
	env := w.plan.Env
	var tries []Env
	if env.Interactive {
		e := env
		e.Interactive = false
		tries = append(tries, e)
	}
	if env.Gate == demotion.GateRecent {
		e := env
		e.Gate = demotion.GateNone
		tries = append(tries, e)
		if env.Interactive {
			e.Interactive = false
			tries = append(tries, e)
		}
	}
	for _, e := range tries {
		p, err := NewPlan(w.cfg, e, w.resolved)
		if err != nil {
			continue
		}
		res, err := w.ipt.Apply(ctx, p.Tables)
		if err != nil {
			continue
		}
		w.plan = p
		if e.Interactive != env.Interactive {
			w.log.Warn().Err(first).Msg("the kernel refused hashlimit's rate match (Linux 4.10): the user's own requests share the slow class's served queue with the other flows peers opened, the uploads keep the bulk queue (the bounds are the same)")
		}
		if e.Gate != env.Gate {
			w.log.Warn().Err(first).Msg("the kernel has neither an nftables quota nor xt_recent: no pod gate; each flow's tripwire still holds, but parallel and short connections are bounded only by their number")
		}
		if err := saveDetected(w.cfg.StateDir, Detected{Gate: e.Gate, Leaves: e.Shape.Leaves, HashlimitRefused: !e.Interactive}); err != nil {
			w.log.Error().Err(err).Msg("recording what the kernel refused")
		}
		return res, nil
	}
	return xtables.Result{}, first
}

// Drift is how the kernel differs from the plan, per part; empty when it
// matches.
type Drift struct {
	Iptables string
	Gate     string
	Qdiscs   string
}

// Empty reports whether the kernel matches the plan.
func (d Drift) Empty() bool { return d.Iptables == "" && d.Gate == "" && d.Qdiscs == "" }

func (d Drift) String() string {
	s := d.Iptables + d.Gate
	if d.Qdiscs != "" {
		s += "qdiscs:\n" + d.Qdiscs
		if !strings.HasSuffix(s, "\n") {
			s += "\n"
		}
	}
	return s
}

// Check compares the kernel with the plan; it reads and never writes.
func (w *Warden) Check(ctx context.Context) (Drift, error) {
	if w.ipt == nil {
		return Drift{}, ErrReadOnly
	}
	var d Drift
	var err error
	if d.Iptables, err = w.ChainsDrift(ctx); err != nil {
		return d, err
	}
	p := w.Plan()
	if p.Quota != nil {
		if d.Gate, err = w.nft.Check(*p.Quota); err != nil {
			return d, err
		}
	}
	if d.Qdiscs, err = w.QdiscDrift(); err != nil {
		return d, err
	}
	return d, nil
}

// ChainsDrift returns a readable difference between the kernel's iptables
// chains and the plan; "" when they match.
func (w *Warden) ChainsDrift(ctx context.Context) (string, error) {
	d, err := w.ipt.Check(ctx, w.Plan().Tables)
	if err != nil {
		return "", err
	}
	return driftText(d), nil
}

// QdiscDrift returns a readable difference between the qdisc tree and the
// plan; "" when they match or shaping is off.
func (w *Warden) QdiscDrift() (string, error) {
	p := w.Plan()
	if p.TC == nil {
		return "", nil
	}
	return tcshape.Check(w.tc, *p.TC)
}

// Reconcile compares the kernel with the plan and re-applies when anything
// of hubwarden's drifted or vanished. It returns the drift it repaired
// (empty when there was none).
func (w *Warden) Reconcile(ctx context.Context) (Drift, error) {
	d, err := w.Check(ctx)
	if err != nil {
		return Drift{}, fmt.Errorf("reading the kernel: %w", err)
	}
	if d.Empty() {
		return d, nil
	}
	w.log.Warn().Str("component", "reconcile").Str("drift", d.String()).Msg("hubwarden's kernel state drifted; re-applying")
	if err := w.Apply(ctx); err != nil {
		return d, fmt.Errorf("re-applying: %w", err)
	}
	return d, nil
}

// Replan plans again with new answers for the host names and applies.
func (w *Warden) Replan(ctx context.Context, resolved map[string][]netip.Addr) error {
	w.mu.Lock()
	p, err := NewPlan(w.cfg, w.plan.Env, resolved)
	if err == nil {
		w.plan, w.resolved = p, resolved
	}
	w.mu.Unlock()
	if err != nil {
		return err
	}
	return w.Apply(ctx)
}

// onAnswers is the refresher's callback while Follow runs: new answers for
// the host names.
func (w *Warden) onAnswers(resolved map[string][]netip.Addr) {
	if w.followCtx == nil {
		return // the first resolution, in Open
	}
	if err := w.Replan(w.followCtx, resolved); err != nil {
		w.log.Error().Err(err).Msg("applying the rules for new host name answers")
		return
	}
	w.log.Info().Msg("rules follow new host name answers")
}

// Follow re-resolves the allow-list's host names on their TTLs and makes
// the rules follow the answers, until ctx ends.
func (w *Warden) Follow(ctx context.Context) {
	if w.refresher == nil || w.opts.Mode != Write {
		return
	}
	w.followCtx = ctx
	_ = w.refresher.Run(ctx) // ends with ctx; lookup failures are logged inside
}

// WatcherOptions returns the watcher's pod bucket for the gate in the
// plan: the kernel's quota with the slow class's counter, or a userspace
// bucket from the interface counters with the recent gate (or none).
func (w *Warden) WatcherOptions() ctwatch.Options {
	p := w.Plan()
	var o ctwatch.Options
	switch p.Env.Gate {
	case demotion.GateQuota:
		o.Quota = w.nft
		iface := p.TC.Interface
		o.SlowBytes = func() (uint64, error) { return w.tc.ClassBytes(iface, tcshape.SlowClass) }
	case demotion.GateRecent:
		o.Tx = w.opts.Kernel.Tx
		o.Gate = w.opts.Kernel.RecentGate(p.Env.IPv6)
	default:
		o.Tx = w.opts.Kernel.Tx
		o.Gate = noGate{}
	}
	return o
}

// Close closes the kernel connections; the kernel state stays.
func (w *Warden) Close() error {
	var errs []error
	if w.nft != nil {
		errs = append(errs, w.nft.Close())
		w.nft = nil
	}
	if w.tc != nil {
		errs = append(errs, w.tc.Close())
		w.tc = nil
	}
	return errors.Join(errs...)
}

func driftText(drift []xtables.Drift) string {
	var b strings.Builder
	for _, d := range drift {
		b.WriteString(d.String())
	}
	return b.String()
}
