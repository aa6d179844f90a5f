package tcshape

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/hubwarden/hubwarden/units"
	"github.com/hubwarden/hubwarden/xtables"
)

// ShapeChain is the owned mangle chain, hooked from POSTROUTING.
const ShapeChain = xtables.Prefix + "SHAPE"

// BackstopName is the hashlimit table name of the backstop (per netns and
// family, listed in /proc/net/ip{,6}t_hashlimit/).
const BackstopName = "hubwarden-bs"

// Limits of hashlimit in byte mode (xt_hashlimit, libxt_hashlimit).
const (
	// backstopMaxBudget: iptables stores the burst in 32 bits after dividing
	// by the rate, but reads it through a 32-bit byte count first, so a
	// burst of 4 GiB or more silently wraps.
	backstopMaxBudget = units.Size(1<<32 - 1)
	// backstopMaxRate keeps the per-16-byte cost from rounding to zero
	// ("rate too high") with margin.
	backstopMaxRate = units.Rate(1 << 30)
	backstopMinRate = units.Rate(1024)
)

// Names of the pod gate's xt_recent tables, one per family (a recent table
// keeps the address mask of the rule that created it). Their files are
// /proc/net/xt_recent/<name> in the pod's network namespace.
const (
	GateName4 = "hubwarden-gate4"
	GateName6 = "hubwarden-gate6"
)

// gateAddr is the one address each gate table holds while the gate is set:
// the rule masks every source address to it (--mask of all zeros).
var gateAddr = map[xtables.Family]string{xtables.IPv4: "0.0.0.0", xtables.IPv6: "::"}

// Marks returns the demoted bit and the watched bit of cfg.
func (cfg Config) Marks() (demoted, watched uint32) {
	watched = cfg.WatchedMark
	if watched == 0 {
		watched = cfg.CTMark << 1
	}
	return cfg.CTMark, watched
}

