package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/ctwatch"
	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/egress"
	"github.com/hubwarden/hubwarden/resolve"
	"github.com/hubwarden/hubwarden/xtables"
)

// resolvConf is where the pod's resolvers are listed.
const resolvConf = "/etc/resolv.conf"

// backendFile is the name, in HUBWARDEN_STATE_DIR, of the persisted iptables
// backend choice.
const backendFile = "iptables-backend"

// gateFile is the name, in HUBWARDEN_STATE_DIR, of the persisted choice of
// the pod gate (demotion.Gate), so that check knows it without probing.
const gateFile = "pod-gate"

// newLogger builds the process's one logger: JSON lines with a timestamp and
// the user and server the pod belongs to (on every line, empty when unset,
// so that a log shipper always finds them), at the configured level.
func newLogger(w io.Writer, cfg *Config) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(cfg.LogLevel)
	if err != nil {
		lvl = zerolog.InfoLevel // loadConfig has validated the level
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Str("user", cfg.User).Str("server", cfg.Server).Logger()
}

// wantIPv6 decides whether to plan and apply IPv6 rules: "auto" follows the
// kernel (IPv6 is there when /proc/net/if_inet6 exists in this namespace).
func wantIPv6(setting string) (bool, error) {
	has := kernelHasIPv6()
	switch setting {
	case "true":
		if !has {
			return false, errors.New("HUBWARDEN_IPV6=true, but the kernel has no IPv6 in this network namespace (no /proc/net/if_inet6)")
		}
		return true, nil
	case "false":
		return false, nil
	}
	return has, nil
}

func kernelHasIPv6() bool {
	_, err := os.Stat("/proc/thread-self/net/if_inet6")
	return err == nil
}

// planner turns the configuration and the current answers for the
// allow-listed host names into tables.
type planner struct {
	cfg       *Config
	ipv6      bool
	egress    egress.Config
	refresher *resolve.Refresher // nil without host names to resolve
	shape     *shaper            // nil when shaping is off
	// onChange, when set before refresher.Run, receives new answers.
	onChange func(map[string][]netip.Addr)
}

// newPlanner decides the families and detects the shaping environment (see
// newShaper for detect).
func newPlanner(cfg *Config, log zerolog.Logger, detect bool) (*planner, error) {
	ipv6, err := wantIPv6(cfg.IPv6)
	if err != nil {
		return nil, err
	}
	shape, err := newShaper(cfg, ipv6, log, detect)
	if err != nil {
		return nil, err
	}
	p := &planner{cfg: cfg, ipv6: ipv6, egress: egressConfig(cfg, ipv6), shape: shape}
	if hosts := p.egress.Hosts(); cfg.Egress && len(hosts) > 0 {
		p.refresher = resolve.NewRefresher(newResolver(cfg.DNSServers, log), hosts, cfg.ResolveMinTTL, log,
			func(resolved map[string][]netip.Addr) {
				if p.onChange != nil {
					p.onChange(resolved)
				}
			})
	}
	return p, nil
}

// newResolver asks the pod's allowed resolvers, with the search list and
// ndots of resolv.conf so that short cluster names ("hub") resolve as the
// notebook would resolve them.
func newResolver(servers []netip.Addr, log zerolog.Logger) *resolve.Resolver {
	r := resolve.New(servers)
	f, err := os.Open(resolvConf)
	if err != nil {
		log.Debug().Err(err).Msg("no resolv.conf: host names are resolved without a search list")
		return r
	}
	defer f.Close()
	if rc, err := resolve.ParseResolvConf(f); err == nil {
		r.Search, r.Ndots = rc.Search, rc.Ndots
	}
	return r
}

// resolveNow looks every host name up once. A name that does not resolve
// allows nothing (fail closed) until it does; that is logged, not fatal.
func (p *planner) resolveNow(ctx context.Context, log zerolog.Logger) map[string][]netip.Addr {
	if p.refresher == nil {
		return nil
	}
	if _, err := p.refresher.Refresh(ctx); err != nil {
		log.Warn().Err(err).Msg("resolving allow-list host names; a name without an answer allows nothing until it resolves")
	}
	return p.refresher.Snapshot()
}

