package xtables

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRuleLine(t *testing.T) {
	tests := []struct {
		name string
		rule Rule
		want string
	}{
		{
			name: "comment before target",
			rule: Rule{Args: []string{"-o", "lo", "-j", "ACCEPT"}, Comment: "loopback"},
			want: `-A HUBWARDEN-EGRESS -o lo -m comment --comment "hubwarden: loopback" -j ACCEPT`,
		},
		{
			name: "target options stay after the target",
			rule: Rule{Args: []string{"-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"}, Comment: "reject tcp"},
			want: `-A HUBWARDEN-EGRESS -p tcp -m comment --comment "hubwarden: reject tcp" -j REJECT --reject-with tcp-reset`,
		},
		{
			name: "no target",
			rule: Rule{Args: []string{"-d", "198.18.0.1/32"}, Comment: "count"},
			want: `-A HUBWARDEN-EGRESS -d 198.18.0.1/32 -m comment --comment "hubwarden: count"`,
		},
		{
			name: "quotes and backslashes",
			rule: Rule{Args: []string{"-j", "ACCEPT"}, Comment: `a"b\c`},
			want: `-A HUBWARDEN-EGRESS -m comment --comment "hubwarden: a\"b\\c" -j ACCEPT`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, RuleLine("HUBWARDEN-EGRESS", tt.rule)); diff != "" {
				t.Errorf("RuleLine mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
