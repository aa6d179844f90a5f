package main

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestRunPlan(t *testing.T) {
	tests := []struct {
		name    string
		args    []string // after "plan"
		env     map[string]string
		want    []string // in the output
		notWant []string
		wantErr string // in the error; "" for success
	}{
		{
			name: "IPv4 only",
			env: map[string]string{
				"HUBWARDEN_DNS_SERVERS": "198.18.0.53",
				"HUBWARDEN_ALLOW":       "198.18.1.0/24,tcp://[2001:2::7]:443",
				"HUBWARDEN_IPV6":        "false",
				"HUBWARDEN_SHAPE":       "false",
			},
			want: []string{
				"# ipv4 filter: iptables-restore --noflush\n*filter\n:HUBWARDEN-EGRESS - [0:0]\n",
				`-A HUBWARDEN-EGRESS -d 198.18.1.0/24 -m comment --comment "hubwarden: allow 198.18.1.0/24" -j ACCEPT`,
				"-I OUTPUT 1 -m comment --comment \"hubwarden: hook\" -j HUBWARDEN-EGRESS\nCOMMIT\n",
			},
			notWant: []string{"ip6tables-restore", "2001:2::7"},
		},
		{
			// Only the backend probe's chain stays in filter (no hook jumps
			// to it; xtables.ProbeTables).
			name: "egress and the guard off remove the chains",
			env:  map[string]string{"HUBWARDEN_EGRESS": "false", "HUBWARDEN_IPV6": "false", "HUBWARDEN_SHAPE": "false", "HUBWARDEN_GUARD": "off"},
			want: []string{
				"# ipv4 filter: iptables-restore --noflush\n*filter\n:HUBWARDEN-PROBE - [0:0]\n" +
					`-A HUBWARDEN-PROBE -m comment --comment "hubwarden: backend probe: proves this backend writes the table; no hook jumps here" -j RETURN` + "\nCOMMIT\n",
				"# ipv4 nat: iptables-restore --noflush\n# nothing: hubwarden removes its chains from this table\n",
			},
			notWant: []string{"HUBWARDEN-EGRESS", "-j HUBWARDEN-PROBE"},
		},
		{
			name: "the guard's redirect, its socket rule beside egress, its raw hook first",
			env:  map[string]string{"HUBWARDEN_DNS_SERVERS": "198.18.0.53", "HUBWARDEN_IPV6": "false", "HUBWARDEN_SHAPE": "false"},
			want: []string{
				"-A HUBWARDEN-GUARD -p tcp -m tcp --dport 8888 -m comment",
				"-j REDIRECT --to-ports 9281",
				"-I PREROUTING 1 -m comment --comment \"hubwarden: hook\" -j HUBWARDEN-GUARD\n",
				"-I INPUT 1 -m comment --comment \"hubwarden: hook\" -j HUBWARDEN-GUARD-IN\n",
				// Each hook is inserted at the top: the last line's comes first.
				"-I OUTPUT 1 -o lo -m comment --comment \"hubwarden: hook\" -j HUBWARDEN-RAW-OUT\n-I OUTPUT 1 -o lo -m comment --comment \"hubwarden: hook\" -j HUBWARDEN-GUARD-RAW\n",
			},
		},
		{
			// --offline validates a configuration with host names without
			// resolving them (no DNS query leaves the machine).
			name: "offline: the CIDR rule, none for the unresolved name",
			args: []string{"--offline"},
			env: map[string]string{
				"HUBWARDEN_ALLOW":       "tcp://db.example.org:5432,198.18.1.0/24",
				"HUBWARDEN_DNS_SERVERS": "198.18.1.53",
				"HUBWARDEN_IPV6":        "false",
				"HUBWARDEN_SHAPE":       "false",
			},
			want:    []string{"198.18.1.0/24"},
			notWant: []string{"db.example.org"},
		},
		{
			// A flow budget of 1 GiB or more, whose default backstop would
			// exceed hashlimit's 32-bit burst, still plans.
			name: "2GiB flow budget",
			args: []string{"--offline"},
			env: map[string]string{
				"HUBWARDEN_FLOW_BUDGET": "2GiB",
				"HUBWARDEN_POD_BUDGET":  "8GiB",
				"HUBWARDEN_DNS_SERVERS": "198.18.1.53",
				"HUBWARDEN_IPV6":        "false",
				"HUBWARDEN_INTERFACE":   "lo",
			},
		},
		{
			name:    "a ctmark without room for the contract is named",
			args:    []string{"--offline"},
			env:     map[string]string{"HUBWARDEN_CTMARK": "0x40000000", "HUBWARDEN_DNS_SERVERS": "198.18.1.53"},
			wantErr: "HUBWARDEN_CTMARK",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t, tt.env)
			var out, errOut strings.Builder
			err := run(context.Background(), append([]string{"plan"}, tt.args...), &out, &errOut)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("plan: err = %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("plan: %v\n%s", err, errOut.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("plan output lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(out.String(), w) {
					t.Errorf("plan output has %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestRunErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown command", []string{"apply"}, nil, `unknown command "apply"`},
		{"extra argument", []string{"init", "now"}, nil, "init takes no arguments"},
		{"init takes no --offline", []string{"init", "--offline"}, nil, "init takes no arguments"},
		{"bad config fails before anything", []string{"init"}, map[string]string{"HUBWARDEN_DNS_SERVERS": "x", "HUBWARDEN_IPV7": "true"}, "HUBWARDEN_IPV7: unknown variable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t, tt.env)
			var out, errOut strings.Builder
			err := run(context.Background(), tt.args, &out, &errOut)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run(%v) = %v, want an error containing %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestRunVersionAndHelp(t *testing.T) {
	var out strings.Builder
	if err := run(context.Background(), []string{"version"}, &out, &out); err != nil || !strings.HasPrefix(out.String(), "hubwarden ") {
		t.Errorf("version: %v, %q", err, out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"--help"}, &out, &out); err != nil || !strings.Contains(out.String(), "HUBWARDEN_IPTABLES_BACKEND") {
		t.Errorf("--help: %v\n%s", err, out.String())
	}
	var ex exitError
	if err := run(context.Background(), nil, &out, &out); !errors.As(err, &ex) || ex != 2 {
		t.Errorf("no arguments: %v, want exit status 2", err)
	}
}
