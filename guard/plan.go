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
		}
		for _, t := range []xtables.Table{nat, filter} {
			if err := t.Validate(); err != nil {
				return Rules{}, err
			}
		}
		r.NAT = append(r.NAT, nat)
		r.Filter = append(r.Filter, filter)
	}
	return r, nil
}
