package guard

import (
	"fmt"
	"strconv"

	"github.com/hubwarden/hubwarden/xtables"
)

// Chains the guard owns.
const (
	// ChainRedirect (nat, hooked from PREROUTING) redirects inbound
	// connections to the server's port to the guard's port, as
	// linkerd2-proxy-init and istio-iptables redirect to their proxies.
	// Connections the pod opens itself (the guard's own to the server on
	// loopback) pass nat OUTPUT, not PREROUTING, and are not redirected.
	ChainRedirect = "HUBWARDEN-GUARD"
	// ChainSocket (filter, hooked from INPUT) lets a connection to the
	// guard's port be accepted only by a transparent socket (IP_TRANSPARENT,
	// which needs NET_ADMIN: the guard's, see Listen): when the guard is
	// down, a process of the notebook user that binds its port gets no
	// connection, and the redirected connection is refused.
	ChainSocket = "HUBWARDEN-GUARD-IN"
	// ChainProbe (nat, hooked from OUTPUT) sends the self-test's probe
	// (ProbeMark; only a NET_ADMIN process can set a packet's mark) through
	// ChainRedirect: connections the pod opens itself never pass PREROUTING,
	// so this is how the pod can prove, from inside, that the redirect
	// rule takes a connection to the guard (Probe).
	ChainProbe = "HUBWARDEN-GUARD-PROBE"
)

// ChainRaw (raw, hooked from OUTPUT ahead of every other hubwarden chain
// there) keeps the probe's connection tracked: egress does not track
// loopback traffic (raw OUTPUT "-o lo -j CT --notrack"), and an untracked
// packet is never redirected. It accepts, so that the raw table ends for
// them and conntrack sees them: the probe's packets (ProbeMark) and the
// guard's packets from its port on loopback (the answers to the probe; no
// other connection of the pod to the guard's port is tracked by it, since
// its first packet, unmarked, was not).
const ChainRaw = "HUBWARDEN-GUARD-RAW"

// ProbeMark is the packet mark (SO_MARK) of the self-test's probe
// connection. hubwarden marks no other packets (it uses connection marks).
const ProbeMark = 0x4857

// Rules is the guard's part of the kernel plan, per family (IPv4, then
// IPv6 when cfg.IPv6).
type Rules struct {
	// NAT are the guard's nat tables. hubwarden owns nothing else in nat,
	// so they are complete tables; with Mode Off they are empty, which
	// removes the redirect an earlier configuration installed.
	NAT []xtables.Table
	// Filter are the guard's chains and hooks in the filter table, which
	// egress also plans: xtables applies one Table per family and name, so
	// the composition must merge these chains and hooks into the filter
	// table it applies (and apply that table even when egress is off).
	// With Mode Off they hold no chains.
	Filter []xtables.Table
	// Raw are the guard's chain and hook in the raw table, which egress
	// also plans: merge them into it with the guard's hook FIRST (before
	// egress's loopback notrack), or the self-test probe cannot pass.
	// With Mode Off they hold no chains.
	Raw []xtables.Table
}

// Plan returns the guard's rules for a validated configuration. It is pure.
func Plan(cfg Config) (Rules, error) {
	if err := cfg.Validate(); err != nil {
		return Rules{}, err
	}
	fams := []xtables.Family{xtables.IPv4}
	if cfg.IPv6 {
		fams = append(fams, xtables.IPv6)
	}
	var r Rules
	for _, f := range fams {
		nat := xtables.Table{Family: f, Name: "nat"}
		filter := xtables.Table{Family: f, Name: "filter"}
		raw := xtables.Table{Family: f, Name: "raw"}
		if cfg.Mode != Off {
			server, guard := strconv.Itoa(int(cfg.ServerPort)), strconv.Itoa(int(cfg.GuardPort))
			syn := []string{"-p", "tcp", "-m", "tcp", "--dport", guard, "--tcp-flags", "FIN,SYN,RST,ACK", "SYN"}
			nat.Chains = []xtables.Chain{{Name: ChainRedirect, Rules: []xtables.Rule{{
				Args:    []string{"-p", "tcp", "-m", "tcp", "--dport", server, "-j", "REDIRECT", "--to-ports", guard},
				Comment: "guard: connections to the notebook server port " + server + " go to the guard on " + guard,
			}}}}
			nat.Chains = append(nat.Chains, xtables.Chain{Name: ChainProbe, Rules: []xtables.Rule{{
				Args:    []string{"-p", "tcp", "-m", "mark", "--mark", fmt.Sprintf("%#x", ProbeMark), "-j", ChainRedirect},
				Comment: "guard: the self-test probe takes the redirect from inside the pod",
			}}})
			nat.Hooks = []xtables.Hook{{Base: "PREROUTING", Target: ChainRedirect}, {Base: "OUTPUT", Target: ChainProbe}}
			filter.Chains = []xtables.Chain{{Name: ChainSocket, Rules: []xtables.Rule{
				{
					Args:    append(append([]string{}, syn...), "-m", "socket", "--transparent", "--nowildcard", "-j", "RETURN"),
					Comment: "guard: only a transparent socket (the guard) takes port " + guard,
				},
				{
					Args:    append(append([]string{}, syn...), "-j", "REJECT", "--reject-with", "tcp-reset"),
					Comment: "guard: refuse port " + guard + " to any other socket (fail closed)",
				},
			}}}
			filter.Hooks = []xtables.Hook{{Base: "INPUT", Target: ChainSocket}}
			raw.Chains = []xtables.Chain{{Name: ChainRaw, Rules: []xtables.Rule{
				{
					Args:    []string{"-o", "lo", "-p", "tcp", "-m", "mark", "--mark", fmt.Sprintf("%#x", ProbeMark), "-j", "ACCEPT"},
					Comment: "guard: the self-test probe is tracked (so it can be redirected)",
				},
				{
					Args:    []string{"-o", "lo", "-p", "tcp", "-m", "tcp", "--sport", guard, "-j", "ACCEPT"},
					Comment: "guard: answers from the guard port on loopback are tracked (those to the probe come back through the redirect)",
				},
			}}}
			raw.Hooks = []xtables.Hook{{Base: "OUTPUT", Match: []string{"-o", "lo"}, Target: ChainRaw}} // its rules are all for loopback
		}
		for _, t := range []xtables.Table{nat, filter, raw} {
			if err := t.Validate(); err != nil {
				return Rules{}, err
			}
		}
		r.NAT = append(r.NAT, nat)
		r.Filter = append(r.Filter, filter)
		r.Raw = append(r.Raw, raw)
	}
	return r, nil
}

// MergeTables merges tables of one family and name (the guard's part and
// egress's) into one: their chains, and their hooks in order, so that the
// first table's hooks come first in their base chains. The composition
// applies one table per family and name.
func MergeTables(first xtables.Table, rest ...xtables.Table) xtables.Table {
	m := xtables.Table{Family: first.Family, Name: first.Name}
	for _, t := range append([]xtables.Table{first}, rest...) {
		m.Chains = append(m.Chains, t.Chains...)
		m.Hooks = append(m.Hooks, t.Hooks...)
	}
	return m
}