// MangleTables returns the mangle tables (IPv4, and IPv6 when cfg.IPv6)
// that demote flows in the kernel and classify demoted flows into the slow
// class.
//
// Chain HUBWARDEN-SHAPE, hooked from POSTROUTING, on packets leaving
// cfg.Interface (what the pod sends: the original direction of the flows it
// opened, the reply direction of the flows its peers opened, such as the
// proxy's connections to the notebook):
//
//  1. tripwire (cfg.Tripwire): a flow that is neither demoted nor watched
//     gets the demoted bit in its conntrack mark at the first packet that
//     takes what it has sent to TripwireBudget bytes. The watcher's own
//     reads of a flow at a gigabyte a second come milliseconds apart; this
//     rule is exact to a packet. The watcher keeps the rest of the policy:
//     it promotes idle flows (setting the watched bit, since connbytes
//     counts from the flow's start), and takes over, also by the watched
//     bit, a long-lived flow whose bucket has refilled past what the
//     tripwire knows;
//  2. gate (cfg.Gate): while the watcher has set the gate (the pod bucket
//     is empty), every flow that sends gets the demoted bit, from its first
//     packet: new connections cannot each get a few fast megabytes before
//     the watcher sees them;
//  3. backstop (cfg.Backstop): a flow that is not demoted and sends faster
//     than BackstopRate once its BackstopBudget is spent gets the demoted
//     bit; it guards watched flows while the watcher is down;
//  4. a packet of a connection with the demoted bit gets skb->priority =
//     the slow class (CLASSIFY), which HTB reads before any filter.
func MangleTables(cfg Config) ([]xtables.Table, error) {
	if cfg.Interface == "" {
		return nil, fmt.Errorf("planning mangle rules: no interface")
	}
	demoted, watched := cfg.Marks()
	if demoted == 0 || demoted&(demoted-1) != 0 {
		return nil, fmt.Errorf("planning mangle rules: ctmark %#x is not a single bit", demoted)
	}
	if cfg.Tripwire && (watched == 0 || watched&(watched-1) != 0 || watched == demoted) {
		return nil, fmt.Errorf("planning mangle rules: the watched mark %#x must be a single bit other than the ctmark %#x", watched, demoted)
	}
	mark := fmt.Sprintf("%#x/%#x", demoted, demoted)
	setDemoted := []string{"-j", "CONNMARK", "--set-xmark", mark}
	var backstop []string
	if cfg.Backstop {
		rate, burst, err := backstopArgs(cfg.BackstopBudget, cfg.BackstopRate)
		if err != nil {
			return nil, err
		}
		backstop = []string{"-o", cfg.Interface, "-m", "connmark", "!", "--mark", mark,
			"-m", "hashlimit", "--hashlimit-above", rate, "--hashlimit-burst", burst,
			"--hashlimit-mode", "srcip,srcport,dstip,dstport", "--hashlimit-name", BackstopName}
	}
	if cfg.Tripwire && cfg.TripwireBudget == 0 {
		return nil, fmt.Errorf("planning mangle rules: the tripwire needs a budget above 0")
	}
	fams := []xtables.Family{xtables.IPv4}
	if cfg.IPv6 {
		fams = append(fams, xtables.IPv6)
	}
	var out []xtables.Table
	for _, f := range fams {
		// A connbytes match makes the kernel turn conntrack accounting on in
		// this namespace when the rule is added ("Forcing CT accounting to
		// be enabled"). A new netns starts with accounting off, and a
		// container usually cannot write /proc/sys, so this rule, not a
		// sysctl, is what guarantees the byte counters the watcher, the
		// tripwire and the audit need. It has no target: it only counts.
		rules := []xtables.Rule{{
			Args:    []string{"-m", "connbytes", "--connbytes", "0", "--connbytes-mode", "packets", "--connbytes-dir", "both"},
			Comment: "turns conntrack accounting on",
		}}
		if cfg.Tripwire {
			for _, dir := range []string{"original", "reply"} {
				rules = append(rules, xtables.Rule{
					Args: append([]string{"-o", cfg.Interface,
						"-m", "connmark", "--mark", fmt.Sprintf("0x0/%#x", demoted|watched),
						"-m", "conntrack", "--ctdir", strings.ToUpper(dir),
						"-m", "connbytes", "--connbytes", strconv.FormatUint(uint64(cfg.TripwireBudget), 10),
						"--connbytes-mode", "bytes", "--connbytes-dir", dir}, setDemoted...),
					Comment: "tripwire: demote a flow at its byte budget (" + dir + " direction)",
				})
			}
		}
		if cfg.Gate {
			name, mask := GateName4, gateAddr[xtables.IPv4]
			if f == xtables.IPv6 {
				name, mask = GateName6, gateAddr[xtables.IPv6]
			}
			rules = append(rules, xtables.Rule{
				Args: append([]string{"-o", cfg.Interface, "-m", "connmark", "!", "--mark", mark,
					"-m", "recent", "--rcheck", "--name", name, "--mask", mask, "--rsource"}, setDemoted...),
				Comment: "gate: while the pod budget is spent, demote every flow that sends",
			})
		}
		if backstop != nil {
			rules = append(rules, xtables.Rule{
				Args:    append(slices.Clone(backstop), setDemoted...),
				Comment: "backstop: demote a flow past its byte budget",
			})
		}
		rules = append(rules, xtables.Rule{
			Args:    []string{"-o", cfg.Interface, "-m", "connmark", "--mark", mark, "-j", "CLASSIFY", "--set-class", fmt.Sprintf("%04x:%04x", SlowClass.Major(), SlowClass.Minor())},
			Comment: "demoted flows to the slow class",
		})
		t := xtables.Table{
			Family: f,
			Name:   "mangle",
			Chains: []xtables.Chain{{Name: ShapeChain, Rules: rules}},
			Hooks:  []xtables.Hook{{Base: "POSTROUTING", Target: ShapeChain}},
		}
		if err := t.Validate(); err != nil {
			return nil, fmt.Errorf("planning mangle rules: %w", err)
		}
		out = append(out, t)
	}
	return out, nil
}

