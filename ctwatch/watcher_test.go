package ctwatch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/conntrack"
	"github.com/hubwarden/hubwarden/units"
)

// fakeTable is an in-memory conntrack table.
type fakeTable struct {
	flows map[conntrack.Tuple]*conntrack.Flow
	ops   []string
}

var _ Table = (*fakeTable)(nil)

func newFakeTable(flows ...conntrack.Flow) *fakeTable {
	t := &fakeTable{flows: map[conntrack.Tuple]*conntrack.Flow{}}
	for i := range flows {
		t.flows[flows[i].Orig] = &flows[i]
	}
	return t
}

func (t *fakeTable) DumpInto(_ context.Context, buf []conntrack.Flow) ([]conntrack.Flow, error) {
	for _, f := range t.flows {
		buf = append(buf, *f)
	}
	return buf, nil
}

func (t *fakeTable) Get(_ context.Context, orig conntrack.Tuple) (conntrack.Flow, error) {
	f, ok := t.flows[orig]
	if !ok {
		return conntrack.Flow{}, conntrack.ErrNotFound
	}
	return *f, nil
}

func (t *fakeTable) SetMark(_ context.Context, orig conntrack.Tuple, mark, mask uint32) error {
	f, ok := t.flows[orig]
	if !ok {
		return conntrack.ErrNotFound
	}
	f.Mark = f.Mark&^mask | mark&mask
	t.ops = append(t.ops, fmt.Sprintf("setmark %d %#x/%#x", orig.SrcPort, mark, mask))
	return nil
}

// inFlow is a proxy→pod:8888 flow; the pod sends in the reply direction.
func inFlow(id uint32, sport uint16, sent uint64, mark uint32) conntrack.Flow {
	o := conntrack.Tuple{Proto: 6, Src: peerIP, Dst: podIP, SrcPort: sport, DstPort: 8888}
	return conntrack.Flow{
		ID: id, Orig: o, Reply: conntrack.Tuple{Proto: 6, Src: podIP, Dst: peerIP, SrcPort: 8888, DstPort: sport},
		OrigCounter:  conntrack.Counter{Packets: 10, Bytes: 1000},
		ReplyCounter: conntrack.Counter{Packets: sent / 1000, Bytes: sent},
		Mark:         mark,
	}
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time      { return c.t }
func (c *fakeClock) Add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock               { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }
func auditLines(b *bytes.Buffer) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m[FieldAudit] != nil {
			out = append(out, m)
		}
	}
	return out
}

func newTestWatcher(t *testing.T, cfg Config, tab Table, clk *fakeClock) (*Watcher, *bytes.Buffer) {
	var buf bytes.Buffer
	w := New(cfg, tab, zerolog.New(&buf), Options{Now: clk.Now})
	return w, &buf
}

func TestWatcherAdoptsFlowsOnStart(t *testing.T) {
	clk := newClock()
	tab := newFakeTable(
		inFlow(1, 1001, 500<<20, 0x100000), // demoted by an earlier run
		inFlow(2, 1002, 900<<20, 0),        // big, but its history predates us
		inFlow(3, 1003, 10, 0x1),           // a foreign mark bit only
	)
	cfg := testConfig()
	w, logs := newTestWatcher(t, cfg, tab, clk)
	if err := w.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(tab.ops) != 0 {
		t.Errorf("marks changed on adoption: %v", tab.ops)
	}
	st := w.Stats()
	got := [4]int{st.Flows, st.Demoted, int(st.Adoptions), int(st.PodTokens)}
	want := [4]int{3, 1, 1, int(cfg.PodBudget)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("flows, demoted, adoptions, pod tokens (-want +got):\n%s", diff)
	}
	lines := auditLines(logs)
	if len(lines) != 1 || lines[0][FieldAudit] != "adopt" || lines[0][FieldPeerPort] != float64(1001) || lines[0][FieldReason] != "kernel" {
		t.Errorf("want one adopt line for port 1001, got %v", lines)
	}
	// The adopted flow stays demoted while it keeps sending, and is
	// promoted once idle; the foreign mark bit is left alone.
	tab.flows[inFlow(1, 1001, 0, 0).Orig].ReplyCounter.Bytes += 1 << 20
	clk.Add(time.Second)
	_ = w.Step(context.Background())
	if len(tab.ops) != 0 {
		t.Errorf("marks changed while the adopted flow sends: %v", tab.ops)
	}
	for range 20 {
		clk.Add(250 * time.Millisecond)
		_ = w.Step(context.Background())
	}
	if diff := cmp.Diff([]string{"setmark 1001 0x0/0x100000"}, tab.ops); diff != "" {
		t.Errorf("mark ops (-want +got):\n%s", diff)
	}
	if m := tab.flows[inFlow(3, 1003, 0, 0).Orig].Mark; m != 0x1 {
		t.Errorf("foreign mark bit changed: %#x", m)
	}
}

func TestWatcherPodLevelSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	cfg := testConfig()
	cfg.StateDir = dir
	tab := newFakeTable()
	w, _ := newTestWatcher(t, cfg, tab, clk)
	_ = w.Step(context.Background())
	// A new flow sends 100 MiB (under the pod budget, over nothing else).
	f := inFlow(7, 2000, 0, 0)
	tab.flows[f.Orig] = &f
	clk.Add(time.Second)
	f.ReplyCounter.Bytes = 40 << 20
	_ = w.Step(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Run(ctx, nil, nil); err == nil {
		t.Fatal("Run with a cancelled context returned nil")
	}
	saved, err := LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	wantSaved := float64(cfg.PodBudget - 40<<20)
	if d := saved.PodTokens - wantSaved; d < -1 || d > 1 {
		t.Errorf("saved pod tokens %.0f, want %.0f", saved.PodTokens, wantSaved)
	}
	// Ten seconds later a new watcher starts from the saved level, refilled.
	clk.Add(10 * time.Second)
	w2, _ := newTestWatcher(t, cfg, tab, clk)
	want := wantSaved + 10*float64(cfg.PodRefill)
	if got := w2.Stats().PodTokens; got < want-1 || got > want+1 {
		t.Errorf("restarted pod tokens %.0f, want %.0f", got, want)
	}
	// A corrupt file starts the bucket empty.
	if err := os.WriteFile(filepath.Join(dir, StateFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	w3, logs := newTestWatcher(t, cfg, tab, clk)
	if got := w3.Stats().PodTokens; got != 0 {
		t.Errorf("pod tokens after a corrupt state file %.0f, want 0", got)
	}
	if !strings.Contains(logs.String(), "unreadable") {
		t.Errorf("no warning about the corrupt state file: %s", logs)
	}
}

func TestWatcherFinalRecords(t *testing.T) {
	clk := newClock()
	cfg := testConfig()
	cfg.User, cfg.Server = "jovyan", "gpu"
	tab := newFakeTable()
	w, logs := newTestWatcher(t, cfg, tab, clk)
	_ = w.Step(context.Background())
	a, b := inFlow(11, 3001, 0, 0), inFlow(12, 3002, 0, 0)
	tab.flows[a.Orig], tab.flows[b.Orig] = &a, &b
	w.HandleEvent(context.Background(), conntrack.Event{Type: conntrack.EventNew, Flow: a})
	clk.Add(time.Second)
	a.ReplyCounter = conntrack.Counter{Packets: 700, Bytes: 700_000}
	b.ReplyCounter = conntrack.Counter{Packets: 300, Bytes: 300_000}
	_ = w.Step(context.Background())
	// a ends with a DESTROY event carrying its final counters; b vanishes
	// and its DESTROY is lost: the next dump finishes it from the last seen
	// counters.
	clk.Add(500 * time.Millisecond)
	fin := a
	fin.ReplyCounter = conntrack.Counter{Packets: 800, Bytes: 800_000}
	delete(tab.flows, a.Orig)
	delete(tab.flows, b.Orig)
	w.HandleEvent(context.Background(), conntrack.Event{Type: conntrack.EventDestroy, Flow: fin})
	clk.Add(time.Second)
	_ = w.Step(context.Background())
	var got []map[string]any
	for _, l := range auditLines(logs) {
		if l[FieldAudit] == "flow_end" {
			delete(l, "time")
			delete(l, FieldStart)
			delete(l, FieldPodTok)
			delete(l, FieldFlowTok)
			got = append(got, l)
		}
	}
	common := map[string]any{
		"level": "info", "component": "ctwatch", "message": "flow end", FieldAudit: "flow_end",
		FieldUser: "jovyan", FieldServer: "gpu", FieldProto: "tcp", FieldDirection: "in",
		FieldLocalAddr: "198.18.50.1", FieldLocalPort: float64(8888), FieldPeerAddr: "198.18.50.2",
		FieldRecvBytes: float64(1000), FieldRecvPkts: float64(10), FieldSlowBytes: float64(0),
		FieldDemoted: false, FieldDemotedAt: float64(0), FieldDemotions: float64(0), FieldPromos: float64(0),
		FieldAdopted: false, FieldWatched: false,
	}
	with := func(m map[string]any) map[string]any {
		out := map[string]any{}
		for k, v := range common {
			out[k] = v
		}
		for k, v := range m {
			out[k] = v
		}
		return out
	}
	want := []map[string]any{
		with(map[string]any{FieldFlowID: float64(11), FieldPeerPort: float64(3001), FieldSentBytes: float64(800_000),
			FieldSentPkts: float64(800), FieldFastBytes: float64(800_000), FieldDuration: 1.5, FieldFinal: true}),
		with(map[string]any{FieldFlowID: float64(12), FieldPeerPort: float64(3002), FieldSentBytes: float64(300_000),
			FieldSentPkts: float64(300), FieldFastBytes: float64(300_000), FieldDuration: 0.0, FieldFinal: false}),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("flow_end lines (-want +got):\n%s", diff)
	}
}

func TestWatcherDemotesAndReappliesLostMark(t *testing.T) {
	clk := newClock()
	cfg := testConfig()
	cfg.FlowBudget = 32 * units.MiB
	tab := newFakeTable()
	w, logs := newTestWatcher(t, cfg, tab, clk)
	_ = w.Step(context.Background())
	f := inFlow(21, 4001, 0, 0)
	tab.flows[f.Orig] = &f
	w.HandleEvent(context.Background(), conntrack.Event{Type: conntrack.EventNew, Flow: f})
	// 100 MB/s: the watcher reads the flow more and more often as its
	// bucket runs down, and demotes it just before it is empty.
	for range 1000 {
		next := w.policy.Next()
		f.ReplyCounter.Bytes += uint64(next.Sub(clk.t).Seconds() * 100e6)
		clk.t = next
		_ = w.Step(context.Background())
		if f.Mark != 0 {
			break
		}
	}
	if f.Mark != cfg.CTMark {
		t.Fatalf("mark %#x after the budget, want %#x", f.Mark, cfg.CTMark)
	}
	var demote map[string]any
	for _, l := range auditLines(logs) {
		if l[FieldAudit] == "demote" {
			demote = l
		}
	}
	over := demote[FieldOvershoot].(float64)
	if demote[FieldReason] != "flow_budget" || over > 0.05*float64(cfg.FlowBudget) || over < -0.05*float64(cfg.FlowBudget) {
		t.Errorf("demote line %v", demote)
	}
	t.Logf("demoted at %.0f bytes, overshoot %.0f bytes (%.2f%%)", demote[FieldDemotedAt], over, 100*over/float64(cfg.FlowBudget))
	// Someone clears the mark (a lost update): the next dump sets it again.
	f.Mark = 0
	clk.Add(cfg.DumpInterval)
	f.ReplyCounter.Bytes += 100_000
	_ = w.Step(context.Background())
	if f.Mark != cfg.CTMark || w.Stats().Reapplied != 1 {
		t.Errorf("mark %#x, reapplied %d after the mark was lost", f.Mark, w.Stats().Reapplied)
	}
}

func TestPolicyDirection(t *testing.T) {
	pod6 := netip.MustParseAddr("2001:2:0:32::1")
	peer6 := netip.MustParseAddr("2001:2:0:32::2")
	lo := netip.MustParseAddr("127.0.0.1")
	cfg := testConfig()
	cfg.LocalAddrs = []netip.Addr{podIP, pod6}
	for _, tc := range []struct {
		name     string
		orig     conntrack.Tuple
		tracked  bool
		inbound  bool
		sentOrig bool
	}{
		{"proxy to the server", conntrack.Tuple{Proto: 6, Src: peerIP, Dst: podIP, SrcPort: 5000, DstPort: 8888}, true, true, false},
		{"pod to the internet", conntrack.Tuple{Proto: 6, Src: podIP, Dst: peerIP, SrcPort: 5000, DstPort: 443}, true, false, true},
		{"pod to the internet over IPv6", conntrack.Tuple{Proto: 17, Src: pod6, Dst: peer6, SrcPort: 5000, DstPort: 53}, true, false, true},
		{"peer to the pod over IPv6", conntrack.Tuple{Proto: 6, Src: peer6, Dst: pod6, SrcPort: 5000, DstPort: 8888}, true, true, false},
		{"kernel to server on loopback", conntrack.Tuple{Proto: 6, Src: lo, Dst: lo, SrcPort: 5000, DstPort: 8888}, false, false, false},
		{"pod to itself", conntrack.Tuple{Proto: 6, Src: podIP, Dst: podIP, SrcPort: 5000, DstPort: 8888}, false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			p := NewPolicy(cfg, now, float64(cfg.PodBudget))
			p.Dump(now, nil)
			o := tc.orig
			c := conntrack.Flow{ID: 1, Orig: o, Reply: conntrack.Tuple{Proto: o.Proto, Src: o.Dst, Dst: o.Src, SrcPort: o.DstPort, DstPort: o.SrcPort},
				OrigCounter: conntrack.Counter{Packets: 1, Bytes: 111}, ReplyCounter: conntrack.Counter{Packets: 2, Bytes: 222}}
			acts := p.Destroyed(now.Add(time.Second), c)
			if !tc.tracked {
				if len(acts) != 0 {
					t.Fatalf("a local flow was tracked: %+v", acts)
				}
				return
			}
			r := acts[0].Record
			wantSent := uint64(222)
			if tc.sentOrig {
				wantSent = 111
			}
			if r.Inbound != tc.inbound || r.Sent.Bytes != wantSent || r.FastBytes != wantSent {
				t.Errorf("inbound %v sent %d fast %d, want %v %d", r.Inbound, r.Sent.Bytes, r.FastBytes, tc.inbound, wantSent)
			}
			if tc.inbound && (r.Local.Port() != 8888 || r.Peer.Port() != 5000) || !tc.inbound && (r.Local.Port() != 5000 || r.Peer.Addr() != o.Dst) {
				t.Errorf("local %v peer %v", r.Local, r.Peer)
			}
		})
	}
}
