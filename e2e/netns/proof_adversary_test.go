//go:build e2e && linux

package netns

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// --- part 8 -----------------------------------------------------------------
//
// The adversary (issue 15): what a notebook user, without capabilities, does
// to get the watcher or the kubelet's probes out of the way, or to walk
// around the egress filter, tried from the user's own kernel in both pods.
// docs/adversary.md has the root tests of each finding with their controls;
// these rows are the same attacks on the real stack.

// sprayCell sends one-byte UDP datagrams to closed ports across 127.1.x.y
// for SECS seconds: without loopback kept out of conntrack, each is an
// unreplied conntrack entry (the first finding: ~250,000 a second).
const sprayCell = `import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n, end = 0, time.time() + SECS
while time.time() < end:
    for _ in range(512):
        try:
            s.sendto(b"x", ("127.1.%d.%d" % ((n >> 8) & 255, n & 255), 1 + n % 60000))
        except OSError:
            pass
        n += 1
print(n)`

// holdCell opens up to N connections to the health port (on the pod's own
// address and on loopback) and holds them for SECS seconds without sending
// a byte (the second finding: 3,000 idle connections starved every probe).
const holdCell = `import socket, time
held, refused = [], 0
for i in range(N):
    try:
        held.append(socket.create_connection((ADDRS[i % len(ADDRS)], 9280), timeout=0.5))
    except OSError:
        refused += 1
print("held %d, not connected %d" % (len(held), refused), flush=True)
time.sleep(SECS)
for c in held:
    c.close()`

// spoofCell is the third finding's walk-around, IPv6 (any user, no
// capability): a datagram to the pod's own address with the forbidden host
// as its source opens a conntrack entry in which the forbidden host is the
// originator; the pod's "replies" to it would then be ESTABLISHED. The
// forbidden host runs a UDP echo on 7009 (a port a user may bind): what
// comes back reached it.
const spoofCell = `import socket
IPV6_FREEBIND = 78
a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
a.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
a.bind((FORBID, 7009))
b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
b.bind((POD, 7001))
b.settimeout(0.5)
opened = "opened"
try:
    a.sendto(b"hello", (POD, 7001))
    b.recvfrom(100)
except OSError as e:
    opened = "opening refused: %s" % e
sent = echoed = 0
for i in range(200):
    try:
        b.sendto(b"D" * 1000, (FORBID, 7009)); sent += 1000
    except OSError:
        pass
try:
    while True:
        data, addr = b.recvfrom(2000)
        if addr[0] == FORBID:
            echoed += len(data)
except OSError:
    pass
print(opened, sent, echoed)`