// tables returns every table hubwarden wants in the kernel. A feature that
// is off contributes empty tables, which remove what an earlier
// configuration of the same pod installed.
func (p *planner) tables(resolved map[string][]netip.Addr) ([]xtables.Table, error) {
	fams := []xtables.Family{xtables.IPv4}
	if p.ipv6 {
		fams = append(fams, xtables.IPv6)
	}
	var tables []xtables.Table
	if p.cfg.Egress {
		ts, err := egress.Plan(p.egress, resolved)
		if err != nil {
			return nil, err
		}
		tables = append(tables, ts...)
	} else {
		for _, f := range fams {
			tables = append(tables, xtables.Table{Family: f, Name: "filter"})
		}
	}
	if p.cfg.Egress || p.cfg.Shape {
		raw, err := egress.RawTables(p.ipv6)
		if err != nil {
			return nil, err
		}
		tables = append(tables, raw...)
	} else {
		for _, f := range fams {
			tables = append(tables, xtables.Table{Family: f, Name: "raw"})
		}
	}
	mangle, err := p.shape.tables(fams)
	if err != nil {
		return nil, err
	}
	return append(tables, mangle...), nil
}

func egressConfig(cfg *Config, ipv6 bool) egress.Config {
	return egress.Config{
		Allow:      cfg.Allow,
		DNSServers: cfg.DNSServers,
		DNSRate:    cfg.DNSRate,
		DNSBurst:   cfg.DNSBurst,
		HubAPI:     cfg.HubAPI,
		Block:      cfg.Block,
		NFLogGroup: cfg.NFLogGroup,
		IPv6:       ipv6,
		ProbePort:  probePort(cfg.HealthAddr),
	}
}

// probePort returns the port of the health listener the kubelet probes,
// 0 when it listens on loopback only.
func probePort(addr string) uint16 {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	if a, err := netip.ParseAddr(host); err == nil && a.IsLoopback() {
		return 0
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return 0
	}
	return uint16(n)
}

// printPlan writes, per family and table, the iptables-restore document
// that apply runs in a namespace without hubwarden's rules.
func printPlan(w io.Writer, tables []xtables.Table) error {
	for _, t := range tables {
		tool := "iptables-restore"
		if t.Family == xtables.IPv6 {
			tool = "ip6tables-restore"
		}
		doc := xtables.Fix(nil, t)
		if doc == "" {
			doc = "# nothing: hubwarden removes its chains from this table\n"
		}
		if _, err := fmt.Fprintf(w, "# %s %s: %s --noflush\n%s\n", t.Family, t.Name, tool, doc); err != nil {
			return err
		}
	}
	return nil
}

// kernel is the kernel side of the sidecar: the iptables backend chosen
// for this pod, nftables (the pod's quota gate), the planner and the
// current plan.
type kernel struct {
	ipt  *xtables.Iptables
	nft  *demotion.NFT // nil unless the plan holds the pod budget in a quota
	plan *planner
	log  zerolog.Logger
	// level is what a pod quota created by the next apply holds: the level
	// saved in STATE_DIR (or the whole budget) at start, nothing after (a
	// quota someone deleted comes back empty; the watcher refills it).
	level uint64

	mu       sync.Mutex // serialises apply and re-plan
	tables   []xtables.Table
	resolved map[string][]netip.Addr // the host name answers tables were planned with
}

// newRunner runs the iptables tools; tests replace it to play a kernel that
// refuses something.
var newRunner = func(lockFile string) xtables.Runner { return xtables.ExecRunner{LockFile: lockFile} }

// setup chooses (or recalls) the iptables backend and plans the tables.
// With probe false (the check command) it does not write to the kernel: it
// uses the persisted choice or the override, and fails without either.
func setup(ctx context.Context, cfg *Config, log zerolog.Logger, probe bool) (*kernel, error) {
	p, err := newPlanner(cfg, log, true)
	if err != nil {
		return nil, err
	}
	nft, err := choosePodGate(cfg, p.shape, log, probe)
	if err != nil {
		p.shape.Close()
		return nil, err
	}
	resolved := p.resolveNow(ctx, log)
	tables, err := p.tables(resolved)
	if err != nil {
		p.shape.Close()
		return nil, err
	}
	run := newRunner(filepath.Join(cfg.StateDir, "xtables.lock"))
	stateFile := filepath.Join(cfg.StateDir, backendFile)
	var override xtables.Backend
	if cfg.IptablesBackend != "auto" {
		override = xtables.Backend(cfg.IptablesBackend)
	}
	var b xtables.Backend
	if probe {
		if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
			return nil, fmt.Errorf("creating HUBWARDEN_STATE_DIR: %w", err)
		}
		d := xtables.Detector{Runner: run, StateFile: stateFile, Override: override, IPv6: p.ipv6, Log: log}
		if b, err = d.Detect(ctx); err != nil {
			p.shape.Close()
			return nil, err
		}
	} else {
		b, err = xtables.ReadBackend(stateFile)
		switch {
		case errors.Is(err, fs.ErrNotExist) && override != "":
			b = override
		case errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("no iptables backend recorded in %s (has hubwarden init run in this pod?) and HUBWARDEN_IPTABLES_BACKEND=auto", stateFile)
		case err != nil:
			return nil, err
		}
	}
	return &kernel{ipt: xtables.New(b, run, log), nft: nft, plan: p, log: log, tables: tables, resolved: resolved, level: initialPodLevel(cfg)}, nil
}

