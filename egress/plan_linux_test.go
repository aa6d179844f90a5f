package egress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/hubwarden/hubwarden/internal/dnstest"
	"github.com/hubwarden/hubwarden/internal/nstest"
	"github.com/hubwarden/hubwarden/resolve"
	"github.com/hubwarden/hubwarden/xtables"
)

// This package's nstest subnet indexes are 21-29 (20 is resolve's).

// bed is a pod/peer pair with extra addresses on the peer's lo, outside the
// link's prefixes so that the pod routes to them through the peer. The IPv6
// ones are in 2001:2:0:1d::/64, subnet 29 of this package, which no pair uses.
type bed struct {
	*nstest.Pair
	n                  int
	Denied4, Denied6   string // on the peer, never allowed
	Another4, Another6 string // on the peer, a second resolver address
	x                  *xtables.Iptables
}

// forBackends runs f once per iptables backend.
func forBackends(t *testing.T, f func(t *testing.T, be xtables.Backend)) {
	for _, be := range []xtables.Backend{xtables.NFT, xtables.Legacy} {
		t.Run(string(be), func(t *testing.T) { f(t, be) })
	}
}

func newBed(t *testing.T, n int, be xtables.Backend) *bed {
	t.Helper()
	nstest.SkipUnlessRoot(t, be.Tool(xtables.IPv4, "restore"), be.Tool(xtables.IPv6, "restore"))
	b := &bed{Pair: nstest.NewPair(t, n), n: n,
		Denied4: fmt.Sprintf("198.18.%d.66", n), Denied6: fmt.Sprintf("2001:2:0:1d::%d:66", n),
		Another4: fmt.Sprintf("198.18.%d.53", n), Another6: fmt.Sprintf("2001:2:0:1d::%d:53", n)}
	for _, a := range []string{b.Denied4 + "/32", b.Another4 + "/32"} {
		b.Peer.MustRun("ip", "addr", "add", a, "dev", "lo")
	}
	// nodad: a tentative address cannot be bound yet, and the kernel's
	// duplicate address detection work may wait on a busy machine.
	for _, a := range []string{b.Denied6 + "/128", b.Another6 + "/128"} {
		b.Peer.MustRun("ip", "addr", "add", a, "dev", "lo", "nodad")
	}
	r := xtables.ExecRunner{LockFile: filepath.Join(t.TempDir(), "xtables.lock")}
	b.x = xtables.New(be, r, zerolog.New(zerolog.NewTestWriter(t)))
	return b
}

// apply plans cfg and applies it in the pod, and checks that the kernel then
// reads back exactly as planned.
func (b *bed) apply(t *testing.T, cfg Config, resolved map[string][]netip.Addr) {
	t.Helper()
	tables, err := Plan(cfg, resolved)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Pod.Do(func() error { _, err := b.x.Apply(ctx, tables); return err }); err != nil {
		t.Fatalf("applying the egress plan: %v", err)
	}
	var drift []xtables.Drift
	if err := b.Pod.Do(func() (err error) { drift, err = b.x.Check(ctx, tables); return err }); err != nil {
		t.Fatal(err)
	}
	if len(drift) > 0 {
		t.Fatalf("Check after Apply is not clean: %v", drift)
	}
}

func baseConfig(b *bed) Config {
	return Config{DNSServers: addrs(b.PeerIP4, b.PeerIP6), DNSRate: 20, DNSBurst: 100, NFLogGroup: 1987, IPv6: true}
}

// greet is the TCP servers' handler (nstest.NS.Serve): it says "ok", which
// dial reads.
func greet(c net.Conn) { _, _ = c.Write([]byte("ok")) }

// udpSink counts the datagrams that reach addr in ns, by payload.
type udpSink struct {
	mu   sync.Mutex
	got  map[string]int
	seen chan string
}

func listenUDP(t *testing.T, ns *nstest.NS, addr string) *udpSink {
	t.Helper()
	pc := ns.ListenPacket("udp", addr)
	s := &udpSink{got: map[string]int{}, seen: make(chan string, 100)}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got[string(buf[:n])]++
			s.mu.Unlock()
			s.seen <- string(buf[:n])
		}
	}()
	return s
}

