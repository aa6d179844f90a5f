package main

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/egress"
	"github.com/hubwarden/hubwarden/internal/nstest"
	"github.com/hubwarden/hubwarden/xtables"
)

// loopbackPair is a TCP connection over the pod's loopback, opened in ns
// (a kernel's sockets, a notebook's database client), both ends on addr
// (127.0.0.1, ::1, or one of the pod's own addresses).
type loopbackPair struct{ client, server net.Conn }

func openLoopback(t *testing.T, ns *nstest.NS, addr string) *loopbackPair {
	t.Helper()
	var lp loopbackPair
	if err := ns.Do(func() error {
		ln, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
		if err != nil {
			return err
		}
		defer ln.Close()
		if lp.client, err = net.Dial("tcp", ln.Addr().String()); err != nil {
			return err
		}
		lp.server, err = ln.Accept()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lp.client.Close(); lp.server.Close() })
	return &lp
}

// exchange sends one byte each way, so both directions have a packet in
// flight after whatever happened before.
func (lp *loopbackPair) exchange() error {
	b := make([]byte, 1)
	for _, c := range [][2]net.Conn{{lp.client, lp.server}, {lp.server, lp.client}} {
		_ = c[1].SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c[0].Write([]byte{'x'}); err != nil {
			return err
		}
		if _, err := io.ReadFull(c[1], b); err != nil {
			return err
		}
	}
	return nil
}

// pingPong exchanges bytes until stop is closed (at most a million
// rounds), so that packets cross the loopback while the rules are applied;
// it returns the number of rounds.
func (lp *loopbackPair) pingPong(stop <-chan struct{}) (int, error) {
	for n := range 1_000_000 {
		select {
		case <-stop:
			return n, nil
		default:
		}
		if err := lp.exchange(); err != nil {
			return n, err
		}
	}
	return 1_000_000, nil
}

// loopbackEntries returns the conntrack entries of the pod's loopback.
func loopbackEntries(t *testing.T, ns *nstest.NS) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(ns.MustRun("conntrack", "-L", "-p", "tcp"), "\n") {
		if strings.Contains(l, "src=127.0.0.1 ") {
			out = append(out, l)
		}
	}
	return out
}

// TestIntegrationInitLeavesLoopbackUntracked: a loopback connection open
// before hubwarden applies its rules (a kernel's sockets when the sidecar
// restarts in a running pod) is not tracked after, though the rules turn
// conntrack on in the pod's namespace: the raw table, which keeps loopback
// out of conntrack, is applied before any table that turns it on. The
// control turns conntrack on without the raw table first and shows the
// same connection picked up mid-stream (and kept for days: an established
// entry's timeout).
func TestIntegrationInitLeavesLoopbackUntracked(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-restore", "tc", "conntrack")
	for i, control := range []bool{false, true} {
		name := "hubwarden"
		if control {
			name = "control"
		}
		t.Run(name, func(t *testing.T) {
			p := nstest.NewPair(t, 98+i)
			lp := openLoopback(t, p.Pod, "127.0.0.1")
			stop, done := make(chan struct{}), make(chan error, 1)
			var rounds int
			go func() {
				var err error
				rounds, err = lp.pingPong(stop)
				done <- err
			}()
			if control {
				p.Pod.MustRun("iptables-nft", "-w", "-t", "filter", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "ACCEPT")
			} else {
				env := baseEnv(t, "nft")
				env["HUBWARDEN_SHAPE"] = "true"
				if r := hw(t, p.Pod, env, "init"); r.code != 0 {
					t.Fatalf("init exited %d:\n%s%s", r.code, r.stdout, r.stderr)
				}
			}
			close(stop)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if err := lp.exchange(); err != nil {
				t.Fatal(err)
			}
			got := loopbackEntries(t, p.Pod)
			switch {
			case !control && len(got) > 0:
				t.Errorf("the loopback connection is tracked after init:\n%s", strings.Join(got, "\n"))
			case control && len(got) == 0:
				t.Errorf("control: conntrack on without the raw table did not pick up the loopback connection")
			}
			t.Logf("%d round trips across the apply; loopback entries after: %d", rounds, len(got))
		})
	}
}