// choosePodGate decides how the kernel holds the pod budget and puts it in
// the plan: the nftables quota where the kernel has one (probed once and
// remembered in STATE_DIR, like the iptables backend), else the recent
// gate, logged. With probe false (check) it reads the remembered choice and
// writes nothing. It returns the nftables connection for the quota gate.
func choosePodGate(cfg *Config, sh *shaper, log zerolog.Logger, probe bool) (*demotion.NFT, error) {
	if sh.gate() == demotion.GateNone {
		return nil, nil
	}
	path := filepath.Join(cfg.StateDir, gateFile)
	var g demotion.Gate
	if b, err := os.ReadFile(path); err == nil {
		g = demotion.Gate(strings.TrimSpace(string(b)))
	}
	if g != demotion.GateQuota && g != demotion.GateRecent {
		if !probe {
			return nil, fmt.Errorf("no pod gate recorded in %s (has hubwarden init run in this pod?)", path)
		}
		g = demotion.GateQuota
		n, err := demotion.OpenNFT(0)
		if err == nil {
			err = n.Probe()
			n.Close()
		}
		if err != nil {
			g = demotion.GateRecent
			log.Warn().Err(err).Msg("the kernel has no nftables quota: the pod budget falls back to the recent gate, which the watcher must keep open (root in the notebook container could write its /proc file)")
		}
		if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
			return nil, fmt.Errorf("creating HUBWARDEN_STATE_DIR: %w", err)
		}
		if err := os.WriteFile(path, []byte(string(g)+"\n"), 0o644); err != nil {
			return nil, fmt.Errorf("recording the pod gate: %w", err)
		}
	}
	sh.setGate(g)
	if g != demotion.GateQuota {
		return nil, nil
	}
	return demotion.OpenNFT(0)
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

// apply applies the plan and then checks that the kernel holds it. When
// Apply changed nothing, its own read of the kernel was that check.
func (k *kernel) apply(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	// The qdiscs first, so that the classify rules find their class.
	if err := k.plan.shape.apply(ctx, k.log); err != nil {
		return err
	}
	if d, err := k.plan.shape.check(); err != nil || d != "" {
		return fmt.Errorf("checking qdiscs after apply: %w%s", err, d)
	}
	// The quota gate before the mangle rules, so that the tripwire never
	// runs without the pod budget.
	if k.nft != nil {
		changed, err := k.nft.Apply(k.plan.shape.quotaGate(), k.level)
		if err != nil {
			return err
		}
		if changed {
			if d, err := k.nft.Check(k.plan.shape.quotaGate()); err != nil || d != "" {
				return fmt.Errorf("checking the pod gate after apply: %w%s", err, d)
			}
		}
		k.level = 0
	}
	res, err := k.ipt.Apply(ctx, k.tables)
	if err != nil && k.plan.shape.gate() == demotion.GateRecent {
		res, err = k.applyWithoutGate(ctx, err)
	}
	if err != nil {
		return err
	}
	if len(res.Changed) == 0 {
		return nil
	}
	drift, err := k.ipt.Check(ctx, k.tables)
	if err != nil {
		return fmt.Errorf("checking after apply: %w", err)
	}
	if len(drift) > 0 {
		return fmt.Errorf("checking after apply: the kernel differs from the plan:\n%s", driftText(drift))
	}
	return nil
}

// applyWithoutGate runs after the plan with the recent gate failed with
// first. The gate's rule needs the xt_recent match, which not every kernel
// has (and the error iptables gives for a missing module does not always
// name it): if the plan fails once more with the gate but applies without
// it, the gate is what the kernel refused, and hubwarden goes on without a
// pod gate (logged). Every apply is atomic per table, so nothing of a
// refused plan is left in place. Otherwise first is returned, gate kept.
func (k *kernel) applyWithoutGate(ctx context.Context, first error) (xtables.Result, error) {
	if res, err := k.ipt.Apply(ctx, k.tables); err == nil {
		return res, nil
	}
	k.plan.shape.setGate(demotion.GateNone)
	tables, err := k.plan.tables(k.resolved)
	if err == nil {
		var res xtables.Result
		if res, err = k.ipt.Apply(ctx, tables); err == nil {
			k.tables = tables
			k.log.Warn().Err(first).Msg("the kernel has neither an nftables quota nor xt_recent: no pod gate; each flow's tripwire still holds, but parallel and short connections are bounded only by their number")
			return res, nil
		}
	}
	k.plan.shape.setGate(demotion.GateRecent)
	return xtables.Result{}, first
}

