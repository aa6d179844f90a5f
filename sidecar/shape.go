package main

import (
	"context"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/xtables"
)

// shaper is the tc side of the sidecar: the HTB tree on the pod's interface
// (package tcshape) and the demotion rules (package demotion): the mangle
// rules (applied with the other iptables tables) and the pod's quota gate.
type shaper struct {
	cfg   tcshape.Config // with what was detected
	spec  tcshape.Spec
	tc    *tcshape.TC
	rules demotion.Rules
	// detected is false when the leaf kind was not probed (plan).
	detected bool
}

// newShaper detects the interface, MTU, clock and leaf kind in the calling
// thread's network namespace and plans the tree; nil when shaping is off.
// With detect false (the plan command, which changes nothing and needs no
// privileges) it does not try fq (that creates a probe device) and plans
// FIFO leaves, and an MTU of 1500 unless the interface is found.
func newShaper(cfg *Config, ipv6 bool, log zerolog.Logger, detect bool) (*shaper, error) {
	if !cfg.Shape {
		return nil, nil
	}
	k, err := tcshape.Open(0)
	if err != nil {
		return nil, err
	}
	scfg := tcshape.Config{
		Interface: cfg.Interface,
		FastRate:  cfg.FastRate,
		SlowRate:  cfg.SlowRate,
	}
	log = log.With().Str("component", "tcshape").Logger()
	if detect {
		scfg, err = k.Detect(scfg, log)
	} else if scfg.Interface == "" {
		scfg.Interface, err = defaultRouteInterface(k)
	}
	if err != nil {
		k.Close()
		return nil, fmt.Errorf("detecting the shaping environment (set HUBWARDEN_INTERFACE, or HUBWARDEN_SHAPE=false): %w", err)
	}
	spec, err := tcshape.Plan(scfg)
	if err != nil {
		k.Close()
		return nil, err
	}
	// The tripwire and the gate need the watcher: only it re-arms and
	// promotes flows and refills the pod bucket. Which gate the kernel can
	// hold is decided by setup (GateQuota until then).
	gate := demotion.GateNone
	if cfg.Watch {
		gate = demotion.GateQuota
	}
	rules := demotion.Rules{Contract: cfg.Contract, Interface: scfg.Interface, IPv6: ipv6, Watch: cfg.Watch, Gate: gate}
	return &shaper{cfg: scfg, spec: spec, tc: k, rules: rules, detected: detect}, nil
}

// tables returns the mangle tables; with shaping off, empty ones, which
// remove what an earlier configuration installed.
func (s *shaper) tables(fams []xtables.Family) ([]xtables.Table, error) {
	if s == nil {
		var out []xtables.Table
		for _, f := range fams {
			out = append(out, xtables.Table{Family: f, Name: "mangle"})
		}
		return out, nil
	}
	return demotion.MangleTables(s.rules)
}

// gate returns how the plan holds the pod budget.
func (s *shaper) gate() demotion.Gate {
	if s == nil {
		return demotion.GateNone
	}
	return s.rules.Gate
}

// setGate plans the pod budget's gate g.
func (s *shaper) setGate(g demotion.Gate) {
	if s != nil && s.rules.Watch {
		s.rules.Gate = g
	}
}

// quotaGate returns the quota gate's plan (GateQuota).
func (s *shaper) quotaGate() demotion.QuotaGate {
	return demotion.QuotaGate{Interface: s.rules.Interface, Contract: s.rules.Contract}
}

// apply makes the qdisc tree equal to the plan.
func (s *shaper) apply(ctx context.Context, log zerolog.Logger) error {
	if s == nil {
		return nil
	}
	_, err := tcshape.Apply(ctx, s.tc, s.spec, log.With().Str("component", "tcshape").Logger(), false)
	return err
}

// check returns a readable difference between the tree and the plan.
func (s *shaper) check() (string, error) {
	if s == nil {
		return "", nil
	}
	return tcshape.Check(s.tc, s.spec)
}

func (s *shaper) String() string {
	if s == nil {
		return "# tc: shaping is off (HUBWARDEN_SHAPE=false)\n"
	}
	leaves := "leaves " + string(s.cfg.Leaves)
	if !s.detected {
		leaves = "FIFO leaves shown; init uses fq where the kernel has it"
	}
	out := fmt.Sprintf("# tc on %s (%s)\n%s", s.cfg.Interface, leaves, s.spec.String())
	switch s.rules.Gate {
	case demotion.GateQuota:
		out += "\n# the pod budget: nftables (the pod gate; recent gate if the kernel has no nftables quota)\n" + s.quotaGate().String()
	case demotion.GateRecent:
		out += "\n# the pod budget: the recent gate in the mangle table (the kernel has no nftables quota)\n"
	}
	return out
}

func (s *shaper) Close() error {
	if s == nil {
		return nil
	}
	return s.tc.Close()
}
