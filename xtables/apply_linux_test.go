package xtables

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/internal/nstest"
)

// realPlan uses the iptables constructs egress and shaping need, in the
// canonical form iptables-save prints, so that Check is clean after Apply.
func realPlan() []Table {
	plan := testPlan()
	eg4 := &plan[0].Chains[0]
	eg4.Rules = append(eg4.Rules[:2:2],
		Rule{Args: []string{"-d", "198.18.0.53/32", "-p", "udp", "-m", "udp", "--dport", "53", "-m", "hashlimit", "--hashlimit-upto", "20/sec", "--hashlimit-burst", "100", "--hashlimit-name", "hubwarden-dns4", "-j", "ACCEPT"}, Comment: "dns 198.18.0.53"},
		Rule{Args: []string{"-d", "169.254.169.254/32", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"}, Comment: "metadata"},
		Rule{Args: []string{"-d", "198.18.1.0/24", "-p", "tcp", "-m", "multiport", "--dports", "80,443,8000:8100", "-j", "ACCEPT"}, Comment: "allow range"},
		Rule{Args: []string{"-j", "HUBWARDEN-ALLOW"}, Comment: "allow-list"},
		Rule{Args: []string{"-m", "limit", "--limit", "10/sec", "--limit-burst", "20", "-j", "NFLOG", "--nflog-prefix", "hubwarden-deny", "--nflog-group", "1987"}, Comment: "log denied"},
		Rule{Args: []string{"-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"}, Comment: "deny tcp"},
		Rule{Args: []string{"-j", "REJECT", "--reject-with", "icmp-port-unreachable"}, Comment: "deny"},
	)
	eg6 := &plan[2].Chains[0]
	eg6.Rules = append(eg6.Rules[:2:2],
		Rule{Args: []string{"-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", "135", "-j", "ACCEPT"}, Comment: "neighbour solicitation"},
		Rule{Args: []string{"-d", "fd00:ec2::254/128", "-j", "REJECT", "--reject-with", "icmp6-adm-prohibited"}, Comment: "metadata"},
		Rule{Args: []string{"-j", "HUBWARDEN-ALLOW"}, Comment: "allow-list"},
		Rule{Args: []string{"-j", "NFLOG", "--nflog-group", "1987"}, Comment: "log denied"},
		Rule{Args: []string{"-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"}, Comment: "deny tcp"},
		Rule{Args: []string{"-j", "REJECT", "--reject-with", "icmp6-port-unreachable"}, Comment: "deny"},
	)
	sh := &plan[1].Chains[0]
	sh.Rules = append(sh.Rules,
		Rule{Args: []string{"-m", "connbytes", "--connbytes", "268435456", "--connbytes-mode", "bytes", "--connbytes-dir", "original", "-j", "CONNMARK", "--set-xmark", "0x100000/0x100000"}, Comment: "backstop"},
		Rule{Args: []string{"-m", "hashlimit", "--hashlimit-above", "512kb/s", "--hashlimit-burst", "64mb", "--hashlimit-mode", "srcip,srcport,dstip,dstport", "--hashlimit-name", "hubwarden-flow4", "-j", "CONNMARK", "--set-xmark", "0x100000/0x100000"}, Comment: "backstop rate"},
	)
	return plan
}

var backends = []Backend{NFT, Legacy}

type bed struct {
	ns *nstest.NS
	x  *Iptables
	b  Backend
}

func newBed(t *testing.T, b Backend) *bed {
	t.Helper()
	nstest.SkipUnlessRoot(t, b.Tool(IPv4, "restore"), b.Tool(IPv6, "restore"))
	ns := nstest.New(t)
	r := ExecRunner{LockFile: filepath.Join(t.TempDir(), "xtables.lock")}
	return &bed{ns: ns, b: b, x: New(b, r, zerolog.New(zerolog.NewTestWriter(t)))}
}

func (e *bed) apply(t *testing.T, plan []Table) Result {
	t.Helper()
	var res Result
	if err := e.ns.Do(func() (err error) { res, err = e.x.Apply(context.Background(), plan); return err }); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return res
}

func (e *bed) check(t *testing.T, plan []Table) string {
	t.Helper()
	var drift []Drift
	if err := e.ns.Do(func() (err error) { drift, err = e.x.Check(context.Background(), plan); return err }); err != nil {
		t.Fatalf("Check: %v", err)
	}
	var b strings.Builder
	for _, d := range drift {
		b.WriteString(d.String())
	}
	return b.String()
}

var saveComment = regexp.MustCompile(`(?m)^#.*\n`)

// save returns iptables-save output of both families without the comment
// lines (they carry timestamps and warnings).
func (e *bed) save(t *testing.T) string {
	t.Helper()
	return saveComment.ReplaceAllString(e.ns.MustRun(e.b.Tool(IPv4, "save"))+e.ns.MustRun(e.b.Tool(IPv6, "save")), "")
}

func (e *bed) ipt(t *testing.T, f Family, args ...string) {
	t.Helper()
	e.ns.MustRun(e.b.Tool(f, ""), append([]string{"-w"}, args...)...)
}

func TestIntegrationApplyTwice(t *testing.T) {
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			e := newBed(t, b)
			plan := realPlan()
			if res := e.apply(t, plan); len(res.Changed) != 3 {
				t.Errorf("first Apply changed %d tables, want 3", len(res.Changed))
			}
			if d := e.check(t, plan); d != "" {
				t.Fatalf("Check after Apply is not clean (is the plan in iptables-save's canonical form?):\n%s", d)
			}
			first := e.save(t)
			if res := e.apply(t, plan); len(res.Changed) != 0 {
				t.Errorf("second Apply changed %v, want nothing", res.Changed)
			}
			if diff := cmp.Diff(first, e.save(t)); diff != "" {
				t.Errorf("second Apply changed the kernel (-first +second):\n%s", diff)
			}
			for _, want := range []string{
				"-A OUTPUT -m comment --comment \"hubwarden: hook\" -j HUBWARDEN-EGRESS\n",
				"-A POSTROUTING -m comment --comment \"hubwarden: hook\" -j HUBWARDEN-SHAPE\n",
			} {
				if !strings.Contains(first, want) {
					t.Errorf("hook %q missing in\n%s", want, first)
				}
			}
		})
	}
}

