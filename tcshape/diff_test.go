package tcshape

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"
)

// fakeKernel keeps one interface's tree in memory, as the kernel reports it.
type fakeKernel struct{ s State }

var _ Kernel = (*fakeKernel)(nil)

func (k *fakeKernel) Read(string) (State, error) { return k.s, nil }

func (k *fakeKernel) Do(_ string, op Op) error {
	switch op.Kind {
	case OpDeleteRoot:
		k.s = State{RootKind: "noqueue"}
	case OpAddRoot:
		if !k.s.Default() {
			return errors.New("EEXIST")
		}
		k.s = State{RootKind: "htb", RootHandle: op.Root.Handle, Root: op.Root}
	case OpAddClass, OpChangeClass:
		c := kernelClass(op.Class, false)
		for i, have := range k.s.Classes {
			if have.ID == c.ID {
				if op.Kind == OpAddClass {
					return errors.New("EEXIST")
				}
				if have.Quantum != 0 && (c.ID == ParentClass || c.ID == SlowClass) { // inner: HTB keeps quantum and prio
					c.Quantum, c.Prio = have.Quantum, have.Prio
				}
				k.s.Classes[i] = c
				return nil
			}
		}
		k.s.Classes = append(k.s.Classes, c)
	case OpAddLeaf, OpChangeLeaf:
		for i, l := range k.s.Leaves {
			if l.Parent == op.Leaf.Parent {
				k.s.Leaves[i] = op.Leaf
				return nil
			}
		}
		k.s.Leaves = append(k.s.Leaves, op.Leaf)
	}
	return nil
}

func TestApplyFake(t *testing.T) {
	log := zerolog.New(zerolog.NewTestWriter(t))
	cfg := Config{Interface: "eth0", FastRate: rate(t, "10gbit"), SlowRate: rate(t, "1mbit")}
	want, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	k := &fakeKernel{s: State{RootKind: "noqueue"}}
	ops, err := Apply(context.Background(), k, want, log, false)
	if n := 1 + len(want.Classes) + len(want.Leaves); err != nil || len(ops) != n {
		t.Fatalf("first apply: %d ops, want %d, %v", len(ops), n, err)
	}
	if ops, err := Apply(context.Background(), k, want, log, false); err != nil || len(ops) != 0 {
		t.Fatalf("second apply: %v, %v; want no ops", ops, err)
	}

	// Stale: another fast rate (parent quantum changes, but HTB keeps an
	// inner class's quantum), the kernel's default pfifo under the bulk
	// leaf and no interactive or served leaf yet.
	cfg.FastRate = rate(t, "100mbit")
	want2, _ := Plan(cfg)
	k.s.Leaves = []Leaf{{Handle: NewHandle(0x8001, 0), Parent: BulkClass, Kind: "pfifo", Limit: 1000}, k.s.Leaves[0]}
	ops, err = Apply(context.Background(), k, want2, log, false)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []OpKind
	for _, o := range ops {
		kinds = append(kinds, o.Kind)
	}
	if d := cmp.Diff([]OpKind{OpChangeClass, OpChangeClass, OpChangeLeaf, OpAddLeaf, OpAddLeaf, OpAddLeaf}, kinds); d != "" {
		t.Errorf("converging ops (-want +got):\n%s", d)
	}
	if ops, err := Apply(context.Background(), k, want2, log, false); err != nil || len(ops) != 0 {
		t.Fatalf("apply after converging: %v, %v; want no ops", ops, err)
	}

	// A leaf of another kind with our handle forces a rebuild.
	k.s.Leaves[0].Kind = "pfifo"
	ops, _ = Apply(context.Background(), k, want2, log, true)
	if len(ops) == 0 || ops[0].Kind != OpDeleteRoot {
		t.Errorf("leaf kind change: %v, want a rebuild", ops)
	}

	// Dry run changes nothing; a foreign root is refused untouched.
	foreign := &fakeKernel{s: State{RootKind: "tbf", RootHandle: NewHandle(1, 0)}}
	if _, err := Apply(context.Background(), foreign, want, log, false); !errors.Is(err, ErrForeignRoot) {
		t.Fatalf("foreign root: %v", err)
	}
	if foreign.s.RootKind != "tbf" {
		t.Fatal("foreign root touched")
	}
}

