package tcshape

import (
	"fmt"
	"strings"

	"github.com/hubwarden/hubwarden/units"
)

// String renders the spec as tc-like text, one object per line, the way
// `hubwarden plan` prints it and golden tests compare it.
func (s Spec) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "dev %s\n", s.Interface)
	b.WriteString(s.Root.String())
	b.WriteByte('\n')
	for _, c := range s.Classes {
		b.WriteString(c.String())
		b.WriteByte('\n')
	}
	for _, l := range s.Leaves {
		b.WriteString(l.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// String renders the root as tc-like text. "default 0" is tc's way of
// saying that unclassified packets take the direct queue.
func (r Root) String() string {
	def := "0"
	if !r.Direct() {
		def = r.Default.String()
	}
	return fmt.Sprintf("qdisc htb %s root default %s r2q %d direct_qlen %d", r.Handle, def, r.R2Q, r.DirectQlen)
}

// String renders one class as tc-like text.
func (c Class) String() string {
	s := fmt.Sprintf("class htb %s parent %s rate %s ceil %s", c.ID, c.Parent, units.Rate(c.Rate), units.Rate(c.Ceil))
	if c.Burst != 0 || c.Cburst != 0 {
		s += fmt.Sprintf(" burst %db cburst %db", c.Burst, c.Cburst)
	}
	s += fmt.Sprintf(" buffer %d cbuffer %d quantum %d prio %d", c.Buffer, c.Cbuffer, c.Quantum, c.Prio)
	if c.Name != "" {
		s += " # " + c.Name
	}
	return s
}

// String renders one leaf qdisc as tc-like text.
func (l Leaf) String() string {
	unit := ""
	if l.Kind == "bfifo" {
		unit = "b"
	}
	return fmt.Sprintf("qdisc %s %s parent %s limit %d%s", l.Kind, l.Handle, l.Parent, l.Limit, unit)
}