func TestIntegrationForeignRulesSurvive(t *testing.T) {
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			e := newBed(t, b)
			e.ipt(t, IPv4, "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j", "DROP")
			e.ipt(t, IPv4, "-t", "mangle", "-A", "POSTROUTING", "-j", "MARK", "--set-mark", "7")
			e.ipt(t, IPv6, "-N", "OTHER")
			e.ipt(t, IPv6, "-A", "OTHER", "-j", "RETURN")
			e.ipt(t, IPv6, "-A", "OUTPUT", "-j", "OTHER")
			foreign := []string{
				"-A OUTPUT -p tcp -m tcp --dport 9 -j DROP\n",
				"-A POSTROUTING -j MARK --set-xmark 0x7/0xffffffff\n",
				"-A OUTPUT -j OTHER\n",
				"-A OTHER -j RETURN\n",
			}
			plan := realPlan()
			e.apply(t, plan)
			if d := e.check(t, plan); d != "" {
				t.Fatalf("Check after Apply is not clean:\n%s", d)
			}
			got := e.save(t)
			for _, l := range foreign {
				if !strings.Contains(got, l) {
					t.Errorf("foreign rule %q is gone:\n%s", l, got)
				}
			}
			// The hooks come first, so hubwarden's policy runs before others'.
			if !strings.Contains(got, "-A OUTPUT -m comment --comment \"hubwarden: hook\" -j HUBWARDEN-EGRESS\n-A OUTPUT -p tcp") {
				t.Errorf("hook is not the first rule of OUTPUT:\n%s", got)
			}
			// Removing everything of hubwarden's leaves exactly the foreign rules.
			empty := []Table{{Family: IPv4, Name: "filter"}, {Family: IPv4, Name: "mangle"}, {Family: IPv6, Name: "filter"}}
			e.apply(t, empty)
			got = e.save(t)
			if strings.Contains(got, Prefix) {
				t.Errorf("owned objects left after an empty plan:\n%s", got)
			}
			for _, l := range foreign {
				if !strings.Contains(got, l) {
					t.Errorf("foreign rule %q is gone after an empty plan:\n%s", l, got)
				}
			}
		})
	}
}

