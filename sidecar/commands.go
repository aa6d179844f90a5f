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
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/egress"
	"github.com/hubwarden/hubwarden/xtables"
)

// resolvConf is where the pod's resolvers are listed.
const resolvConf = "/etc/resolv.conf"

// backendFile is the name, in HUBWARDEN_STATE_DIR, of the persisted iptables
// backend choice.
const backendFile = "iptables-backend"

// newLogger builds the process's one logger: JSON lines with a timestamp and
// the user and server the pod belongs to, at the configured level.
func newLogger(w io.Writer, cfg *Config) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(cfg.LogLevel)
	if err != nil {
		lvl = zerolog.InfoLevel // loadConfig has validated the level
	}
	ctx := zerolog.New(w).Level(lvl).With().Timestamp()
	if cfg.User != "" {
		ctx = ctx.Str("user", cfg.User)
	}
	if cfg.Server != "" {
		ctx = ctx.Str("server", cfg.Server)
	}
	return ctx.Logger()
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

// planTables returns every table hubwarden wants in the kernel. A feature
// that is off contributes empty tables, which remove what an earlier
// configuration of the same pod installed.
func planTables(ctx context.Context, cfg *Config, ipv6 bool, log zerolog.Logger) ([]xtables.Table, error) {
	fams := []xtables.Family{xtables.IPv4}
	if ipv6 {
		fams = append(fams, xtables.IPv6)
	}
	var tables []xtables.Table
	if cfg.Egress {
		ecfg := egressConfig(cfg, ipv6)
		resolved := resolveHosts(ctx, ecfg.Hosts(), log)
		ts, err := egress.Plan(ecfg, resolved)
		if err != nil {
			return nil, err
		}
		tables = append(tables, ts...)
	} else {
		for _, f := range fams {
			tables = append(tables, xtables.Table{Family: f, Name: "filter"})
		}
	}
	// Shaping (package tcshape) adds its mangle tables here once it exists;
	// its qdiscs are applied next to the tables, and printed by plan.
	return tables, nil
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
	}
}

// resolveHosts resolves the allow-listed host names once. A name that does
// not resolve allows nothing (fail closed) and is logged; re-resolution on
// the TTL belongs to the run loop.
func resolveHosts(ctx context.Context, hosts []string, log zerolog.Logger) map[string][]netip.Addr {
	out := map[string][]netip.Addr{}
	for _, h := range hosts {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		addrs, err := net.DefaultResolver.LookupNetIP(lctx, "ip", h)
		cancel()
		if err != nil {
			log.Warn().Err(err).Str("host", h).Msg("allow-list host does not resolve; it allows nothing until it does")
			continue
		}
		out[h] = addrs
	}
	return out
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
	// tc objects (package tcshape) are printed here once it exists.
	return nil
}

// kernel is the iptables side of the sidecar: the backend chosen for this
// pod and the plan.
type kernel struct {
	ipt    *xtables.Iptables
	tables []xtables.Table
}

// setup chooses (or recalls) the iptables backend and plans the tables.
// With probe false (the check command) it does not write to the kernel: it
// uses the persisted choice or the override, and fails without either.
func setup(ctx context.Context, cfg *Config, log zerolog.Logger, probe bool) (*kernel, error) {
	ipv6, err := wantIPv6(cfg.IPv6)
	if err != nil {
		return nil, err
	}
	tables, err := planTables(ctx, cfg, ipv6, log)
	if err != nil {
		return nil, err
	}
	run := xtables.ExecRunner{LockFile: filepath.Join(cfg.StateDir, "xtables.lock")}
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
		d := xtables.Detector{Runner: run, StateFile: stateFile, Override: override, IPv6: ipv6, Log: log}
		if b, err = d.Detect(ctx); err != nil {
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
	return &kernel{ipt: xtables.New(b, run, log), tables: tables}, nil
}

// apply applies the plan and then checks that the kernel holds it. When
// Apply changed nothing, its own read of the kernel was that check.
func (k *kernel) apply(ctx context.Context) error {
	res, err := k.ipt.Apply(ctx, k.tables)
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

func driftText(drift []xtables.Drift) string {
	var b strings.Builder
	for _, d := range drift {
		b.WriteString(d.String())
	}
	return b.String()
}

func cmdPlan(ctx context.Context, cfg *Config, stdout io.Writer, log zerolog.Logger) error {
	ipv6, err := wantIPv6(cfg.IPv6)
	if err != nil {
		return err
	}
	tables, err := planTables(ctx, cfg, ipv6, log)
	if err != nil {
		return err
	}
	return printPlan(stdout, tables)
}

func cmdCheck(ctx context.Context, cfg *Config, stdout io.Writer, log zerolog.Logger) error {
	k, err := setup(ctx, cfg, log, false)
	if err != nil {
		return err
	}
	drift, err := k.ipt.Check(ctx, k.tables)
	if err != nil {
		return err
	}
	if len(drift) > 0 {
		fmt.Fprintf(stdout, "the kernel differs from the plan (iptables backend %s):\n%s", k.ipt.Backend(), driftText(drift))
		return exitError(1)
	}
	fmt.Fprintf(stdout, "the kernel matches the plan (iptables backend %s)\n", k.ipt.Backend())
	return nil
}

// startup detects, plans, applies and checks within HUBWARDEN_STARTUP_TIMEOUT.
func startup(ctx context.Context, cfg *Config, log zerolog.Logger) error {
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.StartupTimeout, fmt.Errorf("start-up took longer than HUBWARDEN_STARTUP_TIMEOUT=%s", cfg.StartupTimeout))
	defer cancel()
	start := time.Now()
	k, err := setup(ctx, cfg, log, true)
	if err == nil {
		err = k.apply(ctx)
	}
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return fmt.Errorf("%w: %w", cause, err)
		}
		return err
	}
	log.Info().Str("backend", string(k.ipt.Backend())).Int("tables", len(k.tables)).Dur("dur", time.Since(start)).Msg("rules applied and checked")
	return nil
}

func cmdInit(ctx context.Context, cfg *Config, log zerolog.Logger) error {
	return startup(ctx, cfg, log)
}

func cmdRun(ctx context.Context, cfg *Config, log zerolog.Logger) error {
	if err := startup(ctx, cfg, log); err != nil {
		return err
	}
	// Health, the conntrack watcher and the reconcile loop join here.
	<-ctx.Done()
	// The rules stay: removing them on exit would open the pod while the
	// container restarts.
	log.Info().Msg("stopping; the kernel rules stay in place")
	return nil
}
