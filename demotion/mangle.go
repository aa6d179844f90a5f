package demotion

import (
	"fmt"
	"strconv"

	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/units"
	"github.com/hubwarden/hubwarden/xtables"
)

// Owned chains of the mangle table.
const (
	// ShapeChain is hooked from POSTROUTING.
	ShapeChain = xtables.Prefix + "SHAPE"
	// TripChain dispatches a flow that is not demoted to its tier's chain.
	TripChain = xtables.Prefix + "TRIP"
	// SlowChain classifies a demoted flow's packets into a slow leaf.
	SlowChain = xtables.Prefix + "SLOW"
	// DemoteChain demotes a flow and sends its packet to SlowChain.
	DemoteChain = xtables.Prefix + "DEMOTE"
	// AcctChain holds the rule that turns conntrack accounting on; no
	// chain jumps to it.
	AcctChain = xtables.Prefix + "ACCT"
	// tierChainPrefix + k is the chain of tier k (the original direction);
	// with tierReplySuffix, of its reply direction.
	tierChainPrefix = xtables.Prefix + "TIER"
	tierReplySuffix = "-R"
)

// TierChain returns the name of tier k's chain: the packets of the flows
// the pod opened (the original direction).
func TierChain(k int) string { return tierChainPrefix + strconv.Itoa(k) }

// TierReplyChain returns the name of tier k's chain for the packets of the
// flows a peer opened (the reply direction).
func TierReplyChain(k int) string { return TierChain(k) + tierReplySuffix }

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
	// Interactive classifies the demoted packets of a flow a peer opened
	// that sends little into the slow class's interactive leaf
	// (xt_hashlimit, see InteractiveLimit); without it (a kernel that
	// refused hashlimit) they go to the served leaf with the rest of such
	// flows.
	Interactive bool
	// SlowRate is the slow class's rate, which the interactive allowance
	// is derived from.
	SlowRate units.Rate
}

// InteractiveName is the hashlimit table of the interactive rule
// (/proc/net/ipt_hashlimit/hubwarden-ui and its ip6t_ twin, read-only).
const InteractiveName = "hubwarden-ui"

// interactiveShare: a flow counts as sending little while its demoted
// packets averaged at most this share of SLOW_RATE over the last window.
// It is below the served leaf's guaranteed share (1/4), so a demoted bulk
// flow that has the served leaf to itself, even with the interactive leaf
// busy, is always above it and stays in the served queue.
const interactiveShare = 8

// InteractiveLimit returns the allowance of the interactive rule for a
// slow rate: a flow's demoted packets go to the interactive leaf while the
// flow sent at most rate bytes/s on average over its last window of a
// second (hashlimit's rate match, per 5-tuple) and at most burst bytes in
// the current window; then to the served leaf until a window averages
// below rate again. Both are whole KiB (and below 1 MiB) so that iptables-save
// prints them back as planned. ok is false when SLOW_RATE/8 is below
// 1 KiB/s (SLOW_RATE below 64 kbit): too little to share, one queue.
func InteractiveLimit(slow units.Rate) (rateKiB, burstKiB uint64, ok bool) {
	rateKiB = min(uint64(slow)/interactiveShare/1024, 1023)
	if rateKiB == 0 {
		return 0, 0, false
	}
	// A window's allowance holds one burst of the interactive leaf (an
	// answer sent at once stays in one queue), as whole multiples of the
	// rate (hashlimit keeps the burst as one), below 1 MiB.
	want := uint64(tcshape.InteractiveBurst)
	k := (want + rateKiB*1024 - 1) / (rateKiB * 1024)
	if k*rateKiB > 1023 {
		k = max(1023/rateKiB, 1)
	}
	return rateKiB, k * rateKiB, true
}

