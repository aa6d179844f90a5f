//go:build linux

package ctwatch

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/conntrack"
	"github.com/hubwarden/hubwarden/internal/nstest"
	"github.com/hubwarden/hubwarden/units"
)

const (
	itMark     = 0x100000
	itPort     = 8888
	itSlowRate = 1_000_000 // bytes/s: the slow class is 8mbit
)

// bed is a pod and a peer namespace with conntrack accounting on and the
// shaping of e2e-bed.md §6 on the pod's eth0: a 10gbit fast class, an 8mbit
// slow class, and mangle CLASSIFY of flows whose mark has itMark. A server
// in the pod sends what the peer asks for.
type bed struct {
	t      *testing.T
	pair   *nstest.Pair
	conn   *conntrack.Conn
	srv    *server
	txPath string
	gate   Gate // the pod gate (kernelRules), nil without
}

func newBed(t *testing.T, idx int) *bed {
	nstest.SkipUnlessRoot(t, "tc", "iptables", "ip6tables", "conntrack")
	p := nstest.NewPair(t, idx)
	pod := p.Pod
	pod.MustRun("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1", "net.netfilter.nf_conntrack_events=1")
	for _, c := range [][]string{
		{"qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "10"},
		{"class", "add", "dev", "eth0", "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit", "ceil", "10gbit", "burst", "1m", "cburst", "1m", "quantum", "200000"},
		{"class", "add", "dev", "eth0", "parent", "1:1", "classid", "1:10", "htb", "rate", "10gbit", "ceil", "10gbit", "burst", "1m", "cburst", "1m", "quantum", "200000", "prio", "0"},
		{"class", "add", "dev", "eth0", "parent", "1:1", "classid", "1:20", "htb", "rate", "8mbit", "ceil", "8mbit", "burst", "15k", "cburst", "15k", "quantum", "1514", "prio", "1"},
		{"qdisc", "add", "dev", "eth0", "parent", "1:10", "handle", "10:", "pfifo", "limit", "1000"},
		{"qdisc", "add", "dev", "eth0", "parent", "1:20", "handle", "20:", "bfifo", "limit", "256kb"},
	} {
		pod.MustRun("tc", c...)
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		pod.MustRun(ipt, "-t", "mangle", "-A", "POSTROUTING", "-o", "eth0",
			"-m", "connmark", "--mark", fmt.Sprintf("%#x/%#x", itMark, itMark),
			"-m", "comment", "--comment", "hubwarden-test/slow-class",
			"-j", "CLASSIFY", "--set-class", "1:20")
		// Counts what leaves undemoted, in conntrack's units (an IP packet,
		// a GSO packet's headers once), after hubwarden's chain (which is
		// hooked first) has had its say: fastSent.
		pod.MustRun(ipt, "-t", "mangle", "-A", "POSTROUTING", "-o", "eth0",
			"-m", "connmark", "!", "--mark", fmt.Sprintf("%#x/%#x", itMark, itMark),
			"-m", "comment", "--comment", "hubwarden-test/fast-bytes")
	}
	// The conntrack rule above makes the namespace track; the sysctl takes
	// effect for flows created from now on.
	c, err := conntrack.Dial(conntrack.Config{NetNS: pod.FD()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	b := &bed{t: t, pair: p, conn: c}
	b.srv = startServer(pod)
	sleeper := pod.Start("sleep", "3600")
	b.txPath = fmt.Sprintf("/proc/%d/net/dev", sleeper.Process.Pid)
	return b
}

func (b *bed) config() Config {
	c := testConfig() // the simulation's, with a smaller flow budget
	c.FlowBudget = 32 * units.MiB
	c.CTMark = itMark
	c.User, c.Server, c.StateDir = "jovyan", "it", b.t.TempDir()
	c.LocalAddrs = []netip.Addr{netip.MustParseAddr(b.pair.PodIP4), netip.MustParseAddr(b.pair.PodIP6)}
	return c
}

// runWatcher starts a watcher; stop cancels it and waits for Run to return.
func (b *bed) runWatcher(cfg Config, log *auditLog) (w *Watcher, stop func()) {
	b.t.Helper()
	return b.startWatcher(cfg, log, true)
}

// runWatcherNoEvents is runWatcher for a kernel that delivers no conntrack
// events: only dumps, single reads and the transmit-counter trigger.
func (b *bed) runWatcherNoEvents(cfg Config, log *auditLog) (w *Watcher, stop func()) {
	b.t.Helper()
	return b.startWatcher(cfg, log, false)
}

func (b *bed) startWatcher(cfg Config, log *auditLog, withEvents bool) (w *Watcher, stop func()) {
	b.t.Helper()
	dumper, err := conntrack.Dial(conntrack.Config{NetNS: b.pair.Pod.FD()})
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { dumper.Close() })
	w = New(cfg, b.conn, zerolog.New(log).Level(zerolog.InfoLevel), Options{Tx: TxBytes(b.txPath), Dumper: dumper, Gate: b.gate})
	ctx, cancel := context.WithCancel(context.Background())
	var events <-chan conntrack.Event
	var errs <-chan error
	if withEvents {
		events, errs = b.conn.Listen(ctx)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, events, errs) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				b.t.Errorf("watcher: %v", err)
			}
		})
	}
	b.t.Cleanup(stop)
	poll(b.t, 5*time.Second, "the first dump", func() bool { return w.Stats().Dumps > 0 })
	return w, stop
}

