// Package xtablestest is an in-memory iptables for tests: a Runner that
// interprets iptables-restore --noflush documents and prints iptables-save
// output for each tool (iptables-nft, ip6tables-legacy, ...), the way the
// 1.8.9 tools do for the constructs hubwarden uses.
//
// It parses its input itself, independently of package xtables, so that a
// mistake in xtables' rendering or parsing shows up as a difference rather
// than being shared by the code under test and its oracle.
package xtablestest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Kernel is the fake. Its fields are for tests to look at and to change
// behind the code under test's back, as an admin or another program would.
type Kernel struct {
	// Tables maps a tool ("iptables-nft") and a table name to the table.
	Tables map[string]map[string]*Table
	// Calls lists the tools run, in order.
	Calls []string
	// Fail makes a tool fail with the given error.
	Fail map[string]error
	// Refuse, if set, is asked about every rule line of a restore; an error
	// fails the whole restore, as the kernel refusing a match would (a
	// missing module, say).
	Refuse func(tool, line string) error
	// CommentFirst prints the comment match before every other match, as
	// some iptables versions do.
	CommentFirst bool
}

// Table is one table of one tool: its chains in creation order.
type Table struct {
	Order  []string
	Chains map[string]*Chain
}

// Chain is a chain: "-" is the policy of a user chain.
type Chain struct {
	Policy string
	Rules  [][]string // arguments after "-A CHAIN"
}

// New returns an empty kernel.
func New() *Kernel {
	return &Kernel{Tables: map[string]map[string]*Table{}, Fail: map[string]error{}}
}

// Run runs the tool name: "<tool>-save" or "<tool>-restore --noflush".
func (k *Kernel) Run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	k.Calls = append(k.Calls, name)
	if err := k.Fail[name]; err != nil {
		return nil, err
	}
	switch {
	case strings.HasSuffix(name, "-save"):
		return []byte(k.Save(strings.TrimSuffix(name, "-save"))), nil
	case strings.HasSuffix(name, "-restore"):
		if !slices.Contains(args, "--noflush") {
			return nil, errors.New("fake: restore without --noflush")
		}
		return nil, k.restore(strings.TrimSuffix(name, "-restore"), string(stdin))
	}
	return nil, fmt.Errorf("fake: unknown tool %s", name)
}

// Restores counts the restore runs so far.
func (k *Kernel) Restores() int {
	n := 0
	for _, c := range k.Calls {
		if strings.HasSuffix(c, "-restore") {
			n++
		}
	}
	return n
}

