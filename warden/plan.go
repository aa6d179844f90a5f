package warden

import (
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/egress"
	"github.com/hubwarden/hubwarden/guard"
	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/xtables"
)

// Env is what a plan needs to know about the kernel besides the
// configuration: detected, recalled or assumed, depending on the Mode.
type Env struct {
	IPv6 bool
	// Shape is the qdisc side's configuration with what was found in the
	// kernel (interface, MTU, clock, leaves); unused with shaping off.
	Shape tcshape.Config
	// Gate is how the kernel holds the pod budget.
	Gate demotion.Gate
	// Interactive: the demoted packets of flows that send little go to the
	// slow class's interactive leaf (a hashlimit match); false where the
	// kernel refused it.
	Interactive bool
	// Probed is false when the leaves were not tried (plan): the plan then
	// shows FIFO leaves.
	Probed bool
}

// Plan is everything hubwarden wants in the kernel.
type Plan struct {
	Env Env
	// Tables are the iptables tables, every family and table hubwarden
	// owns chains in; a feature that is off contributes empty tables,
	// which remove what an earlier configuration of the same pod put there.
	Tables []xtables.Table
	// TC is the qdisc tree; nil with shaping off (the tree is then left
	// as it is).
	TC *tcshape.Spec
	// Quota is the pod gate's nftables plan; nil unless Env.Gate is
	// GateQuota.
	Quota *demotion.QuotaGate
}

// families returns the families the plan covers.
func (e Env) families() []xtables.Family {
	if e.IPv6 {
		return []xtables.Family{xtables.IPv4, xtables.IPv6}
	}
	return []xtables.Family{xtables.IPv4}
}

// gateFor is the gate a configuration plans before anything is known about
// the kernel: the quota when the watcher runs (which alone refills it).
func gateFor(cfg *Config) demotion.Gate {
	if cfg.Shape && cfg.Watch {
		return demotion.GateQuota
	}
	return demotion.GateNone
}

// tableOrder is the order of the plan's tables (per family, one
// iptables-restore with one commit per table). raw comes first: its rules
// need no connection tracking and keep the pod's loopback out of it, and
// every later table (filter's state matches, nat, mangle's connmark) turns
// conntrack on in the pod's namespace (Warden.Apply applies raw before
// anything else for the same reason).
var tableOrder = []string{"raw", "filter", "nat", "mangle"}