// server sends what it is asked for: it reads an 8-byte length and writes
// that many bytes, as often as the client asks on one connection.
type server struct {
	sent atomic.Int64
}

func startServer(ns *nstest.NS) *server {
	s := &server{}
	ns.Serve("[::]:"+strconv.Itoa(itPort), s.serve)
	return s
}

func (s *server) serve(c net.Conn) {
	buf := make([]byte, 64<<10)
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		for n := int64(binary.BigEndian.Uint64(hdr[:])); n > 0; {
			k, err := c.Write(buf[:min(n, int64(len(buf)))])
			n -= int64(k)
			s.sent.Add(int64(k))
			if err != nil {
				return
			}
		}
	}
}

// client is one keep-alive connection from the peer to the pod's server.
type client struct {
	c    net.Conn
	read atomic.Int64
}

func (b *bed) dial(addr string) *client {
	b.t.Helper()
	return b.dialWith(addr, net.Dialer{})
}

// dialWith is dial with the given dialer's options.
func (b *bed) dialWith(addr string, d net.Dialer) *client {
	b.t.Helper()
	cl := &client{}
	if err := b.pair.Peer.Do(func() (err error) {
		cl.c, err = d.Dial("tcp", net.JoinHostPort(addr, strconv.Itoa(itPort)))
		return err
	}); err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { cl.c.Close() })
	return cl
}

// orig is the flow's original tuple (the peer opened it).
func (cl *client) orig() conntrack.Tuple {
	l := netip.MustParseAddrPort(cl.c.LocalAddr().String())
	r := netip.MustParseAddrPort(cl.c.RemoteAddr().String())
	return conntrack.Tuple{Proto: 6, Src: l.Addr().Unmap(), Dst: r.Addr().Unmap(), SrcPort: l.Port(), DstPort: r.Port()}
}

// get asks for n bytes and reads them; it returns how long that took.
func (cl *client) get(n int64) (time.Duration, error) {
	start := time.Now()
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(n))
	if _, err := cl.c.Write(hdr[:]); err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	for n > 0 {
		k, err := cl.c.Read(buf[:min(n, int64(len(buf)))])
		n -= int64(k)
		cl.read.Add(int64(k))
		if err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// auditLog collects the watcher's JSON lines; onLine runs as each is
// written, so a test can sample its counters at that moment.
type auditLog struct {
	mu     sync.Mutex
	lines  []map[string]any
	onLine func(map[string]any)
}

func (l *auditLog) Write(p []byte) (int, error) {
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		return 0, err
	}
	l.mu.Lock()
	l.lines = append(l.lines, m)
	f := l.onLine
	l.mu.Unlock()
	if f != nil {
		f(m)
	}
	return len(p), nil
}