func (s *udpSink) count(payload string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[payload]
}

// waitFor waits until payload has arrived (or fails after 5 s).
func (s *udpSink) waitFor(t *testing.T, payload string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for s.count(payload) == 0 {
		select {
		case <-s.seen:
		case <-deadline:
			t.Fatalf("datagram %q never arrived", payload)
		}
	}
}

// dial connects from ns and returns how long the attempt took.
func dial(ns *nstest.NS, network, addr string) (time.Duration, error) {
	var took time.Duration
	err := ns.Do(func() error {
		start := time.Now()
		c, err := (&net.Dialer{Timeout: 3 * time.Second}).Dial(network, addr)
		took = time.Since(start)
		if err != nil {
			return err
		}
		defer c.Close()
		if network == "tcp" {
			buf := make([]byte, 2)
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Read(buf); err != nil || string(buf) != "ok" {
				return fmt.Errorf("reading the greeting: %q, %w", buf, err)
			}
		}
		return nil
	})
	return took, err
}

// sendUDP sends payload to addr from ns. A datagram dropped or rejected in
// OUTPUT fails the send with EPERM, which is returned; other errors fail the test.
func sendUDP(t *testing.T, ns *nstest.NS, addr, payload string) error {
	t.Helper()
	err := ns.Do(func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(payload))
		return err
	})
	if err != nil && !errors.Is(err, syscall.EPERM) {
		t.Fatalf("sending %q to %s: %v", payload, addr, err)
	}
	return err
}

// refusedFast asserts that a TCP connection to addr is refused locally, and
// returns the median time to refusal over several attempts.
func refusedFast(t *testing.T, ns *nstest.NS, addr string) time.Duration {
	t.Helper()
	var times []time.Duration
	for range 9 {
		took, err := ns.DialRefused(addr, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		times = append(times, took)
	}
	slices.Sort(times)
	return times[len(times)/2]
}

// peerCounter adds a counting rule to the peer's INPUT (raw PREROUTING, before
// anything can drop it) and returns a function reading its packet count.
func peerCounter(t *testing.T, ns *nstest.NS, v6 bool, match ...string) func() int {
	t.Helper()
	tool := "iptables"
	if v6 {
		tool = "ip6tables"
	}
	ns.MustRun(tool, append([]string{"-w", "-t", "raw", "-A", "PREROUTING"}, match...)...)
	return func() int {
		out := ns.MustRun(tool, "-w", "-t", "raw", "-L", "PREROUTING", "-n", "-v", "-x")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		total := 0
		for _, l := range lines[2:] {
			f := strings.Fields(l)
			n, _ := strconv.Atoi(f[0])
			total += n
		}
		return total
	}
}

// ping sends one ICMP echo request from ns to addr over a raw socket and
// waits briefly for the reply.
func ping(ns *nstest.NS, addr string) error {
	a := netip.MustParseAddr(addr)
	network, typ, proto := "ip4:icmp", icmp.Type(ipv4.ICMPTypeEcho), 1
	if a.Is6() {
		network, typ, proto = "ip6:ipv6-icmp", ipv6.ICMPTypeEchoRequest, 58
	}
	return ns.Do(func() error {
		c, err := icmp.ListenPacket(network, "")
		if err != nil {
			return err
		}
		defer c.Close()
		m := icmp.Message{Type: typ, Body: &icmp.Echo{ID: 7, Seq: 1, Data: []byte("hubwarden")}}
		b, err := m.Marshal(nil)
		if err != nil {
			return err
		}
		if _, err := c.WriteTo(b, &net.IPAddr{IP: a.AsSlice()}); err != nil {
			return err
		}
		buf := make([]byte, 1500)
		for {
			_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return err
			}
			r, err := icmp.ParseMessage(proto, buf[:n])
			if err == nil && from.String() == a.String() && (r.Type == ipv4.ICMPTypeEchoReply || r.Type == ipv6.ICMPTypeEchoReply) {
				return nil
			}
		}
	})
}

