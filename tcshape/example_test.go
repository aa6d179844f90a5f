package tcshape_test

import (
	"context"
	"fmt"
	"os"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/units"
)

// The sidecar's wiring: detect the interface, MTU, clock and leaf kind in
// the calling thread's network namespace, plan, apply, and compare the
// kernel with the plan. It needs CAP_NET_ADMIN, so this example is compiled,
// not run.
func Example() {
	ctx := context.Background()
	log := zerolog.New(os.Stdout).With().Str("component", "tcshape").Logger()

	k, err := tcshape.Open(0) // 0: the caller's network namespace
	if err != nil {
		log.Error().Err(err).Msg("opening rtnetlink")
		return
	}
	defer k.Close()
	// HUBWARDEN_INTERFACE (empty: the default route's), HUBWARDEN_FAST_RATE
	// and HUBWARDEN_SLOW_RATE.
	cfg, err := k.Detect(tcshape.Config{FastRate: 10e9 / 8, SlowRate: 1e6 / 8}, log) // 10gbit, 1mbit in bytes/s
	if err != nil {
		log.Error().Err(err).Msg("detecting the shaping environment")
		return
	}
	spec, err := tcshape.Plan(cfg)
	if err != nil {
		log.Error().Err(err).Msg("planning")
		return
	}
	fmt.Print(spec) // what `hubwarden plan` prints
	// The qdiscs go in before the mangle rules that classify into the slow
	// class (demotion.MangleTables).
	if _, err := tcshape.Apply(ctx, k, spec, log, false); err != nil {
		log.Error().Err(err).Msg("applying")
		return
	}
	diff, err := tcshape.Check(k, spec) // what `hubwarden check` prints; empty when they agree
	if err != nil {
		log.Error().Err(err).Msg("checking")
		return
	}
	fmt.Print(diff)
}

// The tree for the defaults (no FAST_RATE, SLOW_RATE 1mbit), as
// docs/shaping.md shows it: what is not demoted takes the root's direct
// queue.
func ExamplePlan() {
	slow, _ := units.ParseRate("1mbit")
	spec, err := tcshape.Plan(tcshape.Config{Interface: "eth0", SlowRate: slow}) // no FAST_RATE: the direct queue
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(spec)
	// Output:
	// dev eth0
	// qdisc htb 4857: root default 0 r2q 10 direct_qlen 1000
	// class htb 4857:2 parent 4857: rate 1mbit ceil 1mbit burst 3028b cburst 3028b buffer 378500 cbuffer 378500 quantum 12500 prio 0 # slow
	// class htb 4857:20 parent 4857:2 rate 250kbit ceil 1mbit burst 3028b cburst 3028b buffer 1514000 cbuffer 378500 quantum 3125 prio 1 # slow bulk
	// class htb 4857:21 parent 4857:2 rate 500kbit ceil 1mbit burst 65536b cburst 65536b buffer 16384000 cbuffer 8192000 quantum 6250 prio 0 # slow interactive
	// class htb 4857:22 parent 4857:2 rate 250kbit ceil 1mbit burst 3028b cburst 3028b buffer 1514000 cbuffer 378500 quantum 3125 prio 1 # slow served
	// qdisc bfifo 4859: parent 4857:20 limit 131072b
	// qdisc bfifo 485a: parent 4857:21 limit 131072b
	// qdisc bfifo 485b: parent 4857:22 limit 131072b
}

// fresh is an interface with only the root qdisc the kernel attached by
// itself; it records the ops it is given.
type fresh struct{ ops []tcshape.Op }

func (f *fresh) Read(string) (tcshape.State, error) { return tcshape.State{RootKind: "noqueue"}, nil }

func (f *fresh) Do(_ string, op tcshape.Op) error { f.ops = append(f.ops, op); return nil }

// Apply over a kernel default changes only what differs from the plan: here,
// everything. With dryRun it logs the ops and changes nothing.
func ExampleApply() {
	slow, _ := units.ParseRate("1mbit")
	spec, err := tcshape.Plan(tcshape.Config{Interface: "eth0", SlowRate: slow}) // no FAST_RATE: the direct queue
	if err != nil {
		fmt.Println(err)
		return
	}
	k := &fresh{}
	ops, err := tcshape.Apply(context.Background(), k, spec, zerolog.Nop(), false)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, op := range ops {
		fmt.Println(op)
	}
	fmt.Println(len(k.ops), "ops done")
	// Output:
	// add qdisc htb 4857: root default 0 r2q 10 direct_qlen 1000
	// add class htb 4857:2 parent 4857: rate 1mbit ceil 1mbit burst 3028b cburst 3028b buffer 378500 cbuffer 378500 quantum 12500 prio 0 # slow
	// add class htb 4857:20 parent 4857:2 rate 250kbit ceil 1mbit burst 3028b cburst 3028b buffer 1514000 cbuffer 378500 quantum 3125 prio 1 # slow bulk
	// add class htb 4857:21 parent 4857:2 rate 500kbit ceil 1mbit burst 65536b cburst 65536b buffer 16384000 cbuffer 8192000 quantum 6250 prio 0 # slow interactive
	// add class htb 4857:22 parent 4857:2 rate 250kbit ceil 1mbit burst 3028b cburst 3028b buffer 1514000 cbuffer 378500 quantum 3125 prio 1 # slow served
	// add qdisc bfifo 4859: parent 4857:20 limit 131072b
	// add qdisc bfifo 485a: parent 4857:21 limit 131072b
	// add qdisc bfifo 485b: parent 4857:22 limit 131072b
	// 8 ops done
}
