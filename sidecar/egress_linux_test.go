package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/hubwarden/hubwarden/internal/nstest"
)

// egressBed is a pod and a peer that hosts every kind of target: allowed
// and denied addresses, the cloud metadata addresses, an allowed resolver
// and a host that runs DNS but is not a resolver. Every address is on the
// peer, so without hubwarden everything answers.
type egressBed struct {
	*nstest.Pair
	denied4, denied6           string // not on the allow-list
	resolver4, notResolver4    string
	metadata4, metadata6       string
	udp                        map[string]*atomic.Int64 // "addr:port" -> datagrams the peer received
	tcpPorts, metadataTCPPorts []int
}

func newEgressBed(t *testing.T, n int) *egressBed {
	t.Helper()
	nstest.SkipUnlessRoot(t, "iptables-nft-restore", "iptables-legacy-restore")
	e := &egressBed{
		Pair:         nstest.NewPair(t, n),
		denied4:      fmt.Sprintf("198.19.%d.2", n),
		denied6:      fmt.Sprintf("2001:2:1:%x::2", n),
		resolver4:    fmt.Sprintf("198.19.%d.53", n),
		notResolver4: fmt.Sprintf("198.19.%d.54", n),
		metadata4:    "169.254.169.254",
		metadata6:    "fd00:ec2::254",
		udp:          map[string]*atomic.Int64{},
	}
	for _, a := range []string{e.denied4, e.resolver4, e.notResolver4, e.metadata4} {
		e.Peer.MustRun("ip", "addr", "add", a+"/32", "dev", "lo")
	}
	for _, a := range []string{e.denied6, e.metadata6} {
		e.Peer.MustRun("ip", "addr", "add", a+"/128", "dev", "lo", "nodad")
	}
	// Servers on the peer: TCP on every address (dual-stack wildcard), UDP
	// echo per address so that the test knows what reached the peer.
	for _, port := range []int{80, 443, 8080} {
		e.Peer.Serve(fmt.Sprintf("[::]:%d", port), func(c net.Conn) { fmt.Fprintln(c, "hello") })
	}
	for _, hp := range [][2]string{
		{e.PeerIP4, "9999"}, {e.PeerIP6, "9999"}, {e.denied4, "9999"}, {e.denied6, "9999"},
		{e.resolver4, "53"}, {e.notResolver4, "53"}, {e.metadata4, "53"}, {e.metadata6, "53"},
	} {
		addr := net.JoinHostPort(hp[0], hp[1])
		cnt := new(atomic.Int64)
		e.udp[addr] = cnt
		go serveEcho(e.Peer.ListenPacket("udp", addr), cnt)
	}
	return e
}

func serveEcho(c net.PacketConn, n *atomic.Int64) {
	buf := make([]byte, 1500)
	for {
		k, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		n.Add(1)
		_, _ = c.WriteTo(buf[:k], from)
	}
}

// dial connects from the pod and reads the greeting; it returns the error
// and how long the connect took.
func (e *egressBed) dial(addr string) (time.Duration, error) {
	var d time.Duration
	err := e.Pod.Do(func() error {
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		d = time.Since(start)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != "hello\n" {
			return fmt.Errorf("got %q", line)
		}
		return nil
	})
	return d, err
}

// minDial is the fastest of 5 connects to addr, which must all be refused.
func (e *egressBed) minDial(t *testing.T, addr string) time.Duration {
	t.Helper()
	best := time.Hour
	for range 5 {
		d, err := e.Pod.DialRefused(addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		best = min(best, d)
	}
	return best
}

// udpEcho sends one datagram from the pod and reports whether the echo came
// back within wait.
func (e *egressBed) udpEcho(addr string, wait time.Duration) (bool, error) {
	var got bool
	err := e.Pod.Do(func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("ping")); err != nil {
			return nil // rejected locally (EPERM/ECONNREFUSED): nothing went out
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		got = err == nil && string(buf[:n]) == "ping"
		return nil
	})
	return got, err
}

// icmpEcho pings addr from the pod once and reports whether it answered.
func (e *egressBed) icmpEcho(addr string, wait time.Duration) (bool, error) {
	dst := netip.MustParseAddr(addr)
	network, listen, proto := "ip4:icmp", "0.0.0.0", 1
	var reqType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, listen, proto = "ip6:ipv6-icmp", "::", 58
		reqType, replyType = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	var got bool
	err := e.Pod.Do(func() error {
		c, err := icmp.ListenPacket(network, listen)
		if err != nil {
			return err
		}
		defer c.Close()
		id := os.Getpid() & 0xffff
		msg, _ := (&icmp.Message{Type: reqType, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("hubwarden")}}).Marshal(nil)
		if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return nil // rejected locally
		}
		deadline := time.Now().Add(wait)
		buf := make([]byte, 1500)
		for {
			_ = c.SetReadDeadline(deadline)
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return nil // deadline: no answer
			}
			m, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil || m.Type != replyType || from.String() != dst.String() {
				continue
			}
			if echo, ok := m.Body.(*icmp.Echo); ok && echo.ID == id {
				got = true
				return nil
			}
		}
	})
	return got, err
}

