package ctwatch

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/hubwarden/hubwarden/conntrack"
	"github.com/hubwarden/hubwarden/units"
)

// step is one input to the policy in TestPolicyEvents.
type step struct {
	at   time.Duration
	kind string // "dump", "new", "destroy", "gone"
	fl   []conntrack.Flow
}

// summary is what TestPolicyEvents compares: kind, peer port, reason,
// sent bytes, unfinished.
type summary struct {
	Kind       string
	Port       uint16
	Reason     string
	Sent       uint64
	Unfinished bool
}

func TestPolicyEvents(t *testing.T) {
	const mark = 0x100000
	big := uint64(64 << 20)
	const watched = 0x200000
	for _, tc := range []struct {
		name   string
		kernel bool    // the tripwire and the pod gate are on
		pod    float64 // pod tokens at the start
		steps  []step
		want   []summary
	}{
		{
			name: "a flow opening while the pod bucket is empty is demoted at once",
			pod:  -1000,
			steps: []step{
				{0, "dump", nil},
				{time.Millisecond, "new", []conntrack.Flow{inFlow(1, 1001, 0, 0)}},
			},
			want: []summary{{"demote", 1001, "pod_budget", 0, false}},
		},
		{
			name: "a new entry on the same tuple finishes the old flow first",
			pod:  1 << 30,
			steps: []step{
				{0, "dump", []conntrack.Flow{inFlow(1, 1001, 100, 0)}},
				{time.Second, "dump", []conntrack.Flow{inFlow(2, 1001, 50, 0)}},
			},
			want: []summary{{"flow_end", 1001, "", 100, true}},
		},
		{
			name: "a DESTROY for a new entry on a known tuple finishes both",
			pod:  1 << 30,
			steps: []step{
				{0, "dump", []conntrack.Flow{inFlow(1, 1001, 100, 0)}},
				{time.Second, "destroy", []conntrack.Flow{inFlow(2, 1001, 70, 0)}},
			},
			want: []summary{{"flow_end", 1001, "", 100, true}, {"flow_end", 1001, "", 70, false}},
		},
		{
			name: "a flow that vanished from the dump is finished with its last counters",
			pod:  1 << 30,
			steps: []step{
				{0, "dump", nil},
				{time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 5000, 0)}},
				{2 * time.Second, "dump", nil},
			},
			want: []summary{{"flow_end", 1001, "", 5000, true}},
		},
		{
			name: "a short flow known only from its DESTROY event is charged and recorded",
			pod:  1 << 30,
			steps: []step{
				{0, "dump", nil},
				{time.Second, "destroy", []conntrack.Flow{inFlow(1, 1001, 7000, 0)}},
			},
			want: []summary{{"flow_end", 1001, "", 7000, false}},
		},
		{
			name: "a flow marked by the kernel is adopted, not marked again",
			pod:  1 << 30,
			steps: []step{
				{0, "dump", nil},
				{time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 100, mark)}},
				{2 * time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 200, mark)}},
			},
			want: []summary{{"adopt", 1001, "kernel", 100, false}},
		},
		{
			name: "a flow over its budget in one dump interval is demoted",
			pod:  1 << 30,
			steps: []step{
				{0, "dump", []conntrack.Flow{inFlow(1, 1001, 0, 0)}},
				{time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, big+(2<<20), 0)}},
			},
			want: []summary{{"demote", 1001, "flow_budget", big + (2 << 20), false}},
		},
		{
			name: "a long flow gets a progress line per interval in which it sent",
			pod:  1 << 30,
			steps: []step{
				{0, "dump", nil},
				{time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 1000, 0)}},
				{30 * time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 2000, 0)}},
				{61 * time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 3000, 0)}},
				{125 * time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 3000, 0)}}, // idle: no line
				{190 * time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 4000, 0)}},
			},
			want: []summary{{"progress", 1001, "", 3000, false}, {"progress", 1001, "", 4000, false}},
		},
		{
			name: "counters that go backwards (zeroed) are charged from zero",
			pod:  1 << 30,
			steps: []step{
				{0, "dump", []conntrack.Flow{inFlow(1, 1001, 0, 0)}},
				{time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 60<<20, 0)}},
				{2 * time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 10<<20, 0)}},
			},
			want: []summary{{"demote", 1001, "flow_budget", 10 << 20, false}},
		},
		{
			name:   "tripwire: a young flow it demoted stays demoted, by the kernel, at the budget",
			kernel: true,
			pod:    1 << 30,
			steps: []step{
				{0, "dump", []conntrack.Flow{inFlow(1, 1001, 0, 0)}},
				{100 * time.Millisecond, "dump", []conntrack.Flow{inFlow(1, 1001, big+(1<<20), mark)}},
			},
			want: []summary{{"pod_gate", 0, "", 0, false}, {"demote", 1001, "flow_budget", big + (1 << 20), false}},
		},
		{
			name:   "tripwire: a flow whose bucket refilled past what the tripwire counts is watched",
			kernel: true,
			pod:    1 << 30,
			steps: []step{
				{0, "dump", []conntrack.Flow{inFlow(1, 1001, 0, 0)}},
				{30 * time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 30<<20, 0)}},
				// 30 MiB more in 30 s: 34 MiB in its bucket, 4 MiB to the tripwire.
				{60 * time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 60<<20, 0)}},
			},
			want: []summary{{"pod_gate", 0, "", 0, false}, {"watch", 1001, "", 60 << 20, false}, {"progress", 1001, "", 60 << 20, false}},
		},
		{
			name:   "tripwire: a flow it demoted with its bucket far from empty is given the budget back and watched",
			kernel: true,
			pod:    1 << 30,
			steps: []step{
				{0, "dump", nil},
				{time.Millisecond, "dump", []conntrack.Flow{inFlow(1, 1001, 0, 0)}},
				{30 * time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 30<<20, 0)}},
				{60 * time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, big+1000, mark)}},
				{61 * time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, big+2000, watched)}},
			},
			want: []summary{{"pod_gate", 0, "", 0, false}, {"demote", 1001, "flow_budget", big + 1000, false}, {"promote", 1001, "flow_budget", big + 1000, false}, {"progress", 1001, "flow_budget", big + 2000, false}},
		},
		{
			name:   "tripwire: a restarted watcher adopts a flow the tripwire demoted and never gives it the budget back",
			kernel: true,
			pod:    1 << 30,
			steps: []step{
				{0, "dump", []conntrack.Flow{inFlow(1, 1001, big+(8<<20), mark)}},
				{time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, big+(9<<20), mark)}},
			},
			want: []summary{{"adopt", 1001, "flow_budget", big + (8 << 20), false}, {"pod_gate", 0, "", 0, false}},
		},
		{
			name:   "tripwire: a restarted watcher adopts an undemoted flow with what the tripwire has left, not a new budget",
			kernel: true,
			pod:    1 << 30,
			steps: []step{
				{0, "dump", []conntrack.Flow{inFlow(1, 1001, 40<<20, 0)}},
				// 24 MiB more within a second: the bucket is spent
				// (the tripwire fired too, at its 64 MiB).
				{time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, big+(2<<20), mark)}},
				{2 * time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, big+(2<<20)+1000, mark)}},
			},
			want: []summary{{"pod_gate", 0, "", 0, false}, {"demote", 1001, "flow_budget", big + (2 << 20), false}},
		},
		{
			name:   "tripwire: a flow the watcher watches is the watcher's to demote",
			kernel: true,
			pod:    1 << 30,
			steps: []step{
				{0, "dump", []conntrack.Flow{inFlow(1, 1001, 0, watched)}},
				{time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, big+(2<<20), watched)}},
			},
			want: []summary{{"pod_gate", 0, "", 0, false}, {"demote", 1001, "flow_budget", big + (2 << 20), false}},
		},
		{
			name:   "gate: set when the pod bucket runs out, kernel demotions while set are pod_budget, cleared after the refill",
			kernel: true,
			pod:    float64(4 << 20),
			steps: []step{
				{0, "dump", []conntrack.Flow{inFlow(1, 1001, 0, 0)}},
				{100 * time.Millisecond, "dump", []conntrack.Flow{inFlow(1, 1001, 5<<20, 0)}},
				{200 * time.Millisecond, "new", []conntrack.Flow{inFlow(2, 1002, 1000, mark)}},
				// 256 KiB/s refill: the 1 MiB debt and the 256 KiB off level take 5 s.
				{6 * time.Second, "dump", []conntrack.Flow{inFlow(1, 1001, 5<<20, mark), inFlow(2, 1002, 1000, mark)}},
			},
			want: []summary{
				{"pod_gate", 0, "", 0, false}, {"demote", 1001, "pod_budget", 5 << 20, false}, {"pod_gate", 0, "", 0, false},
				{"demote", 1002, "pod_budget", 1000, false}, {"pod_gate", 0, "", 0, false},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			if tc.kernel {
				cfg.Tripwire, cfg.WatchedMark, cfg.Gate = true, watched, true
			}
			t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			p := NewPolicy(cfg, t0, tc.pod)
			var got []summary
			for _, s := range tc.steps {
				now := t0.Add(s.at)
				var acts []Action
				switch s.kind {
				case "dump":
					acts = p.Dump(now, s.fl)
				case "new":
					acts = p.Observe(now, s.fl[0])
				case "destroy":
					acts = p.Destroyed(now, s.fl[0])
				}
				for _, a := range acts {
					got = append(got, summary{a.Kind.String(), a.Record.Peer.Port(), a.Record.Reason.String(), a.Record.Sent.Bytes, a.Record.Unfinished})
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("actions (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPolicyBackgroundDumpKeepsNewerReads(t *testing.T) {
	cfg := testConfig()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := NewPolicy(cfg, t0, float64(cfg.PodBudget))
	p.Dump(t0, []conntrack.Flow{inFlow(1, 1001, 1000, 0)})
	// A dump starts at 1s; while it runs the flow is read on its own with
	// newer counters, and a new flow opens. The dump's result is older.
	p.DumpStarted(t0.Add(time.Second))
	p.Observe(t0.Add(1010*time.Millisecond), inFlow(1, 1001, 9000, 0))
	p.Observe(t0.Add(1020*time.Millisecond), inFlow(2, 1002, 0, 0))
	acts := p.Dump(t0.Add(1030*time.Millisecond), []conntrack.Flow{inFlow(1, 1001, 5000, 0)})
	if len(acts) != 0 {
		t.Errorf("actions %+v, want none (no finish of the new flow, no charge of old counters)", acts)
	}
	st := p.Stats()
	if st.Flows != 2 || st.FastBytes != 8000 {
		t.Errorf("flows %d, fast bytes %d; want 2 and 8000", st.Flows, st.FastBytes)
	}
	// The next dump (not in the background) sees the usual truth.
	acts = p.Dump(t0.Add(2*time.Second), []conntrack.Flow{inFlow(1, 1001, 9500, 0)})
	if len(acts) != 1 || acts[0].Kind != Finish || acts[0].Record.Peer.Port() != 1002 {
		t.Errorf("actions %+v, want the finish of flow 1002", acts)
	}
}

func TestPolicyTxInterval(t *testing.T) {
	cfg := testConfig()
	cfg.TxMaxInterval = 20 * time.Millisecond
	cfg.LineRate = units.Rate(1e9)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		kernel bool // the tripwire keeps fresh flows' budgets
		pod    float64
		sent   uint64 // on one fast flow
		want   time.Duration
	}{
		{"tripwire, idle pod: the longest gap", true, 256 << 20, 0, 20 * time.Millisecond},
		{"watcher alone, a fresh flow's 64 MiB at 1 GB/s, a quarter", false, 256 << 20, 0, 16777216 * time.Nanosecond},
		{"pod bucket at 40 MB: 10 ms", true, 40e6, 0, 10 * time.Millisecond},
		{"a flow the watcher keeps with 2 MB left: 0.5 ms, at least TxInterval", false, 256 << 20, 64<<20 - 2e6, time.Millisecond},
		{"pod bucket empty: TxInterval", true, 0, 0, time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := cfg
			if tc.kernel {
				cfg.Tripwire, cfg.WatchedMark = true, 0x200000
			}
			p := NewPolicy(cfg, t0, tc.pod)
			p.Dump(t0, []conntrack.Flow{inFlow(1, 1001, 0, 0)})
			p.Dump(t0, []conntrack.Flow{inFlow(1, 1001, tc.sent, 0)})
			p.Tx(t0, 1000)
			if got := p.txNext.Sub(t0); got != tc.want {
				t.Errorf("next reading after %s, want %s", got, tc.want)
			}
		})
	}
}

// A flow whose DESTROY event comes while a background dump is in flight may
// still be in the dump's result: it must not come back as a new flow (a
// second final record, and all of its bytes charged to the pod again).
func TestPolicyBackgroundDumpAfterDestroy(t *testing.T) {
	cfg := testConfig()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := NewPolicy(cfg, t0, float64(cfg.PodBudget))
	p.Dump(t0, []conntrack.Flow{inFlow(1, 1001, 1000, 0)})
	p.Observe(t0.Add(500*time.Millisecond), inFlow(1, 1001, 40<<20, 0))
	pod := p.PodTokens(t0.Add(time.Second))
	p.DumpStarted(t0.Add(time.Second))
	acts := p.Destroyed(t0.Add(1010*time.Millisecond), inFlow(1, 1001, 40<<20, 0))
	if len(acts) != 1 || acts[0].Kind != Finish {
		t.Fatalf("DESTROY: actions %+v, want one flow_end", acts)
	}
	acts = p.Dump(t0.Add(1030*time.Millisecond), []conntrack.Flow{inFlow(1, 1001, 40<<20, 0), inFlow(2, 1002, 0, 0)})
	if len(acts) != 0 {
		t.Errorf("the stale dump: actions %+v, want none", acts)
	}
	if got := p.PodTokens(t0.Add(1030 * time.Millisecond)); got < pod {
		t.Errorf("pod bucket %.0f after the stale dump, was %.0f: charged again", got, pod)
	}
	// The same tuple with a new conntrack ID is a new flow.
	acts = p.Dump(t0.Add(2*time.Second), []conntrack.Flow{inFlow(3, 1001, 100, 0), inFlow(2, 1002, 0, 0)})
	if st := p.Stats(); st.Flows != 2 || len(acts) != 0 {
		t.Errorf("flows %d, actions %+v; want 2 flows (1001 anew, 1002), no actions", st.Flows, acts)
	}
}

// The kernel keeps a dying entry out of dumps until its DESTROY event is
// delivered, so a dump can miss a flow (finished with its last counters)
// whose DESTROY comes after: that event must not start it anew.
func TestPolicyDestroyAfterDumpMissed(t *testing.T) {
	cfg := testConfig()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := NewPolicy(cfg, t0, float64(cfg.PodBudget))
	p.Dump(t0, nil)
	p.Dump(t0.Add(time.Second), []conntrack.Flow{inFlow(1, 1001, 40<<20, 0)})
	acts := p.Dump(t0.Add(2*time.Second), nil)
	if len(acts) != 1 || acts[0].Kind != Finish || !acts[0].Record.Unfinished {
		t.Fatalf("missed by the dump: actions %+v, want one unfinished flow_end", acts)
	}
	pod := p.PodTokens(t0.Add(2 * time.Second))
	acts = p.Destroyed(t0.Add(2*time.Second+250*time.Millisecond), inFlow(1, 1001, 40<<20+5000, 0))
	if len(acts) != 0 {
		t.Errorf("the late DESTROY: actions %+v, want none (the record is written)", acts)
	}
	want := pod + float64(cfg.PodRefill)*0.25 - 5000 // a quarter second of refill, the last 5000 bytes charged
	if got := p.PodTokens(t0.Add(2*time.Second + 250*time.Millisecond)); got > want+1 || got < want-1 {
		t.Errorf("pod bucket %.0f after the late DESTROY, was %.0f: want only its last 5000 bytes charged", got, pod)
	}
	if st := p.Stats(); st.Flows != 0 || st.Finished != 1 {
		t.Errorf("flows %d, finished %d; want 0 and 1", st.Flows, st.Finished)
	}
}