// Builtins are the built-in chains of each table the fake knows.
var Builtins = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"raw":    {"PREROUTING", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

// Table returns a tool's table, created with its built-in chains when
// create is true and it does not exist (nil otherwise).
func (k *Kernel) Table(tool, name string, create bool) *Table {
	if k.Tables[tool] == nil {
		k.Tables[tool] = map[string]*Table{}
	}
	t := k.Tables[tool][name]
	if t == nil && create {
		t = &Table{Chains: map[string]*Chain{}}
		for _, c := range Builtins[name] {
			t.Order = append(t.Order, c)
			t.Chains[c] = &Chain{Policy: "ACCEPT"}
		}
		k.Tables[tool][name] = t
	}
	return t
}

// AddChain adds an empty user chain to a tool's table.
func (k *Kernel) AddChain(tool, table, chain string) *Chain {
	t := k.Table(tool, table, true)
	c := &Chain{Policy: "-"}
	t.Order = append(t.Order, chain)
	t.Chains[chain] = c
	return c
}

func (t *Table) clone() *Table {
	c := &Table{Order: slices.Clone(t.Order), Chains: map[string]*Chain{}}
	for n, ch := range t.Chains {
		rules := make([][]string, len(ch.Rules))
		for i, r := range ch.Rules {
			rules[i] = slices.Clone(r)
		}
		c.Chains[n] = &Chain{Policy: ch.Policy, Rules: rules}
	}
	return c
}

// restore applies a document all or nothing (nft semantics).
func (k *Kernel) restore(tool, doc string) error {
	staged := map[string]*Table{}
	var cur *Table
	for n, line := range strings.Split(doc, "\n") {
		line = strings.TrimSpace(line)
		bad := func(msg string) error { return fmt.Errorf("fake %s-restore: line %d %q: %s", tool, n+1, line, msg) }
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		switch {
		case strings.HasPrefix(line, "*"):
			name := line[1:]
			if Builtins[name] == nil {
				return bad("unknown table")
			}
			if staged[name] == nil {
				staged[name] = k.Table(tool, name, true).clone()
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
			if c := cur.Chains[fs[0]]; c != nil {
				if c.Policy == "-" {
					c.Rules = nil
				}
			} else {
				cur.Order = append(cur.Order, fs[0])
				cur.Chains[fs[0]] = &Chain{Policy: "-"}
			}
			continue
		}
		if k.Refuse != nil {
			if err := k.Refuse(tool, line); err != nil {
				return bad(err.Error())
			}
		}
		args, err := split(line)
		if err != nil || len(args) < 2 {
			return bad("cannot split")
		}
		c := cur.Chains[args[1]]
		if c == nil {
			return bad("no chain")
		}
		rest := args[2:]
		switch args[0] {
		case "-A":
			if t := target(rest); isUserChain(t) && cur.Chains[t] == nil {
				return bad("jump to missing chain")
			}
			c.Rules = append(c.Rules, rest)
		case "-I":
			pos, err := strconv.Atoi(rest[0])
			if err != nil || pos < 1 || pos > len(c.Rules)+1 {
				return bad("bad position")
			}
			c.Rules = slices.Insert(c.Rules, pos-1, rest[1:])
		case "-D":
			i := slices.IndexFunc(c.Rules, func(r []string) bool { return key(r) == key(rest) })
			if i < 0 {
				return bad("bad rule (does a matching rule exist in that chain?)")
			}
			c.Rules = slices.Delete(c.Rules, i, i+1)
		case "-F":
			c.Rules = nil
		case "-X":
			if len(c.Rules) > 0 || c.Policy != "-" {
				return bad("chain not empty or built-in")
			}
			for _, other := range cur.Chains {
				for _, r := range other.Rules {
					if target(r) == args[1] {
						return bad("chain in use")
					}
				}
			}
			delete(cur.Chains, args[1])
			cur.Order = slices.DeleteFunc(cur.Order, func(s string) bool { return s == args[1] })
		default:
			return bad("unknown command")
		}
	}
	if cur != nil {
		return fmt.Errorf("fake %s-restore: no COMMIT", tool)
	}
	for n, t := range staged {
		k.Tables[tool][n] = t
	}
	return nil
}

// Save prints a tool's tables as its -save would.
func (k *Kernel) Save(tool string) string {
	var names []string
	for n := range k.Tables[tool] {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		t := k.Tables[tool][n]
		fmt.Fprintf(&b, "# Generated by fake %s-save\n*%s\n", tool, n)
		for _, c := range t.Order {
			fmt.Fprintf(&b, ":%s %s [0:0]\n", c, t.Chains[c].Policy)
		}
		for _, c := range t.Order {
			for _, r := range t.Chains[c].Rules {
				fmt.Fprintf(&b, "-A %s %s\n", c, strings.Join(quoteAll(k.printed(r)), " "))
			}
		}
		b.WriteString("COMMIT\n# Completed\n")
	}
	return b.String()
}

// printed returns the arguments as the fake's save prints them.
func (k *Kernel) printed(r []string) []string {
	if !k.CommentFirst {
		return r
	}
	comment, rest := splitComment(r)
	return append(comment, rest...)
}

// Foreign runs one iptables command of another program (no validation):
// "-A CHAIN args..." or "-I CHAIN args..." (at the top).
func (k *Kernel) Foreign(tool, table string, args ...string) {
	t := k.Table(tool, table, true)
	c := t.Chains[args[1]]
	switch args[0] {
	case "-A":
		c.Rules = append(c.Rules, args[2:])
	case "-I":
		c.Rules = slices.Insert(c.Rules, 0, args[2:])
	}
}

// isUserChain tells a user chain's name from a target's (ACCEPT, CLASSIFY,
// REJECT, ...): the chains hubwarden and other programs create have a dash.
func isUserChain(name string) bool { return strings.Contains(name, "-") }

// target returns what a rule jumps or goes to, or "".
func target(args []string) string {
	for i, a := range args {
		if (a == "-j" || a == "-g" || a == "--jump" || a == "--goto") && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// splitComment takes the comment match out of a rule's arguments.
func splitComment(r []string) (comment, rest []string) {
	for i := 0; i < len(r); i++ {
		if r[i] == "-m" && i+3 < len(r) && r[i+1] == "comment" && r[i+2] == "--comment" {
			comment = append(comment, r[i:i+4]...)
			i += 3
			continue
		}
		rest = append(rest, r[i])
	}
	return comment, rest
}

// key compares rules wherever their comment is.
func key(r []string) string {
	comment, rest := splitComment(r)
	return strings.Join(quoteAll(rest), " ") + " #" + strings.Join(quoteAll(comment), " ")
}

// split splits a line on blanks; a double-quoted argument may hold blanks
// and the escapes \" and \\.
func split(line string) ([]string, error) {
	var out []string
	var b strings.Builder
	in, quoted := false, false
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case quoted && c == '\\' && i+1 < len(line) && (line[i+1] == '"' || line[i+1] == '\\'):
			i++
			b.WriteByte(line[i])
		case quoted && c == '"':
			quoted = false
		case quoted:
			b.WriteByte(c)
		case c == '"':
			quoted, in = true, true
		case c == ' ' || c == '\t':
			if in {
				out = append(out, b.String())
				b.Reset()
				in = false
			}
		default:
			b.WriteByte(c)
			in = true
		}
	}
	if quoted {
		return nil, errors.New("unterminated quote")
	}
	if in {
		out = append(out, b.String())
	}
	return out, nil
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		if s == "" || strings.ContainsAny(s, " \t\"'\\") {
			s = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
		}
		out[i] = s
	}
	return out
}
