package tcshape

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hubwarden/hubwarden/units"
	"github.com/hubwarden/hubwarden/xtables"
)

func rate(t testing.TB, s string) units.Rate {
	t.Helper()
	r, err := units.ParseRate(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func renderTables(ts []xtables.Table) string {
	var b strings.Builder
	for _, t := range ts {
		b.WriteString("# " + t.Family.String() + "\n")
		b.WriteString(xtables.RenderWithHooks(t, t.Hooks, nil))
	}
	return b.String()
}

func TestPlanGolden(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		tc, mangle string
	}{
		{
			name: "10gbit/1mbit fifo, backstop, IPv6",
			cfg: Config{Interface: "eth0", FastRate: rate(t, "10gbit"), SlowRate: rate(t, "1mbit"), CTMark: 0x100000,
				Backstop: true, BackstopBudget: 256 * units.MiB, BackstopRate: units.Rate(4 * units.MiB), IPv6: true, Leaves: LeafFIFO},
			tc: `dev eth0
qdisc htb 4857: root default 4857:10 r2q 10
class htb 4857:1 parent 4857: rate 10gbit ceil 10gbit burst 2500000b cburst 2500000b buffer 31250 cbuffer 31250 quantum 200000 prio 0 # all
class htb 4857:10 parent 4857:1 rate 9999mbit ceil 10gbit burst 2500000b cburst 2500000b buffer 31254 cbuffer 31250 quantum 200000 prio 1 # fast
class htb 4857:20 parent 4857:1 rate 1mbit ceil 1mbit burst 3028b cburst 3028b buffer 378500 cbuffer 378500 quantum 12500 prio 0 # slow
qdisc bfifo 4858: parent 4857:10 limit 25000000b
qdisc bfifo 4859: parent 4857:20 limit 131072b
`,
			mangle: `# ipv4
*mangle
:HUBWARDEN-SHAPE - [0:0]
-A HUBWARDEN-SHAPE -m connbytes --connbytes 0 --connbytes-mode packets --connbytes-dir both -m comment --comment "hubwarden: turns conntrack accounting on"
-A HUBWARDEN-SHAPE -o eth0 -m connmark ! --mark 0x100000/0x100000 -m hashlimit --hashlimit-above 4mb/s --hashlimit-burst 256mb --hashlimit-mode srcip,srcport,dstip,dstport --hashlimit-name hubwarden-bs -m comment --comment "hubwarden: backstop: demote a flow past its byte budget" -j CONNMARK --set-xmark 0x100000/0x100000
-A HUBWARDEN-SHAPE -o eth0 -m connmark --mark 0x100000/0x100000 -m comment --comment "hubwarden: demoted flows to the slow class" -j CLASSIFY --set-class 4857:0020
-I POSTROUTING 1 -m comment --comment "hubwarden: hook" -j HUBWARDEN-SHAPE
COMMIT
# ipv6
*mangle
:HUBWARDEN-SHAPE - [0:0]
-A HUBWARDEN-SHAPE -m connbytes --connbytes 0 --connbytes-mode packets --connbytes-dir both -m comment --comment "hubwarden: turns conntrack accounting on"
-A HUBWARDEN-SHAPE -o eth0 -m connmark ! --mark 0x100000/0x100000 -m hashlimit --hashlimit-above 4mb/s --hashlimit-burst 256mb --hashlimit-mode srcip,srcport,dstip,dstport --hashlimit-name hubwarden-bs -m comment --comment "hubwarden: backstop: demote a flow past its byte budget" -j CONNMARK --set-xmark 0x100000/0x100000
-A HUBWARDEN-SHAPE -o eth0 -m connmark --mark 0x100000/0x100000 -m comment --comment "hubwarden: demoted flows to the slow class" -j CLASSIFY --set-class 4857:0020
-I POSTROUTING 1 -m comment --comment "hubwarden: hook" -j HUBWARDEN-SHAPE
COMMIT
`,
		},
		{
			name: "100kbit slow, fq, no backstop, IPv4 only, jumbo MTU",
			cfg: Config{Interface: "net1", FastRate: rate(t, "2gbit"), SlowRate: rate(t, "100kbit"), CTMark: 0x20,
				MTU: 9000, Leaves: LeafFQ, Clock: DefaultClock},
			tc: `dev net1
qdisc htb 4857: root default 4857:10 r2q 10
class htb 4857:1 parent 4857: rate 2gbit ceil 2gbit burst 500000b cburst 500000b buffer 31250 cbuffer 31250 quantum 200000 prio 0 # all
class htb 4857:10 parent 4857:1 rate 1999900kbit ceil 2gbit burst 500000b cburst 500000b buffer 31252 cbuffer 31250 quantum 200000 prio 1 # fast
class htb 4857:20 parent 4857:1 rate 100kbit ceil 100kbit burst 18028b cburst 18028b buffer 22535000 cbuffer 22535000 quantum 9014 prio 0 # slow
qdisc fq 4858: parent 4857:10 limit 10000
qdisc bfifo 4859: parent 4857:20 limit 131072b
`,
			mangle: `# ipv4
*mangle
:HUBWARDEN-SHAPE - [0:0]
-A HUBWARDEN-SHAPE -m connbytes --connbytes 0 --connbytes-mode packets --connbytes-dir both -m comment --comment "hubwarden: turns conntrack accounting on"
-A HUBWARDEN-SHAPE -o net1 -m connmark --mark 0x20/0x20 -m comment --comment "hubwarden: demoted flows to the slow class" -j CLASSIFY --set-class 4857:0020
-I POSTROUTING 1 -m comment --comment "hubwarden: hook" -j HUBWARDEN-SHAPE
COMMIT
`,
		},
		{
			name: "tripwire, gate and backstop, IPv6",
			cfg: Config{Interface: "eth0", FastRate: rate(t, "10gbit"), SlowRate: rate(t, "1mbit"), CTMark: 0x100000,
				Tripwire: true, TripwireBudget: 64 * units.MiB, Gate: true,
				Backstop: true, BackstopBudget: 256 * units.MiB, BackstopRate: units.Rate(4 * units.MiB), IPv6: true, Leaves: LeafFIFO},
			tc: `dev eth0
qdisc htb 4857: root default 4857:10 r2q 10
class htb 4857:1 parent 4857: rate 10gbit ceil 10gbit burst 2500000b cburst 2500000b buffer 31250 cbuffer 31250 quantum 200000 prio 0 # all
class htb 4857:10 parent 4857:1 rate 9999mbit ceil 10gbit burst 2500000b cburst 2500000b buffer 31254 cbuffer 31250 quantum 200000 prio 1 # fast
class htb 4857:20 parent 4857:1 rate 1mbit ceil 1mbit burst 3028b cburst 3028b buffer 378500 cbuffer 378500 quantum 12500 prio 0 # slow
qdisc bfifo 4858: parent 4857:10 limit 25000000b
qdisc bfifo 4859: parent 4857:20 limit 131072b
`,
			mangle: `# ipv4
*mangle
:HUBWARDEN-SHAPE - [0:0]
-A HUBWARDEN-SHAPE -m connbytes --connbytes 0 --connbytes-mode packets --connbytes-dir both -m comment --comment "hubwarden: turns conntrack accounting on"
-A HUBWARDEN-SHAPE -o eth0 -m connmark --mark 0x0/0x300000 -m conntrack --ctdir ORIGINAL -m connbytes --connbytes 67108864 --connbytes-mode bytes --connbytes-dir original -m comment --comment "hubwarden: tripwire: demote a flow at its byte budget (original direction)" -j CONNMARK --set-xmark 0x100000/0x100000
-A HUBWARDEN-SHAPE -o eth0 -m connmark --mark 0x0/0x300000 -m conntrack --ctdir REPLY -m connbytes --connbytes 67108864 --connbytes-mode bytes --connbytes-dir reply -m comment --comment "hubwarden: tripwire: demote a flow at its byte budget (reply direction)" -j CONNMARK --set-xmark 0x100000/0x100000
-A HUBWARDEN-SHAPE -o eth0 -m connmark ! --mark 0x100000/0x100000 -m recent --rcheck --name hubwarden-gate4 --mask 0.0.0.0 --rsource -m comment --comment "hubwarden: gate: while the pod budget is spent, demote every flow that sends" -j CONNMARK --set-xmark 0x100000/0x100000
-A HUBWARDEN-SHAPE -o eth0 -m connmark ! --mark 0x100000/0x100000 -m hashlimit --hashlimit-above 4mb/s --hashlimit-burst 256mb --hashlimit-mode srcip,srcport,dstip,dstport --hashlimit-name hubwarden-bs -m comment --comment "hubwarden: backstop: demote a flow past its byte budget" -j CONNMARK --set-xmark 0x100000/0x100000
-A HUBWARDEN-SHAPE -o eth0 -m connmark --mark 0x100000/0x100000 -m comment --comment "hubwarden: demoted flows to the slow class" -j CLASSIFY --set-class 4857:0020
-I POSTROUTING 1 -m comment --comment "hubwarden: hook" -j HUBWARDEN-SHAPE
COMMIT
# ipv6
*mangle
:HUBWARDEN-SHAPE - [0:0]
-A HUBWARDEN-SHAPE -m connbytes --connbytes 0 --connbytes-mode packets --connbytes-dir both -m comment --comment "hubwarden: turns conntrack accounting on"
-A HUBWARDEN-SHAPE -o eth0 -m connmark --mark 0x0/0x300000 -m conntrack --ctdir ORIGINAL -m connbytes --connbytes 67108864 --connbytes-mode bytes --connbytes-dir original -m comment --comment "hubwarden: tripwire: demote a flow at its byte budget (original direction)" -j CONNMARK --set-xmark 0x100000/0x100000
-A HUBWARDEN-SHAPE -o eth0 -m connmark --mark 0x0/0x300000 -m conntrack --ctdir REPLY -m connbytes --connbytes 67108864 --connbytes-mode bytes --connbytes-dir reply -m comment --comment "hubwarden: tripwire: demote a flow at its byte budget (reply direction)" -j CONNMARK --set-xmark 0x100000/0x100000
-A HUBWARDEN-SHAPE -o eth0 -m connmark ! --mark 0x100000/0x100000 -m recent --rcheck --name hubwarden-gate6 --mask :: --rsource -m comment --comment "hubwarden: gate: while the pod budget is spent, demote every flow that sends" -j CONNMARK --set-xmark 0x100000/0x100000
-A HUBWARDEN-SHAPE -o eth0 -m connmark ! --mark 0x100000/0x100000 -m hashlimit --hashlimit-above 4mb/s --hashlimit-burst 256mb --hashlimit-mode srcip,srcport,dstip,dstport --hashlimit-name hubwarden-bs -m comment --comment "hubwarden: backstop: demote a flow past its byte budget" -j CONNMARK --set-xmark 0x100000/0x100000
-A HUBWARDEN-SHAPE -o eth0 -m connmark --mark 0x100000/0x100000 -m comment --comment "hubwarden: demoted flows to the slow class" -j CLASSIFY --set-class 4857:0020
-I POSTROUTING 1 -m comment --comment "hubwarden: hook" -j HUBWARDEN-SHAPE
COMMIT
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := Plan(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.tc, spec.String()); d != "" {
				t.Errorf("tc objects (-want +got):\n%s", d)
			}
			tables, err := MangleTables(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.mangle, renderTables(tables)); d != "" {
				t.Errorf("mangle tables (-want +got):\n%s", d)
			}
		})
	}
}

func TestPlanErrors(t *testing.T) {
	base := Config{Interface: "eth0", FastRate: rate(t, "1gbit"), SlowRate: rate(t, "1mbit"), CTMark: 0x100000,
		Backstop: true, BackstopBudget: 64 * units.MiB, BackstopRate: units.Rate(units.MiB)}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"no interface", func(c *Config) { c.Interface = "" }, "no interface"},
		{"slow too low", func(c *Config) { c.SlowRate = 100 }, "below the minimum 8kbit"},
		{"slow not below fast", func(c *Config) { c.SlowRate = c.FastRate }, "must be above the slow rate"},
		{"MTU", func(c *Config) { c.MTU = 70000 }, "out of range"},
		{"two mark bits", func(c *Config) { c.CTMark = 0x30 }, "not a single bit"},
		{"watched mark is the ctmark", func(c *Config) { c.Tripwire, c.TripwireBudget, c.WatchedMark = true, units.MiB, 0x100000 }, "single bit other than the ctmark"},
		{"watched mark beyond 32 bits", func(c *Config) { c.Tripwire, c.TripwireBudget, c.CTMark = true, units.MiB, 0x80000000 }, "single bit other than the ctmark"},
		{"tripwire without budget", func(c *Config) { c.Tripwire = true }, "needs a budget"},
		{"budget below 1s of rate", func(c *Config) { c.BackstopBudget = 512 * units.KiB }, "below one second"},
		{"budget 4GiB", func(c *Config) { c.BackstopBudget = 4 * units.GiB }, "below 4GiB"},
		{"rate too high", func(c *Config) { c.BackstopRate = 2 * units.Rate(units.GiB) }, "byte-mode range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			tt.mod(&cfg)
			_, err := Plan(cfg)
			if err == nil {
				_, err = MangleTables(cfg)
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got error %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestParsePsched(t *testing.T) {
	tests := []struct {
		in      string
		want    float64
		wantErr bool
	}{
		{in: "000003e8 00000040 000f4240 3b9aca00\n", want: 15.625},
		{in: "000003e8 00000400 000f4240 3b9aca00", want: 1000.0 / 1024},
		{in: "00000001 00000001 3b9aca00 3b9aca00", want: 1000}, // nanosecond clock hack
		{in: "1 2", wantErr: true},
		{in: "zz 1 1", wantErr: true},
		{in: "0 1 1", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParsePsched(tt.in)
		if (err != nil) != tt.wantErr {
			t.Fatalf("ParsePsched(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
		}
		if err == nil && got.TicksPerUsec != tt.want {
			t.Errorf("ParsePsched(%q) = %v, want %v", tt.in, got.TicksPerUsec, tt.want)
		}
	}
}

// checkInvariants are the properties every plan keeps.
func checkInvariants(t *testing.T, cfg Config, s Spec) {
	t.Helper()
	ids := map[Handle]Class{}
	for _, c := range s.Classes {
		if _, dup := ids[c.ID]; dup {
			t.Fatalf("duplicate classid %s", c.ID)
		}
		ids[c.ID] = c
		if c.ID.Major() != RootMajor {
			t.Fatalf("class %s outside hubwarden's major", c.ID)
		}
		if c.Rate == 0 || c.Rate > c.Ceil {
			t.Fatalf("class %s: rate %d, ceil %d", c.ID, c.Rate, c.Ceil)
		}
		if p, ok := ids[c.Parent]; ok && (c.Ceil > p.Ceil || c.Rate > p.Ceil) {
			t.Fatalf("class %s: rate %d ceil %d above its parent's ceil %d", c.ID, c.Rate, c.Ceil, p.Ceil)
		} else if !ok && c.Parent != s.Root.Handle {
			t.Fatalf("class %s: parent %s not planned before it", c.ID, c.Parent)
		}
		if c.Buffer == 0 || c.Cbuffer == 0 {
			t.Fatalf("class %s: zero buffer", c.ID)
		}
		if c.Quantum < 1000 || c.Quantum > maxQuantum {
			t.Fatalf("class %s: quantum %d out of 1000-%d", c.ID, c.Quantum, maxQuantum)
		}
	}
	var sum uint64
	for _, c := range s.Classes {
		if c.Parent == ParentClass {
			sum += c.Rate
		}
	}
	if sum > ids[ParentClass].Rate {
		t.Fatalf("children's rates %d exceed the parent's %d", sum, ids[ParentClass].Rate)
	}
	if _, ok := ids[s.Root.Default]; !ok {
		t.Fatalf("default class %s not planned", s.Root.Default)
	}
	for _, l := range s.Leaves {
		if _, ok := ids[l.Parent]; !ok || l.Limit == 0 {
			t.Fatalf("leaf %v: unknown parent or zero limit", l)
		}
		if l.Kind == "bfifo" && l.Limit < 2*gsoMax {
			t.Fatalf("leaf %v holds fewer than two GSO packets", l)
		}
	}
}

func FuzzPlan(f *testing.F) {
	f.Add("10gbit", "1mbit", uint32(1500), "256MiB", "4MiB/s")
	f.Add("2gbit", "100kbit", uint32(9000), "4MiB", "1MiB/s")
	f.Add("100tbit", "8kbit", uint32(68), "3GiB", "1GiB/s")
	f.Add("1mbit", "8kbit", uint32(0), "1KiB", "1KiB/s")
	f.Fuzz(func(t *testing.T, fast, slow string, mtu uint32, budget, brate string) {
		fr, err1 := units.ParseRate(fast)
		sr, err2 := units.ParseRate(slow)
		bb, err3 := units.ParseSize(budget)
		br, err4 := units.ParseRate(brate)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
			return
		}
		cfg := Config{Interface: "eth0", FastRate: fr, SlowRate: sr, MTU: mtu, CTMark: 0x100000,
			Backstop: true, BackstopBudget: bb, BackstopRate: br, IPv6: true}
		s, err := Plan(cfg)
		if err == nil {
			checkInvariants(t, cfg, s)
			if _, err := Plan(cfg); err != nil {
				t.Fatal("plan is not deterministic")
			}
		}
		tables, err := MangleTables(cfg)
		if err != nil {
			return
		}
		for _, tb := range tables {
			for _, c := range tb.Chains {
				if !strings.HasPrefix(c.Name, xtables.Prefix) {
					t.Fatalf("rule in unowned chain %s", c.Name)
				}
			}
		}
	})
}

func FuzzParsePsched(f *testing.F) {
	f.Add("000003e8 00000040 000f4240 3b9aca00\n")
	f.Add("1 1 1")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParsePsched(s)
		if err == nil && (c.TicksPerUsec <= 0 || math.IsInf(c.TicksPerUsec, 0) || math.IsNaN(c.TicksPerUsec)) {
			t.Fatalf("ParsePsched(%q) = %v without error", s, c)
		}
	})
}

func BenchmarkPlan(b *testing.B) {
	cfg := Config{Interface: "eth0", FastRate: rate(b, "10gbit"), SlowRate: rate(b, "1mbit"), CTMark: 0x100000,
		Backstop: true, BackstopBudget: 256 * units.MiB, BackstopRate: units.Rate(4 * units.MiB), IPv6: true}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Plan(cfg); err != nil {
			b.Fatal(err)
		}
	}
}

// TestBackstopArgs pins values that TestIntegrationBackstopRoundTrip saw
// iptables-save print back unchanged.
func TestBackstopArgs(t *testing.T) {
	tests := []struct {
		budget       units.Size
		rate         units.Rate
		wantR, wantB string
	}{
		{4 << 20, 1 << 20, "1mb/s", "4mb"},
		{64 << 20, 512 << 10, "512kb/s", "64mb"},
		{4 << 20, 3_000_000, "3000048b/s", "5mb"},
		{3 << 30, 1 << 30, "1040mb/s", "3120mb"},
		{4<<30 - 1, 4 << 20, "4mb/s", "4092mb"},
	}
	for _, tt := range tests {
		r, b, err := backstopArgs(tt.budget, tt.rate)
		if err != nil {
			t.Fatal(err)
		}
		if r != tt.wantR || b != tt.wantB {
			t.Errorf("backstopArgs(%d, %d) = %s, %s; want %s, %s", tt.budget, tt.rate, r, b, tt.wantR, tt.wantB)
		}
	}
}