// replan plans again with new answers for the host names and applies.
func (k *kernel) replan(ctx context.Context, resolved map[string][]netip.Addr) error {
	tables, err := k.plan.tables(resolved)
	if err != nil {
		return err
	}
	k.mu.Lock()
	k.tables, k.resolved = tables, resolved
	k.mu.Unlock()
	return k.apply(ctx)
}

// follow re-resolves the allow-listed host names on their TTLs and makes the
// rules follow the answers, until ctx ends.
func (k *kernel) follow(ctx context.Context) {
	if k.plan.refresher == nil {
		return
	}
	k.plan.onChange = func(resolved map[string][]netip.Addr) {
		if err := k.replan(ctx, resolved); err != nil {
			k.log.Error().Err(err).Msg("applying the rules for new host name answers")
			return
		}
		k.log.Info().Msg("rules follow new host name answers")
	}
	_ = k.plan.refresher.Run(ctx) // ends with ctx; lookup failures are logged inside
}

func driftText(drift []xtables.Drift) string {
	var b strings.Builder
	for _, d := range drift {
		b.WriteString(d.String())
	}
	return b.String()
}

// cmdPlan prints the plan. Offline, host names are not resolved (they
// contribute no rules), so checking a configuration sends no DNS query.
func cmdPlan(ctx context.Context, cfg *Config, stdout io.Writer, log zerolog.Logger, offline bool) error {
	p, err := newPlanner(cfg, log, false)
	if err != nil {
		return err
	}
	defer p.shape.Close()
	var resolved map[string][]netip.Addr
	if !offline {
		resolved = p.resolveNow(ctx, log)
	}
	tables, err := p.tables(resolved)
	if err != nil {
		return err
	}
	if err := printPlan(stdout, tables); err != nil {
		return err
	}
	_, err = fmt.Fprint(stdout, p.shape.String())
	return err
}

func cmdCheck(ctx context.Context, cfg *Config, stdout io.Writer, log zerolog.Logger) error {
	k, err := setup(ctx, cfg, log, false)
	if err != nil {
		return err
	}
	defer k.close()
	drift, err := k.ipt.Check(ctx, k.tables)
	if err != nil {
		return err
	}
	text := driftText(drift)
	if k.nft != nil {
		d, err := k.nft.Check(k.plan.shape.quotaGate())
		if err != nil {
			return err
		}
		text += d
	}
	tcDiff, err := k.plan.shape.check()
	if err != nil {
		return err
	}
	if tcDiff != "" {
		text += "qdiscs:\n" + tcDiff
		if !strings.HasSuffix(text, "\n") {
			text += "\n"
		}
	}
	if text != "" {
		fmt.Fprintf(stdout, "the kernel differs from the plan (iptables backend %s):\n%s", k.ipt.Backend(), text)
		return exitError(1)
	}
	fmt.Fprintf(stdout, "the kernel matches the plan (iptables backend %s)\n", k.ipt.Backend())
	return nil
}

// startup detects, plans, applies and checks within HUBWARDEN_STARTUP_TIMEOUT.
func startup(ctx context.Context, cfg *Config, log zerolog.Logger) (*kernel, error) {
	sctx, cancel := context.WithTimeoutCause(ctx, cfg.StartupTimeout, fmt.Errorf("start-up took longer than HUBWARDEN_STARTUP_TIMEOUT=%s", cfg.StartupTimeout))
	defer cancel()
	start := time.Now()
	k, err := setup(sctx, cfg, log, true)
	if err == nil {
		err = k.apply(sctx)
	}
	if err != nil {
		if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return nil, fmt.Errorf("%w: %w", cause, err)
		}
		return nil, err
	}
	log.Info().Str("backend", string(k.ipt.Backend())).Int("tables", len(k.tables)).Dur("dur", time.Since(start)).Msg("rules applied and checked")
	return k, nil
}

func cmdInit(ctx context.Context, cfg *Config, log zerolog.Logger) error {
	k, err := startup(ctx, cfg, log)
	if err != nil {
		return err
	}
	return k.close()
}

// close closes the kernel connections; the kernel state stays.
func (k *kernel) close() error {
	if k.nft != nil {
		k.nft.Close()
	}
	return k.plan.shape.Close()
}