func hostPort(a string, port int) string { return net.JoinHostPort(a, strconv.Itoa(port)) }

// TestIntegrationEgressAllowDeny: allowed targets answer over TCP on both
// families; others are refused at once (TCP) or get nothing through (UDP,
// ICMP), and their attempts never reach the peer.
func TestIntegrationEgressAllowDeny(t *testing.T) {
	forBackends(t, func(t *testing.T, be xtables.Backend) {
		b := newBed(t, 21, be)
		for _, a := range []string{b.PeerIP4, b.PeerIP6, b.Denied4, b.Denied6} {
			b.Peer.Serve(hostPort(a, 8080), greet)
			b.Peer.Serve(hostPort(a, 8081), greet)
		}
		udp := map[string]*udpSink{}
		for _, a := range []string{b.PeerIP4, b.PeerIP6, b.Denied4, b.Denied6} {
			udp[a] = listenUDP(t, b.Peer, hostPort(a, 9090))
		}
		// Without hubwarden everything gets through: the control.
		var open []time.Duration
		for _, a := range []string{b.Denied4, b.Denied6} {
			took, err := dial(b.Pod, "tcp", hostPort(a, 8080))
			if err != nil {
				t.Fatalf("control: %v", err)
			}
			open = append(open, took)
			if err := ping(b.Pod, a); err != nil {
				t.Fatalf("control: ping %s: %v", a, err)
			}
		}

		cfg := baseConfig(b)
		cfg.Allow = entries(t, fmt.Sprintf("tcp://%s:8080, tcp://[%s]:8080, udp://%s:9090, udp://[%s]:9090, tcp://peer.test:8081",
			b.PeerIP4, b.PeerIP6, b.PeerIP4, b.PeerIP6))
		b.apply(t, cfg, map[string][]netip.Addr{"peer.test": addrs(b.PeerIP4, b.PeerIP6)})

		for _, a := range []string{b.PeerIP4, b.PeerIP6} {
			for _, port := range []int{8080, 8081} { // by address, and by host name
				if _, err := dial(b.Pod, "tcp", hostPort(a, port)); err != nil {
					t.Errorf("allowed %s: %v", hostPort(a, port), err)
				}
			}
		}
		pings4 := peerCounter(t, b.Peer, false, "-p", "icmp", "--icmp-type", "echo-request")
		pings6 := peerCounter(t, b.Peer, true, "-p", "ipv6-icmp", "--icmpv6-type", "echo-request")
		syns4 := peerCounter(t, b.Peer, false, "-d", b.Denied4, "-p", "tcp")
		syns6 := peerCounter(t, b.Peer, true, "-d", b.Denied6, "-p", "tcp")
		for i, a := range []string{b.Denied4, b.Denied6} {
			med := refusedFast(t, b.Pod, hostPort(a, 8080))
			t.Logf("TCP to %s refused in %s (median of 9; the first connect without hubwarden took %s)", a, med, open[i])
			if med > 10*time.Millisecond {
				t.Errorf("TCP to %s refused after %s, want within 10ms", a, med)
			}
		}
		// An allowed address on a port not allowed.
		for _, a := range []string{b.PeerIP4, b.PeerIP6} {
			if _, err := dial(b.Pod, "tcp", hostPort(a, 8082)); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("TCP to a denied port of %s: %v, want refused", a, err)
			}
		}
		if n := syns4() + syns6(); n != 0 {
			t.Errorf("%d denied TCP packets reached the peer", n)
		}

		// UDP: the denied datagram is sent first; once the allowed one that
		// follows it on the same path has arrived, the denied one would have too.
		for _, pair := range [][2]string{{b.Denied4, b.PeerIP4}, {b.Denied6, b.PeerIP6}} {
			if err := sendUDP(t, b.Pod, hostPort(pair[0], 9090), "denied"); err == nil {
				t.Errorf("UDP to denied %s: the send succeeded, want EPERM", pair[0])
			}
			_ = sendUDP(t, b.Pod, hostPort(pair[1], 9191), "denied-port")
			if err := sendUDP(t, b.Pod, hostPort(pair[1], 9090), "allowed"); err != nil {
				t.Fatalf("UDP to allowed %s: %v", pair[1], err)
			}
			udp[pair[1]].waitFor(t, "allowed")
			if n := udp[pair[0]].count("denied"); n != 0 {
				t.Errorf("UDP to denied %s got through (%d)", pair[0], n)
			}
		}

		// ICMP: no echo request gets out, and none reaches the peer.
		for _, a := range []string{b.Denied4, b.Denied6, b.PeerIP4, b.PeerIP6} {
			if err := ping(b.Pod, a); err == nil {
				t.Errorf("ping %s succeeded", a)
			}
		}
		if n := pings4() + pings6(); n != 0 {
			t.Errorf("%d echo requests reached the peer", n)
		}
	})
}

