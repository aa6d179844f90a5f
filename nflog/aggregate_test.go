package nflog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

func newClock() *clock { return &clock{t: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)} }

func denial(dst string, port uint16) Denial {
	a := netip.MustParseAddr(dst)
	fam := "ipv4"
	if a.Is6() {
		fam = "ipv6"
	}
	return Denial{Family: fam, Proto: "tcp", ProtoNum: 6, Src: netip.MustParseAddr("198.18.60.1"),
		Dst: a, DstPort: port, HasPort: true, Prefix: "hubwarden-deny"}
}

// lines logs w and returns the decoded JSON lines.
func lines(t *testing.T, w Window) []map[string]any {
	t.Helper()
	var buf bytes.Buffer
	log := zerolog.New(&buf).With().Str("user", "alice").Str("server", "").Logger()
	n := w.Log(&log)
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		out = append(out, m)
	}
	if n != len(out) {
		t.Fatalf("Log returned %d, wrote %d lines", n, len(out))
	}
	return out
}

func TestAggregatorOneDenial(t *testing.T) {
	clk := newClock()
	a := NewAggregator(0, clk.now)
	d := denial("198.18.60.2", 443)
	d.Time = clk.now()
	for range 3 { // SYN retransmits of one connect()
		a.Add(d)
	}
	clk.add(10 * time.Second)
	got := lines(t, a.Flush())
	want := []map[string]any{{
		"level": "warn", "event": "egress_denied", "user": "alice", "server": "",
		"family": "ipv4", "proto": "tcp", "dst": "198.18.60.2", "port": float64(443),
		"packets": float64(3), "src": "198.18.60.1", "rule": "hubwarden-deny",
		"window": float64(10000), "message": "egress denied",
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
	if got := lines(t, a.Flush()); len(got) != 0 {
		t.Errorf("second flush wrote %v, want nothing", got)
	}
}

func TestAggregatorPortScan(t *testing.T) {
	clk := newClock()
	a := NewAggregator(0, clk.now)
	for p := range uint16(1000) {
		a.Add(denial("198.18.60.2", 1+p))
		a.Add(denial("2001:2:0:3c::2", 1+p))
	}
	u := denial("198.18.60.2", 53)
	u.Proto = "udp"
	a.Add(u)
	got := lines(t, a.Flush())
	if len(got) != 3 {
		t.Fatalf("a 1000-port scan on two addresses + one udp gave %d lines, want 3: %v", len(got), got)
	}
	if got[0]["ports"] != float64(1000) || got[0]["packets"] != float64(1000) {
		t.Errorf("scan line: %v", got[0])
	}
	if diff := cmp.Diff([]any{1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}, got[0]["port_sample"]); diff != "" {
		t.Errorf("port sample (-want +got):\n%s", diff)
	}
	if got[2]["proto"] != "udp" || got[2]["port"] != float64(53) {
		t.Errorf("udp line: %v", got[2])
	}
}

func TestAggregatorAllPortsAndICMP(t *testing.T) {
	a := NewAggregator(0, newClock().now)
	for p := range 65536 {
		a.Add(denial("198.18.60.2", uint16(p)))
		a.Add(denial("198.18.60.2", uint16(p))) // duplicates don't count twice
	}
	g := a.dsts[dstKey{"ipv4", "tcp", netip.MustParseAddr("198.18.60.2")}]
	if g.nports != 65536 || g.portCount() != 65536 {
		t.Fatalf("nports %d, bitmap %d, want 65536", g.nports, g.portCount())
	}
	icmp := Denial{Family: "ipv4", Proto: "icmp", Dst: netip.MustParseAddr("198.18.60.3"), DstPort: 8, HasPort: true}
	a.Add(icmp)
	noPort := denial("198.18.60.4", 0)
	noPort.HasPort = false
	a.Add(noPort)
	got := lines(t, a.Flush())
	if got[1]["icmp_type"] != float64(8) {
		t.Errorf("icmp line: %v", got[1])
	}
	if _, ok := got[2]["port"]; ok {
		t.Errorf("portless line has a port: %v", got[2])
	}
}

func TestAggregatorKeyCap(t *testing.T) {
	a := NewAggregator(4, newClock().now)
	for i := range 100 {
		a.Add(denial(netip.AddrFrom4([4]byte{198, 18, 61, byte(i)}).String(), 80))
	}
	if len(a.dsts) != 4 || a.Pending() != 100 {
		t.Fatalf("keys %d pending %d, want 4 and 100", len(a.dsts), a.Pending())
	}
	got := lines(t, a.Flush())
	if len(got) != 5 || got[4]["dst"] != "others" || got[4]["packets"] != float64(96) {
		t.Fatalf("lines %v", got)
	}
}

func BenchmarkAggregatorAdd(b *testing.B) {
	a := NewAggregator(0, time.Now)
	d := denial("198.18.60.2", 1)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		d.DstPort = uint16(i)
		a.Add(d)
	}
}

// fakeSource yields prepared batches, then blocks until closed.
type fakeSource struct {
	batches chan []Packet
	errs    chan error
	closed  chan struct{}
	once    sync.Once
}

func newFakeSource() *fakeSource {
	return &fakeSource{batches: make(chan []Packet, 16), errs: make(chan error, 4), closed: make(chan struct{})}
}

func (f *fakeSource) Receive() ([]Packet, error) {
	select {
	case b := <-f.batches:
		return b, nil
	case err := <-f.errs:
		return nil, err
	case <-f.closed:
		return nil, errors.New("closed")
	}
}

func (f *fakeSource) Close() error { f.once.Do(func() { close(f.closed) }); return nil }

type countRecorder struct {
	mu      sync.Mutex
	denials map[string]int
	dropped int
}

func (c *countRecorder) AddDenials(family, proto string, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.denials[family+"/"+proto] += n
}

func (c *countRecorder) AddDenialsDropped(n int) { c.mu.Lock(); c.dropped += n; c.mu.Unlock() }

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestRun(t *testing.T) {
	src := newFakeSource()
	pkt := func(dst string, port uint16) Packet {
		p, err := ParseMessage(message(afINET, 1, "deny", ipv4(6, "198.18.60.1", dst, ports(1, port)), time.Time{}, nil))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for p := range uint16(15) { // leave room for the undecodable one
		src.batches <- []Packet{pkt("198.18.60.2", 1+p)}
	}
	src.errs <- ErrOverrun
	src.batches <- []Packet{{Payload: []byte{0x99}}} // undecodable
	var buf syncBuf
	log := zerolog.New(&buf)
	cnt := &countRecorder{denials: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- Run(ctx, src, RunConfig{Window: time.Hour, Log: &log, Counter: cnt})
	}()
	// Wait until everything was read (the source is drained), then stop: the
	// final flush writes one line.
	for len(src.batches) > 0 || len(src.errs) > 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	out := strings.TrimSpace(buf.String())
	if strings.Count(out, "\n") != 0 || !strings.Contains(out, `"ports":15`) {
		t.Fatalf("want one line with 15 ports, got:\n%s", out)
	}
	if cnt.denials["ipv4/tcp"] != 15 || cnt.dropped != 2 {
		t.Errorf("counts %v dropped %d, want ipv4/tcp 15, dropped 2", cnt.denials, cnt.dropped)
	}
}

func TestRunReadError(t *testing.T) {
	src := newFakeSource()
	src.errs <- errors.New("socket gone")
	err := Run(context.Background(), src, RunConfig{Window: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "socket gone") {
		t.Fatalf("Run = %v, want the read error", err)
	}
}