func TestIntegrationConverges(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, e *bed)
		problem string
	}{
		{"hand-deleted rule", func(t *testing.T, e *bed) {
			e.ipt(t, IPv4, "-D", "HUBWARDEN-EGRESS", "3")
		}, "chain HUBWARDEN-EGRESS: rules differ"},
		{"hand-deleted hook", func(t *testing.T, e *bed) {
			e.ipt(t, IPv6, "-D", "OUTPUT", "1")
		}, "ipv6 filter: hook OUTPUT -> HUBWARDEN-EGRESS: missing"},
		{"duplicated hook", func(t *testing.T, e *bed) {
			e.ipt(t, IPv4, "-t", "mangle", "-A", "POSTROUTING", "-m", "comment", "--comment", "hubwarden: hook", "-j", "HUBWARDEN-SHAPE")
		}, "present 2 times"},
		{"hook pushed down", func(t *testing.T, e *bed) {
			e.ipt(t, IPv4, "-I", "OUTPUT", "-j", "ACCEPT")
		}, "rule 2 of OUTPUT, planned as rule 1"},
		{"stale own chain", func(t *testing.T, e *bed) {
			e.ipt(t, IPv4, "-N", "HUBWARDEN-OLD")
			e.ipt(t, IPv4, "-A", "HUBWARDEN-OLD", "-j", "ACCEPT")
			e.ipt(t, IPv4, "-A", "OUTPUT", "-j", "HUBWARDEN-OLD")
		}, "chain HUBWARDEN-OLD: stale"},
		{"rule added to an own chain", func(t *testing.T, e *bed) {
			e.ipt(t, IPv4, "-I", "HUBWARDEN-EGRESS", "1", "-j", "ACCEPT")
		}, "    - -A HUBWARDEN-EGRESS -j ACCEPT"},
		{"own chain flushed", func(t *testing.T, e *bed) {
			e.ipt(t, IPv6, "-F", "HUBWARDEN-ALLOW")
		}, "ipv6 filter: chain HUBWARDEN-ALLOW: rules differ"},
	}
	for _, b := range backends {
		for _, tt := range tests {
			t.Run(string(b)+"/"+tt.name, func(t *testing.T) {
				e := newBed(t, b)
				plan := realPlan()
				e.apply(t, plan)
				clean := e.save(t)
				tt.damage(t, e)
				if d := e.check(t, plan); !strings.Contains(d, tt.problem) {
					t.Errorf("Check does not report %q:\n%s", tt.problem, d)
				}
				e.apply(t, plan)
				if d := e.check(t, plan); d != "" {
					t.Errorf("Check after the converging Apply is not clean:\n%s", d)
				}
				got := strings.Replace(e.save(t), "-A OUTPUT -j ACCEPT\n", "", 1)
				if diff := cmp.Diff(clean, got); diff != "" {
					t.Errorf("converged state differs from a clean apply (-clean +got):\n%s", diff)
				}
			})
		}
	}
}