func (p *proof) adversary(t *testing.T) {
	ctx := context.Background()
	pods6 := map[string]string{"without": "2001:2:0:2::2", "with": "2001:2:0:4::2"}
	run := func(s *side, what, code string, timeout time.Duration) (string, error) {
		r, err := p.execute(t, s, "part 8 ("+what+")", code, timeout)
		if err != nil {
			return "", err
		}
		if r.Status != "ok" {
			return "", fmt.Errorf("%s: %s", r.Status, r.Error)
		}
		return strings.TrimSpace(r.Stdout), nil
	}

	// a. The spray: conntrack entries it made, hubwarden's memory, ready.
	rssBefore := p.sidecarRSS()
	var entries [2]string
	var sent [2]string
	for i, s := range []*side{p.bare, p.warden} {
		out, err := run(s, "the spray", strings.Replace(sprayCell, "SECS", "3", 1), 60*time.Second)
		if err != nil {
			t.Fatalf("%s: the spray: %v", s.name, err)
		}
		sent[i] = out
		n, err := p.b.Exec(s.ns, "conntrack", "-C")
		if err != nil {
			n = "no conntrack table"
		}
		entries[i] = strings.TrimSpace(n)
	}
	rssAfter := p.sidecarRSS()
	code, _, rerr := p.b.WardenGet(ctx, "http://127.0.0.1:9280/readyz")
	ready := rerr == nil && code == 200
	tracked, _ := strconv.Atoi(entries[1])
	// hubwarden's own conntrack entries are few (the pod's connections);
	// the spray's would be hundreds of thousands.
	ok := ready && tracked < 1000 && rssAfter > 0 && rssAfter < 96<<20
	p.rep.Add(Row{"8 adversary", "UDP spray to closed ports across 127.1.x.y, 3 s (conntrack entries; hubwarden RSS, ready)",
		fmt.Sprintf("%s datagrams; %s entries", sent[0], entries[0]),
		fmt.Sprintf("%s datagrams; %s entries; RSS %s -> %s; ready %v", sent[1], entries[1], HumanBytes(float64(rssBefore)), HumanBytes(float64(rssAfter)), ready),
		verdict(ok)})
	if !ok {
		t.Errorf("spray: %s conntrack entries in the warden pod, hubwarden RSS %d -> %d, ready %v (%d %v)", entries[1], rssBefore, rssAfter, ready, code, rerr)
	}

	// b. Held health connections: the user holds as many connections to
	// the health port as it can; the kubelet (from the node's side, here
	// the proxy's namespace) still gets its answers.
	const holdSecs = 12
	cell := strings.NewReplacer("N", "3000", "SECS", strconv.Itoa(holdSecs),
		"ADDRS", fmt.Sprintf("[%q, %q]", WardenIP, "127.0.0.1")).Replace(holdCell)
	held := make(chan string, 1)
	go func() {
		r, err := p.warden.k.Execute(ctx, cell, (holdSecs+60)*time.Second)
		if err != nil {
			held <- "error: " + err.Error()
			return
		}
		held <- strings.TrimSpace(r.Stdout + " " + r.Error)
	}()
	// Probe once the cell has opened its connections (it prints their
	// count first; the probes start after a few seconds either way).
	time.Sleep(6 * time.Second)
	kubelet := &http.Client{Transport: &http.Transport{DialContext: p.b.Proxy.DialContext, DisableKeepAlives: true}, Timeout: time.Second}
	var lat []time.Duration
	failed := 0
	for range 10 {
		t0 := time.Now()
		resp, err := kubelet.Get("http://" + net.JoinHostPort(WardenIP, "9280") + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if err != nil || resp.StatusCode != 200 {
			failed++
		} else {
			lat = append(lat, time.Since(t0))
		}
		time.Sleep(300 * time.Millisecond)
	}
	h := <-held
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	worst := "-"
	if len(lat) > 0 {
		worst = lat[len(lat)-1].Round(100 * time.Microsecond).String()
	}
	ok = failed == 0
	p.rep.Add(Row{"8 adversary", "the user holds up to 3,000 connections to the health port; 10 kubelet probes of /readyz (1 s timeout)", "-",
		fmt.Sprintf("%s; %d of 10 answered 200, slowest %s", h, 10-failed, worst), verdict(ok)})
	if !ok {
		t.Errorf("held probes: %d of 10 kubelet probes failed while the user held connections (%s)", failed, h)
	}

	// c. The spoofed source (IPv6, any user): without hubwarden the
	// forbidden host is reachable anyway (no egress filter); with it, a
	// direct send is refused and the walk-around must not get through.
	var res [2]string
	var echoed [2]int
	for i, s := range []*side{p.bare, p.warden} {
		cell := strings.NewReplacer("FORBID", fmt.Sprintf("%q", Forbid6), "POD", fmt.Sprintf("%q", pods6[s.name])).Replace(spoofCell)
		out, err := run(s, "the spoofed source", cell, 60*time.Second)
		if err != nil {
			t.Fatalf("%s: the spoofed source: %v", s.name, err)
		}
		res[i] = out
		f := strings.Fields(out)
		if len(f) > 0 {
			echoed[i], _ = strconv.Atoi(f[len(f)-1])
		}
	}
	ok = echoed[1] == 0 && echoed[0] > 0
	p.rep.Add(Row{"8 adversary", "IPv6 datagram to the pod's own address with the forbidden host as source, then 200 KB of \"replies\" (opened, sent, echoed back)",
		res[0], res[1], verdict(ok)})
	if !ok {
		t.Errorf("spoofed source: %d bytes echoed by the forbidden host with hubwarden (%s); without: %s", echoed[1], res[1], res[0])
	}

	// d. hubwarden restarted (SIGTERM, as on an upgrade or a kubelet
	// restart) in the middle of a direct upload from the kernel: what
	// leaves the pod over the whole window stays within the pod bound.
	p.restartMidUpload(t)
}

// sidecarRSS is hubwarden's resident memory (0 when unreadable).
func (p *proof) sidecarRSS() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.sc.Proc.Cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func (p *proof) restartMidUpload(t *testing.T) {
	ctx := context.Background()
	home := "/home/" + p.b.WardenUser
	if u, err := user.Lookup(p.b.WardenUser); err == nil {
		home = u.HomeDir
	}
	trigger := filepath.Join(home, ".hwe2e-upload-8")
	upload := strings.NewReplacer("ADDR", fmt.Sprintf("%q", Allowed4), "TRIGGER", fmt.Sprintf("%q", trigger)).Replace(uploadCell)
	if r, err := p.warden.k.Execute(ctx, upload, 30*time.Second); err != nil || strings.TrimSpace(r.Stdout) != "armed" {
		t.Fatalf("arming the upload: %+v %v", r, err)
	}
	base := p.b.SinkBytes.Load()
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(trigger)
	t0 := time.Now()
	time.Sleep(4 * time.Second)
	if err := p.sc.Proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.sc.Proc.Wait(15 * time.Second)
	down := time.Now()
	p.restartSidecar(t, p.sc.Env)
	gap := time.Since(down)
	time.Sleep(4 * time.Second)
	window := time.Since(t0)
	moved := float64(p.b.SinkBytes.Load() - base)
	// The upload has the pod budget at most (part 6 and the download parts
	// spent some of it), refill and the slow rate for the window, and the
	// documented slack for the tiers.
	bound := bypassBound(window)
	ok := moved <= bound && moved > 0
	p.rep.Add(Row{"8 adversary", fmt.Sprintf("hubwarden restarted (SIGTERM, start) during an upload from the kernel to an allowed server, %s (bound %s)", window.Round(time.Second), HumanBytes(bound)),
		"-", fmt.Sprintf("%s moved; hubwarden down %s", HumanBytes(moved), gap.Round(10*time.Millisecond)), verdict(ok)})
	if !ok {
		t.Errorf("restart mid-upload: %s left in %s, bound %s", HumanBytes(moved), window, HumanBytes(bound))
	}
	p.reconnectKernel(t)
}
