//go:build linux

package netns

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseTCRate(t *testing.T) {
	tests := map[string]float64{"1Mbit": 1e6, "10Gbit": 1e10, "1Tbit": 1e12, "800Kbit": 8e5, "96bit": 96}
	for in, want := range tests {
		if got := parseTCRate(in); got != want {
			t.Errorf("parseTCRate(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestSentRE(t *testing.T) {
	out := `class htb 1:1 root rate 10Gbit ceil 10Gbit burst 1Mb cburst 1Mb
 Sent 123 bytes 4 pkt (dropped 0, overlimits 0 requeues 0)
class htb 1:10 parent 1:1 prio 0 rate 10Gbit ceil 10Gbit burst 1Mb cburst 1Mb
 Sent 100 bytes 2 pkt (dropped 0, overlimits 0 requeues 0)
class htb 1:20 parent 1:1 leaf 20: prio 1 rate 1Mbit ceil 1Mbit burst 15Kb cburst 15Kb
 Sent 23 bytes 2 pkt (dropped 0, overlimits 0 requeues 0)
`
	var got []string
	for _, m := range sentRE.FindAllStringSubmatch(out, -1) {
		got = append(got, m[1]+" "+m[2]+" "+m[3]+" "+m[4]+" "+m[5])
	}
	want := []string{"1:1  10Gbit 10Gbit 123", "1:10 1:1 10Gbit 10Gbit 100", "1:20 1:1 1Mbit 1Mbit 23"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tc classes (-want +got):\n%s", diff)
	}
	if id, sent, ok := slowClass(out); id != "1:20" || sent != 23 || !ok {
		t.Errorf("one slow class: %s %d %v, want 1:20 23 true", id, sent, ok)
	}
}

// TestSlowClassLeaves: with the slow class split into a bulk and an
// interactive leaf (issue 20), the slow class is their parent, which HTB
// charges with both leaves' packets.
func TestSlowClassLeaves(t *testing.T) {
	out := `class htb 4857:1 root rate 1Tbit ceil 1Tbit burst 0b cburst 0b
 Sent 9000 bytes 40 pkt (dropped 0, overlimits 0 requeues 0)
class htb 4857:10 parent 4857:1 leaf 4858: prio 0 rate 1Tbit ceil 1Tbit burst 0b cburst 0b
 Sent 5000 bytes 20 pkt (dropped 0, overlimits 0 requeues 0)
class htb 4857:2 parent 4857:1 rate 1Mbit ceil 1Mbit burst 15Kb cburst 15Kb
 Sent 4000 bytes 20 pkt (dropped 0, overlimits 0 requeues 0)
class htb 4857:20 parent 4857:2 leaf 4859: prio 1 rate 250Kbit ceil 1Mbit burst 15Kb cburst 15Kb
 Sent 3000 bytes 12 pkt (dropped 0, overlimits 0 requeues 0)
class htb 4857:21 parent 4857:2 leaf 485a: prio 0 rate 750Kbit ceil 1Mbit burst 64Kb cburst 64Kb
 Sent 1000 bytes 8 pkt (dropped 0, overlimits 0 requeues 0)
`
	if id, sent, ok := slowClass(out); id != "4857:2" || sent != 4000 || !ok {
		t.Errorf("two slow leaves: %s %d %v, want 4857:2 4000 true", id, sent, ok)
	}
	// The default tree: no fast class, the slow class at the root.
	direct := `class htb 4857:2 root rate 1Mbit ceil 1Mbit burst 15Kb cburst 15Kb
 Sent 4000 bytes 20 pkt (dropped 0, overlimits 0 requeues 0)
class htb 4857:20 parent 4857:2 leaf 4859: prio 1 rate 250Kbit ceil 1Mbit burst 15Kb cburst 15Kb
 Sent 3000 bytes 12 pkt (dropped 0, overlimits 0 requeues 0)
class htb 4857:21 parent 4857:2 leaf 485a: prio 0 rate 500Kbit ceil 1Mbit burst 64Kb cburst 64Kb
 Sent 1000 bytes 8 pkt (dropped 0, overlimits 0 requeues 0)
class htb 4857:22 parent 4857:2 leaf 485b: prio 1 rate 250Kbit ceil 1Mbit burst 15Kb cburst 15Kb
 Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0)
`
	if id, sent, ok := slowClass(direct); id != "4857:2" || sent != 4000 || !ok {
		t.Errorf("the slow class at the root: %s %d %v, want 4857:2 4000 true", id, sent, ok)
	}
}

func TestTransferRates(t *testing.T) {
	tr := Transfer{Bytes: 1000, Elapsed: 2 * time.Second, Samples: []int64{100, 200, 300, 400, 500, 600, 700, 1000}}
	if got := tr.Rate(); got != 500 {
		t.Errorf("Rate = %v, want 500", got)
	}
	// last 1 s = 4 samples: 1000 - 400.
	if got := tr.TailRate(time.Second); got != 600 {
		t.Errorf("TailRate(1s) = %v, want 600", got)
	}
}

func TestDNSQuery(t *testing.T) {
	q := dnsQuery(0x1234, "web.e2e.test")
	want := append([]byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, "\x03web\x03e2e\x04test\x00\x00\x01\x00\x01"...)
	if diff := cmp.Diff(want, q); diff != "" {
		t.Errorf("query (-want +got):\n%s", diff)
	}
}

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	tests := []struct {
		xs   []time.Duration
		q    float64
		want time.Duration
	}{
		{ms(5), .95, 5 * time.Millisecond},
		{ms(3, 1, 2), .5, 2 * time.Millisecond},
		{ms(1, 2, 3, 4), .5, 2500 * time.Microsecond},
		// 12 samples: p95 sits at 10.45, between the 11th and 12th.
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 111), .95, 56 * time.Millisecond},
		{ms(1, 2, 3), 1, 3 * time.Millisecond},
		{ms(1, 2, 3), 0, time.Millisecond},
		{nil, .5, 0},
	}
	for _, tt := range tests {
		if got := percentile(tt.xs, tt.q); got != tt.want {
			t.Errorf("percentile(%v, %v) = %v, want %v", tt.xs, tt.q, got, tt.want)
		}
	}
}
