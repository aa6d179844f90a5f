package ctwatch

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/conntrack"
)

// BenchmarkPolicyDump measures one policy step over a full dump: every flow
// sent a little since the last one (none runs out), the steady state of a
// busy pod.
func BenchmarkPolicyDump(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			cfg := testConfig()
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			p := NewPolicy(cfg, now, float64(cfg.PodBudget))
			flows := make([]conntrack.Flow, n)
			for i := range flows {
				peer := netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
				o := conntrack.Tuple{Proto: 6, Src: peer, Dst: podIP, SrcPort: uint16(10000 + i), DstPort: 8888}
				flows[i] = conntrack.Flow{ID: uint32(i + 1), Orig: o,
					Reply: conntrack.Tuple{Proto: 6, Src: podIP, Dst: peer, SrcPort: 8888, DstPort: o.SrcPort}}
			}
			p.Dump(now, flows)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				now = now.Add(time.Second)
				for i := range flows {
					flows[i].ReplyCounter.Bytes += 1000
					flows[i].ReplyCounter.Packets++
				}
				p.Dump(now, flows)
			}
		})
	}
}
