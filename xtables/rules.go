// Package xtables is hubwarden's iptables layer, shared by egress filtering and
// shaping: the desired content of hubwarden's own chains as plain values (pure,
// rendered as iptables-restore text); the comparison of iptables-save output
// with them (Diff, pure) and the restore document that fixes the difference
// (Fix, pure); and, through a Runner that execs the iptables tools
// (ExecRunner, Linux only), backend detection (Detector), atomic apply with
// iptables-restore --noflush and drift checks (Iptables).
//
// hubwarden owns every chain whose name starts with Prefix and exactly one
// jump rule per hook into them; it never changes any other rule.
package xtables

import (
	"fmt"
	"strings"
)

// Prefix starts the name of every chain hubwarden owns.
const Prefix = "HUBWARDEN-"

// CommentPrefix starts the comment of every rule hubwarden writes.
const CommentPrefix = "hubwarden: "

// Family is an IP family: which of iptables and ip6tables a table belongs to.
type Family int

// The two families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// Rule is one rule of an owned chain: match and target arguments as passed
// to iptables after "-A CHAIN", without the comment.
type Rule struct {
	Args    []string
	Comment string // purpose, rendered as -m comment --comment "hubwarden: ..." before the target
}

// Chain is an owned chain and its complete, ordered content.
type Chain struct {
	Name  string
	Rules []Rule
}

// Hook is the single jump rule from a base chain into an owned chain. Hooks
// are inserted at position 1 so that hubwarden's policy runs before others'.
type Hook struct {
	Base string // built-in chain: OUTPUT, POSTROUTING, ...
	// Match is what the jump tests before it is taken, as iptables-save
	// prints it (e.g. "-o", "lo"); empty: every packet jumps. A packet that
	// cannot match any rule of the owned chain need not jump into it: the
	// test in the hook costs one rule where the jump and the chain cost
	// two or more, for every packet of the hook.
	Match  []string
	Target string // owned chain
}

// Table is hubwarden's desired state in one table of one family.
type Table struct {
	Family Family
	Name   string // filter, mangle
	Chains []Chain
	Hooks  []Hook
}

// Validate checks the invariants every plan must keep: owned chain names,
// hooks into declared chains, jumps only to declared chains, and comments.
func (t Table) Validate() error {
	declared := map[string]bool{}
	for _, c := range t.Chains {
		if !strings.HasPrefix(c.Name, Prefix) || len(c.Name) > 28 {
			return fmt.Errorf("table %s/%s: chain %q is not an owned name (%s..., at most 28 characters)", t.Family, t.Name, c.Name, Prefix)
		}
		if declared[c.Name] {
			return fmt.Errorf("table %s/%s: chain %q declared twice", t.Family, t.Name, c.Name)
		}
		declared[c.Name] = true
	}
	for _, h := range t.Hooks {
		if !declared[h.Target] {
			return fmt.Errorf("table %s/%s: hook %s jumps to undeclared chain %q", t.Family, t.Name, h.Base, h.Target)
		}
		if strings.HasPrefix(h.Base, Prefix) {
			return fmt.Errorf("table %s/%s: hook base %q must be a built-in chain", t.Family, t.Name, h.Base)
		}
		for _, a := range h.Match {
			if a == "-j" || a == "-g" || a == "--comment" {
				return fmt.Errorf("table %s/%s: hook %s -> %s: its match %q holds %s", t.Family, t.Name, h.Base, h.Target, h.Match, a)
			}
		}
	}
	for _, c := range t.Chains {
		for i, r := range c.Rules {
			if r.Comment == "" {
				return fmt.Errorf("table %s/%s: rule %d of %s has no comment", t.Family, t.Name, i+1, c.Name)
			}
			for j, a := range r.Args {
				if (a == "-j" || a == "-g") && j+1 < len(r.Args) && strings.HasPrefix(r.Args[j+1], Prefix) && !declared[r.Args[j+1]] {
					return fmt.Errorf("table %s/%s: rule %d of %s jumps to undeclared chain %q", t.Family, t.Name, i+1, c.Name, r.Args[j+1])
				}
			}
		}
	}
	return nil
}

// RuleLine renders one rule of chain as iptables-save prints it: the
// comment match goes after the other matches and before the target (-j or
// -g), where iptables-save (legacy and nft, 1.8.9) prints a comment that was
// given last among the matches. Args must already be in iptables-save's
// canonical form (for example "-d 198.51.100.7/32", "-p tcp -m tcp --dport
// 443", "-j REJECT --reject-with icmp-port-unreachable"), or Check reports a
// difference after every apply; the integration tests of the package that
// builds the rules should assert a clean Check on both backends.
func RuleLine(chain string, r Rule) string {
	return "-A " + quote(chain) + " " + strings.Join(quoteAll(ruleTokens(r)), " ")
}

// ruleTokens returns a rule's arguments with the comment match placed before
// the target.
func ruleTokens(r Rule) []string {
	args := r.Args
	t := targetIndex(args)
	out := make([]string, 0, len(args)+4)
	out = append(out, args[:t]...)
	if r.Comment != "" {
		out = append(out, "-m", "comment", "--comment", CommentPrefix+r.Comment)
	}
	return append(out, args[t:]...)
}

// targetIndex returns the index of the first -j or -g argument, or len(args).
func targetIndex(args []string) int {
	for i, a := range args {
		if a == "-j" || a == "-g" || a == "--jump" || a == "--goto" {
			return i
		}
	}
	return len(args)
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = quote(s)
	}
	return out
}

// HookLine renders a hook's jump rule (without -A/-I) as iptables-save prints it.
func HookLine(h Hook) string {
	match := ""
	if len(h.Match) > 0 {
		match = " " + strings.Join(quoteAll(h.Match), " ")
	}
	return fmt.Sprintf("-A %s%s -m comment --comment %s -j %s", h.Base, match, quote("hubwarden: hook"), h.Target)
}

// HookArgs returns the arguments of a hook's jump rule after the chain name,
// as go-iptables' Exists/Insert/Delete take them.
func HookArgs(h Hook) []string {
	return append(append([]string{}, h.Match...), "-m", "comment", "--comment", "hubwarden: hook", "-j", h.Target)
}

// Render returns the table's owned chains as an iptables-restore --noflush
// document: declaring an owned chain creates it or empties it, and the rules
// follow, all in one atomic COMMIT. Hooks are not part of it; Apply adds a
// missing hook in the same document (see RenderWithHooks).
func Render(t Table) string {
	return RenderWithHooks(t, nil, nil)
}

// RenderWithHooks is Render plus the hook rules to insert and to delete, so a
// whole table changes in one iptables-restore transaction.
func RenderWithHooks(t Table, insert, del []Hook) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", t.Name)
	for _, c := range t.Chains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
	}
	for _, h := range del {
		fmt.Fprintf(&b, "-D %s\n", strings.TrimPrefix(HookLine(h), "-A "))
	}
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			b.WriteString(RuleLine(c.Name, r))
			b.WriteByte('\n')
		}
	}
	for _, h := range insert {
		fmt.Fprintf(&b, "-I %s 1 %s\n", h.Base, strings.TrimPrefix(HookLine(h), "-A "+h.Base+" "))
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// quote quotes an argument the way iptables-save does, so rendered rules
// compare equal to what the kernel reports.
func quote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\") {
		return s
	}
	return `"` + quoteEscaper.Replace(s) + `"`
}

// quoteEscaper escapes backslashes and double quotes (it is immutable).
var quoteEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`)
