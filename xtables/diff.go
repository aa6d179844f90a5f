package xtables

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Drift is how one table in the kernel differs from the plan, in readable
// sentences. An empty Problems means the table is as planned.
type Drift struct {
	Family   Family
	Table    string
	Problems []string
}

func (d Drift) String() string {
	var b strings.Builder
	for _, p := range d.Problems {
		fmt.Fprintf(&b, "%s %s: %s\n", d.Family, d.Table, p)
	}
	return b.String()
}

// Diff compares the kernel's state of a table (nil when the table does not
// exist) with the plan. Only hubwarden's objects are compared: chains named
// Prefix..., and jumps into them from the built-in chains (the hooks).
func Diff(cur *State, want Table) Drift {
	r := reconcile(cur, want)
	return Drift{Family: want.Family, Table: want.Name, Problems: r.problems}
}

// Fix returns the iptables-restore --noflush document that makes the
// kernel's table equal to the plan, or "" when it already is. The document
// declares (creates or empties) and refills every owned chain that differs,
// deletes every hook that is wrong or duplicated and inserts the planned
// hooks at the head of their base chains, and empties and deletes stale
// owned chains, in one COMMIT: the kernel switches from the old to the new
// state at once. Rules that are not hubwarden's are never named in it.
func Fix(cur *State, want Table) string {
	return reconcile(cur, want).doc
}

type reconciliation struct {
	problems []string
	doc      string
}

func reconcile(cur *State, want Table) reconciliation {
	var (
		r                           reconciliation
		declare, del, add, ins, rmv []string
	)
	planned := map[string]bool{}
	for _, c := range want.Chains {
		planned[c.Name] = true
		have := cur.Chain(c.Name)
		wantKeys := make([]string, len(c.Rules))
		wantLines := make([]string, len(c.Rules))
		for i, rule := range c.Rules {
			wantKeys[i] = ruleKey(ruleTokens(rule))
		}
		lines := func() []string {
			for i, rule := range c.Rules {
				wantLines[i] = RuleLine(c.Name, rule)
			}
			return wantLines
		}
		switch {
		case have == nil:
			r.problems = append(r.problems, fmt.Sprintf("chain %s: missing (%d rules planned)", c.Name, len(c.Rules)))
		case have.Builtin():
			// Validate forbids this; say so rather than flush a base chain.
			r.problems = append(r.problems, fmt.Sprintf("chain %s: is a built-in chain, not an owned one", c.Name))
			continue
		default:
			haveKeys := make([]string, len(have.Rules))
			for i, l := range have.Rules {
				haveKeys[i] = lineKey(l)
			}
			if slices.Equal(haveKeys, wantKeys) {
				continue
			}
			d := lineDiff(haveKeys, have.Rules, wantKeys, lines())
			if d == "" {
				continue
			}
			r.problems = append(r.problems, fmt.Sprintf("chain %s: rules differ (- in kernel, + in plan):\n%s", c.Name, d))
		}
		declare = append(declare, c.Name)
		add = append(add, lines()...)
	}
	if cur != nil {
		for _, c := range cur.Chains {
			if c.Builtin() || planned[c.Name] || !strings.HasPrefix(c.Name, Prefix) {
				continue
			}
			r.problems = append(r.problems, fmt.Sprintf("chain %s: stale, not in plan (%d rules)", c.Name, len(c.Rules)))
			declare = append(declare, c.Name)
			rmv = append(rmv, c.Name)
		}
	}

	// Hooks: in every base chain, the jumps into owned chains must be exactly
	// the planned hooks, in plan order, at the head of the chain.
	hooks := map[string][]Hook{}
	var bases []string
	for _, h := range want.Hooks {
		if hooks[h.Base] == nil {
			bases = append(bases, h.Base)
		}
		hooks[h.Base] = append(hooks[h.Base], h)
	}
	if cur != nil {
		for _, c := range cur.Chains {
			if c.Builtin() && hooks[c.Name] == nil && len(ownedJumps(c)) > 0 {
				bases = append(bases, c.Name)
			}
		}
	}
	sort.Strings(bases)
	for _, base := range bases {
		want := hooks[base]
		have := cur.Chain(base)
		var owned []int
		if have != nil {
			owned = ownedJumps(have)
		}
		ok := len(owned) == len(want)
		for i := 0; ok && i < len(want); i++ {
			ok = owned[i] == i && lineKey(have.Rules[i]) == lineKey(HookLine(want[i]))
		}
		if ok {
			continue
		}
		r.problems = append(r.problems, hookProblems(base, have, owned, want)...)
		for _, i := range owned {
			del = append(del, "-D"+strings.TrimPrefix(have.Rules[i], "-A"))
		}
		for i := len(want) - 1; i >= 0; i-- {
			ins = append(ins, fmt.Sprintf("-I %s 1%s", base, strings.TrimPrefix(HookLine(want[i]), "-A "+want[i].Base)))
		}
	}

	if len(r.problems) == 0 {
		return r
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", want.Name)
	for _, c := range declare {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, group := range [][]string{del, add, ins} {
		for _, l := range group {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	for _, c := range rmv {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	b.WriteString("COMMIT\n")
	r.doc = b.String()
	return r
}

// ownedJumps returns the indexes of the rules of c that jump or go to an
// owned chain.
func ownedJumps(c *ChainState) []int {
	var out []int
	for i, l := range c.Rules {
		if strings.HasPrefix(lineTarget(l), Prefix) {
			out = append(out, i)
		}
	}
	return out
}

// hookProblems describes, one sentence each, why the owned jumps of a base
// chain are not the planned hooks.
func hookProblems(base string, have *ChainState, owned []int, want []Hook) []string {
	var out []string
	matched := map[int]bool{}
	for wi, h := range want {
		key := lineKey(HookLine(h))
		var at []int
		for _, i := range owned {
			if lineKey(have.Rules[i]) == key {
				at = append(at, i)
				matched[i] = true
			}
		}
		name := fmt.Sprintf("hook %s -> %s", base, h.Target)
		switch {
		case len(at) == 0:
			out = append(out, name+": missing")
		case len(at) > 1:
			out = append(out, fmt.Sprintf("%s: present %d times", name, len(at)))
		case at[0] != wi:
			out = append(out, fmt.Sprintf("%s: rule %d of %s, planned as rule %d", name, at[0]+1, base, wi+1))
		}
	}
	for _, i := range owned {
		if !matched[i] {
			out = append(out, fmt.Sprintf("hook %s: unplanned jump into an owned chain: %s", base, have.Rules[i]))
		}
	}
	if len(out) == 0 {
		out = append(out, fmt.Sprintf("hooks of %s: out of plan order", base))
	}
	return out
}

// lineDiff returns a readable line diff between the kernel's rules and the
// planned ones (compared by key, shown as lines), or "" when they are equal.
func lineDiff(haveKeys, haveLines, wantKeys, wantLines []string) string {
	if slices.Equal(haveKeys, wantKeys) {
		return ""
	}
	// Longest common subsequence; chains are short, so O(n*m) is fine.
	n, m := len(haveKeys), len(wantKeys)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if haveKeys[i] == wantKeys[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var b strings.Builder
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && haveKeys[i] == wantKeys[j]:
			i, j = i+1, j+1
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			fmt.Fprintf(&b, "    + %s\n", wantLines[j])
			j++
		default:
			fmt.Fprintf(&b, "    - %s\n", haveLines[i])
			i++
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}
