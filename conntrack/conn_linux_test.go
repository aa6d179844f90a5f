//go:build linux

package conntrack

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/hubwarden/hubwarden/internal/nstest"
)

var updateSeeds = flag.Bool("update-seeds", false, "write flow messages captured from the kernel to testdata/fuzz/FuzzDecodeFlow")

// Subnet indexes for nstest.NewPair: this package owns 40-49.
const (
	netDump   = 40
	netMark   = 41
	netEvents = 42
	netFlood  = 43
	netBench  = 44

	flood = 5000 // UDP flows made by TestIntegrationEventsLost
)

// newBed builds a pod/peer pair, turns conntrack on in the pod namespace (it
// is lazy per namespace: a rule that uses it activates it) with accounting
// and timestamps, and dials ctnetlink there.
func newBed(tb testing.TB, subnet int) (*nstest.Pair, *Conn) {
	tb.Helper()
	nstest.SkipUnlessRoot(tb, "iptables", "ip6tables", "conntrack")
	p := nstest.NewPair(tb, subnet)
	if err := p.Pod.Do(func() error { return EnableAccounting(true) }); err != nil {
		tb.Fatal(err)
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		p.Pod.MustRun(ipt, "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW",
			"-m", "comment", "--comment", "hubwarden-test/track", "-j", "ACCEPT")
	}
	c, err := Dial(Config{NetNS: p.Pod.FD()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return p, c
}

// tcpConn opens a TCP connection from the pod to a listener in the peer and
// returns both ends and the original tuple as the pod's conntrack sees it.
func tcpConn(tb testing.TB, p *nstest.Pair, peerIP string) (client, server net.Conn, orig Tuple) {
	tb.Helper()
	var ln net.Listener
	if err := p.Peer.Do(func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(peerIP, "0"))
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	if err := p.Pod.Do(func() (err error) {
		client, err = net.Dial("tcp", ln.Addr().String())
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close(); server.Close() })
	l := client.LocalAddr().(*net.TCPAddr).AddrPort()
	r := client.RemoteAddr().(*net.TCPAddr).AddrPort()
	return client, server, Tuple{Proto: 6, Src: l.Addr().Unmap(), Dst: r.Addr().Unmap(), SrcPort: l.Port(), DstPort: r.Port()}
}

// transfer sends n bytes from one end and reads them at the other.
func transfer(tb testing.TB, from, to net.Conn, n int) {
	tb.Helper()
	werr := make(chan error, 1)
	go func() {
		_, err := from.Write(make([]byte, n))
		werr <- err
	}()
	if _, err := io.ReadFull(to, make([]byte, n)); err != nil {
		tb.Fatal(err)
	}
	if err := <-werr; err != nil {
		tb.Fatal(err)
	}
}

// retransmitted returns the bytes TCP has sent again on c (TCP_INFO).
func retransmitted(tb testing.TB, c net.Conn) uint64 {
	tb.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	var info *unix.TCPInfo
	var serr error
	if err := raw.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || serr != nil {
		tb.Fatal(err, serr)
	}
	return info.Bytes_retrans
}

func findFlow(flows []Flow, orig Tuple) (Flow, bool) {
	for _, f := range flows {
		if f.Orig == orig {
			return f, true
		}
	}
	return Flow{}, false
}

func reverse(t Tuple) Tuple {
	return Tuple{Proto: t.Proto, Src: t.Dst, Dst: t.Src, SrcPort: t.DstPort, DstPort: t.SrcPort}
}

// checkCounter asserts that c counts payload bytes plus at most maxHdr
// bytes of headers per packet.
func checkCounter(t *testing.T, name string, c Counter, payload, maxHdr uint64) {
	t.Helper()
	if c.Packets == 0 || c.Bytes < payload || c.Bytes > payload+c.Packets*maxHdr {
		t.Errorf("%s counter = %+v, want bytes in [%d, %d+packets*%d]", name, c, payload, payload, maxHdr)
	}
}

func TestIntegrationDumpGet(t *testing.T) {
	p, c := newBed(t, netDump)
	ctx := t.Context()
	if err := p.Pod.Do(func() error {
		acct, ts, err := Accounting()
		if err == nil && (!acct || !ts) {
			err = fmt.Errorf("accounting %v, timestamps %v after EnableAccounting", acct, ts)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	const up, down = 100_000, 1_000_000
	for _, peer := range []string{p.PeerIP4, p.PeerIP6} {
		t.Run(peer, func(t *testing.T) {
			client, server, orig := tcpConn(t, p, peer)
			transfer(t, client, server, up)
			transfer(t, server, client, down)

			flows, err := c.Dump(ctx)
			if err != nil {
				t.Fatal(err)
			}
			f, ok := findFlow(flows, orig)
			if !ok {
				t.Fatalf("flow %s not in dump of %d flows", orig, len(flows))
			}
			if diff := reverse(orig); f.Reply != diff {
				t.Errorf("reply tuple = %s, want %s", f.Reply, diff)
			}
			// Up to 80 bytes of headers per counted packet (IPv6 40 + TCP 20 +
			// SYN options 20). A GSO super-packet counts once, with one header.
			// Conntrack counts what TCP sent again too: a loaded machine drops
			// a segment now and then (seen: one 64 KiB GSO packet).
			checkCounter(t, "orig", f.OrigCounter, up+retransmitted(t, client), 80)
			checkCounter(t, "reply", f.ReplyCounter, down+retransmitted(t, server), 80)
			if f.ID == 0 || f.Timeout == 0 || f.Start.IsZero() || !f.Stop.IsZero() {
				t.Errorf("flow = %+v, want an ID, a timeout and a start time", f)
			}
			if d := time.Since(f.Start); d < 0 || d > time.Minute {
				t.Errorf("flow start %v is not recent", f.Start)
			}

			g, err := c.Get(ctx, orig)
			if err != nil {
				t.Fatal(err)
			}
			if g.ID != f.ID || g.Orig != orig || g.OrigCounter.Bytes < f.OrigCounter.Bytes {
				t.Errorf("Get = %+v, want the dumped flow %+v", g, f)
			}
			gone := orig
			gone.SrcPort++
			if _, err := c.Get(ctx, gone); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get(%s) error = %v, want ErrNotFound", gone, err)
			}
		})
	}
	if *updateSeeds {
		captureSeeds(t, c)
	}
}

// captureSeeds writes the raw flow messages of a dump as fuzz seeds.
func captureSeeds(t *testing.T, c *Conn) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeFlow")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	i := 0
	err := c.exchange(t.Context(), msgGet, uint16(netlink.Dump), dumpBody(Filter{}), func(b []byte) error {
		i++
		seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		return os.WriteFile(filepath.Join(dir, fmt.Sprintf("kernel-%d", i)), []byte(seed), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestIntegrationSetMark(t *testing.T) {
	p, c := newBed(t, netMark)
	ctx := t.Context()
	for _, peer := range []string{p.PeerIP4, p.PeerIP6} {
		t.Run(peer, func(t *testing.T) {
			_, _, orig := tcpConn(t, p, peer)
			steps := []struct {
				mark, mask, want uint32
			}{
				{0xff00, 0xffffffff, 0xff00},
				{0x0001, 0x000f, 0xff01}, // set a bit, others kept
				{0x0000, 0x0f00, 0xf001}, // clear bits under the mask
				{0x1234, 0x0000, 0xf001}, // empty mask: no change
				{0x0000, 0xffffffff, 0},
			}
			for _, s := range steps {
				if err := c.SetMark(ctx, orig, s.mark, s.mask); err != nil {
					t.Fatal(err)
				}
				f, err := c.Get(ctx, orig)
				if err != nil {
					t.Fatal(err)
				}
				if f.Mark != s.want {
					t.Errorf("after SetMark(%#x, %#x): mark = %#x, want %#x", s.mark, s.mask, f.Mark, s.want)
				}
				if s.want == 0 {
					continue
				}
				fam := "ipv4"
				if orig.Src.Is6() {
					fam = "ipv6"
				}
				out := p.Pod.MustRun("conntrack", "-L", "-f", fam, "-p", "tcp", "--sport", strconv.Itoa(int(orig.SrcPort)))
				if !strings.Contains(out, "mark="+strconv.Itoa(int(s.want))+" ") {
					t.Errorf("conntrack -L shows %q, want mark=%d", out, s.want)
				}
			}
			gone := orig
			gone.DstPort++
			if err := c.SetMark(ctx, gone, 1, 1); !errors.Is(err, ErrNotFound) {
				t.Errorf("SetMark(%s) error = %v, want ErrNotFound", gone, err)
			}
		})
	}
}

func TestIntegrationListen(t *testing.T) {
	p, c := newBed(t, netEvents)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	events, errs := c.Listen(ctx, GroupNew, GroupDestroy)

	const up = 50_000
	client, server, orig := tcpConn(t, p, p.PeerIP6)
	transfer(t, client, server, up)
	// A closed TCP flow lingers in TIME_WAIT; deleting it makes the
	// kernel send DESTROY now, with the final counters.
	p.Pod.MustRun("conntrack", "-D", "-f", "ipv6", "-p", "tcp", "--sport", strconv.Itoa(int(orig.SrcPort)))

	var sawNew bool
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("events channel closed")
			}
			if ev.Flow.Orig != orig {
				continue
			}
			switch ev.Type {
			case EventNew:
				sawNew = true
			case EventDestroy:
				if !sawNew {
					t.Error("DESTROY before NEW")
				}
				checkCounter(t, "destroy orig", ev.Flow.OrigCounter, up, 80)
				if ev.Flow.Start.IsZero() || ev.Flow.Stop.Before(ev.Flow.Start) {
					t.Errorf("destroy timestamps start=%v stop=%v, want both, in order", ev.Flow.Start, ev.Flow.Stop)
				}
				cancel()
				for range events { // drains, then closes on cancel
				}
				return
			}
		case err := <-errs:
			t.Fatal(err)
		case <-timeout:
			t.Fatalf("no DESTROY event for %s (NEW seen: %v)", orig, sawNew)
		}
	}
}

// udpFlows sends one datagram from the pod to each of n ports of the peer,
// making n conntrack entries (and n NEW events).
func udpFlows(tb testing.TB, p *nstest.Pair, n int) {
	tb.Helper()
	peer := netip.MustParseAddr(p.PeerIP4)
	if err := p.Pod.Do(func() error {
		uc, err := net.ListenUDP("udp4", nil)
		if err != nil {
			return err
		}
		defer uc.Close()
		for i := range n {
			if _, err := uc.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(peer, uint16(10000+i))); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
}

func TestIntegrationEventsLost(t *testing.T) {
	p := nstest.NewPair(t, netFlood)
	nstest.SkipUnlessRoot(t, "iptables")
	p.Pod.MustRun("iptables", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
	small, err := Dial(Config{NetNS: p.Pod.FD(), ReadBuffer: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	big, err := Dial(Config{NetNS: p.Pod.FD()}) // default 8 MiB buffer
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	events, errs := small.Listen(ctx, GroupNew)
	bigEvents, bigErrs := big.Listen(ctx, GroupNew)
	counted := make(chan int)
	go func() { // a reader that keeps up
		n := 0
		for ev := range bigEvents {
			if ev.Flow.Orig.DstPort >= 10000 {
				if n++; n == flood {
					break
				}
			}
		}
		counted <- n
	}()

	// Nobody reads the small listener while the flows are made: its
	// channel fills, then its 4 KiB socket buffer. The kernel reports the
	// overrun on the socket's next receive: at once where the buffer
	// overflowed while the listener was still reading, or once a reader
	// drains the channel where the listener was waiting on a full channel
	// (a flood slower than the listener, as on a loaded machine: it failed
	// 1 run in 20 when it waited without reading).
	udpFlows(t, p, flood)
	n := 0
	deadline := time.After(20 * time.Second)
wait:
	for {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrEventsLost) {
				t.Fatalf("error = %v, want ErrEventsLost", err)
			}
			break wait
		case <-time.After(time.Second):
			// No report yet: read, as the watcher would.
			for len(events) > 0 {
				<-events
				n++
			}
		case <-deadline:
			t.Fatalf("no ErrEventsLost after a flood into a 4 KiB buffer (%d events read)", n)
		}
	}
	for len(events) > 0 {
		<-events
		n++
	}
	t.Logf("4 KiB buffer: %d of %d NEW events read, the rest lost and reported", n, flood)
	if n >= flood {
		t.Errorf("all %d events arrived through a 4 KiB buffer: nothing was lost, so the report proves nothing", n)
	}

	select {
	case got := <-counted:
		t.Logf("8 MiB buffer with a reader: %d of %d NEW events", got, flood)
	case err := <-bigErrs:
		t.Errorf("8 MiB buffer with a reader: %v", err)
	case <-time.After(20 * time.Second):
		t.Error("8 MiB buffer with a reader: not every NEW event arrived")
	}

	// Dumps are the truth: every flow is there.
	flows, err := small.Dump(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) < flood {
		t.Errorf("dump after the flood has %d flows, want at least %d", len(flows), flood)
	}
}

func BenchmarkIntegrationDump(b *testing.B) {
	p, c := newBed(b, netBench)
	const n = 1000
	udpFlows(b, p, n)
	var buf []Flow
	var err error
	b.ReportAllocs()
	for b.Loop() {
		buf, err = c.DumpInto(b.Context(), buf)
		if err != nil {
			b.Fatal(err)
		}
	}
	if len(buf) < n {
		b.Fatalf("dump has %d flows, want at least %d", len(buf), n)
	}
}

// BenchmarkIntegrationRequest measures one Get and one SetMark round trip
// on a live TCP flow.
func BenchmarkIntegrationRequest(b *testing.B) {
	p, c := newBed(b, netBench+1)
	_, _, orig := tcpConn(b, p, p.PeerIP4)
	b.Run("Get", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Get(b.Context(), orig); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("SetMark", func(b *testing.B) {
		b.ReportAllocs()
		var i uint32
		for b.Loop() {
			i++
			if err := c.SetMark(b.Context(), orig, i&1, 1); err != nil {
				b.Fatal(err)
			}
		}
	})
}
