package warden

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/egress"
	"github.com/hubwarden/hubwarden/guard"
	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/units"
	"github.com/hubwarden/hubwarden/xtables"
)

// testConfig is a configuration with every feature on, explicit values
// (the defaults live in the sidecar's variable table) and one host name in
// the allow-list.
func testConfig(t *testing.T) *Config {
	t.Helper()
	allow, err := egress.ParseEntries("tcp://198.18.0.2:443,tcp://files.example:443")
	if err != nil {
		t.Fatal(err)
	}
	contract, err := demotion.New(0x100000, 16*units.MiB)
	if err != nil {
		t.Fatal(err)
	}
	return &Config{
		StateDir: t.TempDir(), IptablesBackend: "auto", IPv6: "auto",
		Egress: true, Allow: allow, DNSServers: []netip.Addr{netip.MustParseAddr("198.18.0.53")},
		DNSRate: 20, DNSBurst: 100, NFLogGroup: 1987, ResolveMinTTL: time.Millisecond,
		Shape: true, Interface: "eth0", FastRate: units.Rate(1_250_000_000), SlowRate: units.Rate(125_000),
		CTMark: 0x100000, Contract: contract,
		Watch: true, FlowBudget: 16 * units.MiB, FlowRefill: units.Rate(units.MiB), PodBudget: 64 * units.MiB, PodRefill: units.Rate(256 * units.KiB),
		HealthAddr: ":9280",
		Guard: guard.Config{Mode: guard.Enforce, ServerPort: 8888, GuardPort: 9281, BaseURL: "/user/jovyan/",
			MaxNotebook: 32 << 20, Terminals: true, ProgressInterval: time.Minute},
	}
}