func TestIntegrationDetect(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-restore", "iptables-legacy-restore")
	log := zerolog.New(zerolog.NewTestWriter(t))
	detect := func(t *testing.T, ns *nstest.NS, d Detector) Backend {
		t.Helper()
		d.Runner = ExecRunner{LockFile: filepath.Join(t.TempDir(), "xtables.lock")}
		d.IPv6, d.Log = true, log
		var b Backend
		if err := ns.Do(func() (err error) { b, err = d.Detect(context.Background()); return err }); err != nil {
			t.Fatalf("Detect: %v", err)
		}
		return b
	}
	persisted := func(t *testing.T, path string) string {
		t.Helper()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(data))
	}

	t.Run("fresh namespace: nft, persisted, the probe's chains kept, and a restart writes nothing", func(t *testing.T) {
		ns := nstest.New(t)
		state := filepath.Join(t.TempDir(), "iptables-backend")
		if got := detect(t, ns, Detector{StateFile: state}); got != NFT {
			t.Errorf("Detect = %s, want nft", got)
		}
		if got := persisted(t, state); got != "nft" {
			t.Errorf("state file holds %q, want nft", got)
		}
		line := RuleLine(probeChain, probeRule)
		for _, tool := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
			out := ns.MustRun(tool)
			var rules []string
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "-A ") {
					rules = append(rules, l)
				}
			}
			want := []string{line, line} // filter and mangle
			if strings.Contains(tool, "legacy") {
				want = nil
			}
			if !slices.Equal(rules, want) {
				t.Errorf("%s after the probe: rules %q, want %q\n%s", tool, rules, want, out)
			}
		}
		// A restart finds the probe's chains and runs no restore.
		rec := &recordingRunner{Runner: ExecRunner{LockFile: filepath.Join(t.TempDir(), "xtables.lock")}}
		d := Detector{Runner: rec, StateFile: state, IPv6: true, Log: log}
		if err := ns.Do(func() error { _, err := d.Detect(context.Background()); return err }); err != nil {
			t.Fatalf("Detect on restart: %v", err)
		}
		for _, c := range rec.calls {
			if strings.HasSuffix(c, "-restore") {
				t.Errorf("Detect on restart ran %s (calls %q)", c, rec.calls)
			}
		}
	})
	t.Run("legacy holds rules", func(t *testing.T) {
		ns := nstest.New(t)
		ns.MustRun("iptables-legacy", "-w", "-A", "OUTPUT", "-d", "198.18.0.9", "-j", "DROP")
		state := filepath.Join(t.TempDir(), "iptables-backend")
		if got := detect(t, ns, Detector{StateFile: state}); got != Legacy {
			t.Errorf("Detect = %s, want legacy", got)
		}
	})
	t.Run("empty legacy tables do not prime the choice (istio#61019)", func(t *testing.T) {
		ns := nstest.New(t)
		// What a legacy probe leaves: the tables exist, with no rules.
		ns.MustRun("iptables-legacy", "-w", "-t", "filter", "-N", "X")
		ns.MustRun("iptables-legacy", "-w", "-t", "filter", "-X", "X")
		ns.MustRun("iptables-legacy", "-w", "-t", "mangle", "-L")
		state := filepath.Join(t.TempDir(), "iptables-backend")
		if got := detect(t, ns, Detector{StateFile: state}); got != NFT {
			t.Errorf("Detect = %s, want nft", got)
		}
	})
	t.Run("a persisted choice is reused on restart", func(t *testing.T) {
		ns := nstest.New(t)
		state := filepath.Join(t.TempDir(), "iptables-backend")
		if err := os.WriteFile(state, []byte("legacy\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if got := detect(t, ns, Detector{StateFile: state}); got != Legacy {
				t.Errorf("Detect = %s, want legacy from the state file", got)
			}
		}
	})
	t.Run("override honoured and persisted", func(t *testing.T) {
		ns := nstest.New(t)
		state := filepath.Join(t.TempDir(), "iptables-backend")
		if got := detect(t, ns, Detector{StateFile: state, Override: Legacy}); got != Legacy {
			t.Errorf("Detect = %s, want legacy", got)
		}
		if got := persisted(t, state); got != "legacy" {
			t.Errorf("state file holds %q, want legacy", got)
		}
		// A restart without the override keeps legacy, though nft works.
		if got := detect(t, ns, Detector{StateFile: state}); got != Legacy {
			t.Errorf("Detect after restart = %s, want legacy", got)
		}
	})
}

// recordingRunner records the tools it runs.
type recordingRunner struct {
	Runner
	calls []string
}

func (r *recordingRunner) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	r.calls = append(r.calls, name)
	return r.Runner.Run(ctx, stdin, name, args...)
}
