package demotion

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/xtables"
)

// Owned chains of the mangle table.
const (
	// ShapeChain is hooked from POSTROUTING.
	ShapeChain = xtables.Prefix + "SHAPE"
	// TripChain dispatches a flow that is not demoted to its tier's chain.
	TripChain = xtables.Prefix + "TRIP"
	// tierChainPrefix + k is the chain of tier k.
	tierChainPrefix = xtables.Prefix + "TIER"
)

// TierChain returns the name of tier k's chain.
func TierChain(k int) string { return tierChainPrefix + strconv.Itoa(k) }

// Gate says how the pod's aggregate budget is held in the kernel.
type Gate string

// The gates.
const (
	// GateQuota: an nftables quota counts every fast byte the pod sends and
	// demotes the sending flow once it is spent (QuotaGate); the watcher
	// raises it by the pod refill.
	GateQuota Gate = "quota"
	// GateRecent: the fallback for kernels without nftables quotas: a
	// mangle rule demotes every flow that sends unless the watcher has
	// refreshed an xt_recent entry within RecentWindow (RecentGate). The
	// watcher keeps the pod bucket itself and stops refreshing when it is
	// empty; a dead watcher closes the gate.
	GateRecent Gate = "recent"
	// GateNone: no pod budget (the watcher does not run).
	GateNone Gate = "none"
)

// RecentWindowSeconds is how long the recent gate stays open after the watcher's
// last refresh. The watcher refreshes it every RecentWindow/4 while the pod
// bucket holds tokens.
const RecentWindowSeconds = 2

// Rules is what the mangle rules are planned from.
type Rules struct {
	Contract  Contract
	Interface string // the shaped interface
	IPv6      bool
	// Watch says the watcher runs: only then do the tripwire, the busy
	// mark and a gate make sense (only the watcher re-arms and promotes).
	// Without it, only CLASSIFY is planned.
	Watch bool
	Gate  Gate
}

