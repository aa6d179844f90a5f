//go:build linux

package nflog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/health"
	"github.com/hubwarden/hubwarden/internal/nstest"
)

const testGroup = 1987

// health.Metrics is what the sidecar passes as the Counter.
var _ Counter = (*health.Metrics)(nil)

// denyBed is a pod/peer pair whose pod logs and rejects everything it sends
// to the peer (IPv4 and IPv6), like hubwarden's egress chain does.
func denyBed(t *testing.T, subnet int) *nstest.Pair {
	t.Helper()
	nstest.SkipUnlessRoot(t, "iptables", "ip6tables")
	p := nstest.NewPair(t, subnet)
	for _, c := range [][]string{
		{"iptables", "-A", "OUTPUT", "-d", p.PeerIP4, "-j", "NFLOG", "--nflog-group", fmt.Sprint(testGroup), "--nflog-prefix", "hubwarden-deny"},
		// TCP gets a reset: ICMP errors are rate-limited, which would slow the scan.
		{"iptables", "-A", "OUTPUT", "-d", p.PeerIP4, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"},
		{"iptables", "-A", "OUTPUT", "-d", p.PeerIP4, "-j", "REJECT"},
		{"ip6tables", "-A", "OUTPUT", "-d", p.PeerIP6, "-j", "NFLOG", "--nflog-group", fmt.Sprint(testGroup), "--nflog-prefix", "hubwarden-deny"},
		{"ip6tables", "-A", "OUTPUT", "-d", p.PeerIP6, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"},
		{"ip6tables", "-A", "OUTPUT", "-d", p.PeerIP6, "-j", "REJECT"},
	} {
		p.Pod.MustRun(c[0], c[1:]...)
	}
	return p
}

type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) lines(t *testing.T) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, s := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if s == "" {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			t.Fatalf("log line %q: %v", s, err)
		}
		out = append(out, m)
	}
	return out
}