// backstopArgs renders the hashlimit byte-mode rate and burst exactly as
// iptables-save prints them back (so a drift check can compare text), or
// says why hashlimit cannot hold them.
//
// In byte mode hashlimit's bucket holds one second of the rate, and the
// burst is a count of extra one-second refills (burst bytes / rate, rounded
// up) that is spent once and restored only when the flow's entry expires
// after an idle minute. So a flow may send about budget + 1 s of rate fast,
// and then only at the rate. Both values are quantised: the rate to a cost
// per 16-byte chunk, the burst to whole seconds of that rate.
func backstopArgs(budget units.Size, rate units.Rate) (string, string, error) {
	if rate < backstopMinRate || rate > backstopMaxRate {
		return "", "", fmt.Errorf("planning the backstop: rate %s is outside hashlimit's byte-mode range 1KiB/s-1GiB/s", rate)
	}
	if budget > backstopMaxBudget {
		return "", "", fmt.Errorf("planning the backstop: budget %s must be below 4GiB (hashlimit keeps byte-mode bursts in 32 bits)", budget)
	}
	// The rate: iterate parse and print until the text is stable.
	rs := fmt.Sprintf("%db/s", uint64(rate))
	var cost uint64
	for range 8 {
		cost = hlBytesToCost(hlParse(rs))
		next := hlPrintRate(cost)
		if next == rs {
			break
		}
		rs = next
	}
	r := hlCostToBytes(cost) // bytes per second the kernel really allows
	if uint64(budget) < r {
		return "", "", fmt.Errorf("planning the backstop: budget %s is below one second of the rate %s (%d B, hashlimit's byte-mode minimum)", budget, rate, r)
	}
	// The burst: a count of one-second refills, printed rounded down, and
	// read back through 32 bits (so it must stay below 4 GiB).
	count := min((uint64(budget)+r-1)/r, hlU32Max/r)
	bs := hlPrintBurst(r, count)
	for range 8 {
		next := (hlParse(bs) + r - 1) / r
		if next == count {
			break
		}
		count = max(next, 1)
		bs = hlPrintBurst(r, count)
	}
	if hlParse(bs) > hlU32Max || hlParse(bs) < r {
		return "", "", fmt.Errorf("planning the backstop: budget %s and rate %s give the burst %s that hashlimit cannot hold", budget, rate, bs)
	}
	return rs, bs, nil
}

// hashlimit's byte-mode arithmetic, as libxt_hashlimit does it.
const (
	hlU32Max     = 1<<32 - 1
	hlByteShift  = 4
	hlMiB, hlKiB = 1 << 20, 1 << 10
)

func hlBytesToCost(b uint64) uint64 { return hlU32Max / (uint64(uint32(b>>hlByteShift)) + 1) }

func hlCostToBytes(c uint64) uint64 {
	r := uint64(hlU32Max)
	if c != 0 {
		r = hlU32Max / c
	}
	return (r - 1) << hlByteShift
}

// hlParse reads "N", "Nb", "Nkb", "Nmb" with optional "/s" (k and m are
// binary, as in iptables).
func hlParse(s string) uint64 {
	var n uint64
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		n = n*10 + uint64(s[i]-'0')
		i++
	}
	if i < len(s) {
		switch s[i] {
		case 'm':
			n *= hlMiB
		case 'k':
			n *= hlKiB
		}
	}
	return n
}

func hlPrintRate(cost uint64) string {
	r := hlCostToBytes(cost)
	for _, u := range []struct {
		n string
		t uint64
	}{{"m", hlMiB}, {"k", hlKiB}} {
		if r >= u.t && hlBytesToCost(r&^(u.t-1)) == cost {
			return fmt.Sprintf("%d%sb/s", r/u.t, u.n)
		}
	}
	return fmt.Sprintf("%db/s", r)
}

func hlPrintBurst(r, count uint64) string {
	b := r * count
	switch {
	case b >= hlMiB:
		return fmt.Sprintf("%dmb", b/hlMiB)
	case b >= hlKiB:
		return fmt.Sprintf("%dkb", b/hlKiB)
	}
	return fmt.Sprintf("%db", b)
}
