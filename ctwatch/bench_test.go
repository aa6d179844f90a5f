package ctwatch

import (
	"fmt"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/conntrack"
)

// BenchmarkPolicyWalk is the watcher's own work per dump, without the
// kernel: one walk of the policy over n busy flows, each with new bytes
// since the last walk (8,192 is the most it tracks), and the reads and mark
// changes the walk asks for, done as the watcher does them (here in
// memory). The flows were marked for attention by the kernel and taken over
// before the timing starts. Idle flows are not in the walk at all: the
// dump's mark filter leaves them in the kernel.
func BenchmarkPolicyWalk(b *testing.B) {
	for _, n := range []int{10, 1000, 8192} {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			cfg := testConfig(b)
			p := NewPolicy(cfg)
			flows := make([]conntrack.Flow, n)
			index := map[Key]int{}
			for i := range flows {
				o := conntrack.Tuple{Proto: 6, Src: peerIP, Dst: podIP, SrcPort: uint16(10000 + i), DstPort: 8888}
				flows[i] = conntrack.Flow{ID: uint32(i + 1), Orig: o, Mark: cfg.Contract.Attention(),
					Reply: conntrack.Tuple{Proto: 6, Src: o.Dst, Dst: o.Src, SrcPort: o.DstPort, DstPort: o.SrcPort}}
				index[keyOf(&flows[i])] = i
			}
			var reads, marks int
			// do carries out the policy's actions as the watcher would:
			// a read zeroes the flow's counters and is fed back; a mark
			// change sets the flow's mark.
			var do func(now time.Time, acts []Action)
			do = func(now time.Time, acts []Action) {
				for _, a := range append([]Action(nil), acts...) {
					i, ok := index[a.Key]
					if !ok {
						continue
					}
					switch a.Kind {
					case Rearm:
						reads++
						c := flows[i]
						flows[i].OrigCounter, flows[i].ReplyCounter = conntrack.Counter{}, conntrack.Counter{}
						do(now, p.Zeroed(now, &c))
					case Arm, Demote, Park:
						marks++
						flows[i].Mark = flows[i].Mark&^a.Mask | a.Mark&a.Mask
					}
				}
			}
			// A walk feeds the dump, then does what it asked for (the
			// watcher reads flows once the dump is in).
			var asked []Action
			walk := func(now time.Time) {
				asked = asked[:0]
				p.BeginWalk(now, true)
				for i := range flows {
					flows[i].ReplyCounter.Bytes += 1000
					flows[i].ReplyCounter.Packets++
					asked = append(asked, p.Observe(now, &flows[i])...)
				}
				asked = append(asked, p.EndWalk(now)...)
				do(now, asked)
			}
			now := t0
			walk(now) // the take-over
			if st := p.Stats(); st.Flows != n {
				b.Fatalf("the policy tracks %d flows after the first walk, want %d (%d reads, %d mark changes)", st.Flows, n, reads, marks)
			}
			b.ReportAllocs()
			for b.Loop() {
				now = now.Add(time.Second)
				walk(now)
			}
			if st := p.Stats(); st.Flows != n || st.Demoted != 0 {
				b.Fatalf("the policy tracks %d flows (%d demoted), want %d (none demoted)", st.Flows, st.Demoted, n)
			}
		})
	}
}