func TestIntegrationEgress(t *testing.T) {
	for i, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			e := newEgressBed(t, 11+i)
			v4 := func(a string, port int) string { return net.JoinHostPort(a, fmt.Sprint(port)) }

			// Without hubwarden every target answers: the test can see a failure.
			for _, a := range []string{v4(e.denied4, 8080), v4(e.metadata4, 80), v4(e.metadata6, 443), v4(e.denied6, 8080)} {
				if _, err := e.dial(a); err != nil {
					t.Fatalf("before init, %s does not answer: %v", a, err)
				}
			}
			for _, a := range []string{v4(e.denied4, 9999), v4(e.notResolver4, 53)} {
				if ok, err := e.udpEcho(a, 2*time.Second); err != nil || !ok {
					t.Fatalf("before init, UDP %s does not echo: %v", a, err)
				}
			}
			if ok, err := e.icmpEcho(e.denied4, 2*time.Second); err != nil || !ok {
				t.Fatalf("before init, %s does not answer ping: %v", e.denied4, err)
			}
			closedRST := e.minDial(t, v4(e.PeerIP4, 8081)) // the peer's own reset, for scale

			env := baseEnv(t, backend)
			env["HUBWARDEN_DNS_SERVERS"] = e.resolver4
			// The allow-list covers the metadata ranges: they must stay blocked.
			env["HUBWARDEN_ALLOW"] = e.PeerIP4 + "," + e.PeerIP6 + ",169.254.0.0/16,fd00:ec2::/32"
			if r := hw(t, e.Pod, env, "init"); r.code != 0 {
				t.Fatalf("init exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			for k := range e.udp {
				e.udp[k].Store(0)
			}

			t.Run("allowed targets answer", func(t *testing.T) {
				for _, a := range []string{v4(e.PeerIP4, 8080), v4(e.PeerIP6, 8080)} {
					if _, err := e.dial(a); err != nil {
						t.Errorf("allowed %s: %v", a, err)
					}
				}
				for _, a := range []string{v4(e.PeerIP4, 9999), v4(e.PeerIP6, 9999)} {
					if ok, err := e.udpEcho(a, 2*time.Second); err != nil || !ok {
						t.Errorf("allowed UDP %s: no echo (%v)", a, err)
					}
				}
				for _, a := range []string{e.PeerIP4, e.PeerIP6} {
					if ok, err := e.icmpEcho(a, 2*time.Second); err != nil || !ok {
						t.Errorf("allowed ping %s: no answer (%v)", a, err)
					}
				}
			})
			t.Run("denied TCP is refused at once", func(t *testing.T) {
				for _, a := range []string{v4(e.denied4, 8080), v4(e.denied6, 8080)} {
					d := e.minDial(t, a)
					t.Logf("refused connect to %s: %s (the peer's own reset on a closed port: %s)", a, d, closedRST)
					// A local reset costs no more than a round trip to the peer;
					// a silent drop would take the 2 s dial timeout.
					if d > 3*closedRST+5*time.Millisecond {
						t.Errorf("refusing %s took %s, the peer's reset %s", a, d, closedRST)
					}
				}
			})
			t.Run("denied UDP and ICMP get nothing through", func(t *testing.T) {
				for _, a := range []string{v4(e.denied4, 9999), v4(e.denied6, 9999)} {
					if ok, _ := e.udpEcho(a, 300*time.Millisecond); ok {
						t.Errorf("UDP to %s was echoed", a)
					}
				}
				for _, a := range []string{e.denied4, e.denied6} {
					if ok, _ := e.icmpEcho(a, 300*time.Millisecond); ok {
						t.Errorf("ping to %s was answered", a)
					}
				}
				for _, a := range []string{v4(e.denied4, 9999), v4(e.denied6, 9999)} {
					if n := e.udp[a].Load(); n != 0 {
						t.Errorf("the peer received %d datagrams to %s", n, a)
					}
				}
			})
			t.Run("metadata refused on every port", func(t *testing.T) {
				for _, a := range []string{e.metadata4, e.metadata6} {
					for _, port := range []int{80, 443, 8080} {
						if _, err := e.dial(v4(a, port)); !errors.Is(err, syscall.ECONNREFUSED) {
							t.Errorf("metadata %s: %v, want connection refused", v4(a, port), err)
						}
					}
					if ok, _ := e.udpEcho(v4(a, 53), 300*time.Millisecond); ok || e.udp[v4(a, 53)].Load() != 0 {
						t.Errorf("UDP to metadata %s:53 went through", a)
					}
					if ok, _ := e.icmpEcho(a, 300*time.Millisecond); ok {
						t.Errorf("ping to metadata %s was answered", a)
					}
				}
			})
			t.Run("DNS only to the resolver", func(t *testing.T) {
				if ok, err := e.udpEcho(v4(e.resolver4, 53), 2*time.Second); err != nil || !ok {
					t.Errorf("DNS to the resolver %s: no answer (%v)", e.resolver4, err)
				}
				if ok, _ := e.udpEcho(v4(e.notResolver4, 53), 300*time.Millisecond); ok || e.udp[v4(e.notResolver4, 53)].Load() != 0 {
					t.Errorf("DNS to %s, not a resolver, went through", e.notResolver4)
				}
				if _, err := e.dial(v4(e.notResolver4, 53)); !errors.Is(err, syscall.ECONNREFUSED) {
					t.Errorf("TCP DNS to %s, not a resolver: %v, want refused", e.notResolver4, err)
				}
			})
			t.Run("check is clean", func(t *testing.T) {
				if r := hw(t, e.Pod, env, "check"); r.code != 0 {
					t.Errorf("check exited %d:\n%s%s", r.code, r.stdout, r.stderr)
				}
			})
		})
	}
}