func TestCheckText(t *testing.T) {
	want, _ := Plan(Config{Interface: "eth0", FastRate: rate(t, "1gbit"), SlowRate: rate(t, "1mbit")})
	got, err := CheckText(State{RootKind: "noqueue"}, want)
	if err != nil {
		t.Fatal(err)
	}
	const golden = `eth0: add qdisc htb 4857: root default 4857:10 r2q 10 direct_qlen 1000
eth0: add class htb 4857:1 parent 4857: rate 1gbit ceil 1gbit burst 250000b cburst 250000b buffer 31250 cbuffer 31250 quantum 200000 prio 0 # all
eth0: add class htb 4857:10 parent 4857:1 rate 999mbit ceil 1gbit burst 250000b cburst 250000b buffer 31282 cbuffer 31250 quantum 200000 prio 1 # fast
eth0: add class htb 4857:2 parent 4857:1 rate 1mbit ceil 1mbit burst 3028b cburst 3028b buffer 378500 cbuffer 378500 quantum 12500 prio 0 # slow
eth0: add class htb 4857:20 parent 4857:2 rate 250kbit ceil 1mbit burst 3028b cburst 3028b buffer 1514000 cbuffer 378500 quantum 3125 prio 1 # slow bulk
eth0: add class htb 4857:21 parent 4857:2 rate 500kbit ceil 1mbit burst 65536b cburst 65536b buffer 16384000 cbuffer 8192000 quantum 6250 prio 0 # slow interactive
eth0: add class htb 4857:22 parent 4857:2 rate 250kbit ceil 1mbit burst 3028b cburst 3028b buffer 1514000 cbuffer 378500 quantum 3125 prio 1 # slow served
eth0: add qdisc bfifo 4858: parent 4857:10 limit 2500000b
eth0: add qdisc bfifo 4859: parent 4857:20 limit 131072b
eth0: add qdisc bfifo 485a: parent 4857:21 limit 131072b
eth0: add qdisc bfifo 485b: parent 4857:22 limit 131072b
`
	if d := cmp.Diff(golden, got); d != "" {
		t.Errorf("check text (-want +got):\n%s", d)
	}
}

// TestApplyFakeDirect: a tree of the default before the direct queue (a
// fast class at 1tbit) is rebuilt into the direct queue's tree, which then
// converges with no ops; and back when a FAST_RATE is set again.
func TestApplyFakeDirect(t *testing.T) {
	log := zerolog.New(zerolog.NewTestWriter(t))
	capped := Config{Interface: "eth0", FastRate: rate(t, "1tbit"), SlowRate: rate(t, "1mbit")}
	direct := Config{Interface: "eth0", SlowRate: rate(t, "1mbit")}
	k := &fakeKernel{s: State{RootKind: "noqueue"}}
	for i, cfg := range []Config{capped, direct, direct, capped} {
		want, err := Plan(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ops, err := Apply(context.Background(), k, want, log, false)
		if err != nil {
			t.Fatal(err)
		}
		switch i {
		case 0:
			if len(ops) != 1+len(want.Classes)+len(want.Leaves) {
				t.Fatalf("first apply: %v", ops)
			}
		case 2:
			if len(ops) != 0 {
				t.Fatalf("direct again: %v, want no ops", ops)
			}
		default: // the shape changes: delete the root, add the whole tree
			if len(ops) != 2+len(want.Classes)+len(want.Leaves) || ops[0].Kind != OpDeleteRoot {
				t.Fatalf("apply %d: %v, want a rebuild", i, ops)
			}
		}
		if want.Root.Direct() != (cfg.FastRate == 0) || k.s.Root != want.Root {
			t.Fatalf("apply %d: root %+v, want %+v", i, k.s.Root, want.Root)
		}
	}
	// A direct queue of another length (an earlier build left it to the
	// interface's txqueuelen) is a different root: rebuilt.
	want, _ := Plan(direct)
	k.s.Root.DirectQlen = 2
	if ops, _ := Apply(context.Background(), k, want, log, true); len(ops) == 0 || ops[0].Kind != OpDeleteRoot {
		t.Errorf("direct_qlen 2: %v, want a rebuild", ops)
	}
}