// TestIntegrationEgressMetadata: the metadata addresses are refused on every
// port, even with allow entries covering them; nothing leaves the pod.
func TestIntegrationEgressMetadata(t *testing.T) {
	forBackends(t, func(t *testing.T, be xtables.Backend) {
		b := newBed(t, 22, be)
		leaked4 := peerCounter(t, b.Peer, false, "-d", "169.254.169.254")
		leaked6 := peerCounter(t, b.Peer, true, "-d", "fd00:ec2::254")
		cfg := baseConfig(b)
		cfg.Allow = entries(t, "169.254.0.0/16, fd00::/8, tcp://169.254.169.254:80, udp://169.254.169.254:53")
		b.apply(t, cfg, nil)
		for _, a := range []string{"169.254.169.254", "fd00:ec2::254"} {
			for _, port := range []int{80, 443, 53, 8775} {
				med := refusedFast(t, b.Pod, hostPort(a, port))
				if med > 10*time.Millisecond {
					t.Errorf("TCP to %s refused after %s, want within 10ms", hostPort(a, port), med)
				}
			}
			// UDP: a connected socket learns of the rejection on its next call.
			err := b.Pod.Do(func() error {
				c, err := net.Dial("udp", hostPort(a, 53))
				if err != nil {
					return err
				}
				defer c.Close()
				_, _ = c.Write([]byte("x"))
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				_, err = c.Read(make([]byte, 10))
				return err
			})
			if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.EACCES) {
				t.Errorf("UDP to %s:53: %v, want refused or prohibited", a, err)
			}
		}
		if n := leaked4() + leaked6(); n != 0 {
			t.Errorf("%d packets to a metadata address reached the peer", n)
		}
	})
}

// dnsServer serves answer() (an IPv4 address and a TTL) to every A query,
// on addr:53 over UDP and TCP; AAAA queries get no records.
func dnsServer(t *testing.T, ns *nstest.NS, addr string, answer func() (netip.Addr, uint32)) {
	t.Helper()
	respond := func(q []byte, _ bool) []byte {
		var m dnsmessage.Message
		if err := m.Unpack(q); err != nil || len(m.Questions) != 1 {
			return nil
		}
		r := dnsmessage.Message{Header: dnsmessage.Header{ID: m.ID, Response: true}, Questions: m.Questions}
		if m.Questions[0].Type == dnsmessage.TypeA {
			a, ttl := answer()
			r.Answers = []dnsmessage.Resource{{
				Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: ttl},
				Body:   &dnsmessage.AResource{A: a.As4()},
			}}
		}
		b, _ := r.Pack()
		return b
	}
	dnstest.Serve(ns.ListenPacket("udp", hostPort(addr, 53)), ns.Listen("tcp", hostPort(addr, 53)), respond)
}

// query is an A query for x.test with the given ID, in wire format.
func query(id uint16) []byte {
	q := dnsmessage.Message{Header: dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName("x.test."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}}}
	p, _ := q.Pack()
	return p
}