// find returns the lines of the given audit kind for the flow whose peer
// port is port (0: any).
func (l *auditLog) find(kind string, port uint16) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.lines {
		if m[FieldAudit] == kind && (port == 0 || m[FieldPeerPort] == float64(port)) {
			out = append(out, m)
		}
	}
	return out
}

// poll waits for cond, up to timeout.
func poll(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// alternate times n requests of size bytes on a and on b, one after the
// other, and returns the median of each.
func alternate(t *testing.T, n int, size int64, a, b *client) (ma, mb time.Duration) {
	t.Helper()
	var da, db []time.Duration
	for range n {
		for _, x := range []struct {
			cl *client
			d  *[]time.Duration
		}{{a, &da}, {b, &db}} {
			d, err := x.cl.get(size)
			if err != nil {
				t.Fatal(err)
			}
			*x.d = append(*x.d, d)
		}
	}
	med := func(d []time.Duration) time.Duration {
		slices.Sort(d)
		return d[len(d)/2]
	}
	return med(da), med(db)
}

func num(m map[string]any, k string) float64 { f, _ := m[k].(float64); return f }

func TestIntegrationDemotion(t *testing.T) {
	b := newBed(t, 50)
	type famCase struct{ name, addr string }
	var cases []struct {
		fam    famCase
		budget units.Size
	}
	for _, budget := range []units.Size{32 * units.MiB, 256 * units.MiB} {
		for _, fam := range []famCase{{"IPv4", b.pair.PodIP4}, {"IPv6", b.pair.PodIP6}} {
			cases = append(cases, struct {
				fam    famCase
				budget units.Size
			}{fam, budget})
		}
	}
	for _, tc := range cases {
		fam := tc.fam
		t.Run(fam.name+"/"+tc.budget.String(), func(t *testing.T) {
			b.t = t
			cfg := b.config()
			cfg.FlowBudget = tc.budget
			cfg.PodBudget = 4 * tc.budget
			log := &auditLog{}
			w, stop := b.runWatcher(cfg, log)
			defer func() {
				if t.Failed() {
					t.Logf("stats %+v", w.Stats())
					fl, err := b.conn.Dump(context.Background())
					t.Logf("dump %+v %v", fl, err)
					out, _ := b.pair.Pod.Run("conntrack", "-L")
					t.Logf("%s", out)
					log.mu.Lock()
					t.Logf("%v", log.lines)
					log.mu.Unlock()
				}
			}()
			cl := b.dial(fam.addr)
			if _, err := cl.get(1); err != nil { // handshake done, flow known
				t.Fatal(err)
			}
			port := cl.orig().SrcPort
			var atDemote struct{ read, sent int64 }
			var demotedAt time.Time
			var mu sync.Mutex
			log.mu.Lock()
			log.onLine = func(m map[string]any) {
				if m[FieldAudit] == "demote" && m[FieldPeerPort] == float64(port) {
					mu.Lock()
					atDemote.read, atDemote.sent, demotedAt = cl.read.Load(), b.srv.sent.Load(), time.Now()
					mu.Unlock()
				}
			}
			log.mu.Unlock()
			sent0 := b.srv.sent.Load()
			start := time.Now()
			want := int64(cfg.FlowBudget) + 16<<20
			errc := make(chan error, 1)
			go func() { _, err := cl.get(want); errc <- err }()
			poll(t, 10*time.Second, "the demotion", func() bool { return len(log.find("demote", port)) > 0 })
			d := log.find("demote", port)[0]
			mu.Lock()
			fastDur := demotedAt.Sub(start)
			readAtDemote, sentAtDemote := atDemote.read, atDemote.sent-sent0
			mu.Unlock()
			// The slow phase: let the receiver drain what its socket buffer
			// holds, then measure its rate over a second.
			time.Sleep(500 * time.Millisecond)
			r0, t0 := cl.read.Load(), time.Now()
			time.Sleep(time.Second)
			slowRate := float64(cl.read.Load()-r0) / time.Since(t0).Seconds()
			fastRate := float64(readAtDemote) / fastDur.Seconds()
			budget := float64(cfg.FlowBudget)
			over := num(d, FieldOvershoot)
			t.Logf("%s: fast %.0f MB/s, slow %.2f MB/s; watcher: demoted at %.0f conntrack bytes, overshoot %+.0f bytes (%+.2f%% of %s); sender had written %d (%+.2f%%), receiver had read %d (%+.2f%%) when the demote line was written",
				fam.name, fastRate/1e6, slowRate/1e6, num(d, FieldDemotedAt), over, 100*over/budget, cfg.FlowBudget,
				sentAtDemote, 100*(float64(sentAtDemote)-budget)/budget, readAtDemote, 100*(float64(readAtDemote)-budget)/budget)
			if d[FieldReason] != "flow_budget" {
				t.Errorf("demotion reason %v", d[FieldReason])
			}
			// At about 1 GB/s, 32 MiB last 33 ms and 5% of it 1.7 ms: less
			// than this shared 2-core machine's scheduling noise (wake-ups
			// come 5-50 ms late under load). 256 MiB leave 13 ms.
			// 32 MiB is measured and logged, not asserted: at about 1 GB/s
			// it lasts 33 ms, and on a loaded shared machine the watcher
			// now and then stalls longer than that (a dump in progress,
			// a late wake-up), so the whole transfer can pass (docs/watcher.md).
			if over > 0.05*budget && cfg.FlowBudget >= 256*units.MiB {
				t.Errorf("the watcher's overshoot %.0f bytes is more than 5%% of the budget", over)
			}
			if slowRate > 2*itSlowRate || fastRate < 20*slowRate {
				t.Errorf("demotion had no effect: fast %.0f B/s, slow %.0f B/s", fastRate, slowRate)
			}
			// The audit line of the finished flow: stop reading, close, let
			// the entry die (conntrack -D stands in for its timeout), and
			// compare with what the receiver read and the sender wrote.
			cl.c.Close()
			<-errc
			fam6 := "ipv4"
			if fam.name == "IPv6" {
				fam6 = "ipv6"
			}
			time.Sleep(100 * time.Millisecond) // FIN/RST exchange
			written, read := b.srv.sent.Load()-sent0+1, cl.read.Load()
			b.pair.Pod.MustRun("conntrack", "-D", "-f", fam6, "-p", "tcp", "--orig-port-src", strconv.Itoa(int(port)))
			poll(t, 5*time.Second, "the flow_end line", func() bool { return len(log.find("flow_end", port)) > 0 })
			e := log.find("flow_end", port)[0]
			sentBytes := num(e, FieldSentBytes)
			t.Logf("%s flow_end: sent_bytes %.0f; the receiver read %d payload bytes (%+.2f%%), the sender wrote %d into its socket; fast %.0f slow %.0f, demoted_at %.0f, final_counters %v",
				fam.name, sentBytes, read, 100*(sentBytes-float64(read))/float64(read), written, num(e, FieldFastBytes), num(e, FieldSlowBytes), num(e, FieldDemotedAt), e[FieldFinal])
			// Conntrack counts IP packets: headers, and in the slow phase
			// retransmissions of what the slow class's queue dropped.
			if sentBytes < float64(read) || sentBytes > 1.10*float64(written) {
				t.Errorf("flow_end sent_bytes %.0f, the receiver read %d, the sender wrote %d", sentBytes, read, written)
			}
			if e[FieldDemoted] != true || e[FieldUser] != "jovyan" || e[FieldDirection] != "in" || e[FieldFinal] != true ||
				num(e, FieldFastBytes)+num(e, FieldSlowBytes) != sentBytes {
				t.Errorf("flow_end line %v", e)
			}

			// A flow that is never demoted: its count is payload plus headers.
			cl2 := b.dial(fam.addr)
			const n = 8 << 20
			if _, err := cl2.get(n); err != nil {
				t.Fatal(err)
			}
			port2 := cl2.orig().SrcPort
			cl2.c.Close()
			time.Sleep(100 * time.Millisecond)
			b.pair.Pod.MustRun("conntrack", "-D", "-f", fam6, "-p", "tcp", "--orig-port-src", strconv.Itoa(int(port2)))
			poll(t, 5*time.Second, "the flow_end line", func() bool { return len(log.find("flow_end", port2)) > 0 })
			e2 := log.find("flow_end", port2)[0]
			sb, rb := num(e2, FieldSentBytes), num(e2, FieldRecvBytes)
			t.Logf("%s undemoted flow_end: sent_bytes %.0f for %d payload bytes (%+.2f%%), recv_bytes %.0f for 8 bytes of request, demoted %v",
				fam.name, sb, n, 100*(sb-n)/n, rb, e2[FieldDemoted])
			// Conntrack counts IP bytes: at worst (no GSO, full-MTU
			// segments) IPv6 and TCP headers with timestamps add 72 bytes
			// per 1428 of payload, 5.04%.
			if sb < n || sb > 1.06*n || e2[FieldDemoted] != false || num(e2, FieldSlowBytes) != 0 {
				t.Errorf("undemoted flow_end line %v", e2)
			}
			stop()
		})
	}
}

func TestIntegrationPromotion(t *testing.T) {
	b := newBed(t, 51)
	cfg := b.config()
	log := &auditLog{}
	w, _ := b.runWatcher(cfg, log)
	a := b.dial(b.pair.PodIP4) // carries a download, then ordinary requests
	c := b.dial(b.pair.PodIP4) // never demoted
	const small = 64 << 10
	for _, cl := range []*client{a, c} {
		if _, err := cl.get(small); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.get(int64(cfg.FlowBudget) + 1<<20); err != nil {
		t.Fatal(err)
	}
	port := a.orig().SrcPort
	poll(t, 2*time.Second, "the demotion", func() bool { return len(log.find("demote", port)) > 0 })
	sticky, err := a.get(small) // right after the download: still demoted
	if err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "the promotion", func() bool { return w.Stats().Promotions > 0 })
	p := log.find("promote", port)
	if len(p) == 0 {
		t.Fatalf("no promote line for port %d", port)
	}
	// Alternate small requests on the promoted and the never-demoted
	// connection; compare medians.
	ma, mc := alternate(t, 7, small, a, c)
	t.Logf("64 KiB request on the demoted connection: %s; after promotion: %s (median of 7); on a never-demoted connection: %s; ratios promoted/fast %.2f, demoted/fast %.0f; %d demotions, %d promotions",
		sticky.Round(time.Microsecond), ma.Round(time.Microsecond), mc.Round(time.Microsecond), float64(ma)/float64(mc), float64(sticky)/float64(mc),
		w.Stats().Demotions, w.Stats().Promotions)
	// Sub-millisecond times on a shared machine are noisy: require the
	// promoted connection to be far from the slow class and near the fast
	// path (the log line has the ratios).
	if 10*ma > sticky || ma > 8*mc+5*time.Millisecond {
		t.Errorf("after promotion a small request took %s: the never-demoted connection took %s, the demoted one %s", ma, mc, sticky)
	}
	if float64(sticky) < 10*float64(mc) {
		t.Errorf("while demoted a small request took %s, not much slower than %s: shaping had no effect", sticky, mc)
	}
	if f, err := b.conn.Get(context.Background(), a.orig()); err != nil || f.Mark&itMark != 0 {
		t.Errorf("kernel mark after promotion: %#x, %v", f.Mark, err)
	}
}

// TestIntegrationPromotionWithKeepaliveProbes: the peer probes its idle
// connection with TCP keep-alive every second, as CHP (Node's http.Agent)
// does with its pooled upstream sockets; the pod's ACKs to the probes must
// not keep the demoted connection from being promoted.
func TestIntegrationPromotionWithKeepaliveProbes(t *testing.T) {
	b := newBed(t, 80)
	cfg := b.config()
	log := &auditLog{}
	w, _ := b.runWatcher(cfg, log)
	a := b.dialWith(b.pair.PodIP4, net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 10}})
	if _, err := a.get(int64(cfg.FlowBudget) + 1<<20); err != nil {
		t.Fatal(err)
	}
	port := a.orig().SrcPort
	poll(t, 2*time.Second, "the demotion", func() bool { return len(log.find("demote", port)) > 0 })
	sent := func() uint64 {
		f, err := b.conn.Get(context.Background(), a.orig())
		if err != nil {
			t.Fatal(err)
		}
		return f.ReplyCounter.Bytes
	}
	idle := sent()
	poll(t, 10*time.Second, "the promotion", func() bool { return w.Stats().Promotions > 0 })
	// The test is only meaningful if the pod did answer probes meanwhile.
	poll(t, 5*time.Second, "a keep-alive ACK from the pod", func() bool { return sent() > idle })
	p := log.find("promote", port)
	if len(p) == 0 {
		t.Fatalf("no promote line for port %d", port)
	}
	t.Logf("promoted; the pod sent %d bytes of keep-alive ACKs after the download", sent()-idle)
}

