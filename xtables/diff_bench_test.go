package xtables

import (
	"fmt"
	"testing"
)

// BenchmarkDiff measures the reconcile loop's comparison of a table read
// from the kernel with the plan, for allow-lists of growing size.
func BenchmarkDiff(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			want := Table{Family: IPv4, Name: "filter", Hooks: []Hook{{Base: "OUTPUT", Target: "HUBWARDEN-EGRESS"}}}
			c := Chain{Name: "HUBWARDEN-EGRESS"}
			for i := range n {
				c.Rules = append(c.Rules, Rule{Args: []string{"-d", fmt.Sprintf("198.18.%d.%d/32", i/256, i%256), "-p", "tcp", "-m", "tcp", "--dport", "443", "-j", "ACCEPT"}, Comment: fmt.Sprintf("allow %d", i)})
			}
			want.Chains = []Chain{c}
			cur, err := ParseSave(IPv4, savedForm(want))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if d := Diff(cur["filter"], want); len(d.Problems) != 0 {
					b.Fatalf("drift: %v", d)
				}
			}
		})
	}
}

// savedForm renders a table as iptables-save prints it after a clean apply.
func savedForm(t Table) string {
	s := "*" + t.Name + "\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
	for _, c := range t.Chains {
		s += ":" + c.Name + " - [0:0]\n"
	}
	for _, h := range t.Hooks {
		s += HookLine(h) + "\n"
	}
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			s += RuleLine(c.Name, r) + "\n"
		}
	}
	return s + "COMMIT\n"
}