func open(t *testing.T, f *fakes, cfg *Config, mode Mode) *Warden {
	t.Helper()
	w, err := Open(context.Background(), cfg, Options{Mode: mode, Kernel: f.kernel(), Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatalf("Open(%s): %v", mode, err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// started opens in Write mode and applies, as start-up does.
func started(t *testing.T, f *fakes, cfg *Config) *Warden {
	t.Helper()
	w := open(t, f, cfg, Write)
	if err := w.Apply(context.Background()); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return w
}

func mustClean(t *testing.T, w *Warden) {
	t.Helper()
	d, err := w.Check(context.Background())
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if !d.Empty() {
		t.Fatalf("the kernel differs from the plan:\n%s", d)
	}
}

func firstIndex(writes []string, prefix string) int {
	return slices.IndexFunc(writes, func(s string) bool { return strings.HasPrefix(s, prefix) })
}

func lastIndex(writes []string, prefix string) int {
	for i := len(writes) - 1; i >= 0; i-- {
		if strings.HasPrefix(writes[i], prefix) {
			return i
		}
	}
	return -1
}

// TestApplyOrder: the raw tables first (they keep loopback out of
// conntrack, and everything after turns it on), then the qdisc tree (the
// classify rules need its classes), then the pod gate (the tripwire must
// never run without the pod budget), then the other iptables tables; the
// result checks clean, and applying again writes nothing.
func TestApplyOrder(t *testing.T) {
	f := newFakes()
	f.setAnswer("files.example", "198.18.0.7")
	w := open(t, f, testConfig(t), Write)
	f.reset() // the detection's probes
	if err := w.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	raw, tc, nft, ipt := firstIndex(f.writes, "iptables-nft-restore"), lastIndex(f.writes, "tc eth0"), firstIndex(f.writes, "nft: gate"), lastIndex(f.writes, "iptables-nft-restore")
	if raw < 0 || tc < 0 || nft < 0 || ipt < 0 || raw > tc || tc > nft || nft > ipt || raw == ipt {
		t.Errorf("apply order: raw restore %d, last qdisc op %d, pod gate %d, last iptables restore %d; writes:\n%s", raw, tc, nft, ipt, strings.Join(f.writes, "\n"))
	}
	if f.nft.limit != uint64(64*units.MiB) {
		t.Errorf("the new quota holds %d, want the whole pod budget", f.nft.limit)
	}
	// Per family, raw is applied before any table that turns conntrack on
	// (tableOrder): a loopback connection open across the apply is never
	// tracked (sidecar's TestIntegrationInitLeavesLoopbackUntracked).
	seen := map[xtables.Family][]string{}
	for _, tb := range w.Plan().Tables {
		seen[tb.Family] = append(seen[tb.Family], tb.Name)
	}
	for fam, names := range seen {
		if len(names) == 0 || names[0] != "raw" {
			t.Errorf("%s tables apply in the order %v: raw must come first", fam, names)
		}
	}
	mustClean(t, w)
	for _, tool := range []string{"iptables-nft", "ip6tables-nft"} {
		save := f.ipt.Save(tool)
		for _, want := range []string{"*filter", "*raw", "*mangle", "*nat", "HUBWARDEN-EGRESS", "HUBWARDEN-TRIP", "HUBWARDEN-GUARD-IN", "HUBWARDEN-GUARD-RAW", "REDIRECT --to-ports 9281"} {
			if !strings.Contains(save, want) {
				t.Errorf("%s holds no %s:\n%s", tool, want, save)
			}
		}
	}
	if !strings.Contains(f.ipt.Save("iptables-nft"), "198.18.0.7/32") {
		t.Errorf("the host name's answer is not allowed:\n%s", f.ipt.Save("iptables-nft"))
	}
	f.reset()
	if err := w.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(f.writes) != 0 {
		t.Errorf("a second Apply wrote %v", f.writes)
	}
}

// TestApplyWithoutRecent: a kernel with neither an nftables quota nor
// xt_recent (its iptables-restore refuses the recent match without naming
// it). Start-up applies everything else, the tripwire included, records
// that there is no pod gate, and check and a restart plan the same.
func TestApplyWithoutRecent(t *testing.T) {
	f := newFakes()
	f.nft.probeErr = errors.New("nftables: quota: operation not supported")
	f.ipt.Refuse = func(_, line string) error {
		if strings.Contains(line, "-m recent") {
			return errors.New("line failed")
		}
		return nil
	}
	cfg := testConfig(t)
	w := open(t, f, cfg, Write)
	if g := w.Plan().Env.Gate; g != demotion.GateRecent {
		t.Fatalf("without an nftables quota the plan holds gate %q, want the recent gate", g)
	}
	if err := w.Apply(context.Background()); err != nil {
		t.Fatalf("Apply failed instead of degrading: %v", err)
	}
	mangle := f.ipt.Save("iptables-nft")
	if w.Plan().Env.Gate != demotion.GateNone || strings.Contains(mangle, "-m recent") || !strings.Contains(mangle, "--connbytes 16777216") {
		t.Errorf("gate %q; iptables:\n%s", w.Plan().Env.Gate, mangle)
	}
	if f.nft.applied != nil {
		t.Errorf("a quota gate was applied on a kernel without quotas")
	}
	mustClean(t, w)
	mustClean(t, open(t, f, cfg, ReadOnly))
	again := open(t, f, cfg, Write)
	f.reset() // the iptables backend's check that the recorded one works
	if err := again.Apply(context.Background()); err != nil || len(f.writes) != 0 || again.Plan().Env.Gate != demotion.GateNone {
		t.Errorf("a restart: gate %q, err %v, writes %v", again.Plan().Env.Gate, err, f.writes)
	}

	// A kernel that refuses more than the gate: the first error, nothing
	// applied.
	f2 := newFakes()
	f2.nft.probeErr = f.nft.probeErr
	f2.ipt.Refuse = func(_, line string) error {
		if strings.Contains(line, "-m recent") || strings.Contains(line, "connbytes") {
			return errors.New("line failed")
		}
		return nil
	}
	w2 := open(t, f2, testConfig(t), Write)
	if err := w2.Apply(context.Background()); err == nil || !strings.Contains(err.Error(), "line failed") {
		t.Errorf("Apply = %v, want the kernel's refusal", err)
	}
	if w2.Plan().Env.Gate != demotion.GateRecent {
		t.Errorf("the plan lost its gate: %q", w2.Plan().Env.Gate)
	}
	if s := f2.ipt.Save("iptables-nft"); strings.Contains(s, "HUBWARDEN-SHAPE") {
		t.Errorf("a refused plan left mangle chains:\n%s", s)
	}
}

// TestApplyWithoutHashlimit: a kernel that refuses the interactive
// classification's hashlimit rate match (revision 3, Linux 4.10; the DNS
// limit's older hashlimit it takes), without naming it. Start-up applies
// the rest, demoted flows going to the served and bulk leaves, records the refusal,
// and check and a restart plan the same; with neither the quota nor
// xt_recent either, both are given up.
func TestApplyWithoutHashlimit(t *testing.T) {
	refuse := func(matches ...string) func(_, line string) error {
		return func(_, line string) error {
			for _, m := range matches {
				if strings.Contains(line, m) {
					return errors.New("line failed")
				}
			}
			return nil
		}
	}
	f := newFakes()
	f.ipt.Refuse = refuse("--hashlimit-rate-match")
	cfg := testConfig(t)
	w := open(t, f, cfg, Write)
	if !w.Plan().Env.Interactive {
		t.Fatal("the first start-up does not try the interactive classification")
	}
	if err := w.Apply(context.Background()); err != nil {
		t.Fatalf("Apply failed instead of degrading: %v", err)
	}
	mangle := f.ipt.Save("iptables-nft")
	if w.Plan().Env.Interactive || w.Plan().Env.Gate != demotion.GateQuota || strings.Contains(mangle, "hubwarden-ui") ||
		!strings.Contains(mangle, "--set-class 4857:0020") || !strings.Contains(mangle, "--connbytes 16777216") {
		t.Errorf("interactive %v, gate %q; iptables:\n%s", w.Plan().Env.Interactive, w.Plan().Env.Gate, mangle)
	}
	if rec, err := loadDetected(cfg.StateDir); err != nil || !rec.HashlimitRefused {
		t.Errorf("recorded %+v, %v; want the refusal", rec, err)
	}
	mustClean(t, w)
	mustClean(t, open(t, f, cfg, ReadOnly))
	again := open(t, f, cfg, Write)
	f.reset()
	if err := again.Apply(context.Background()); err != nil || len(f.writes) != 0 || again.Plan().Env.Interactive {
		t.Errorf("a restart: interactive %v, err %v, writes %v", again.Plan().Env.Interactive, err, f.writes)
	}

	f2 := newFakes()
	f2.nft.probeErr = errors.New("nftables: quota: operation not supported")
	f2.ipt.Refuse = refuse("--hashlimit-rate-match", "-m recent")
	cfg2 := testConfig(t)
	w2 := open(t, f2, cfg2, Write)
	if err := w2.Apply(context.Background()); err != nil {
		t.Fatalf("Apply failed instead of degrading: %v", err)
	}
	if p := w2.Plan(); p.Env.Interactive || p.Env.Gate != demotion.GateNone {
		t.Errorf("interactive %v, gate %q; want neither", p.Env.Interactive, p.Env.Gate)
	}
	mustClean(t, open(t, f2, cfg2, ReadOnly))

	// The hashlimit match is applied where the kernel takes it.
	f3 := newFakes()
	w3 := started(t, f3, testConfig(t))
	if m := f3.ipt.Save("iptables-nft"); !w3.Plan().Env.Interactive || !strings.Contains(m, "--hashlimit-name hubwarden-ui") || !strings.Contains(m, "--set-class 4857:0021") {
		t.Errorf("interactive %v; iptables:\n%s", w3.Plan().Env.Interactive, m)
	}
}

// TestReconcile: whatever of hubwarden's is changed behind its back (an
// iptables rule, the qdisc tree, the pod gate) is named and put back; the
// next pass finds nothing.
func TestReconcile(t *testing.T) {
	tests := []struct {
		name   string
		change func(f *fakes)
		part   func(Drift) string
		says   string
	}{
		{"iptables rule deleted", func(f *fakes) {
			c := f.ipt.Tables["iptables-nft"]["filter"].Chains["OUTPUT"]
			c.Rules = nil
		}, func(d Drift) string { return d.Iptables }, "hook OUTPUT -> HUBWARDEN-EGRESS: missing"},
		{"qdisc root deleted", func(f *fakes) {
			f.tc.state = tcshape.State{RootKind: "noqueue"}
		}, func(d Drift) string { return d.Qdiscs }, "add qdisc htb"},
		{"pod gate deleted", func(f *fakes) {
			f.nft.applied = nil
		}, func(d Drift) string { return d.Gate }, "missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakes()
			w := started(t, f, testConfig(t))
			want := f.snapshot()
			tt.change(f)
			d, err := w.Reconcile(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(tt.part(d), tt.says) {
				t.Errorf("the drift does not say %q:\n%s", tt.says, d)
			}
			if diff := cmp.Diff(want, f.snapshot()); diff != "" && tt.name != "pod gate deleted" {
				t.Errorf("reconciled state differs from start-up's (-want +got):\n%s", diff)
			}
			d, err = w.Reconcile(context.Background())
			if err != nil || !d.Empty() {
				t.Errorf("second pass: %v %q", err, d)
			}
		})
	}
	// A deleted pod gate comes back empty: the watcher refills it; the
	// budget spent before is not handed out again.
	f := newFakes()
	w := started(t, f, testConfig(t))
	f.nft.applied = nil
	if _, err := w.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if f.nft.applied == nil || f.nft.limit != 0 {
		t.Errorf("the re-created quota holds %d, want 0", f.nft.limit)
	}
}

// TestFollow: new answers for an allow-listed host name re-plan and apply;
// the old address is no longer allowed.
func TestFollow(t *testing.T) {
	f := newFakes()
	f.setAnswer("files.example", "198.18.0.7")
	w := started(t, f, testConfig(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Follow(ctx) }()
	defer func() { cancel(); <-done }()
	f.setAnswer("files.example", "198.18.0.8")
	var save string
	for range 200 {
		f.mu.Lock()
		save = f.ipt.Save("iptables-nft")
		f.mu.Unlock()
		if strings.Contains(save, "198.18.0.8/32") {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(save, "198.18.0.8/32") || strings.Contains(save, "198.18.0.7/32") {
		t.Errorf("the rules do not follow the new answer:\n%s", save)
	}
	mustClean(t, w)
}

// TestReadOnlyWritesNothing: check after start-up reads the kernel and
// writes nothing: no restore, no qdisc op, no probe device, no nftables
// change, no file in STATE_DIR; it reports drift and cannot repair it.
func TestReadOnlyWritesNothing(t *testing.T) {
	f := newFakes()
	f.setAnswer("files.example", "198.18.0.7")
	cfg := testConfig(t)
	started(t, f, cfg)
	before, files := f.snapshot(), dirSnapshot(t, cfg.StateDir)
	f.reset()
	probes := f.leafProbes + f.nftProbes
	w := open(t, f, cfg, ReadOnly)
	mustClean(t, w)
	if err := w.Apply(context.Background()); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Apply in read-only mode = %v", err)
	}
	if diff := cmp.Diff(before, f.snapshot()); diff != "" {
		t.Errorf("read-only mode changed the kernel (-before +after):\n%s", diff)
	}
	f.tc.state.Classes = f.tc.state.Classes[1:]
	drifted := f.snapshot()
	if d, err := w.Check(context.Background()); err != nil || d.Qdiscs == "" {
		t.Errorf("check missed a deleted class: %v %q", err, d)
	}
	if _, err := w.Reconcile(context.Background()); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Reconcile in read-only mode = %v", err)
	}
	if f.snapshot() != drifted {
		t.Errorf("read-only mode repaired the drift")
	}
	if len(f.writes) != 0 || f.leafProbes+f.nftProbes != probes {
		t.Errorf("read-only mode wrote %v, probes %d -> %d", f.writes, probes, f.leafProbes+f.nftProbes)
	}
	if diff := cmp.Diff(files, dirSnapshot(t, cfg.StateDir)); diff != "" {
		t.Errorf("read-only mode changed STATE_DIR (-before +after):\n%s", diff)
	}
}

// TestReadOnlyBeforeStart: check in a pod where start-up never ran says
// so, by file, and writes nothing.
func TestReadOnlyBeforeStart(t *testing.T) {
	f := newFakes()
	cfg := testConfig(t)
	_, err := Open(context.Background(), cfg, Options{Mode: ReadOnly, Kernel: f.kernel(), Log: zerolog.Nop()})
	if err == nil || !strings.Contains(err.Error(), "has hubwarden init run") || !strings.Contains(err.Error(), cfg.StateDir) {
		t.Errorf("Open = %v, want an error naming the state directory", err)
	}
	if len(f.writes) != 0 || len(dirSnapshot(t, cfg.StateDir)) != 0 {
		t.Errorf("wrote %v", f.writes)
	}
}

// TestNoFastClassNoLeafProbe: without FAST_RATE no leaf can be fq, so no
// probe device is made; check plans without a recorded leaf kind; a later
// start with FAST_RATE tries and records it.
func TestNoFastClassNoLeafProbe(t *testing.T) {
	f := newFakes()
	f.tc.leaves = tcshape.LeafFQ
	cfg := testConfig(t)
	cfg.FastRate = 0
	w := started(t, f, cfg)
	if f.leafProbes != 0 {
		t.Errorf("a start without FAST_RATE made %d probe devices", f.leafProbes)
	}
	if !w.Plan().TC.Root.Direct() {
		t.Errorf("a plan without FAST_RATE has a fast class")
	}
	mustClean(t, open(t, f, cfg, ReadOnly))
	withFast := *cfg
	withFast.FastRate = testConfig(t).FastRate
	w = started(t, f, &withFast)
	if f.leafProbes != 1 {
		t.Errorf("a start with FAST_RATE made %d probe devices, want 1", f.leafProbes)
	}
	if !strings.Contains(planText(t, w.Plan()), " fq ") {
		t.Errorf("the fast class's leaf is not fq where the kernel has it:\n%s", planText(t, w.Plan()))
	}
	mustClean(t, open(t, f, &withFast, ReadOnly))
}

// TestRestartRecalls: a restarted sidecar plans with what the first
// start-up found (no second probe device, no second probe table).
func TestRestartRecalls(t *testing.T) {
	f := newFakes()
	f.tc.leaves = tcshape.LeafFQ
	cfg := testConfig(t)
	first := started(t, f, cfg)
	f.reset()
	f.leafProbes, f.nftProbes = 0, 0
	f.tc.leaves = tcshape.LeafFIFO // would be found now; the recorded choice wins
	w := open(t, f, cfg, Write)
	if f.leafProbes != 0 || f.nftProbes != 0 {
		t.Errorf("a restart probed again: leaves %d, nft %d", f.leafProbes, f.nftProbes)
	}
	f.reset() // the iptables backend's check that the recorded one works
	if err := w.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if f.leafProbes != 0 || f.nftProbes != 0 || len(f.writes) != 0 {
		t.Errorf("a restart probed again (leaves %d, nft %d) or wrote %v", f.leafProbes, f.nftProbes, f.writes)
	}
	if diff := cmp.Diff(planText(t, first.Plan()), planText(t, w.Plan())); diff != "" {
		t.Errorf("a restart plans differently (-first +restart):\n%s", diff)
	}
}

// TestPreview: plan needs no privileges: it opens no iptables tool and no
// nftables, tries nothing, and offline it sends no DNS query. Its plan is
// start-up's but for what only trying finds out.
func TestPreview(t *testing.T) {
	f := newFakes()
	f.setAnswer("files.example", "198.18.0.7")
	cfg := testConfig(t)
	w, err := Open(context.Background(), cfg, Options{Mode: Preview, Offline: true, Kernel: f.kernel(), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if f.lookups != 0 || len(f.ipt.Calls) != 0 || f.nftOpens != 0 || f.leafProbes != 0 || len(f.writes) != 0 {
		t.Errorf("an offline preview looked up %d names, ran %v, opened nftables %d times, wrote %v", f.lookups, f.ipt.Calls, f.nftOpens, f.writes)
	}
	if len(dirSnapshot(t, cfg.StateDir)) != 0 {
		t.Errorf("a preview wrote to STATE_DIR")
	}
	var out strings.Builder
	if err := w.Plan().Write(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"# ipv4 filter: iptables-restore --noflush", "# ipv6 mangle", "# tc on eth0 (FIFO leaves shown", "table inet hubwarden"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the plan does not show %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "198.18.0.7") {
		t.Errorf("an offline plan allows a resolved address")
	}
	online, err := Open(context.Background(), cfg, Options{Mode: Preview, Kernel: f.kernel(), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer online.Close()
	f2 := newFakes()
	f2.setAnswer("files.example", "198.18.0.7")
	s := started(t, f2, testConfig(t))
	if diff := cmp.Diff(s.Plan().Tables, online.Plan().Tables); diff != "" {
		t.Errorf("preview and start-up plan different tables (-start-up +preview):\n%s", diff)
	}
}

// TestFeaturesOff: a feature turned off removes hubwarden's chains of it
// and leaves everything else (the qdisc tree stays).
func TestFeaturesOff(t *testing.T) {
	f := newFakes()
	cfg := testConfig(t)
	started(t, f, cfg)
	tree := f.tc.state
	off := *cfg
	off.Egress, off.Shape, off.Guard.Mode = false, false, guard.Off
	w := started(t, f, &off)
	for _, tool := range []string{"iptables-nft", "ip6tables-nft"} {
		// Only the backend probe's chains stay (xtables.ProbeTables): no
		// hook jumps to them.
		s := strings.ReplaceAll(f.ipt.Save(tool), "HUBWARDEN-PROBE", "")
		if strings.Contains(s, "HUBWARDEN-") {
			t.Errorf("%s keeps hubwarden's chains with every feature off:\n%s", tool, f.ipt.Save(tool))
		}
	}
	if diff := cmp.Diff(tree, f.tc.state); diff != "" {
		t.Errorf("the qdisc tree changed (-before +after):\n%s", diff)
	}
	mustClean(t, w)
}

func planText(t *testing.T, p Plan) string {
	t.Helper()
	var b strings.Builder
	if err := p.Write(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// dirSnapshot returns every file in dir with its contents.
func dirSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

// TestSpoofRulePlacement: the spoof rule is in exactly one place per
// family: the egress filter's second rule when egress is on, after the
// accept of established TCP flows (which it never drops: established
// flows skip it), the raw table's first when only shaping is (no filter to
// hold it).
func TestSpoofRulePlacement(t *testing.T) {
	for _, tc := range []struct {
		name   string
		egress bool
		table  string // where the rule must be
	}{
		{"egress on", true, "filter"},
		{"shaping only", false, "raw"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Egress = tc.egress
			env := Env{IPv6: true, Shape: tcshape.Config{Interface: "eth0", FastRate: cfg.FastRate, SlowRate: cfg.SlowRate}, Gate: demotion.GateQuota, Interactive: true}
			p, err := NewPlan(cfg, env, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []xtables.Family{xtables.IPv4, xtables.IPv6} {
				var in []string
				for _, tb := range p.Tables {
					if tb.Family != f {
						continue
					}
					for _, c := range tb.Chains {
						for i, r := range c.Rules {
							if strings.Contains(strings.Join(r.Args, " "), "--src-type LOCAL") {
								in = append(in, fmt.Sprintf("%s/%s#%d", tb.Name, c.Name, i))
							}
						}
					}
				}
				want := []string{tc.table + "/" + egress.ChainRawOut + "#0"}
				if tc.table == "filter" {
					want = []string{"filter/" + egress.ChainEgress + "#1"}
				}
				if diff := cmp.Diff(want, in); diff != "" {
					t.Errorf("%s: the spoof rule (-want +got):\n%s", f, diff)
				}
			}
		})
	}
}