// MangleTables returns the mangle tables (IPv4, and IPv6 when r.IPv6) that
// demote flows in the kernel and classify demoted flows into the slow class.
//
// Chain HUBWARDEN-SHAPE, hooked from POSTROUTING, sees the packets leaving
// r.Interface: what the pod sends (the original direction of the flows it
// opened, the reply direction of the flows its peers opened, such as the
// proxy's connections to the notebook server):
//
//  1. a packet of a demoted flow goes (HUBWARDEN-SLOW) to the slow class:
//     skb->priority = the slow class's bulk leaf (CLASSIFY), which HTB
//     reads before any filter; a packet of a flow a peer opened to the pod
//     (the proxy's connections to the notebook server: the answers to the
//     user's browser) then gets the served leaf instead, and with
//     r.Interactive, an IPv4 one that sends little (InteractiveLimit) the
//     interactive leaf. Flows the pod opened (a kernel's uploads, however
//     many and however paced) never do: they cannot crowd the browser's
//     answers out of the leaf;
//  2. the recent gate (GateRecent only) demotes the packet's flow
//     (HUBWARDEN-DEMOTE) unless the watcher keeps it open;
//  3. any other packet goes (HUBWARDEN-TRIP) to the chain of its flow's
//     tier, and from there to the chain of its direction, which demotes
//     the flow (HUBWARDEN-DEMOTE: the demoted and attention bits, then the
//     slow class from that packet on) at the packet that takes what the
//     flow has sent (in the pod's sending direction, since its start or its
//     counters' last reset) to the tier's threshold, and sets the attention
//     bit alone at half of it.
//
// Every jump from SHAPE on is a goto, and each test is made once: a packet
// of a flow that is neither demoted nor promoted meets four matches (tier 0
// and not demoted? direction? threshold? half?), where the rules of one
// chain per tier that tested the direction in each rule took fourteen.
// Without the recent gate, the first rules in SHAPE are for such a packet:
// one returns at once while its flow has sent less than tier 0's busy mark
// in both directions together (then no rule of tier 0 can act on it), the
// next sends it to tier 0's chain; the rules above, in their order, are
// for the others. The connbytes
// match that makes the kernel keep byte counters for every flow of the
// namespace sits in a chain nothing jumps to (HUBWARDEN-ACCT): the kernel
// turns accounting on when the rule is added, and no packet pays for it.
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
		// watcher and the audit need. It has no target and no chain jumps
		// to it: the kernel checks it when it is added, no packet meets it.
		acct := xtables.Chain{Name: AcctChain, Rules: []xtables.Rule{{
			Args:    []string{"-m", "connbytes", "--connbytes", "0", "--connbytes-mode", "packets", "--connbytes-dir", "both"},
			Comment: "turns conntrack accounting on",
		}}}
		// CLASSIFY must name a leaf: HTB sends a packet whose priority
		// names an inner class or no class to the default (fast) class.
		// Every demoted packet is classified into the bulk leaf first, so
		// that the other rules only ever move packets from one slow leaf to
		// another.
		slow := []xtables.Rule{{
			Args:    []string{"-j", "CLASSIFY", "--set-class", classArg(tcshape.BulkClass)},
			Comment: "demoted flows to the slow class (bulk)",
		}, {
			// A demoted flow a peer opened to the pod (the proxy's
			// connections to the notebook server) is served from its own
			// slow leaf, beside the bulk leaf where the flows the pod
			// opened (a kernel's uploads) stay: HTB shares the slow class
			// between the two round robin, so the browser's large answers
			// (a notebook, a plot) do not queue behind the uploads.
			Args:    []string{"-m", "conntrack", "--ctdir", "REPLY", "-j", "CLASSIFY", "--set-class", classArg(tcshape.ServedClass)},
			Comment: "demoted flows a peer opened to the slow class (served)",
		}}
		// IPv4 only: nft 1.0.6 (Debian 12) segfaults listing an ip6
		// table that holds hashlimit's rate match (`nft list ruleset` in
		// the pod would crash), so demoted IPv6 flows a peer opened share
		// the served leaf.
		if rate, burst, ok := InteractiveLimit(r.SlowRate); r.Interactive && ok && f == xtables.IPv4 {
			slow = append(slow, xtables.Rule{
				Args: []string{"-m", "conntrack", "--ctdir", "REPLY",
					"-m", "hashlimit", "--hashlimit-upto", fmt.Sprintf("%dkb/s", rate), "--hashlimit-burst", fmt.Sprintf("%dkb", burst),
					"--hashlimit-mode", "srcip,srcport,dstip,dstport", "--hashlimit-name", InteractiveName, "--hashlimit-rate-match",
					"-j", "CLASSIFY", "--set-class", classArg(tcshape.InteractiveClass)},
				Comment: "demoted flows that send little to the slow class (interactive)",
			})
		}
		shape := []xtables.Rule{{
			Args:    []string{"-o", r.Interface, "-m", "connmark", "--mark", markMask(c.Demoted(), c.Demoted()), "-g", SlowChain},
			Comment: "demoted flows: the slow class",
		}}
		chains := []xtables.Chain{{Name: SlowChain, Rules: slow}, acct}
		if r.Watch {
			// The flow that meets its threshold, or the closed gate, is
			// demoted, and that packet already goes to the slow class.
			chains = append(chains, xtables.Chain{Name: DemoteChain, Rules: []xtables.Rule{
				{Args: []string{"-j", "CONNMARK", "--set-xmark", demote}, Comment: "the demoted and attention bits"},
				{Args: []string{"-g", SlowChain}, Comment: "from this packet on, the slow class"},
			}})
			if r.Gate == GateRecent {
				shape = append(shape, xtables.Rule{
					Args: []string{"-o", r.Interface,
						"-m", "recent", "!", "--rcheck", "--seconds", strconv.Itoa(RecentWindowSeconds),
						"--name", RecentName(f), "--mask", recentAddr(f), "--rsource",
						"-g", DemoteChain},
					Comment: "gate: unless the watcher keeps the pod budget open, demote every flow that sends",
				})
			}
			shape = append(shape, xtables.Rule{
				Args:    []string{"-o", r.Interface, "-g", TripChain},
				Comment: "flows not demoted: the tripwire of their tier",
			})
			if r.Gate != GateRecent {
				// The common packet, of a flow neither demoted nor ever
				// promoted (tier 0), takes one test to its tier's chain
				// instead of three (demoted? the recent gate? which
				// tier?). Without a recent gate nothing else in SHAPE
				// applies to it; the quota gate, in its own chain before
				// this one, has already set the demoted bit where it
				// demotes.
				lane := markMask(c.TierMark(0), c.Demoted()|c.TierMask())
				first := []xtables.Rule{{
					Args:    []string{"-o", r.Interface, "-m", "connmark", "--mark", lane, "-g", TierChain(0)},
					Comment: "flows neither demoted nor promoted: the tripwire of tier 0",
				}}
				// Before it, such a packet of a flow that has not yet
				// sent tier 0's busy mark in both directions together
				// returns at once: neither of its directions can have
				// reached the busy mark or the threshold above it, so no
				// rule of tier 0's chains would act on it. Most packets
				// of most flows take one rule in this table.
				if b := c.BusyAt(0); b > 0 {
					first = append([]xtables.Rule{{
						Args: []string{"-o", r.Interface, "-m", "connmark", "--mark", lane,
							"-m", "connbytes", "--connbytes", "0:" + strconv.FormatUint(b-1, 10), "--connbytes-mode", "bytes", "--connbytes-dir", "both", "-j", "RETURN"},
						Comment: fmt.Sprintf("flows of tier 0 below %d bytes in all: nothing to do", b),
					}}, first...)
				}
				shape = append(first, shape...)
			}
			var trip []xtables.Rule
			for k := range Tiers {
				trip = append(trip, xtables.Rule{
					Args:    []string{"-m", "connmark", "--mark", markMask(c.TierMark(k), c.TierMask()), "-g", TierChain(k)},
					Comment: fmt.Sprintf("tier %d", k),
				})
			}
			chains = append(chains, xtables.Chain{Name: TripChain, Rules: trip})
			for k := range Tiers {
				// The pod sends in the original direction of the flows it
				// opened and in the reply direction of those a peer opened:
				// the direction is tested once, and the counters of that
				// direction compared.
				dirRules := func(dir string) []xtables.Rule {
					return []xtables.Rule{{
						Args: []string{"-m", "connbytes", "--connbytes", strconv.FormatUint(c.Threshold(k), 10), "--connbytes-mode", "bytes", "--connbytes-dir", dir,
							"-g", DemoteChain},
						Comment: fmt.Sprintf("tripwire: demote at %d bytes (%s direction)", c.Threshold(k), dir),
					}, {
						Args: []string{"-m", "connbytes", "--connbytes", strconv.FormatUint(c.BusyAt(k), 10), "--connbytes-mode", "bytes", "--connbytes-dir", dir,
							"-m", "connmark", "--mark", markMask(0, c.Attention()),
							"-j", "CONNMARK", "--set-xmark", markMask(c.Attention(), c.Attention())},
						Comment: fmt.Sprintf("busy: ask the watcher at %d bytes (%s direction)", c.BusyAt(k), dir),
					}}
				}
				orig := append([]xtables.Rule{{
					Args:    []string{"-m", "conntrack", "--ctdir", "REPLY", "-g", TierReplyChain(k)},
					Comment: "flows a peer opened: the reply direction",
				}}, dirRules("original")...)
				chains = append(chains,
					xtables.Chain{Name: TierChain(k), Rules: orig},
					xtables.Chain{Name: TierReplyChain(k), Rules: dirRules("reply")})
			}
		}
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

// classArg is a class as CLASSIFY's --set-class takes it and iptables-save
// prints it.
func classArg(h tcshape.Handle) string { return fmt.Sprintf("%04x:%04x", h.Major(), h.Minor()) }