// MangleTables returns the mangle tables (IPv4, and IPv6 when r.IPv6) that
// demote flows in the kernel and classify demoted flows into the slow class.
//
// Chain HUBWARDEN-SHAPE, hooked from POSTROUTING, sees the packets leaving
// r.Interface: what the pod sends (the original direction of the flows it
// opened, the reply direction of the flows its peers opened, such as the
// proxy's connections to the notebook server):
//
//  1. a connbytes match without a target, which makes the kernel keep
//     byte counters for every flow of the namespace;
//  2. the recent gate (GateRecent only);
//  3. a flow that is not demoted goes (HUBWARDEN-TRIP) to the chain of its
//     tier, which sets the demoted and attention bits at the packet that
//     takes what the flow has sent (in the pod's sending direction, since
//     its start or its counters' last reset) to the tier's threshold, and
//     the attention bit alone at half of it;
//  4. a packet of a demoted flow gets skb->priority = the slow class
//     (CLASSIFY), which HTB reads before any filter.
func MangleTables(r Rules) ([]xtables.Table, error) {
	if r.Interface == "" {
		return nil, fmt.Errorf("planning mangle rules: no interface")
	}
	if r.Contract.demoted == 0 {
		return nil, fmt.Errorf("planning mangle rules: no demotion contract")
	}
	c := r.Contract
	hex := func(v uint32) string { return fmt.Sprintf("%#x", v) }
	markMask := func(v, m uint32) string { return hex(v) + "/" + hex(m) }
	demote := markMask(c.Demoted()|c.Attention(), c.Demoted()|c.Attention())
	notDemoted := markMask(0, c.Demoted())

	fams := []xtables.Family{xtables.IPv4}
	if r.IPv6 {
		fams = append(fams, xtables.IPv6)
	}
	var out []xtables.Table
	for _, f := range fams {
		// A connbytes match makes the kernel turn conntrack accounting on in
		// this namespace when the rule is added ("Forcing CT accounting to
		// be enabled"). A new netns starts with accounting off, and a
		// container usually cannot write /proc/sys, so this rule, not a
		// sysctl, is what guarantees the byte counters the tripwire, the
		// watcher and the audit need. It has no target: it only counts.
		shape := []xtables.Rule{{
			Args:    []string{"-m", "connbytes", "--connbytes", "0", "--connbytes-mode", "packets", "--connbytes-dir", "both"},
			Comment: "turns conntrack accounting on",
		}}
		chains := []xtables.Chain{}
		if r.Watch {
			if r.Gate == GateRecent {
				shape = append(shape, xtables.Rule{
					Args: []string{"-o", r.Interface, "-m", "connmark", "--mark", notDemoted,
						"-m", "recent", "!", "--rcheck", "--seconds", strconv.Itoa(RecentWindowSeconds),
						"--name", RecentName(f), "--mask", recentAddr(f), "--rsource",
						"-j", "CONNMARK", "--set-xmark", demote},
					Comment: "gate: unless the watcher keeps the pod budget open, demote every flow that sends",
				})
			}
			shape = append(shape, xtables.Rule{
				Args:    []string{"-o", r.Interface, "-m", "connmark", "--mark", notDemoted, "-j", TripChain},
				Comment: "flows not demoted: the tripwire of their tier",
			})
			var trip []xtables.Rule
			for k := range Tiers {
				trip = append(trip, xtables.Rule{
					Args:    []string{"-m", "connmark", "--mark", markMask(c.TierMark(k), c.TierMask()), "-g", TierChain(k)},
					Comment: fmt.Sprintf("tier %d", k),
				})
			}
			chains = append(chains, xtables.Chain{Name: TripChain, Rules: trip})
			for k := range Tiers {
				var rules []xtables.Rule
				for _, dir := range []string{"original", "reply"} {
					rules = append(rules, xtables.Rule{
						Args: []string{"-m", "conntrack", "--ctdir", strings.ToUpper(dir),
							"-m", "connbytes", "--connbytes", strconv.FormatUint(c.Threshold(k), 10), "--connbytes-mode", "bytes", "--connbytes-dir", dir,
							"-j", "CONNMARK", "--set-xmark", demote},
						Comment: fmt.Sprintf("tripwire: demote at %d bytes (%s direction)", c.Threshold(k), dir),
					})
				}
				for _, dir := range []string{"original", "reply"} {
					rules = append(rules, xtables.Rule{
						Args: []string{"-m", "connmark", "--mark", markMask(0, c.Attention()),
							"-m", "conntrack", "--ctdir", strings.ToUpper(dir),
							"-m", "connbytes", "--connbytes", strconv.FormatUint(c.BusyAt(k), 10), "--connbytes-mode", "bytes", "--connbytes-dir", dir,
							"-j", "CONNMARK", "--set-xmark", markMask(c.Attention(), c.Attention())},
						Comment: fmt.Sprintf("busy: ask the watcher at %d bytes (%s direction)", c.BusyAt(k), dir),
					})
				}
				chains = append(chains, xtables.Chain{Name: TierChain(k), Rules: rules})
			}
		}
		shape = append(shape, xtables.Rule{
			Args: []string{"-o", r.Interface, "-m", "connmark", "--mark", markMask(c.Demoted(), c.Demoted()),
				"-j", "CLASSIFY", "--set-class", fmt.Sprintf("%04x:%04x", tcshape.SlowClass.Major(), tcshape.SlowClass.Minor())},
			Comment: "demoted flows to the slow class",
		})
		t := xtables.Table{
			Family: f,
			Name:   "mangle",
			Chains: append([]xtables.Chain{{Name: ShapeChain, Rules: shape}}, chains...),
			Hooks:  []xtables.Hook{{Base: "POSTROUTING", Target: ShapeChain}},
		}
		if err := t.Validate(); err != nil {
			return nil, fmt.Errorf("planning mangle rules: %w", err)
		}
		out = append(out, t)
	}
	return out, nil
}
