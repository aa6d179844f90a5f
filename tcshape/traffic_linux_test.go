//go:build linux

package tcshape

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/hubwarden/hubwarden/internal/nstest"
	"github.com/hubwarden/hubwarden/xtables"
)

// The traffic tests follow the real direction: the peer (the proxy) connects
// to a server in the pod (the notebook), and the pod sends, so its bytes
// are the reply direction of the connection and leave through the shaped
// eth0.

const (
	modeBulk = 'B' // then 8 bytes: max pacing rate in bytes/s, 0 for none
	modeEcho = 'E' // then 64-byte requests, each answered with 512 bytes
)

// podServer starts the pod's server on port, both families.
func podServer(t *testing.T, p *nstest.Pair, port int) {
	t.Helper()
	p.Pod.Serve(fmt.Sprintf("[::]:%d", port), serve)
}

func serve(c net.Conn) {
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case modeBulk:
		var r [8]byte
		if _, err := io.ReadFull(c, r[:]); err != nil {
			return
		}
		if pace := binary.BigEndian.Uint64(r[:]); pace != 0 {
			raw, _ := c.(*net.TCPConn).SyscallConn()
			_ = raw.Control(func(fd uintptr) {
				_ = unix.SetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, pace)
			})
		}
		nstest.Blast(context.Background(), c)
	case modeEcho:
		req, resp := make([]byte, 64), make([]byte, 512)
		for {
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			if _, err := c.Write(resp); err != nil {
				return
			}
		}
	}
}

// dial connects from the peer to the pod's server.
func dial(t *testing.T, p *nstest.Pair, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	for range 3 { // the first IPv6 packet can be lost to neighbour discovery
		if c, err = p.Peer.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type sample struct {
	at    time.Time
	bytes int64
}

// bulk is a running download from the pod: bytes received, sampled every
// few milliseconds.
type bulk struct {
	conn    net.Conn
	port    int // the pod side's port
	got     atomic.Int64
	mu      sync.Mutex
	samples []sample
	stop    chan struct{}
	done    sync.WaitGroup
}

func startBulk(t *testing.T, p *nstest.Pair, addr string, pace uint64) *bulk {
	t.Helper()
	c := dial(t, p, addr)
	var hdr [9]byte
	hdr[0] = modeBulk
	binary.BigEndian.PutUint64(hdr[1:], pace)
	if _, err := c.Write(hdr[:]); err != nil {
		t.Fatal(err)
	}
	b := &bulk{conn: c, port: c.RemoteAddr().(*net.TCPAddr).Port, stop: make(chan struct{})}
	b.done.Add(2)
	go func() {
		defer b.done.Done()
		_ = nstest.Drain(c, &b.got)
	}()
	go func() {
		defer b.done.Done()
		tk := time.NewTicker(2 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-b.stop:
				return
			case now := <-tk.C:
				b.mu.Lock()
				b.samples = append(b.samples, sample{now, b.got.Load()})
				b.mu.Unlock()
			}
		}
	}()
	t.Cleanup(b.close)
	return b
}

func (b *bulk) close() {
	select {
	case <-b.stop:
		return
	default:
	}
	close(b.stop)
	b.conn.Close()
	b.done.Wait()
}

// at returns the bytes received by time t (the last sample not after t).
func (b *bulk) at(t time.Time) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := sort.Search(len(b.samples), func(i int) bool { return b.samples[i].at.After(t) })
	if i == 0 {
		return 0
	}
	return b.samples[i-1].bytes
}

// rate returns the goodput in bytes/s between two times.
func (b *bulk) rate(from, to time.Time) float64 {
	return float64(b.at(to)-b.at(from)) / to.Sub(from).Seconds()
}

// waitUntil polls until time t has passed (samples are taken meanwhile).
func waitUntil(t time.Time) { time.Sleep(time.Until(t)) }

// measure runs one bulk transfer for d after a short warm-up and returns
// its goodput in bytes/s.
func measure(t *testing.T, p *nstest.Pair, addr string, pace uint64, d time.Duration) float64 {
	b := startBulk(t, p, addr, pace)
	from := time.Now().Add(200 * time.Millisecond)
	to := from.Add(d)
	waitUntil(to.Add(5 * time.Millisecond))
	r := b.rate(from, to)
	b.close()
	return r
}

