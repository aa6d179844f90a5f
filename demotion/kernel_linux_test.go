//go:build linux

package demotion

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/conntrack"
	"github.com/hubwarden/hubwarden/internal/nstest"
	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/units"
	"github.com/hubwarden/hubwarden/xtables"
)

// Subnet indexes for nstest.NewPair: this package owns 33-39.

const slowRate = 1_000_000 // 8 mbit, in bytes/s

// bed is a pod/peer pair with hubwarden's qdisc tree and mangle rules on the
// pod's eth0, as the sidecar applies them, and a conntrack client in the pod.
type bed struct {
	*nstest.Pair
	c    Contract
	ct   *conntrack.Conn
	nft  *NFT
	slow float64
}

func newBed(t *testing.T, subnet int, budget units.Size, gate Gate, backend xtables.Backend) *bed {
	t.Helper()
	nstest.SkipUnlessRoot(t, "iptables-restore", "iptables-nft-restore", "conntrack", "tc")
	p := nstest.NewPair(t, subnet)
	b := &bed{Pair: p, c: mustContract(t, 0x100000, budget), slow: slowRate}
	k, err := tcshape.Open(p.Pod.FD())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	tcfg, err := k.Detect(tcshape.Config{FastRate: 10e9 / 8, SlowRate: slowRate}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	spec, err := tcshape.Plan(tcfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tcshape.Apply(context.Background(), k, spec, zerolog.Nop(), false); err != nil {
		t.Fatal(err)
	}
	tables, err := MangleTables(Rules{Contract: b.c, Interface: "eth0", IPv6: true, Watch: true, Gate: gate, Interactive: true, SlowRate: slowRate})
	if err != nil {
		t.Fatal(err)
	}
	// The tables go in through xtables, as the sidecar applies them, and
	// must then check clean: what iptables-save prints back is exactly what
	// was planned.
	x := xtables.New(backend, xtables.ExecRunner{LockFile: filepath.Join(t.TempDir(), "xtables.lock")}, zerolog.New(zerolog.NewTestWriter(t)))
	if err := p.Pod.Do(func() error {
		if _, err := x.Apply(context.Background(), tables); err != nil {
			return err
		}
		drift, err := x.Check(context.Background(), tables)
		if err == nil && len(drift) > 0 {
			err = fmt.Errorf("drift right after apply (%s): %+v", backend, drift)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if gate == GateQuota {
		if b.nft, err = OpenNFT(p.Pod.FD()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.nft.Close() })
	}
	if b.ct, err = conntrack.Dial(conntrack.Config{NetNS: p.Pod.FD()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.ct.Close() })
	return b
}

// fastBytes returns the IP bytes the fast class has carried.
func (b *bed) fastBytes() int64 {
	return nstest.IPBytes(b.Pod.ClassSent("eth0", tcshape.FastClass.String()))
}

// flow returns the pod's conntrack entry of the connection the peer opened
// to the pod's port.
func (b *bed) flow(t *testing.T, s *nstest.Sender) conntrack.Flow {
	t.Helper()
	l := s.Conn.LocalAddr().(*net.TCPAddr)
	r := s.Conn.RemoteAddr().(*net.TCPAddr)
	orig := conntrack.Tuple{Proto: 6, Src: l.AddrPort().Addr().Unmap(), Dst: r.AddrPort().Addr().Unmap(), SrcPort: uint16(l.Port), DstPort: uint16(r.Port)}
	f, err := b.ct.Get(context.Background(), orig)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestIntegrationRulesCheckClean applies the planned rules on both iptables
// backends, with each gate, and checks that iptables-save prints exactly
// the plan back (newBed checks it).
func TestIntegrationRulesCheckClean(t *testing.T) {
	for i, backend := range []xtables.Backend{xtables.Legacy, xtables.NFT} {
		for j, gate := range []Gate{GateQuota, GateRecent} {
			t.Run(string(backend)+"/"+string(gate), func(t *testing.T) {
				newBed(t, 33+2*i+j, 64*units.MiB, gate, backend)
			})
		}
	}
}

// TestIntegrationTiers shows the tripwire holding a flow's budget in the
// kernel, at line rate, whatever the watcher does: a new flow is demoted at
// the flow budget; a flow the watcher re-armed (counters zeroed, a tier set)
// at its tier's threshold counted from the re-arm; the busy bit comes at
// half of it.
func TestIntegrationTiers(t *testing.T) {
	const budget = 32 * units.MiB
	b := newBed(t, 37, budget, GateQuota, xtables.NFT)
	if _, err := b.nft.Apply(QuotaGate{Interface: "eth0", Contract: b.c}, 1<<40); err != nil {
		t.Fatal(err)
	}
	b.Pod.ServeBulk(8888)
	// conntrack and connbytes count a GSO packet's headers once, tc once per
	// segment: without GSO the two count alike, and the fast class's bytes
	// measure the tripwire to the byte.
	b.Pod.MustRun("ip", "link", "set", "dev", "eth0", "gso_max_segs", "1")
	ctx := context.Background()
	// within says whether fast bytes for a threshold are right: the packet
	// that reaches the threshold is already slow, so the fast class carries
	// just under it; the handshake and request packets add a few hundred
	// bytes.
	within := func(fast int64, threshold uint64) bool {
		return fast >= int64(threshold)-64<<10 && fast <= int64(threshold)+16<<10
	}
	for _, fam := range []struct{ name, addr string }{{"ipv4", b.PodIP4}, {"ipv6", b.PodIP6}} {
		t.Run(fam.name, func(t *testing.T) {
			addr := net.JoinHostPort(fam.addr, "8888")

			// A new flow below tier 0's busy mark takes the early return
			// in SHAPE: nothing set; past it, the attention bit alone (the
			// return must never hide the busy mark). The counters hold
			// the headers and any retransmission too (IPv6, one segment
			// per packet: about 9 % more than the payload; a loaded
			// machine's retransmissions once made it 15 %), so the first
			// fetch is half the mark, and what is expected of it follows
			// the counters.
			s := b.Peer.Sender(addr)
			if _, err := s.Fetch(b.c.BusyAt(0) / 2); err != nil {
				t.Fatal(err)
			}
			below := b.flow(t, s)
			want := uint32(0)
			if below.OrigCounter.Bytes >= b.c.BusyAt(0) || below.ReplyCounter.Bytes >= b.c.BusyAt(0) {
				want = b.c.Attention()
				t.Logf("half the busy mark fetched, but the counters passed it: %+v %+v", below.OrigCounter, below.ReplyCounter)
			}
			if below.Mark&b.c.Owned() != want {
				t.Errorf("below the busy mark (%d bytes): mark %#x, want %#x; counters %+v %+v", b.c.BusyAt(0), below.Mark, want, below.OrigCounter, below.ReplyCounter)
			}
			if _, err := s.Fetch(b.c.BusyAt(0) * 5 / 8); err != nil {
				t.Fatal(err)
			}
			if f := b.flow(t, s); f.Mark&b.c.Owned() != b.c.Attention() {
				t.Errorf("past the busy mark (%d bytes): mark %#x, want A alone (%#x); counters %+v %+v", b.c.BusyAt(0), f.Mark, b.c.Attention(), f.OrigCounter, f.ReplyCounter)
			}

			// A new flow: tier 0, the budget from the flow's start.
			s = b.Peer.Sender(addr)
			f0 := b.fastBytes()
			if _, err := s.Fetch(uint64(budget) + 512<<10); err != nil { // the last 512 KiB at the slow rate
				t.Fatal(err)
			}
			fast := b.fastBytes() - f0
			f := b.flow(t, s)
			t.Logf("new flow: fast class carried %d bytes for the %d byte budget (%+.3f%%); mark %#x", fast, budget, 100*(float64(fast)/float64(budget)-1), f.Mark)
			if !within(fast, uint64(budget)) {
				t.Errorf("a new flow carried %d fast bytes, want the %d byte budget to within a packet", fast, budget)
			}
			if f.Mark&b.c.Owned() != b.c.Demoted()|b.c.Attention() {
				t.Errorf("a tripped flow has mark %#x, want D|A (%#x)", f.Mark, b.c.Demoted()|b.c.Attention())
			}

			// The watcher takes a flow over: zero its counters, put it in
			// the tier of what its bucket holds (10 MiB: the 8 MiB tier).
			s = b.Peer.Sender(addr)
			if _, err := s.Fetch(4 << 20); err != nil {
				t.Fatal(err)
			}
			orig := b.flow(t, s).Orig
			read, err := b.ct.GetZero(ctx, orig)
			if err != nil {
				t.Fatal(err)
			}
			tokens := 10.0 * (1 << 20)
			k, ok := b.c.TierFor(tokens)
			if !ok || b.c.Threshold(k) != 8<<20 {
				t.Fatalf("TierFor(10 MiB) = %d (%d bytes), %v", k, b.c.Threshold(k), ok)
			}
			mark, mask := b.c.Arm(k)
			if err := b.ct.SetMark(ctx, orig, mark, mask); err != nil {
				t.Fatal(err)
			}
			// Just past half the threshold: the busy bit, still fast.
			f0 = b.fastBytes()
			if _, err := s.Fetch(b.c.BusyAt(k) + 64<<10); err != nil {
				t.Fatal(err)
			}
			f = b.flow(t, s)
			if f.Mark&b.c.Owned() != b.c.Attention()|b.c.TierMark(k) {
				t.Errorf("past the busy mark: mark %#x, want A|tier %d (%#x)", f.Mark, k, b.c.Attention()|b.c.TierMark(k))
			}
			// Then at line rate past the tokens (the last 512 KiB slow).
			if _, err := s.Fetch(uint64(tokens) - b.c.BusyAt(k) + 512<<10); err != nil {
				t.Fatal(err)
			}
			fast = b.fastBytes() - f0
			f = b.flow(t, s)
			over := fast - int64(tokens)
			t.Logf("re-armed flow (%d bytes counted before the re-arm, tokens %.0f, tier %d at %d bytes): fast class carried %d bytes since the re-arm, %d against its tokens; mark %#x",
				read.ReplyCounter.Bytes, tokens, k, b.c.Threshold(k), fast, over, f.Mark)
			if !within(fast, b.c.Threshold(k)) {
				t.Errorf("a re-armed flow carried %d fast bytes, want its tier's %d to within a packet", fast, b.c.Threshold(k))
			}
			if f.Mark&b.c.Demoted() == 0 {
				t.Errorf("the re-armed flow is not demoted: mark %#x", f.Mark)
			}
		})
	}
}

// TestIntegrationQuotaGate shows the pod bucket held by the kernel: a new
// connection per MiB at line rate (the churn that no per-flow budget
// stops, and no watcher catches in time) moves the quota's limit fast and
// not a packet more; later connections are slow from their first packet;
// raising the limit reopens the gate for exactly that much.
func TestIntegrationQuotaGate(t *testing.T) {
	b := newBed(t, 38, 64*units.MiB, GateQuota, xtables.NFT)
	const level = 8 << 20
	if _, err := b.nft.Apply(QuotaGate{Interface: "eth0", Contract: b.c}, level); err != nil {
		t.Fatal(err)
	}
	b.Pod.ServeBulk(8888)
	b.Pod.MustRun("ip", "link", "set", "dev", "eth0", "gso_max_segs", "1")
	churn := func(n int) (fast int64, slow int) {
		f0 := b.fastBytes()
		for range n {
			s := b.Peer.Sender(net.JoinHostPort(b.PodIP4, "8888"))
			d, err := s.Fetch(1 << 20)
			if err != nil {
				t.Fatal(err)
			}
			if d > 500*time.Millisecond { // 1 MiB at the 8 mbit slow rate takes a second
				slow++
			}
			f := b.flow(t, s)
			if d > 500*time.Millisecond && f.Mark&b.c.Demoted() == 0 {
				t.Errorf("a slow connection is not demoted: mark %#x", f.Mark)
			}
			s.Conn.Close()
			if slow >= 2 {
				break // the rest would take a second each
			}
		}
		return b.fastBytes() - f0, slow
	}
	fast, slow := churn(16)
	limit, consumed, err := b.nft.Quota()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("new connection per MiB: %d fast bytes against a %d byte quota (%+.2f%%), %d slow connections; quota limit %d, counted %d", fast, level, 100*(float64(fast)/level-1), slow, limit, consumed)
	// Each connection's handshake and request add a few hundred bytes
	// that the quota counts too.
	if fast < level-256<<10 || fast > level+64<<10 {
		t.Errorf("the fast class carried %d bytes, want the %d byte quota", fast, level)
	}
	if slow == 0 {
		t.Error("no connection was slowed once the quota was spent")
	}
	if limit != level || consumed < level {
		t.Errorf("quota: limit %d, counted %d", limit, consumed)
	}
	// The watcher's refill: 4 MiB more.
	if err := b.nft.SetLimit(consumed + 4<<20); err != nil {
		t.Fatal(err)
	}
	fast, _ = churn(16)
	t.Logf("after raising the limit by 4 MiB: %d fast bytes", fast)
	if fast < 4<<20-256<<10 || fast > 4<<20+64<<10 {
		t.Errorf("after raising the limit by 4 MiB the fast class carried %d bytes", fast)
	}
}

// TestIntegrationRecentGate shows the fallback gate as a dead-man's switch:
// open while the watcher refreshes it, closed RecentWindowSeconds after the
// last refresh or at once when closed.
func TestIntegrationRecentGate(t *testing.T) {
	b := newBed(t, 39, 1*units.GiB, GateRecent, xtables.NFT)
	b.Pod.ServeBulk(8888)
	g := RecentGate{IPv6: true}
	set := func(open bool) {
		t.Helper()
		if err := b.Pod.Do(func() error { return g.Set(open) }); err != nil {
			t.Fatal(err)
		}
	}
	fetch := func(fam string) (time.Duration, uint32) {
		addr := net.JoinHostPort(b.PodIP4, "8888")
		if fam == "ipv6" {
			addr = net.JoinHostPort(b.PodIP6, "8888")
		}
		s := b.Peer.Sender(addr)
		d, err := s.Fetch(512 << 10)
		if err != nil {
			t.Fatal(err)
		}
		f := b.flow(t, s)
		s.Conn.Close()
		return d, f.Mark
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		set(true)
		d, mark := fetch(fam)
		t.Logf("%s open: 512 KiB in %v, mark %#x", fam, d, mark)
		if mark&b.c.Demoted() != 0 {
			t.Errorf("%s: a flow was demoted with the gate freshly open (mark %#x)", fam, mark)
		}
		set(false)
		d, mark = fetch(fam)
		t.Logf("%s closed: 512 KiB in %v, mark %#x", fam, d, mark)
		if mark&b.c.Demoted() == 0 || d < 250*time.Millisecond {
			t.Errorf("%s: with the gate closed a flow got 512 KiB in %v (mark %#x)", fam, d, mark)
		}
	}
	// The dead man: opened once, not refreshed.
	set(true)
	time.Sleep(RecentWindowSeconds*time.Second + 500*time.Millisecond)
	if _, mark := fetch("ipv4"); mark&b.c.Demoted() == 0 {
		t.Errorf("%ds after the last refresh the gate is still open (mark %#x)", RecentWindowSeconds, mark)
	}
	err := RecentGate{Dir: t.TempDir()}.Set(true)
	if err == nil || !strings.Contains(err.Error(), RecentName(xtables.IPv4)) {
		t.Errorf("setting a gate that does not exist: %v", err)
	}
}

// TestIntegrationNFT checks the quota gate's apply, check and repair: apply
// twice changes nothing the second time; drift is found and repaired
// without touching the quota (the pod bucket); the quota counts only the
// pod's fast bytes on the planned interface; Remove removes it.
func TestIntegrationNFT(t *testing.T) {
	nstest.SkipUnlessRoot(t, "nft")
	p := nstest.NewPair(t, 36)
	n, err := OpenNFT(p.Pod.FD())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.Probe(); err != nil {
		t.Fatalf("probe: %v", err)
	}
	g := QuotaGate{Interface: "eth0", Contract: mustContract(t, 0x100000, 64*units.MiB)}
	if d, err := n.Check(g); err != nil || !strings.Contains(d, "missing") {
		t.Errorf("check before apply = %q, %v", d, err)
	}
	if changed, err := n.Apply(g, 5000); err != nil || !changed {
		t.Fatalf("first apply = %v, %v", changed, err)
	}
	if d, err := n.Check(g); err != nil || d != "" {
		t.Errorf("check after apply = %q, %v", d, err)
	}
	listed := p.Pod.MustRun("nft", "list", "table", "inet", NFTTable)
	want := strings.Split(g.String(), "\n")[7] // the rule line
	if !strings.Contains(listed, strings.TrimSpace(want)) {
		t.Errorf("nft lists:\n%s\nwant the rule %s", listed, want)
	}
	if changed, err := n.Apply(g, 5000); err != nil || changed {
		t.Errorf("second apply = %v, %v, want no change", changed, err)
	}
	// Traffic: the quota counts what leaves eth0 on flows not demoted.
	p.Peer.ServeBulk(9000)
	s := p.Pod.DialRetry(net.JoinHostPort(p.PeerIP4, "9000"))
	if _, err := s.Write(make([]byte, 3000)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	limit, used, err := n.Quota()
	if err != nil || limit != 5000 || used < 3000 {
		t.Errorf("quota after 3000 bytes sent: limit %d, used %d, %v", limit, used, err)
	}
	if err := n.SetLimit(used + 1<<20); err != nil {
		t.Fatal(err)
	}
	if l2, u2, err := n.Quota(); err != nil || l2 != used+1<<20 || u2 < used {
		t.Errorf("after SetLimit: limit %d used %d (%v), want %d and at least %d", l2, u2, err, used+1<<20, used)
	}
	// Drift: the rule removed by hand; a re-apply restores it and leaves
	// the quota alone.
	_, used, _ = n.Quota()
	p.Pod.MustRun("nft", "flush", "chain", "inet", NFTTable, NFTChain)
	if d, err := n.Check(g); err != nil || !strings.Contains(d, "0 rules") {
		t.Errorf("check after the rule was removed = %q, %v", d, err)
	}
	if changed, err := n.Apply(g, 0); err != nil || !changed {
		t.Errorf("repair = %v, %v", changed, err)
	}
	if l3, u3, err := n.Quota(); err != nil || l3 != used+1<<20 || u3 < used {
		t.Errorf("the repair touched the quota: limit %d used %d (%v)", l3, u3, err)
	}
	if d, err := n.Check(g); err != nil || d != "" {
		t.Errorf("check after repair = %q, %v", d, err)
	}
	// Another interface is drift too.
	if d, _ := n.Check(QuotaGate{Interface: "eth1", Contract: g.Contract}); !strings.Contains(d, "differs") {
		t.Errorf("check against another interface = %q", d)
	}
	if err := n.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := n.Quota(); err == nil {
		t.Error("the quota is still there after Remove")
	}
	if err := n.Remove(); err != nil {
		t.Errorf("removing twice: %v", err)
	}
	// Without NET_ADMIN the quota cannot be changed: the notebook cannot
	// refill its own budget (the recent gate's /proc file has no such
	// protection).
	if _, err := n.Apply(g, 1000); err != nil {
		t.Fatal(err)
	}
	out, err := p.Pod.Run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
		"nft", "add", "quota", "inet", NFTTable, NFTQuota, "{", "over", "999999999", "bytes", "}")
	if err == nil {
		t.Errorf("an unprivileged user changed the quota: %s", out)
	}
	if l, _, _ := n.Quota(); l != 1000 {
		t.Errorf("quota limit %d after the unprivileged attempt, want 1000", l)
	}
	var exitErr interface{ ExitCode() int }
	if errors.As(err, &exitErr) {
		t.Logf("unprivileged nft: exit %d: %s", exitErr.ExitCode(), strings.TrimSpace(out))
	}
}
