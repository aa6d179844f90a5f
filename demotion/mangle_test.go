package demotion

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hubwarden/hubwarden/units"
	"github.com/hubwarden/hubwarden/xtables"
)

func chainLines(t *testing.T, tbl xtables.Table, name string) []string {
	t.Helper()
	for _, c := range tbl.Chains {
		if c.Name == name {
			var out []string
			for _, r := range c.Rules {
				out = append(out, xtables.RuleLine(c.Name, r))
			}
			return out
		}
	}
	t.Fatalf("no chain %s", name)
	return nil
}

// TestMangleTables is the golden state of the rules: what iptables-save
// prints for them (the root tests check that the kernel prints exactly this).
func TestMangleTables(t *testing.T) {
	c := mustContract(t, 0x100000, 64*units.MiB)
	ts, err := MangleTables(Rules{Contract: c, Interface: "eth0", IPv6: true, Watch: true, Gate: GateQuota, Interactive: true, SlowRate: 125_000})
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 2 || ts[0].Family != xtables.IPv4 || ts[1].Family != xtables.IPv6 {
		t.Fatalf("tables %+v", ts)
	}
	v4 := ts[0]
	if len(v4.Chains) != 5+2*Tiers {
		t.Errorf("%d chains, want SHAPE, SLOW, ACCT, DEMOTE, TRIP and two per tier (%d tiers)", len(v4.Chains), Tiers)
	}
	want := []string{
		`-A HUBWARDEN-SHAPE -o eth0 -m connmark --mark 0x0/0x3d00000 -m connbytes --connbytes 0:8388607 --connbytes-mode bytes --connbytes-dir both -m comment --comment "hubwarden: flows of tier 0 below 8388608 bytes in all: nothing to do" -j RETURN`,
		`-A HUBWARDEN-SHAPE -o eth0 -m connmark --mark 0x0/0x3d00000 -m comment --comment "hubwarden: flows neither demoted nor promoted: the tripwire of tier 0" -g HUBWARDEN-TIER0`,
		`-A HUBWARDEN-SHAPE -o eth0 -m connmark --mark 0x100000/0x100000 -m comment --comment "hubwarden: demoted flows: the slow class" -g HUBWARDEN-SLOW`,
		`-A HUBWARDEN-SHAPE -o eth0 -m comment --comment "hubwarden: flows not demoted: the tripwire of their tier" -g HUBWARDEN-TRIP`,
	}
	if diff := cmp.Diff(want, chainLines(t, v4, ShapeChain)); diff != "" {
		t.Errorf("SHAPE (-want +got):\n%s", diff)
	}
	want = []string{
		`-A HUBWARDEN-SLOW -m comment --comment "hubwarden: demoted flows to the slow class (bulk)" -j CLASSIFY --set-class 4857:0020`,
		`-A HUBWARDEN-SLOW -m conntrack --ctdir REPLY -m comment --comment "hubwarden: demoted flows a peer opened to the slow class (served)" -j CLASSIFY --set-class 4857:0022`,
		`-A HUBWARDEN-SLOW -m conntrack --ctdir REPLY -m hashlimit --hashlimit-upto 15kb/s --hashlimit-burst 75kb --hashlimit-mode srcip,srcport,dstip,dstport --hashlimit-name hubwarden-ui --hashlimit-rate-match -m comment --comment "hubwarden: demoted flows that send little to the slow class (interactive)" -j CLASSIFY --set-class 4857:0021`,
	}
	if diff := cmp.Diff(want, chainLines(t, v4, SlowChain)); diff != "" {
		t.Errorf("SLOW (-want +got):\n%s", diff)
	}
	want = []string{
		`-A HUBWARDEN-ACCT -m connbytes --connbytes 0 --connbytes-mode packets --connbytes-dir both -m comment --comment "hubwarden: turns conntrack accounting on"`,
	}
	if diff := cmp.Diff(want, chainLines(t, v4, AcctChain)); diff != "" {
		t.Errorf("ACCT (-want +got):\n%s", diff)
	}
	want = []string{
		`-A HUBWARDEN-DEMOTE -m comment --comment "hubwarden: the demoted and attention bits" -j CONNMARK --set-xmark 0x300000/0x300000`,
		`-A HUBWARDEN-DEMOTE -m comment --comment "hubwarden: from this packet on, the slow class" -g HUBWARDEN-SLOW`,
	}
	if diff := cmp.Diff(want, chainLines(t, v4, DemoteChain)); diff != "" {
		t.Errorf("DEMOTE (-want +got):\n%s", diff)
	}
	// No rule jumps to ACCT: the kernel checks its rule when it is added
	// (and turns accounting on), no packet meets it.
	for _, ch := range v4.Chains {
		for _, r := range ch.Rules {
			if slices.Contains(r.Args, AcctChain) {
				t.Errorf("chain %s jumps to %s: %v", ch.Name, AcctChain, r.Args)
			}
		}
	}
	// IPv6 has no interactive rule (nft 1.0.6 crashes listing it), but the
	// served leaf as IPv4.
	if v6 := strings.Join(chainLines(t, ts[1], SlowChain), "\n"); strings.Contains(v6, "hashlimit") || !strings.Contains(v6, "--set-class 4857:0020") || !strings.Contains(v6, "--ctdir REPLY -m comment --comment \"hubwarden: demoted flows a peer opened to the slow class (served)\" -j CLASSIFY --set-class 4857:0022") {
		t.Errorf("IPv6 SLOW:\n%s", v6)
	}
	trip := chainLines(t, v4, TripChain)
	if len(trip) != Tiers ||
		trip[0] != `-A HUBWARDEN-TRIP -m connmark --mark 0x0/0x3c00000 -m comment --comment "hubwarden: tier 0" -g HUBWARDEN-TIER0` ||
		trip[15] != `-A HUBWARDEN-TRIP -m connmark --mark 0x3c00000/0x3c00000 -m comment --comment "hubwarden: tier 15" -g HUBWARDEN-TIER15` {
		t.Errorf("TRIP:\n%s", strings.Join(trip, "\n"))
	}
	want = []string{
		`-A HUBWARDEN-TIER15 -m conntrack --ctdir REPLY -m comment --comment "hubwarden: flows a peer opened: the reply direction" -g HUBWARDEN-TIER15-R`,
		`-A HUBWARDEN-TIER15 -m connbytes --connbytes 1048576 --connbytes-mode bytes --connbytes-dir original -m comment --comment "hubwarden: tripwire: demote at 1048576 bytes (original direction)" -g HUBWARDEN-DEMOTE`,
		`-A HUBWARDEN-TIER15 -m connbytes --connbytes 524288 --connbytes-mode bytes --connbytes-dir original -m connmark --mark 0x0/0x200000 -m comment --comment "hubwarden: busy: ask the watcher at 524288 bytes (original direction)" -j CONNMARK --set-xmark 0x200000/0x200000`,
	}
	if diff := cmp.Diff(want, chainLines(t, v4, TierChain(15))); diff != "" {
		t.Errorf("TIER15 (-want +got):\n%s", diff)
	}
	want = []string{
		`-A HUBWARDEN-TIER15-R -m connbytes --connbytes 1048576 --connbytes-mode bytes --connbytes-dir reply -m comment --comment "hubwarden: tripwire: demote at 1048576 bytes (reply direction)" -g HUBWARDEN-DEMOTE`,
		`-A HUBWARDEN-TIER15-R -m connbytes --connbytes 524288 --connbytes-mode bytes --connbytes-dir reply -m connmark --mark 0x0/0x200000 -m comment --comment "hubwarden: busy: ask the watcher at 524288 bytes (reply direction)" -j CONNMARK --set-xmark 0x200000/0x200000`,
	}
	if diff := cmp.Diff(want, chainLines(t, v4, TierReplyChain(15))); diff != "" {
		t.Errorf("TIER15-R (-want +got):\n%s", diff)
	}
	if got := chainLines(t, v4, TierChain(0))[1]; !strings.Contains(got, "--connbytes 67108864 ") {
		t.Errorf("TIER0 trips at the flow budget: %s", got)
	}

	// The recent gate sits before the tripwire; without the watcher only
	// CLASSIFY is planned (nothing would re-arm or promote).
	ts, err = MangleTables(Rules{Contract: c, Interface: "eth0", IPv6: true, Watch: true, Gate: GateRecent})
	if err != nil {
		t.Fatal(err)
	}
	shape6 := chainLines(t, ts[1], ShapeChain)
	wantGate := `-A HUBWARDEN-SHAPE -o eth0 -m recent ! --rcheck --seconds 2 --name hubwarden-open6 --mask :: --rsource -m comment --comment "hubwarden: gate: unless the watcher keeps the pod budget open, demote every flow that sends" -g HUBWARDEN-DEMOTE`
	if len(shape6) != 3 || shape6[1] != wantGate {
		t.Errorf("SHAPE with the recent gate:\n%s", strings.Join(shape6, "\n"))
	}
	ts, err = MangleTables(Rules{Contract: c, Interface: "eth0", Watch: false, Gate: GateNone})
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 || len(ts[0].Chains) != 3 || len(ts[0].Chains[0].Rules) != 1 {
		t.Errorf("without the watcher: %+v", ts)
	}
	if _, err := MangleTables(Rules{Contract: c}); err == nil {
		t.Error("no interface: want an error")
	}
	if _, err := MangleTables(Rules{Interface: "eth0"}); err == nil {
		t.Error("no contract: want an error")
	}
}

