//go:build linux

package tcshape

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/internal/nstest"
	"github.com/hubwarden/hubwarden/units"
)

func mustRate(t testing.TB, s string) units.Rate {
	t.Helper()
	r, err := units.ParseRate(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// openPod opens a Kernel into the pod namespace and detects the environment.
func openPod(t *testing.T, p *nstest.Pair, cfg Config) (*TC, Config) {
	t.Helper()
	k, err := Open(p.Pod.FD())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	cfg, err = k.Detect(cfg, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	return k, cfg
}

func TestIntegrationApply(t *testing.T) {
	nstest.SkipUnlessRoot(t, "tc")
	p := nstest.NewPair(t, 30)
	p.Pod.MustRun("tc", "qdisc", "add", "dev", "eth0", "clsact") // someone else's: must survive
	log := zerolog.New(zerolog.NewTestWriter(t))
	// A 1 tbit cap (FAST_RATE's default before the direct queue): rates of
	// 2^32 B/s and more travel in the 64-bit attributes, and must read back
	// as planned.
	k, cfg := openPod(t, p, Config{FastRate: mustRate(t, "1tbit"), SlowRate: mustRate(t, "8mbit")})
	if cfg.Interface != "eth0" {
		t.Fatalf("default route interface = %q, want eth0", cfg.Interface)
	}
	spec, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := Apply(context.Background(), k, spec, log, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := 1 + len(spec.Classes) + len(spec.Leaves); len(ops) != want {
		t.Errorf("first apply ran %d ops, want %d (the root, every class, every leaf): %v", len(ops), want, ops)
	}
	if diff, err := Check(k, spec); err != nil || diff != "" {
		t.Fatalf("check after apply: %v\n%s", err, diff)
	}
	ops, err = Apply(context.Background(), k, spec, log, false)
	if err != nil || len(ops) != 0 {
		t.Fatalf("second apply: ops %v, err %v; want none", ops, err)
	}
	// The sidecar's way: Open(0) from inside the namespace sees the same tree.
	if err := p.Pod.Do(func() error {
		k0, err := Open(0)
		if err != nil {
			return err
		}
		defer k0.Close()
		diff, err := Check(k0, spec)
		if err == nil && diff != "" {
			err = fmt.Errorf("Open(0) inside the pod netns sees a different tree:\n%s", diff)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Log(p.Pod.MustRun("tc", "-d", "class", "show", "dev", "eth0"))
	t.Log(p.Pod.MustRun("tc", "qdisc", "show", "dev", "eth0"))

	// A new slow rate changes classes (the fast one's guaranteed rate, the
	// slow class and its leaves) and the slow leaves' limits in place.
	cfg.SlowRate = mustRate(t, "40mbit")
	spec2, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ops, err = Apply(context.Background(), k, spec2, log, false)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []OpKind
	for _, o := range ops {
		kinds = append(kinds, o.Kind)
	}
	if d := cmp.Diff([]OpKind{OpChangeClass, OpChangeClass, OpChangeClass, OpChangeClass, OpChangeClass, OpChangeLeaf, OpChangeLeaf, OpChangeLeaf}, kinds); d != "" {
		t.Errorf("re-apply with a new slow rate (-want +got):\n%s", d)
	}
	if diff, err := Check(k, spec2); err != nil || diff != "" {
		t.Fatalf("check after change: %v\n%s", err, diff)
	}
	// A new fast rate changes the inner parent class too (here from 64-bit
	// to 32-bit rates); HTB keeps an inner class's quantum, and the check
	// must still come out clean.
	cfg.FastRate = mustRate(t, "5gbit")
	spec2, err = Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ops, err = Apply(context.Background(), k, spec2, log, false); err != nil || len(ops) != 3 {
		t.Fatalf("re-apply with a new fast rate: ops %v, err %v; want 3 changes", ops, err)
	}
	if diff, err := Check(k, spec2); err != nil || diff != "" {
		t.Fatalf("check after a fast rate change: %v\n%s", err, diff)
	}
	// A changed root (another default class) is rebuilt: delete, then add.
	spec3 := spec2
	spec3.Root.R2Q = 20
	ops, err = Apply(context.Background(), k, spec3, log, false)
	if err != nil || len(ops) == 0 || ops[0].Kind != OpDeleteRoot {
		t.Fatalf("rebuild: ops %v, err %v", ops, err)
	}
	if out := p.Pod.MustRun("tc", "qdisc", "show", "dev", "eth0"); !strings.Contains(out, "clsact") {
		t.Errorf("the foreign clsact qdisc is gone:\n%s", out)
	}

	// No FAST_RATE (the default): the root has no default class and a set
	// direct queue length, reads back as planned (defcls 0 is "no default
	// class", not class 4857:0), and converges; from the capped tree it is
	// a rebuild, and so is the way back.
	cfg.FastRate = 0
	direct, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ops, err = Apply(context.Background(), k, direct, log, false); err != nil || len(ops) == 0 || ops[0].Kind != OpDeleteRoot {
		t.Fatalf("capped to direct: ops %v, err %v; want a rebuild", ops, err)
	}
	if diff, err := Check(k, direct); err != nil || diff != "" {
		t.Fatalf("check of the direct tree: %v\n%s", err, diff)
	}
	if ops, err = Apply(context.Background(), k, direct, log, false); err != nil || len(ops) != 0 {
		t.Fatalf("direct again: ops %v, err %v; want none", ops, err)
	}
	if out := p.Pod.MustRun("tc", "qdisc", "show", "dev", "eth0"); !strings.Contains(out, "default 0 ") || !strings.Contains(out, "direct_qlen 1000") {
		t.Errorf("direct tree as tc shows it:\n%s", out)
	}
	if ops, err = Apply(context.Background(), k, spec2, log, false); err != nil || len(ops) == 0 || ops[0].Kind != OpDeleteRoot {
		t.Fatalf("direct to capped: ops %v, err %v; want a rebuild", ops, err)
	}

	// Someone else's root is refused, by name.
	p.Peer.MustRun("tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "tbf", "rate", "1mbit", "burst", "10k", "latency", "50ms")
	kp, err := Open(p.Peer.FD())
	if err != nil {
		t.Fatal(err)
	}
	defer kp.Close()
	_, err = Apply(context.Background(), kp, spec, log, false)
	if !errors.Is(err, ErrForeignRoot) || !strings.Contains(err.Error(), "eth0") || !strings.Contains(err.Error(), "tbf") {
		t.Fatalf("apply over a foreign tbf root: %v, want ErrForeignRoot naming eth0 and tbf", err)
	}
}