// tcpQuery asks server for x.test over TCP from ns.
func tcpQuery(ns *nstest.NS, server string) error {
	c, err := ns.DialTimeout("tcp", hostPort(server, 53), 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if err := dnstest.WriteTCP(c, query(9)); err != nil {
		return err
	}
	r, err := dnstest.ReadTCP(c)
	if err != nil {
		return err
	}
	var m dnsmessage.Message
	if err := m.Unpack(r); err != nil {
		return fmt.Errorf("unpacking answer over tcp: %w", err)
	}
	if m.ID != 9 || len(m.Answers) != 1 {
		return fmt.Errorf("bad answer over tcp: id %d, %d answers", m.ID, len(m.Answers))
	}
	return nil
}

// TestIntegrationEgressDNS: DNS works to the configured resolver (UDP and
// TCP, both families) and is refused to another address; a burst beyond
// DNS_BURST is dropped.
func TestIntegrationEgressDNS(t *testing.T) {
	forBackends(t, func(t *testing.T, be xtables.Backend) {
		b := newBed(t, 23, be)
		for _, a := range []string{b.PeerIP4, b.PeerIP6, b.Another4, b.Another6} {
			dnsServer(t, b.Peer, a, func() (netip.Addr, uint32) { return netip.AddrFrom4([4]byte{198, 18, byte(b.n), 99}), 60 })
		}
		cfg := baseConfig(b)
		cfg.DNSRate, cfg.DNSBurst = 5, 20
		b.apply(t, cfg, nil)
		ctx := context.Background()
		lookup := func(server string, tcp bool) error {
			if tcp {
				return tcpQuery(b.Pod, server)
			}
			r := resolve.New(addrs(server))
			r.Timeout = time.Second
			r.Dial = b.Pod.DialContext
			got, _, err := r.Lookup(ctx, "x.test")
			if err == nil && (len(got) != 1 || got[0] != netip.AddrFrom4([4]byte{198, 18, byte(b.n), 99})) {
				err = fmt.Errorf("wrong answer %v", got)
			}
			return err
		}
		for _, s := range []string{b.PeerIP4, b.PeerIP6} {
			for _, tcp := range []bool{false, true} {
				if err := lookup(s, tcp); err != nil {
					t.Errorf("DNS to the resolver %s (tcp %v): %v", s, tcp, err)
				}
			}
		}
		for _, s := range []string{b.Another4, b.Another6} {
			start := time.Now()
			err := lookup(s, false)
			if err == nil {
				t.Errorf("DNS to %s, not a configured resolver, got an answer", s)
			}
			if el := time.Since(start); el > 500*time.Millisecond {
				t.Errorf("DNS to %s failed after %s, not at once (%v)", s, el, err)
			}
		}

		if err := tcpQuery(b.Pod, b.Another4); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("DNS over TCP to %s, not a configured resolver: %v, want refused", b.Another4, err)
		}

		// A packet over MaxDNSPacket is dropped, whatever the rate.
		if err := sendUDP(t, b.Pod, hostPort(b.PeerIP4, 53), strings.Repeat("x", MaxDNSPacket)); !errors.Is(err, syscall.EPERM) {
			t.Errorf("a %d-byte datagram to the resolver: %v, want EPERM", MaxDNSPacket+28, err)
		}

		// A tunnel that pipelines many queries into one large TCP segment
		// gets nothing through (the segment is over MaxDNSPacket), though the
		// same connection works with one query per segment.
		err := func() error {
			c, err := b.Pod.DialTimeout("tcp", hostPort(b.PeerIP4, 53), 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			var batch []byte
			for i := range 30 {
				batch = dnstest.AppendTCP(batch, query(uint16(i)))
			}
			if _, err := c.Write(batch); err != nil {
				return err
			}
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			if k, err := c.Read(make([]byte, 4096)); err == nil {
				return fmt.Errorf("%d bytes of answers to a %d-byte segment of pipelined queries", k, len(batch))
			}
			return nil
		}()
		if err != nil {
			t.Error(err)
		}

		// The burst: 60 queries at once on one socket; about DNS_BURST get through.
		answered, dropped := 0, 0
		resolver, err := b.Pod.DialTimeout("udp", hostPort(b.PeerIP4, 53), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer resolver.Close()
		for i := range 60 {
			// A packet dropped in OUTPUT fails the send with EPERM at once.
			if _, err := resolver.Write(query(uint16(i))); errors.Is(err, syscall.EPERM) {
				dropped++
			} else if err != nil {
				t.Fatal(err)
			}
		}
		buf := make([]byte, 512)
		for {
			_ = resolver.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err := resolver.Read(buf); err != nil {
				break
			}
			answered++
		}
		// The bucket may have refilled by a few packets (5/s) since the lookups above.
		t.Logf("60 queries at once: %d answered, %d refused with EPERM at send (DNS_BURST 20, DNS_RATE 5/s)", answered, dropped)
		if answered < 10 || answered > 30 {
			t.Errorf("%d of 60 queries answered, want about DNS_BURST (20)", answered)
		}

		// Sustained: with the bucket empty, a query every 10 ms for 2 s gets
		// about DNS_RATE × 2 s through.
		sent, ok := 0, 0
		again, err := b.Pod.DialTimeout("udp", hostPort(b.PeerIP4, 53), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer again.Close()
		for start := time.Now(); time.Since(start) < 2*time.Second; time.Sleep(10 * time.Millisecond) {
			if _, err := again.Write(query(uint16(1000 + sent))); err == nil {
				ok++
			}
			sent++
		}
		t.Logf("sustained: %d of %d queries in 2s passed (DNS_RATE 5/s)", ok, sent)
		if ok < 5 || ok > 16 {
			t.Errorf("%d queries passed in 2s, want about 10 (DNS_RATE 5/s)", ok)
		}
	})
}

// TestIntegrationEgressNDP: IPv6 neighbour discovery works (an allowed target
// is reachable after the neighbour caches are flushed), but a user's own
// neighbour solicitation (raw socket) does not leave the pod.
func TestIntegrationEgressNDP(t *testing.T) {
	forBackends(t, func(t *testing.T, be xtables.Backend) {
		b := newBed(t, 24, be)
		b.Peer.Serve(hostPort(b.PeerIP6, 8080), greet)
		crafted := peerCounter(t, b.Peer, true, "-d", b.Denied6, "-p", "ipv6-icmp", "--icmpv6-type", "135")
		sendNS := func() error {
			return b.Pod.Do(func() error {
				c, err := net.ListenPacket("ip6:ipv6-icmp", "::")
				if err != nil {
					return err
				}
				defer c.Close()
				// type 135, code 0, checksum (the kernel fills it), reserved, target
				msg := append([]byte{135, 0, 0, 0, 0, 0, 0, 0}, netip.MustParseAddr(b.Denied6).AsSlice()...)
				msg = append(msg, []byte("exfiltrated data")...)
				_, err = c.WriteTo(msg, &net.IPAddr{IP: net.ParseIP(b.Denied6)})
				return err
			})
		}
		if err := sendNS(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for crafted() == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if crafted() != 1 {
			t.Fatalf("control: the crafted solicitation did not reach the peer without hubwarden")
		}

		cfg := baseConfig(b)
		cfg.Allow = entries(t, fmt.Sprintf("tcp://[%s]:8080", b.PeerIP6))
		b.apply(t, cfg, nil)
		b.Pod.MustRun("ip", "-6", "neigh", "flush", "all")
		b.Peer.MustRun("ip", "-6", "neigh", "flush", "all")
		if _, err := dial(b.Pod, "tcp", hostPort(b.PeerIP6, 8080)); err != nil {
			t.Fatalf("allowed IPv6 target after flushing the neighbour caches: %v", err)
		}
		if err := sendNS(); err != nil && !errors.Is(err, syscall.EPERM) {
			t.Fatal(err)
		}
		// Another allowed connection after the crafted one: it has left by then, if at all.
		if _, err := dial(b.Pod, "tcp", hostPort(b.PeerIP6, 8080)); err != nil {
			t.Fatal(err)
		}
		if n := crafted(); n != 1 {
			t.Errorf("a user's neighbour solicitation left the pod (%d at the peer)", n-1)
		}
		// The pod's own neighbour advertisements get out: with only the peer's
		// cache flushed, the peer must solicit the pod's address to connect in.
		b.Pod.Serve(hostPort(b.PodIP6, 9000), greet)
		b.Peer.MustRun("ip", "-6", "neigh", "flush", "all")
		if _, err := dial(b.Peer, "tcp", hostPort(b.PodIP6, 9000)); err != nil {
			t.Errorf("connecting into the pod after flushing the peer's neighbour cache: %v", err)
		}
	})
}

// TestIntegrationEgressFollowsDNS: an allow-list host name follows its DNS
// answer: resolved at start, re-resolved after its TTL by a Refresher whose
// callback re-plans and re-applies; the old address is refused afterwards.
func TestIntegrationEgressFollowsDNS(t *testing.T) {
	forBackends(t, func(t *testing.T, be xtables.Backend) {
		b := newBed(t, 25, be)
		for _, a := range []string{b.PeerIP4, b.Denied4} {
			b.Peer.Serve(hostPort(a, 8080), greet)
		}
		var current atomic.Pointer[netip.Addr]
		first := netip.MustParseAddr(b.PeerIP4)
		current.Store(&first)
		dnsServer(t, b.Peer, b.PeerIP4, func() (netip.Addr, uint32) { return *current.Load(), 1 })

		cfg := baseConfig(b)
		cfg.DNSServers = addrs(b.PeerIP4)
		cfg.IPv6 = false
		cfg.Allow = entries(t, "tcp://data.test:8080")
		r := resolve.New(cfg.DNSServers)
		r.Timeout = time.Second
		r.Dial = b.Pod.DialContext
		applied := make(chan error, 4)
		ref := resolve.NewRefresher(r, cfg.Hosts(), time.Second, zerolog.New(zerolog.NewTestWriter(t)), func(m map[string][]netip.Addr) {
			tables, err := Plan(cfg, m)
			if err == nil {
				err = b.Pod.Do(func() error { _, err := b.x.Apply(context.Background(), tables); return err })
			}
			applied <- err
		})
		// Start: rules in place (DNS allowed) before the first lookup.
		b.apply(t, cfg, nil)
		if _, err := ref.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
		b.apply(t, cfg, ref.Snapshot())
		if _, err := dial(b.Pod, "tcp", hostPort(b.PeerIP4, 8080)); err != nil {
			t.Fatalf("data.test at %s: %v", b.PeerIP4, err)
		}
		if _, err := dial(b.Pod, "tcp", hostPort(b.Denied4, 8080)); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("%s before the change: %v, want refused", b.Denied4, err)
		}

		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() { _ = ref.Run(ctx) }()
		next := netip.MustParseAddr(b.Denied4)
		current.Store(&next)
		start := time.Now()
		select {
		case err := <-applied:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the changed answer was not applied within 10s")
		}
		t.Logf("changed answer applied after %s (TTL 1s, RESOLVE_MIN_TTL 1s)", time.Since(start).Round(time.Millisecond))
		if _, err := dial(b.Pod, "tcp", hostPort(b.Denied4, 8080)); err != nil {
			t.Errorf("data.test's new address %s: %v", b.Denied4, err)
		}
		if _, err := dial(b.Pod, "tcp", hostPort(b.PeerIP4, 8080)); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("data.test's old address %s: %v, want refused", b.PeerIP4, err)
		}
	})
}

// TestIntegrationEgressApplyTime measures planning and applying a realistic
// egress policy (20 allow entries, half of them host names, both families)
// in a fresh pod namespace, and then the no-op re-apply.
func TestIntegrationEgressApplyTime(t *testing.T) {
	forBackends(t, func(t *testing.T, be xtables.Backend) {
		b := newBed(t, 26, be)
		var allow []string
		resolved := map[string][]netip.Addr{}
		for i := range 10 {
			allow = append(allow, fmt.Sprintf("tcp://198.18.26.%d:443", 10+i), fmt.Sprintf("tcp://h%d.test:443", i))
			resolved[fmt.Sprintf("h%d.test", i)] = addrs(fmt.Sprintf("198.18.26.%d", 100+i), fmt.Sprintf("2001:2:0:1d::26:%d", 100+i))
		}
		cfg := baseConfig(b)
		cfg.Allow = entries(t, strings.Join(allow, ","))
		ctx := context.Background()
		var first, again time.Duration
		err := b.Pod.Do(func() error {
			start := time.Now()
			tables, err := Plan(cfg, resolved)
			if err != nil {
				return err
			}
			if _, err := b.x.Apply(ctx, tables); err != nil {
				return err
			}
			first = time.Since(start)
			start = time.Now()
			res, err := b.x.Apply(ctx, tables)
			if err == nil && len(res.Changed) > 0 {
				err = fmt.Errorf("re-apply changed %v", res.Changed)
			}
			again = time.Since(start)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: plan+apply of 20 entries, both families: %s; re-apply (no change): %s", be, first.Round(time.Millisecond), again.Round(time.Millisecond))
	})
}

// TestIntegrationEgressBlockStopsEstablished: the established accept comes
// first where a family has one blocked range, and leaves that range out: a
// TCP flow open to an address before its range is blocked stops with the
// block, as it did when the blocks came first. The range is the metadata
// address in a pod; here MetadataPrefixes is set to the test's own
// addresses (the peer's) for the test. The control: the same flows go on
// while the blocked range is another address.
func TestIntegrationEgressBlockStopsEstablished(t *testing.T) {
	saved := MetadataPrefixes
	t.Cleanup(func() { MetadataPrefixes = saved })
	forBackends(t, func(t *testing.T, be xtables.Backend) {
		b := newBed(t, 27, be)
		echo := func(c net.Conn) { _, _ = io.Copy(c, c) }
		var conns []net.Conn
		cfg := baseConfig(b)
		cfg.Allow = entries(t, fmt.Sprintf("tcp://%s:8082, tcp://[%s]:8082", b.PeerIP4, b.PeerIP6))
		for _, a := range []string{b.PeerIP4, b.PeerIP6} {
			b.Peer.Serve(hostPort(a, 8082), echo)
		}
		MetadataPrefixes = []netip.Prefix{netip.MustParsePrefix(b.Denied4 + "/32"), netip.MustParsePrefix(b.Denied6 + "/128")}
		b.apply(t, cfg, nil)
		for _, a := range []string{b.PeerIP4, b.PeerIP6} {
			c, err := b.Pod.DialTimeout("tcp", hostPort(a, 8082), 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			conns = append(conns, c)
		}
		roundTrip := func(c net.Conn) error {
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Write([]byte("x")); err != nil {
				return err
			}
			_, err := io.ReadFull(c, make([]byte, 1))
			return err
		}
		for _, c := range conns {
			if err := roundTrip(c); err != nil {
				t.Fatalf("control: %s: %v", c.RemoteAddr(), err)
			}
		}
		// The control: another plan whose blocked range is not the peer's
		// (the established accept first) leaves the flows open.
		MetadataPrefixes = []netip.Prefix{netip.MustParsePrefix(b.Another4 + "/32"), netip.MustParsePrefix(b.Another6 + "/128")}
		b.apply(t, cfg, nil)
		for _, c := range conns {
			if err := roundTrip(c); err != nil {
				t.Fatalf("control: %s after a re-apply: %v", c.RemoteAddr(), err)
			}
		}
		MetadataPrefixes = []netip.Prefix{netip.MustParsePrefix(b.PeerIP4 + "/32"), netip.MustParsePrefix(b.PeerIP6 + "/128")}
		tables, err := Plan(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, tb := range tables {
			first := strings.Join(tb.Chains[0].Rules[0].Args, " ")
			if !strings.HasPrefix(first, "! -d ") || !strings.Contains(first, "--ctstate ESTABLISHED") {
				t.Fatalf("%s: the plan does not accept established flows first: %s", tb.Family, first)
			}
		}
		b.apply(t, cfg, nil)
		for _, c := range conns {
			if err := roundTrip(c); err == nil {
				t.Errorf("%s: the flow open before its range was blocked still passes", c.RemoteAddr())
			} else {
				t.Logf("%s after the block: %v", c.RemoteAddr(), err)
			}
		}
	})
}