// TestIntegrationLoopbackUntrackedBothWays: after `hubwarden init`, traffic
// over the pod's loopback (127.0.0.1, ::1, and the pod's own addresses,
// which the kernel routes over loopback) opens no conntrack entry, TCP or
// UDP, in either direction, though raw has no hook in PREROUTING: every
// loopback packet was sent in the pod and left raw OUTPUT untracked, and
// conntrack ignores an untracked packet where it arrives. The control
// removes the raw OUTPUT hook (the rest of the rules stay, and with them
// conntrack) and the same exchanges are tracked, every address of them.
func TestIntegrationLoopbackUntrackedBothWays(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-restore", "ip6tables-nft", "tc", "conntrack")
	for i, control := range []bool{false, true} {
		name := "hubwarden"
		if control {
			name = "control"
		}
		t.Run(name, func(t *testing.T) {
			p := nstest.NewPair(t, 96+i)
			env := baseEnv(t, "nft")
			env["HUBWARDEN_SHAPE"] = "true"
			if r := hw(t, p.Pod, env, "init"); r.code != 0 {
				t.Fatalf("init exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			if got := p.Pod.MustRun("iptables-nft-save", "-t", "raw"); strings.Contains(got, "-A PREROUTING") {
				t.Errorf("raw PREROUTING has a rule:\n%s", got)
			}
			if control {
				// The hooks as the sidecar plans them (the spoof rule is
				// in the egress filter, so raw's hook has its match).
				raw, err := egress.RawTables(true, false)
				if err != nil {
					t.Fatal(err)
				}
				for _, tb := range raw {
					tool := map[xtables.Family]string{xtables.IPv4: "iptables-nft", xtables.IPv6: "ip6tables-nft"}[tb.Family]
					for _, h := range tb.Hooks {
						p.Pod.MustRun(tool, append([]string{"-w", "-t", "raw", "-D", h.Base}, xtables.HookArgs(h)...)...)
					}
				}
			}
			addrs := []string{"127.0.0.1", "::1", p.PodIP4, p.PodIP6}
			for _, a := range addrs {
				if err := openLoopback(t, p.Pod, a).exchange(); err != nil {
					t.Fatalf("%s, tcp: %v", a, err)
				}
				if err := p.Pod.Do(func() error { return udpExchange(a) }); err != nil {
					t.Fatalf("%s, udp: %v", a, err)
				}
			}
			table := p.Pod.MustRun("conntrack", "-L", "-f", "ipv4") + p.Pod.MustRun("conntrack", "-L", "-f", "ipv6")
			for _, a := range addrs {
				var lines []string
				for _, l := range strings.Split(table, "\n") {
					// An entry of the loopback: the address is its source
					// and its destination.
					if strings.Contains(l, "src="+a+" ") && strings.Contains(l, "dst="+a+" ") {
						lines = append(lines, l)
					}
				}
				switch {
				case !control && len(lines) > 0:
					t.Errorf("loopback traffic of %s is tracked:\n%s", a, strings.Join(lines, "\n"))
				case control && len(lines) < 2:
					t.Errorf("control: without raw OUTPUT's hook, %d entries for %s (TCP and UDP expected):\n%s", len(lines), a, table)
				}
				t.Logf("%s: %d loopback entries", a, len(lines))
			}
		})
	}
}

// udpExchange sends a datagram each way between two UDP sockets, both on
// addr, in the calling goroutine's namespace.
func udpExchange(addr string) error {
	u1, err := net.ListenPacket("udp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return err
	}
	defer u1.Close()
	u2, err := net.ListenPacket("udp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return err
	}
	defer u2.Close()
	b := make([]byte, 16)
	for _, d := range [][2]net.PacketConn{{u1, u2}, {u2, u1}} {
		if _, err := d[0].WriteTo([]byte("x"), d[1].LocalAddr()); err != nil {
			return err
		}
		_ = d[1].SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := d[1].ReadFrom(b); err != nil {
			return err
		}
	}
	return nil
}
