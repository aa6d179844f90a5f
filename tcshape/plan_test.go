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
		name string
		cfg  Config
		tc   string
	}{
		{
			// No FAST_RATE: the fast path is the root's direct queue, fq or
			// not.
			name: "the defaults: no fast rate, 1mbit, fq",
			cfg:  Config{Interface: "eth0", SlowRate: rate(t, "1mbit"), Leaves: LeafFQ},
			tc: `dev eth0
qdisc htb 4857: root default 0 r2q 10 direct_qlen 1000
class htb 4857:2 parent 4857: rate 1mbit ceil 1mbit burst 3028b cburst 3028b buffer 378500 cbuffer 378500 quantum 12500 prio 0 # slow
class htb 4857:20 parent 4857:2 rate 250kbit ceil 1mbit burst 3028b cburst 3028b buffer 1514000 cbuffer 378500 quantum 3125 prio 1 # slow bulk
class htb 4857:21 parent 4857:2 rate 500kbit ceil 1mbit burst 65536b cburst 65536b buffer 16384000 cbuffer 8192000 quantum 6250 prio 0 # slow interactive
class htb 4857:22 parent 4857:2 rate 250kbit ceil 1mbit burst 3028b cburst 3028b buffer 1514000 cbuffer 378500 quantum 3125 prio 1 # slow served
qdisc bfifo 4859: parent 4857:20 limit 131072b
qdisc bfifo 485a: parent 4857:21 limit 131072b
qdisc bfifo 485b: parent 4857:22 limit 131072b
`,
		},
		{
			name: "1tbit/1mbit fifo (the default before the direct queue)",
			cfg:  Config{Interface: "eth0", FastRate: rate(t, "1tbit"), SlowRate: rate(t, "1mbit"), Leaves: LeafFIFO},
			tc: `dev eth0
qdisc htb 4857: root default 4857:10 r2q 10 direct_qlen 1000
class htb 4857:1 parent 4857: rate 1tbit ceil 1tbit burst 250000000b cburst 250000000b buffer 31250 cbuffer 31250 quantum 200000 prio 0 # all
class htb 4857:10 parent 4857:1 rate 999999mbit ceil 1tbit burst 250000000b cburst 250000000b buffer 31251 cbuffer 31250 quantum 200000 prio 1 # fast
class htb 4857:2 parent 4857:1 rate 1mbit ceil 1mbit burst 3028b cburst 3028b buffer 378500 cbuffer 378500 quantum 12500 prio 0 # slow
class htb 4857:20 parent 4857:2 rate 250kbit ceil 1mbit burst 3028b cburst 3028b buffer 1514000 cbuffer 378500 quantum 3125 prio 1 # slow bulk
class htb 4857:21 parent 4857:2 rate 500kbit ceil 1mbit burst 65536b cburst 65536b buffer 16384000 cbuffer 8192000 quantum 6250 prio 0 # slow interactive
class htb 4857:22 parent 4857:2 rate 250kbit ceil 1mbit burst 3028b cburst 3028b buffer 1514000 cbuffer 378500 quantum 3125 prio 1 # slow served
qdisc bfifo 4858: parent 4857:10 limit 25000000b
qdisc bfifo 4859: parent 4857:20 limit 131072b
qdisc bfifo 485a: parent 4857:21 limit 131072b
qdisc bfifo 485b: parent 4857:22 limit 131072b
`,
		},
		{
			name: "10gbit/1mbit fifo",
			cfg:  Config{Interface: "eth0", FastRate: rate(t, "10gbit"), SlowRate: rate(t, "1mbit"), Leaves: LeafFIFO},
			tc: `dev eth0
qdisc htb 4857: root default 4857:10 r2q 10 direct_qlen 1000
class htb 4857:1 parent 4857: rate 10gbit ceil 10gbit burst 2500000b cburst 2500000b buffer 31250 cbuffer 31250 quantum 200000 prio 0 # all
class htb 4857:10 parent 4857:1 rate 9999mbit ceil 10gbit burst 2500000b cburst 2500000b buffer 31254 cbuffer 31250 quantum 200000 prio 1 # fast
class htb 4857:2 parent 4857:1 rate 1mbit ceil 1mbit burst 3028b cburst 3028b buffer 378500 cbuffer 378500 quantum 12500 prio 0 # slow
class htb 4857:20 parent 4857:2 rate 250kbit ceil 1mbit burst 3028b cburst 3028b buffer 1514000 cbuffer 378500 quantum 3125 prio 1 # slow bulk
class htb 4857:21 parent 4857:2 rate 500kbit ceil 1mbit burst 65536b cburst 65536b buffer 16384000 cbuffer 8192000 quantum 6250 prio 0 # slow interactive
class htb 4857:22 parent 4857:2 rate 250kbit ceil 1mbit burst 3028b cburst 3028b buffer 1514000 cbuffer 378500 quantum 3125 prio 1 # slow served
qdisc bfifo 4858: parent 4857:10 limit 25000000b
qdisc bfifo 4859: parent 4857:20 limit 131072b
qdisc bfifo 485a: parent 4857:21 limit 131072b
qdisc bfifo 485b: parent 4857:22 limit 131072b
`,
		},
		{
			name: "100kbit slow, fq, jumbo MTU",
			cfg: Config{Interface: "net1", FastRate: rate(t, "2gbit"), SlowRate: rate(t, "100kbit"),
				MTU: 9000, Leaves: LeafFQ, Clock: DefaultClock},
			tc: `dev net1
qdisc htb 4857: root default 4857:10 r2q 10 direct_qlen 1000
class htb 4857:1 parent 4857: rate 2gbit ceil 2gbit burst 500000b cburst 500000b buffer 31250 cbuffer 31250 quantum 200000 prio 0 # all
class htb 4857:10 parent 4857:1 rate 1999900kbit ceil 2gbit burst 500000b cburst 500000b buffer 31252 cbuffer 31250 quantum 200000 prio 1 # fast
class htb 4857:2 parent 4857:1 rate 100kbit ceil 100kbit burst 18028b cburst 18028b buffer 22535000 cbuffer 22535000 quantum 9014 prio 0 # slow
class htb 4857:20 parent 4857:2 rate 25kbit ceil 100kbit burst 18028b cburst 18028b buffer 90140000 cbuffer 22535000 quantum 9014 prio 1 # slow bulk
class htb 4857:21 parent 4857:2 rate 50kbit ceil 100kbit burst 65536b cburst 65536b buffer 163840000 cbuffer 81920000 quantum 9014 prio 0 # slow interactive
class htb 4857:22 parent 4857:2 rate 25kbit ceil 100kbit burst 18028b cburst 18028b buffer 90140000 cbuffer 22535000 quantum 9014 prio 1 # slow served
qdisc fq 4858: parent 4857:10 limit 10000
qdisc bfifo 4859: parent 4857:20 limit 131072b
qdisc bfifo 485a: parent 4857:21 limit 131072b
qdisc bfifo 485b: parent 4857:22 limit 131072b
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
		})
	}
}

func TestPlanErrors(t *testing.T) {
	base := Config{Interface: "eth0", FastRate: rate(t, "1gbit"), SlowRate: rate(t, "1mbit")}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"no interface", func(c *Config) { c.Interface = "" }, "no interface"},
		{"slow too low", func(c *Config) { c.SlowRate = 100 }, "below the minimum 8kbit"},
		{"slow not below fast", func(c *Config) { c.SlowRate = c.FastRate }, "must be above the slow rate"},
		{"MTU", func(c *Config) { c.MTU = 70000 }, "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			tt.mod(&cfg)
			_, err := Plan(cfg)
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
	f.Add("10gbit", "1mbit", uint32(1500))
	f.Add("2gbit", "100kbit", uint32(9000))
	f.Add("100tbit", "8kbit", uint32(68))
	f.Add("1mbit", "8kbit", uint32(0))
	f.Fuzz(func(t *testing.T, fast, slow string, mtu uint32) {
		fr, err1 := units.ParseRate(fast)
		sr, err2 := units.ParseRate(slow)
		if err1 != nil || err2 != nil {
			return
		}
		cfg := Config{Interface: "eth0", FastRate: fr, SlowRate: sr, MTU: mtu}
		s, err := Plan(cfg)
		if err == nil {
			checkInvariants(t, cfg, s)
			if _, err := Plan(cfg); err != nil {
				t.Fatal("plan is not deterministic")
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
	cfg := Config{Interface: "eth0", FastRate: rate(b, "10gbit"), SlowRate: rate(b, "1mbit")}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Plan(cfg); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSlowExcess pins the constant docs/shaping.md states for the defaults:
// the interactive leaf's 64 KiB, and max(10 ms of SLOW_RATE, two frames)
// for the slow class and for each of the bulk and served leaves.
func TestSlowExcess(t *testing.T) {
	for _, tt := range []struct {
		slow string
		want uint64
	}{
		{"1mbit", 65536 + 3*3028},
		{"8mbit", 65536 + 3*10000},
		{"100mbit", 65536 + 3*125000},
	} {
		spec, err := Plan(Config{Interface: "eth0", FastRate: rate(t, "1tbit"), SlowRate: rate(t, tt.slow)})
		if err != nil {
			t.Fatal(err)
		}
		if got := spec.SlowExcess(); got != tt.want {
			t.Errorf("SlowExcess at %s = %d, want %d", tt.slow, got, tt.want)
		}
	}
}
