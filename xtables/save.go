package xtables

import (
	"errors"
	"fmt"
	"strings"
)

// State is the kernel's content of one table of one family, as iptables-save
// prints it.
type State struct {
	Family Family
	Name   string
	Chains []*ChainState // in the order iptables-save prints them
}

// ChainState is one chain of a table as read from the kernel.
type ChainState struct {
	Name   string
	Policy string   // ACCEPT or DROP for a built-in chain, "-" for a user chain
	Rules  []string // the "-A CHAIN ..." lines, as printed
}

// Builtin reports whether the chain is one of the table's base chains.
func (c *ChainState) Builtin() bool { return c.Policy != "-" }

// Chain returns the named chain, or nil.
func (s *State) Chain(name string) *ChainState {
	if s == nil {
		return nil
	}
	for _, c := range s.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// ParseSave parses the output of iptables-save (or ip6tables-save) for one
// family into its tables, keyed by table name.
func ParseSave(f Family, text string) (map[string]*State, error) {
	tables := map[string]*State{}
	var cur *State
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		lineErr := func(msg string) error {
			return fmt.Errorf("parsing %s save output line %d %q: %s", f, n+1, line, msg)
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			if cur != nil {
				return nil, lineErr("table starts before COMMIT")
			}
			cur = &State{Family: f, Name: line[1:]}
			tables[cur.Name] = cur
		case cur == nil:
			return nil, lineErr("outside a table")
		case line == "COMMIT":
			cur = nil
		case strings.HasPrefix(line, ":"):
			fs := strings.Fields(line[1:])
			if len(fs) < 2 {
				return nil, lineErr("malformed chain declaration")
			}
			cur.Chains = append(cur.Chains, &ChainState{Name: fs[0], Policy: fs[1]})
		case strings.HasPrefix(line, "-A "):
			fs := strings.Fields(line)
			if len(fs) < 2 {
				return nil, lineErr("malformed rule")
			}
			c := cur.Chain(fs[1])
			if c == nil {
				return nil, lineErr("rule in undeclared chain")
			}
			c.Rules = append(c.Rules, line)
		default:
			return nil, lineErr("unexpected line")
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("parsing %s save output: table %s has no COMMIT", f, cur.Name)
	}
	return tables, nil
}

// splitArgs splits a rule line into arguments the way iptables-restore does:
// on blanks, with double-quoted arguments in which \" and \\ are escapes.
func splitArgs(line string) ([]string, error) {
	var out []string
	var b strings.Builder
	inArg, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line) && (line[i+1] == '"' || line[i+1] == '\\'):
			i++
			b.WriteByte(line[i])
		case quoted && c == '"':
			quoted = false
		case quoted:
			b.WriteByte(c)
		case c == '"':
			quoted, inArg = true, true
		case c == ' ' || c == '\t':
			if inArg {
				out = append(out, b.String())
				b.Reset()
				inArg = false
			}
		default:
			b.WriteByte(c)
			inArg = true
		}
	}
	if quoted {
		return nil, errors.New("unterminated quote")
	}
	if inArg {
		out = append(out, b.String())
	}
	return out, nil
}

// ruleKey is the comparison form of a rule's arguments (after "-A CHAIN"):
// the comment match is taken out and compared separately, because iptables
// versions differ in where they print it among the matches.
func ruleKey(args []string) string {
	var rest, comments []string
	for i := 0; i < len(args); i++ {
		if args[i] == "-m" && i+3 < len(args) && args[i+1] == "comment" && args[i+2] == "--comment" {
			comments = append(comments, args[i+3])
			i += 3
			continue
		}
		rest = append(rest, args[i])
	}
	return strings.Join(quoteAll(rest), " ") + " #" + strings.Join(quoteAll(comments), " ")
}

// lineKey is ruleKey of a saved "-A CHAIN ..." line. A line that does not
// split compares as itself, so it never equals a planned rule.
func lineKey(line string) string {
	args, err := splitArgs(line)
	if err != nil || len(args) < 2 {
		return "unparsed:" + line
	}
	return ruleKey(args[2:])
}

// lineTarget returns the chain a saved rule jumps or goes to, or "".
func lineTarget(line string) string {
	args, err := splitArgs(line)
	if err != nil {
		return ""
	}
	if t := targetIndex(args); t+1 < len(args) {
		return args[t+1]
	}
	return ""
}
