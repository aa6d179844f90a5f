package xtables

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// fakeKernel is an in-memory iptables: it interprets the restore documents
// and prints save output for each backend and family, the way the 1.8.9
// tools do for the constructs hubwarden uses.
type fakeKernel struct {
	tables map[string]map[string]*fakeTable // "iptables-nft" -> table name -> table
	calls  []string                         // tool names, in order
	fail   map[string]error                 // tool name -> error to return
	// commentFirst prints the comment match before every other match, as
	// some iptables versions do, to prove Check normalises it.
	commentFirst bool
}

type fakeTable struct {
	order  []string
	chains map[string]*fakeChain
}

type fakeChain struct {
	policy string
	rules  [][]string // arguments after "-A CHAIN"
}

var _ Runner = (*fakeKernel)(nil)

func newFake() *fakeKernel {
	return &fakeKernel{tables: map[string]map[string]*fakeTable{}, fail: map[string]error{}}
}

func (k *fakeKernel) Run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	k.calls = append(k.calls, name)
	if err := k.fail[name]; err != nil {
		return nil, err
	}
	switch {
	case strings.HasSuffix(name, "-save"):
		return []byte(k.save(strings.TrimSuffix(name, "-save"))), nil
	case strings.HasSuffix(name, "-restore"):
		if !slices.Contains(args, "--noflush") {
			return nil, errors.New("fake: restore without --noflush")
		}
		return nil, k.restore(strings.TrimSuffix(name, "-restore"), string(stdin))
	}
	return nil, fmt.Errorf("fake: unknown tool %s", name)
}

// restores counts the restore runs so far.
func (k *fakeKernel) restores() int {
	n := 0
	for _, c := range k.calls {
		if strings.HasSuffix(c, "-restore") {
			n++
		}
	}
	return n
}

var builtins = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
}

func (k *fakeKernel) table(tool, name string, create bool) *fakeTable {
	if k.tables[tool] == nil {
		k.tables[tool] = map[string]*fakeTable{}
	}
	t := k.tables[tool][name]
	if t == nil && create {
		t = &fakeTable{chains: map[string]*fakeChain{}}
		for _, c := range builtins[name] {
			t.order = append(t.order, c)
			t.chains[c] = &fakeChain{policy: "ACCEPT"}
		}
		k.tables[tool][name] = t
	}
	return t
}

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{order: slices.Clone(t.order), chains: map[string]*fakeChain{}}
	for n, ch := range t.chains {
		rules := make([][]string, len(ch.rules))
		for i, r := range ch.rules {
			rules[i] = slices.Clone(r)
		}
		c.chains[n] = &fakeChain{policy: ch.policy, rules: rules}
	}
	return c
}

// restore applies a document all or nothing (nft semantics).
func (k *fakeKernel) restore(tool, doc string) error {
	staged := map[string]*fakeTable{}
	var name string
	var cur *fakeTable
	for n, line := range strings.Split(doc, "\n") {
		line = strings.TrimSpace(line)
		bad := func(msg string) error { return fmt.Errorf("fake %s-restore: line %d %q: %s", tool, n+1, line, msg) }
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		switch {
		case strings.HasPrefix(line, "*"):
			name = line[1:]
			if builtins[name] == nil {
				return bad("unknown table")
			}
			if staged[name] == nil {
				staged[name] = k.table(tool, name, true).clone()
			}
			cur = staged[name]
			continue
		case cur == nil:
			return bad("outside a table")
		case line == "COMMIT":
			cur = nil
			continue
		case strings.HasPrefix(line, ":"):
			fs := strings.Fields(line[1:])
			if c := cur.chains[fs[0]]; c != nil {
				if c.policy == "-" {
					c.rules = nil
				}
			} else {
				cur.order = append(cur.order, fs[0])
				cur.chains[fs[0]] = &fakeChain{policy: "-"}
			}
			continue
		}
		args, err := splitArgs(line)
		if err != nil || len(args) < 2 {
			return bad("cannot split")
		}
		c := cur.chains[args[1]]
		if c == nil {
			return bad("no chain")
		}
		rest := args[2:]
		switch args[0] {
		case "-A":
			if t := lineTarget(line); strings.HasPrefix(t, Prefix) && cur.chains[t] == nil {
				return bad("jump to missing chain")
			}
			c.rules = append(c.rules, rest)
		case "-I":
			pos, err := strconv.Atoi(rest[0])
			if err != nil || pos < 1 || pos > len(c.rules)+1 {
				return bad("bad position")
			}
			c.rules = slices.Insert(c.rules, pos-1, rest[1:])
		case "-D":
			i := slices.IndexFunc(c.rules, func(r []string) bool { return ruleKey(r) == ruleKey(rest) })
			if i < 0 {
				return bad("bad rule (does a matching rule exist in that chain?)")
			}
			c.rules = slices.Delete(c.rules, i, i+1)
		case "-F":
			c.rules = nil
		case "-X":
			if len(c.rules) > 0 || c.policy != "-" {
				return bad("chain not empty or built-in")
			}
			for _, other := range cur.chains {
				for _, r := range other.rules {
					if t := targetIndex(r); t+1 < len(r) && r[t+1] == args[1] {
						return bad("chain in use")
					}
				}
			}
			delete(cur.chains, args[1])
			cur.order = slices.DeleteFunc(cur.order, func(s string) bool { return s == args[1] })
		default:
			return bad("unknown command")
		}
	}
	if cur != nil {
		return fmt.Errorf("fake %s-restore: no COMMIT", tool)
	}
	for n, t := range staged {
		k.tables[tool][n] = t
	}
	return nil
}

func (k *fakeKernel) save(tool string) string {
	var names []string
	for n := range k.tables[tool] {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		t := k.tables[tool][n]
		fmt.Fprintf(&b, "# Generated by fake %s-save\n*%s\n", tool, n)
		for _, c := range t.order {
			fmt.Fprintf(&b, ":%s %s [0:0]\n", c, t.chains[c].policy)
		}
		for _, c := range t.order {
			for _, r := range t.chains[c].rules {
				r = k.printed(r)
				fmt.Fprintf(&b, "-A %s %s\n", c, strings.Join(quoteAll(r), " "))
			}
		}
		b.WriteString("COMMIT\n# Completed\n")
	}
	return b.String()
}

// printed returns the arguments as the fake's save prints them.
func (k *fakeKernel) printed(r []string) []string {
	if !k.commentFirst {
		return r
	}
	var comment, rest []string
	for i := 0; i < len(r); i++ {
		if r[i] == "-m" && i+3 < len(r) && r[i+1] == "comment" {
			comment = slices.Clone(r[i : i+4])
			i += 3
			continue
		}
		rest = append(rest, r[i])
	}
	return append(comment, rest...)
}

// foreign runs one iptables command of another program (no validation).
func (k *fakeKernel) foreign(tool, table string, args ...string) {
	t := k.table(tool, table, true)
	c := t.chains[args[1]]
	switch args[0] {
	case "-A":
		c.rules = append(c.rules, args[2:])
	case "-I":
		c.rules = slices.Insert(c.rules, 0, args[2:])
	}
}