func TestIntegrationRestartKeepsDemoted(t *testing.T) {
	b := newBed(t, 52)
	cfg := b.config()
	log1 := &auditLog{}
	w1, stop1 := b.runWatcher(cfg, log1)
	a := b.dial(b.pair.PodIP4) // a long download, demoted
	c := b.dial(b.pair.PodIP6) // light use
	if _, err := c.get(1 << 20); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := a.get(int64(cfg.FlowBudget) + 64<<20); errc <- err }()
	poll(t, 10*time.Second, "the demotion", func() bool { return w1.Stats().Demotions > 0 })
	level1 := w1.Stats().PodTokens
	stop1()
	saved, err := LoadState(cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	// While no watcher runs, the mark stays (kernel state persists).
	f, err := b.conn.Get(context.Background(), a.orig())
	if err != nil || f.Mark&itMark == 0 {
		t.Fatalf("mark %#x after the watcher stopped (%v)", f.Mark, err)
	}
	time.Sleep(500 * time.Millisecond)
	log2 := &auditLog{}
	w2, stop2 := b.runWatcher(cfg, log2)
	poll(t, 5*time.Second, "the first dump", func() bool { return w2.Stats().Dumps > 0 })
	r0 := a.read.Load()
	time.Sleep(2500 * time.Millisecond) // longer than PromoteIdle: a stays busy, so demoted
	rate := float64(a.read.Load()-r0) / 2.5
	st := w2.Stats()
	f, err = b.conn.Get(context.Background(), a.orig())
	t.Logf("first run: pod tokens %.0f at stop, saved %.0f; second run: %d flows, %d demoted, %d adopted, pod tokens %.0f; demoted flow's rate %.2f MB/s; mark %#x",
		level1, saved.PodTokens, st.Flows, st.Demoted, st.Adoptions, st.PodTokens, rate/1e6, f.Mark)
	if err != nil || f.Mark&itMark == 0 {
		t.Errorf("the demoted flow lost its mark after the restart (%v)", err)
	}
	if st.Flows < 2 || st.Demoted < 1 || st.Adoptions < 1 || len(log2.find("adopt", a.orig().SrcPort)) != 1 {
		t.Errorf("second run stats %+v", st)
	}
	var restored float64
	log2.mu.Lock()
	for _, m := range log2.lines {
		if m["message"] == "pod bucket restored" {
			restored = num(m, "pod_tokens")
		}
	}
	log2.mu.Unlock()
	elapsed := time.Since(saved.SavedAt).Seconds()
	if want := saved.PodTokens + float64(cfg.PodRefill)*elapsed; restored < saved.PodTokens || restored > want || restored >= float64(cfg.PodBudget) {
		t.Errorf("pod tokens restored at %.0f: want the saved %.0f plus at most %.0f of refill, below the budget", restored, saved.PodTokens, want-saved.PodTokens)
	}
	if rate > 2*itSlowRate {
		t.Errorf("the demoted flow ran at %.0f B/s after the restart", rate)
	}
	stop2()
	a.c.Close()
	<-errc
}