// NewPlan plans the kernel state for cfg in env, with resolved the current
// answers for the allow-list's host names (nil: none; a name without an
// answer allows nothing). It is pure.
func NewPlan(cfg *Config, env Env, resolved map[string][]netip.Addr) (Plan, error) {
	p := Plan{Env: env}
	fams := env.families()
	// Every table hubwarden owns chains in, per family; the parts below add
	// their chains and hooks.
	tables := map[string][]xtables.Table{}
	for _, name := range tableOrder {
		for _, f := range fams {
			tables[name] = append(tables[name], xtables.Table{Family: f, Name: name})
		}
	}
	// The guard's raw hook comes first: its self-test probe must be
	// tracked before egress's loopback notrack (see guard.ChainRaw).
	g := cfg.Guard
	g.IPv6 = env.IPv6
	gr, err := guard.Plan(g)
	if err != nil {
		return Plan{}, err
	}
	merge(tables["raw"], gr.Raw)
	merge(tables["nat"], gr.NAT)
	if cfg.Egress {
		ts, err := egress.Plan(cfg.egressConfig(env.IPv6), resolved)
		if err != nil {
			return Plan{}, err
		}
		merge(tables["filter"], ts)
	}
	merge(tables["filter"], gr.Filter)
	if cfg.Egress || cfg.Shape {
		// The spoof rule goes in raw only without the egress filter, which
		// holds it otherwise (egress.SpoofArgs).
		raw, err := egress.RawTables(env.IPv6, !cfg.Egress)
		if err != nil {
			return Plan{}, err
		}
		merge(tables["raw"], raw)
	}
	if cfg.Shape {
		spec, err := tcshape.Plan(env.Shape)
		if err != nil {
			return Plan{}, err
		}
		p.TC = &spec
		gate := env.Gate
		if !cfg.Watch {
			// The tripwire and the gate need the watcher: only it re-arms
			// and promotes flows and refills the pod bucket.
			gate = demotion.GateNone
		}
		p.Env.Gate = gate
		mangle, err := demotion.MangleTables(demotion.Rules{Contract: cfg.Contract, Interface: env.Shape.Interface, IPv6: env.IPv6, Watch: cfg.Watch, Gate: gate,
			Interactive: env.Interactive, SlowRate: cfg.SlowRate})
		if err != nil {
			return Plan{}, err
		}
		merge(tables["mangle"], mangle)
		if gate == demotion.GateQuota {
			q := demotion.QuotaGate{Interface: env.Shape.Interface, Contract: cfg.Contract}
			if err := q.Validate(); err != nil {
				return Plan{}, err
			}
			p.Quota = &q
		}
	}
	// The backend probe's chains stay where it wrote them (see
	// xtables.ProbeTables): every table it proves holds one.
	for _, f := range fams {
		merge(tables["filter"], xtables.ProbeTables(f))
		merge(tables["mangle"], xtables.ProbeTables(f))
	}
	// A table with no chains stays in the plan: applying it removes what an
	// earlier configuration of the same pod put there.
	for _, name := range tableOrder {
		for _, t := range tables[name] {
			if err := t.Validate(); err != nil {
				return Plan{}, err
			}
			p.Tables = append(p.Tables, t)
		}
	}
	return p, nil
}

// merge adds the chains and hooks of parts to the table of the same family
// in into (in order: the hooks of earlier parts come first in their base
// chains).
func merge(into, parts []xtables.Table) {
	for _, part := range parts {
		for i := range into {
			if into[i].Family == part.Family && into[i].Name == part.Name {
				into[i].Chains = append(into[i].Chains, part.Chains...)
				into[i].Hooks = append(into[i].Hooks, part.Hooks...)
			}
		}
	}
}

// Write prints the plan: per family and table, the iptables-restore
// document that apply runs in a namespace without hubwarden's rules; then
// the qdisc tree and the pod gate.
func (p Plan) Write(w io.Writer) error {
	var b strings.Builder
	for _, t := range p.Tables {
		tool := "iptables-restore"
		if t.Family == xtables.IPv6 {
			tool = "ip6tables-restore"
		}
		doc := xtables.Fix(nil, t)
		if doc == "" {
			doc = "# nothing: hubwarden removes its chains from this table\n"
		}
		fmt.Fprintf(&b, "# %s %s: %s --noflush\n%s\n", t.Family, t.Name, tool, doc)
	}
	if p.TC == nil {
		b.WriteString("# tc: shaping is off (HUBWARDEN_SHAPE=false)\n")
	} else {
		leaves := "leaves " + string(p.Env.Shape.Leaves)
		switch {
		case p.TC.Root.Direct():
			leaves = "what is not demoted takes the root's direct queue"
		case !p.Env.Probed:
			leaves = "FIFO leaves shown; init uses fq where the kernel has it"
		}
		fmt.Fprintf(&b, "# tc on %s (%s)\n%s", p.TC.Interface, leaves, p.TC.String())
		switch p.Env.Gate {
		case demotion.GateQuota:
			suffix := ""
			if !p.Env.Probed {
				suffix = "; recent gate if the kernel has no nftables quota"
			}
			fmt.Fprintf(&b, "\n# the pod budget: nftables (the pod gate%s)\n%s", suffix, p.Quota.String())
		case demotion.GateRecent:
			b.WriteString("\n# the pod budget: the recent gate in the mangle table (the kernel has no nftables quota)\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
