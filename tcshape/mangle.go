package tcshape

import (
	"fmt"

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

// MangleTables returns the mangle tables (IPv4, and IPv6 when cfg.IPv6)
// that classify demoted flows into the slow class and, with cfg.Backstop,
// demote flows in the kernel.
//
// Chain HUBWARDEN-SHAPE, hooked from POSTROUTING, on packets leaving
// cfg.Interface (the pod's egress, which is the reply direction of the
// proxy's connections to the notebook):
//
//  1. backstop: a flow (5-tuple) that is not yet demoted and sends faster
//     than BackstopRate once its BackstopBudget is spent gets the
//     hubwarden bit set in its conntrack mark (sticky);
//  2. a packet of a connection with the bit set gets skb->priority =
//     the slow class (CLASSIFY), which HTB reads before any filter.
func MangleTables(cfg Config) ([]xtables.Table, error) {
	if cfg.Interface == "" {
		return nil, fmt.Errorf("planning mangle rules: no interface")
	}
	if cfg.CTMark == 0 || cfg.CTMark&(cfg.CTMark-1) != 0 {
		return nil, fmt.Errorf("planning mangle rules: ctmark %#x is not a single bit", cfg.CTMark)
	}
	mark := fmt.Sprintf("%#x/%#x", cfg.CTMark, cfg.CTMark)
	var rules []xtables.Rule
	if cfg.Backstop {
		rate, burst, err := backstopArgs(cfg.BackstopBudget, cfg.BackstopRate)
		if err != nil {
			return nil, err
		}
		rules = append(rules, xtables.Rule{
			Args: []string{"-o", cfg.Interface, "-m", "connmark", "!", "--mark", mark,
				"-m", "hashlimit", "--hashlimit-above", rate, "--hashlimit-burst", burst,
				"--hashlimit-mode", "srcip,srcport,dstip,dstport", "--hashlimit-name", BackstopName,
				"-j", "CONNMARK", "--set-xmark", mark},
			Comment: "backstop: demote a flow past its byte budget",
		})
	}
	rules = append(rules, xtables.Rule{
		Args:    []string{"-o", cfg.Interface, "-m", "connmark", "--mark", mark, "-j", "CLASSIFY", "--set-class", fmt.Sprintf("%04x:%04x", SlowClass.Major(), SlowClass.Minor())},
		Comment: "demoted flows to the slow class",
	})
	fams := []xtables.Family{xtables.IPv4}
	if cfg.IPv6 {
		fams = append(fams, xtables.IPv6)
	}
	var out []xtables.Table
	for _, f := range fams {
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

// backstopArgs renders the hashlimit byte-mode rate and burst in units that
// iptables-save prints back unchanged (whole KiB or MiB), or says why the
// kernel cannot hold them.
//
// In byte mode hashlimit's bucket holds one second of the rate, and the
// burst is a count of extra one-second refills (burst bytes / rate, rounded
// up) that is spent once and restored only when the flow's entry expires
// after an idle minute. So a flow may send about budget + 1 s of rate fast,
// and then only at the rate.
func backstopArgs(budget units.Size, rate units.Rate) (string, string, error) {
	if rate < backstopMinRate || rate > backstopMaxRate {
		return "", "", fmt.Errorf("planning the backstop: rate %s is outside hashlimit's byte-mode range 1KiB/s-1GiB/s", rate)
	}
	if budget > backstopMaxBudget {
		return "", "", fmt.Errorf("planning the backstop: budget %s must be below 4GiB (hashlimit keeps byte-mode bursts in 32 bits)", budget)
	}
	r := kib(uint64(rate))
	if uint64(budget) < r*1024 {
		return "", "", fmt.Errorf("planning the backstop: budget %s is below one second of the rate %s (hashlimit's byte-mode minimum)", budget, rate)
	}
	return kibText(r) + "/s", kibText(kib(uint64(budget))), nil
}

// kib rounds bytes up to whole KiB.
func kib(b uint64) uint64 { return (b + 1023) / 1024 }

func kibText(k uint64) string {
	if k%1024 == 0 {
		return fmt.Sprintf("%dmb", k/1024)
	}
	return fmt.Sprintf("%dkb", k)
}