// runReader reads the pod's group with Run until stop is called, counting
// into metrics and logging into the returned buffer.
func runReader(t *testing.T, p *nstest.Pair, window time.Duration, m *health.Metrics) (buf *lockedBuf, stop func()) {
	t.Helper()
	r, err := Open(Config{Group: testGroup, NetNS: p.Pod.FD(), ReadBuffer: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	buf = &lockedBuf{}
	log := zerolog.New(buf).With().Str("component", "denylog").Str("user", "alice").Str("server", "gpu").Logger()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, r, RunConfig{Window: window, Log: &log, Counter: m}) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return buf, stop
}

// dialRefused connects from the pod and expects ECONNREFUSED (REJECT).
func dialRefused(t *testing.T, p *nstest.Pair, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		if _, err := p.Pod.DialRefused(a, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

// waitDenials polls the metrics until want denials were counted.
func waitDenials(t *testing.T, m *health.Metrics, family string, want float64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := denialCount(t, m, family)
		if got >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("denials %s: %v counted, want %v", family, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func denialCount(t *testing.T, m *health.Metrics, family string) float64 {
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "hubwarden_denials_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "family" && l.GetValue() == family {
					return mt.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestIntegrationDeniedConnectionOneLine(t *testing.T) {
	p := denyBed(t, 60)
	m := health.NewMetrics("test")
	buf, stop := runReader(t, p, time.Hour, m)
	dialRefused(t, p, p.PeerIP4+":443", "["+p.PeerIP6+"]:8443")
	waitDenials(t, m, "ipv4", 1)
	waitDenials(t, m, "ipv6", 1)
	stop() // the final flush writes the window
	lines := buf.lines(t)
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want one per destination:\n%v", len(lines), lines)
	}
	for i, want := range []struct {
		family, dst string
		port        float64
	}{{"ipv4", p.PeerIP4, 443}, {"ipv6", p.PeerIP6, 8443}} {
		l := lines[i]
		if l["family"] != want.family || l["dst"] != want.dst || l["port"] != want.port || l["proto"] != "tcp" ||
			l["user"] != "alice" || l["server"] != "gpu" || l["rule"] != "hubwarden-deny" || l["packets"].(float64) < 1 {
			t.Errorf("line %d: %v, want %s %s port %v", i, l, want.family, want.dst, want.port)
		}
	}
	if got := denialCount(t, m, "ipv4"); got != 1 {
		t.Errorf("ipv4 denials %v, want 1", got)
	}
}

func TestIntegrationPortScanHandfulOfLines(t *testing.T) {
	p := denyBed(t, 61)
	m := health.NewMetrics("test")
	buf, stop := runReader(t, p, 10*time.Second, m) // the default DENY_LOG_WINDOW
	var addrs []string
	for port := 1; port <= 1000; port++ {
		addrs = append(addrs, fmt.Sprintf("%s:%d", p.PeerIP4, port))
	}
	dialRefused(t, p, addrs...)
	waitDenials(t, m, "ipv4", 1000)
	stop()
	lines := buf.lines(t)
	total := 0.0
	for _, l := range lines {
		total += l["packets"].(float64)
	}
	t.Logf("1000-port scan: %d lines", len(lines))
	if len(lines) > 5 || total < 1000 {
		t.Fatalf("1000-port scan gave %d lines with %v packets, want a handful with 1000:\n%v", len(lines), total, lines)
	}
}

func TestIntegrationGroupBusy(t *testing.T) {
	p := denyBed(t, 62)
	r, err := Open(Config{Group: testGroup, NetNS: p.Pod.FD()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// The kernel answers EPERM when another socket holds the group.
	if _, err := Open(Config{Group: testGroup, NetNS: p.Pod.FD()}); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("second Open of the same group: %v, want EPERM", err)
	}
}

// TestIntegrationDenialFlood sends a burst of denied UDP packets, as a user
// trying to flood the log (or bury a real denial) would, and reports what
// the reader saw, how many lines it wrote and what the flood cost in CPU,
// measured side by side against the same flood with no reader.
func TestIntegrationDenialFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("flood measurement")
	}
	const n = 20000
	sendErrs := 0
	flood := func(p *nstest.Pair) time.Duration {
		var cpu time.Duration
		sendErrs = 0
		if err := p.Pod.Do(func() error {
			c, err := net.ListenPacket("udp4", ":0")
			if err != nil {
				return err
			}
			defer c.Close()
			dst := &net.UDPAddr{IP: net.ParseIP(p.PeerIP4), Port: 9}
			buf := make([]byte, 32)
			before := cpuTime()
			for i := range n {
				dst.Port = 1 + i%50
				if _, err := c.WriteTo(buf, dst); err != nil && !errors.Is(err, syscall.EPERM) {
					sendErrs++ // EPERM is the REJECT itself; anything else never reached the rule
				}
			}
			cpu = cpuTime() - before
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return cpu
	}

	base := denyBed(t, 65) // no reader: the kernel logs to nobody
	floodOnly := flood(base)

	p := denyBed(t, 66)
	m := health.NewMetrics("test")
	before := cpuTime()
	buf, stop := runReader(t, p, 10*time.Second, m)
	sendCPU := flood(p)
	// Wait until every packet is counted or lost, or the counts stop moving
	// for 3 s (overruns count once per overrun, not per lost packet).
	last, lastChange := -1.0, time.Now()
	for {
		seen := denialCount(t, m, "ipv4") + droppedCount(t, m)
		if seen >= n || time.Since(lastChange) > 3*time.Second {
			break
		}
		if seen != last {
			last, lastChange = seen, time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	total := cpuTime() - before
	lines := buf.lines(t)
	got, dropped := denialCount(t, m, "ipv4"), droppedCount(t, m)
	t.Logf("flood of %d denied UDP packets (%d sends failed other than by the rule): reader counted %v, overruns %v, %d log lines; process CPU %s with reader (sender %s), sender alone %s",
		n, sendErrs, got, dropped, len(lines), total.Round(time.Millisecond), sendCPU.Round(time.Millisecond), floodOnly.Round(time.Millisecond))
	if len(lines) == 0 || len(lines) > 3 {
		t.Errorf("flood gave %d lines, want 1-3", len(lines))
	}
	if got == 0 {
		t.Error("reader counted nothing")
	}
}

func droppedCount(t *testing.T, m *health.Metrics) float64 {
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "hubwarden_denial_log_dropped_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
