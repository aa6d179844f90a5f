//go:build linux

package adversary

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/internal/hwtest"
	"github.com/hubwarden/hubwarden/internal/nstest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	hwtest.Cleanup()
	os.Exit(code)
}

// The budgets of issue 15's runs: flow 16 MiB, flow refill 64 KiB/s, pod
// 32 MiB, pod refill 64 KiB/s, slow 8 mbit.
const (
	flowBudget = 16 << 20
	podBudget  = 32 << 20
	podRefill  = 64 << 10 // bytes/s
	slowRate   = 1_000_000
	serverPort = 8888
)

// budgets is the configuration of issue 15's runs.
var budgets = map[string]string{
	"HUBWARDEN_FLOW_BUDGET":        "16MiB",
	"HUBWARDEN_FLOW_REFILL":        "64KiB/s",
	"HUBWARDEN_POD_BUDGET":         "32MiB",
	"HUBWARDEN_POD_REFILL":         "64KiB/s",
	"HUBWARDEN_SLOW_RATE":          "8mbit",
	"HUBWARDEN_RECONCILE_INTERVAL": "2s",
}

// bound is what may leave the pod fast and slow in d: the pod budget, its
// refill, and the slow rate, plus 1 MiB for headers and what was in flight.
func bound(d time.Duration) int64 {
	return podBudget + int64((podRefill+slowRate)*d.Seconds()) + 1<<20
}

// env is the sidecar's configuration with issue 15's budgets and over.
func env(t *testing.T, p *nstest.Pair, over map[string]string) map[string]string {
	o := map[string]string{}
	for k, v := range budgets {
		o[k] = v
	}
	for k, v := range over {
		o[k] = v
	}
	return hwtest.Env(t, p, o)
}

// bed is a pair with the pod's server (the notebook's role: what a user
// downloads through the proxy) and, with hubwarden, the sidecar.
type bed struct {
	*nstest.Pair
	s *hwtest.Sidecar
}

func newBed(t *testing.T, subnet int, withHubwarden bool, over map[string]string) *bed {
	t.Helper()
	nstest.SkipUnlessRoot(t, "iptables", "nft", "conntrack", "tc", "python3", "setpriv")
	b := &bed{Pair: nstest.NewPair(t, subnet)}
	b.Pod.ServeBulk(serverPort)
	if withHubwarden {
		b.s = hwtest.Start(t, b.Pair, env(t, b.Pair, over))
	}
	return b
}

// download runs n parallel downloads from the pod's server to the peer for
// d, each on a new connection every chunk bytes (0: one connection each,
// as fast as it can), and returns the bytes the peer received.
func (b *bed) download(t *testing.T, n int, chunk uint64, d time.Duration) int64 {
	t.Helper()
	addr := net.JoinHostPort(b.PodIP4, fmt.Sprint(serverPort))
	var total atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	for range n {
		wg.Go(func() {
			if chunk == 0 {
				bk := b.Peer.StartBulk(addr, 0)
				time.Sleep(time.Until(deadline))
				total.Add(bk.At(deadline))
				bk.Close()
				return
			}
			for time.Now().Before(deadline) {
				c, err := b.Peer.DialTimeout("tcp", addr, 2*time.Second)
				if err != nil {
					continue
				}
				c.SetDeadline(deadline)
				s := senderOn(c)
				got, _ := s.fetch(chunk)
				total.Add(int64(got))
				c.Close()
			}
		})
	}
	wg.Wait()
	return total.Load()
}

// sender asks a ServeBulk server for bytes on an open connection
// (nstest's send mode), counting what arrives before a deadline.
type sender struct{ c net.Conn }

func senderOn(c net.Conn) *sender {
	_, _ = c.Write([]byte{'S'})
	return &sender{c}
}

func (s *sender) fetch(n uint64) (uint64, error) {
	var hdr [8]byte
	for i := range 8 {
		hdr[i] = byte(n >> (56 - 8*i))
	}
	if _, err := s.c.Write(hdr[:]); err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	var got uint64
	for got < n {
		k, err := s.c.Read(buf)
		got += uint64(k)
		if err != nil {
			return got, err
		}
	}
	return got, nil
}

// asUser runs a Python program in the pod as an unprivileged user (uid
// nobody, no capabilities), or as root without NET_ADMIN but with the
// NET_RAW a container has by default (root true).
func asUser(t *testing.T, ns *nstest.NS, root bool, timeout time.Duration, program string, args ...string) *exec.Cmd {
	t.Helper()
	priv := []string{"--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"}
	if root {
		priv = []string{"--inh-caps=-all", "--bounding-set=-all,+net_raw"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	argv := append(append(priv, "/usr/bin/python3", "-c", program), args...)
	cmd := ns.Cmd(ctx, "setpriv", argv...)
	return cmd
}

// runUser runs asUser to completion and returns its output.
func runUser(t *testing.T, ns *nstest.NS, root bool, timeout time.Duration, program string, args ...string) string {
	t.Helper()
	out, err := asUser(t, ns, root, timeout, program, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("user program: %v:\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// ctCount returns the number of entries in the pod's conntrack table.
func ctCount(t *testing.T, ns *nstest.NS) int {
	t.Helper()
	out := ns.MustRun("conntrack", "-C")
	var n int
	fmt.Sscan(strings.TrimSpace(out), &n)
	return n
}