// shape applies hubwarden's tc tree and mangle rules in the pod, as the
// sidecar does, and turns conntrack accounting on.
func shape(t *testing.T, p *nstest.Pair, cfg Config) (*TC, Spec) {
	t.Helper()
	k, cfg := openPod(t, p, cfg)
	spec, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(context.Background(), k, spec, zerolog.New(zerolog.NewTestWriter(t)), false); err != nil {
		t.Fatal(err)
	}
	if err := p.Pod.Do(EnableAccounting); err != nil {
		t.Fatal(err)
	}
	tables, err := MangleTables(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The mangle tables go in through xtables, as the sidecar applies them,
	// and must then check clean: what iptables-save prints back is what
	// was planned (the hashlimit rate and burst included).
	x := xtables.New(xtables.NFT, xtables.ExecRunner{LockFile: filepath.Join(t.TempDir(), "xtables.lock")}, zerolog.New(zerolog.NewTestWriter(t)))
	if err := p.Pod.Do(func() error {
		if _, err := x.Apply(context.Background(), tables); err != nil {
			return err
		}
		drift, err := x.Check(context.Background(), tables)
		if err == nil && len(drift) > 0 {
			err = fmt.Errorf("drift right after apply: %+v", drift)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return k, spec
}

func unshape(t *testing.T, k *TC) {
	t.Helper()
	if err := k.Do("eth0", Op{Kind: OpDeleteRoot}); err != nil {
		t.Fatal(err)
	}
}

func mbit(bps float64) string { return fmt.Sprintf("%.1f Mbit/s", bps*8/1e6) }

func TestIntegrationFastClassThroughput(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-restore")
	p := nstest.NewPair(t, 31)
	podServer(t, p, 8888)
	addr := net.JoinHostPort(p.PodIP4, "8888")
	cfg := Config{FastRate: mustRate(t, "10gbit"), SlowRate: mustRate(t, "8mbit"), CTMark: 0x100000, IPv6: true,
		Backstop: true, BackstopBudget: 3 << 30, BackstopRate: 1 << 30} // a backstop that never fires, but runs
	const pace = 250_000_000 // 2 Gbit/s: what a real proxy path reaches
	const d = 1500 * time.Millisecond
	var base, hw, baseRaw, hwRaw float64
	k, _ := shape(t, p, cfg)
	unshape(t, k)
	// Two rounds, back to back, best of each: the machine is shared.
	for round := range 2 {
		base = max(base, measure(t, p, addr, pace, d))
		baseRaw = max(baseRaw, measure(t, p, addr, 0, d))
		if _, err := Apply(context.Background(), k, mustPlan(t, k, cfg), zerolog.Nop(), false); err != nil {
			t.Fatal(err)
		}
		hw = max(hw, measure(t, p, addr, pace, d))
		hwRaw = max(hwRaw, measure(t, p, addr, 0, d))
		unshape(t, k)
		t.Logf("round %d: paced 2gbit: none %s, hubwarden %s; unpaced: none %s, hubwarden %s", round, mbit(base), mbit(hw), mbit(baseRaw), mbit(hwRaw))
	}
	t.Logf("fast class / no qdisc at 2 Gbit/s: %.3f; raw veth (10gbit fast class / no qdisc): %.3f", hw/base, hwRaw/baseRaw)
	if hw < 0.9*base {
		t.Errorf("fast class gets %s, less than 0.9x the %s without hubwarden", mbit(hw), mbit(base))
	}
}

func mustPlan(t *testing.T, k *TC, cfg Config) Spec {
	t.Helper()
	cfg, err := k.Detect(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	s, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// dropTime returns the first time after from at which the goodput over the
// next window is at most limit bytes/s.
func (b *bulk) dropTime(from time.Time, window time.Duration, limit float64) (time.Time, bool) {
	for at := from; at.Before(from.Add(2 * time.Second)); at = at.Add(2 * time.Millisecond) {
		if b.rate(at, at.Add(window)) <= limit {
			return at, true
		}
	}
	return time.Time{}, false
}

func TestIntegrationDemote(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-restore", "conntrack", "stdbuf", "tc")
	for i, fam := range []string{"ipv4", "ipv6"} {
		t.Run(fam, func(t *testing.T) {
			p := nstest.NewPair(t, 32+i)
			podServer(t, p, 8888)
			addr := net.JoinHostPort(p.PodIP4, "8888")
			if fam == "ipv6" {
				addr = net.JoinHostPort(p.PodIP6, "8888")
			}
			cfg := Config{FastRate: mustRate(t, "10gbit"), SlowRate: mustRate(t, "8mbit"), CTMark: 0x100000, IPv6: true}
			shape(t, p, cfg)
			slow := float64(cfg.SlowRate)
			events := watchMarkEvents(t, p, fam)
			b := startBulk(t, p, addr, 0)
			time.Sleep(400 * time.Millisecond)
			before := b.rate(time.Now().Add(-200*time.Millisecond), time.Now())
			start := time.Now()
			p.Pod.MustRun("conntrack", "-U", "-f", fam, "-p", "tcp", "--orig-port-dst", "8888", "--mark", "0x100000/0x100000")
			returned := time.Now()
			var marked time.Time // when the kernel's mark event reached us: at or just after the mark
			select {
			case marked = <-events:
			case <-time.After(time.Second):
				t.Fatal("no conntrack event for the mark update")
			}
			waitUntil(marked.Add(2600 * time.Millisecond))
			drop, ok := b.dropTime(start, 50*time.Millisecond, 2*slow)
			if !ok {
				t.Fatalf("the flow never dropped to the slow rate (before: %s)", mbit(before))
			}
			agg := b.rate(marked.Add(500*time.Millisecond), marked.Add(2500*time.Millisecond))
			ct := p.Pod.MustRun("conntrack", "-L", "-f", fam, "-p", "tcp", "--orig-port-dst", "8888")
			cls := p.Pod.MustRun("tc", "-s", "class", "show", "dev", "eth0", "classid", SlowClass.String())
			t.Logf("before %s; conntrack -U ran %v, its event came %v after it started; the rate fell below 2x slow %v after the event, %v after conntrack started; demoted goodput %s (%.3f of %s)\n%s%s",
				mbit(before), returned.Sub(start).Round(time.Millisecond), marked.Sub(start).Round(time.Millisecond),
				drop.Sub(marked).Round(time.Millisecond), drop.Sub(start).Round(time.Millisecond), mbit(agg), agg/slow, mbit(slow), ct, cls)
			// The mark was set between the start of conntrack -U and its
			// event: drop-start bounds the delay from above, drop-event
			// from below. Assert the upper bound, unless the machine was so
			// busy that starting conntrack alone took most of the 100 ms.
			if returned.Sub(start) < 60*time.Millisecond {
				if d := drop.Sub(start); d > 100*time.Millisecond {
					t.Errorf("the flow took up to %v after the mark to drop to the slow rate, want at most 100ms", d)
				}
			} else if d := drop.Sub(marked); d > 100*time.Millisecond {
				t.Errorf("the flow took %v after the mark event to drop to the slow rate, want at most 100ms", d)
			}
			if agg < 0.85*slow || agg > 1.15*slow {
				t.Errorf("demoted goodput %s is not within 15%% of the slow rate %s", mbit(agg), mbit(slow))
			}
			if !strings.Contains(ct, "mark=1048576") || !strings.Contains(ct, "bytes=") {
				t.Errorf("conntrack shows no mark or no byte counters (accounting off?):\n%s", ct)
			}
		})
	}
}

// watchMarkEvents runs conntrack -E in the pod and sends the time at which
// the update event of a mark on the flow to port 8888 arrives: the kernel
// emits it while it sets the mark, so it times the mark within the event
// delivery delay.
func watchMarkEvents(t *testing.T, p *nstest.Pair, fam string) <-chan time.Time {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := p.Pod.Cmd(ctx, "stdbuf", "-oL", "conntrack", "-E", "-e", "UPDATE", "-f", fam, "-p", "tcp", "--orig-port-dst", "8888")
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = c.Wait() })
	ch := make(chan time.Time, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "mark=1048576") {
				ch <- time.Now()
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond) // let conntrack subscribe
	return ch
}

// echoP95 runs n request/response exchanges on one connection and returns
// the 95th percentile round trip.
func echoP95(t *testing.T, c net.Conn, n int) time.Duration {
	t.Helper()
	req, resp := make([]byte, 64), make([]byte, 512)
	rtts := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	return rtts[n*95/100]
}

func TestIntegrationLatencyBesideDemoted(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-restore", "conntrack")
	p := nstest.NewPair(t, 34)
	podServer(t, p, 8888)
	podServer(t, p, 8889)
	cfg := Config{FastRate: mustRate(t, "10gbit"), SlowRate: mustRate(t, "8mbit"), CTMark: 0x100000}
	shape(t, p, cfg)
	echo := dial(t, p, net.JoinHostPort(p.PodIP4, "8889"))
	if _, err := echo.Write([]byte{modeEcho}); err != nil {
		t.Fatal(err)
	}
	echoP95(t, echo, 100) // warm up
	idle := echoP95(t, echo, 1000)
	b := startBulk(t, p, net.JoinHostPort(p.PodIP4, "8888"), 0)
	time.Sleep(300 * time.Millisecond)
	fastBulk := echoP95(t, echo, 1000) // for the record: beside an undemoted bulk flow
	p.Pod.MustRun("conntrack", "-U", "-f", "ipv4", "-p", "tcp", "--orig-port-dst", "8888", "--mark", "0x100000/0x100000")
	time.Sleep(300 * time.Millisecond)
	demoted := echoP95(t, echo, 1000)
	b.close()
	idle2 := echoP95(t, echo, 1000)
	ref := max(idle, idle2)
	t.Logf("echo p95: idle %v / %v, beside a fast bulk flow %v, beside a demoted bulk flow %v (%.2fx idle)", idle, idle2, fastBulk, demoted, float64(demoted)/float64(ref))
	// Idle round trips here are tens of microseconds, where a busy shared
	// machine alone adds jitter of that order; so the bound is 1.5x idle or
	// idle + 200us, whichever is larger. Queueing behind the demoted flow
	// would cost far more: one 1514-byte frame at 8 Mbit/s takes 1.5 ms, a
	// 64 KB GSO packet 65 ms.
	if limit := max(ref*3/2, ref+200*time.Microsecond); demoted > limit {
		t.Errorf("p95 beside a demoted flow %v is above %v (idle %v)", demoted, limit, ref)
	}
}

func TestIntegrationBackstop(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-restore", "conntrack")
	p := nstest.NewPair(t, 35)
	podServer(t, p, 8888)
	const budget = 4 << 20
	cfg := Config{FastRate: mustRate(t, "10gbit"), SlowRate: mustRate(t, "8mbit"), CTMark: 0x100000,
		Backstop: true, BackstopBudget: budget, BackstopRate: 1 << 20}
	shape(t, p, cfg)
	slow := float64(cfg.SlowRate)
	start := time.Now()
	b := startBulk(t, p, net.JoinHostPort(p.PodIP4, "8888"), 0)
	waitUntil(start.Add(2500 * time.Millisecond))
	drop, ok := b.dropTime(start, 100*time.Millisecond, 2*slow)
	ct := p.Pod.MustRun("conntrack", "-L", "-f", "ipv4", "-p", "tcp", "--orig-port-dst", "8888")
	if !ok {
		t.Fatalf("no demotion without a watcher; received %d bytes\n%s", b.got.Load(), ct)
	}
	at := b.at(drop)
	after := b.rate(drop.Add(500*time.Millisecond), start.Add(2500*time.Millisecond))
	t.Logf("demoted by the backstop after %d bytes (budget %d, %.2fx) at %v; then %s\n%s", at, budget, float64(at)/budget, drop.Sub(start).Round(time.Millisecond), mbit(after), ct)
	if !strings.Contains(ct, "mark=1048576") {
		t.Errorf("the backstop did not mark the flow:\n%s", ct)
	}
	// hashlimit lets budget + about one second of its rate through fast.
	if at < budget*9/10 || at > budget*2+1<<20 {
		t.Errorf("demoted after %d bytes, want about the %d byte budget", at, budget)
	}
	if after > 1.15*slow {
		t.Errorf("after demotion %s, above the slow rate %s", mbit(after), mbit(slow))
	}
}