func TestQuotaGateString(t *testing.T) {
	g := QuotaGate{Interface: "eth0", Contract: mustContract(t, 0x100000, 64*units.MiB)}
	want := `table inet hubwarden {
	quota pod {
		over <pod bucket> bytes
	}

	chain gate {
		type filter hook postrouting priority mangle - 1; policy accept;
		oifname "eth0" ct mark & 0x00100000 == 0x00000000 quota name "pod" ct mark set ct mark | 0x00300000 comment "hubwarden: gate: once the pod budget is spent, demote every flow that sends"
	}
}
`
	if diff := cmp.Diff(want, g.String()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if err := (QuotaGate{Interface: "a-very-long-interface-name", Contract: g.Contract}).Validate(); err == nil {
		t.Error("a 26-character interface name: want an error")
	}
}

// TestInteractiveLimit: the interactive allowance is an eighth of the slow
// rate in whole KiB/s, below 1 MiB/s, with a window's burst of at least
// one burst of the interactive leaf where it fits below 1 MiB, as a whole
// multiple of the rate; none below 64 kbit.
func TestInteractiveLimit(t *testing.T) {
	for _, tt := range []struct {
		slow        string
		rate, burst uint64
		ok          bool
	}{
		{"1mbit", 15, 75, true},       // 125000/8 = 15625 B/s; 64 KiB in 5 windows' worth
		{"8mbit", 122, 122, true},     // one rate holds the 64 KiB burst
		{"100mbit", 1023, 1023, true}, // capped below 1 MiB/s; the burst one rate
		{"600kbit", 9, 72, true},
		{"65536bit", 1, 64, true},
		{"64kbit", 0, 0, false},
		{"8kbit", 0, 0, false},
	} {
		r, err := units.ParseRate(tt.slow)
		if err != nil {
			t.Fatal(err)
		}
		rate, burst, ok := InteractiveLimit(r)
		if rate != tt.rate || burst != tt.burst || ok != tt.ok {
			t.Errorf("%s: %d kb/s burst %d kb %v, want %d %d %v", tt.slow, rate, burst, ok, tt.rate, tt.burst, tt.ok)
		}
		if ok && (burst%rate != 0 || burst > 1023 || rate > 1023) {
			t.Errorf("%s: burst %d kb is not a whole multiple of %d kb/s below 1 MiB", tt.slow, burst, rate)
		}
	}
}
