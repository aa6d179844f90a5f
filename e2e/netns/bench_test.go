//go:build e2e && linux

package netns

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// proxyBigFile is the download of TestE2EBenchProxy: large enough that a
// round lasts about a second through CHP (128 MiB took 0.15 s, and the
// ratio swung from 0.87x to 1.06x between runs).
const proxyBigFile = 1 << 30

// TestE2EBenchProxy is issue 20's fast-path row through the real proxy:
// the same 1 GiB /files/ download through JupyterHub and CHP from the bare
// pod and from the warden pod (hubwarden run with budgets too large to
// demote), back to back in each round, who goes first alternating. The
// figure judged is the median of the per-round ratios (both downloads of a
// round see about the same machine); the ratio of the median rates is shown
// beside it. HWE2E_BENCH_OUT, when set, receives the BENCHMARKS.md row.
func TestE2EBenchProxy(t *testing.T) {
	b := newBedWith(t, Options{BigFile: proxyBigFile})
	ctx := context.Background()
	bin, err := BuildHubwarden(ctx, b.Dir)
	if err != nil {
		t.Fatal(err)
	}
	// The shaping's fast path alone, with the default configuration: the
	// bed's settings that speed its proofs up (a 250 ms dump interval, a 2 s
	// drift check, a 1 mbit slow class) give way to the defaults. The
	// budgets are too large to demote, and the guard, which refuses
	// /files/, is off (its own cost is `make bench-guard`).
	env := append(withoutVars(b.SidecarEnv(), "HUBWARDEN_DUMP_INTERVAL", "HUBWARDEN_RECONCILE_INTERVAL", "HUBWARDEN_SLOW_RATE",
		"HUBWARDEN_FLOW_BUDGET", "HUBWARDEN_POD_BUDGET", "HUBWARDEN_FLOW_REFILL", "HUBWARDEN_POD_REFILL", "HUBWARDEN_PROMOTE_IDLE"),
		"HUBWARDEN_FLOW_BUDGET=64GiB", "HUBWARDEN_POD_BUDGET=64GiB", "HUBWARDEN_BACKSTOP=false", "HUBWARDEN_GUARD=off")
	if _, err := b.StartSidecar(ctx, bin, env, 30*time.Second); err != nil {
		t.Fatalf("starting the sidecar: %v", err)
	}
	clients := map[string]*Client{}
	for _, u := range []string{b.BareUser, b.WardenUser} {
		if _, err := b.StartServer(ctx, u, SpawnTimeout); err != nil {
			t.Fatalf("spawning %s: %v", u, err)
		}
		c := b.NewClient(u)
		if err := c.Login(ctx); err != nil {
			t.Fatal(err)
		}
		clients[u] = c
	}
	// The first round (cold page cache, cold connections) is dropped. One
	// round swings by ±25 % (an A/A run of two bare pods: 0.88x to 1.16x,
	// median 1.00x): 30 rounds.
	n := 31
	if os.Getenv("BENCH_QUICK") == "1" {
		n = 3
	}
	rates, cpu := map[string][]float64{}, map[string][]float64{}
	var ratios []float64
	for r := 0; r < n; r++ {
		order := []string{b.BareUser, b.WardenUser}
		if r%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		got := map[string]float64{}
		for _, u := range order {
			c := clients[u]
			busy0 := busyCPU(t)
			tr := c.Download(ctx, c.UserURL()+"/files/big.bin", 60*time.Second, nil)
			busy := busyCPU(t) - busy0
			if tr.Err != nil || tr.Status != 200 || tr.Bytes != proxyBigFile {
				t.Fatalf("%s: download: status %d, %d bytes, %v", u, tr.Status, tr.Bytes, tr.Err)
			}
			got[u] = tr.Rate()
			if r > 0 {
				cpu[u] = append(cpu[u], busy.Seconds())
			}
			t.Logf("round %d, %s: %d bytes in %s, %.0f MB/s, %s of busy CPU", r, u, tr.Bytes, tr.Elapsed.Round(time.Millisecond), tr.Rate()/1e6, busy)
		}
		if r > 0 {
			for u, v := range got {
				rates[u] = append(rates[u], v)
			}
			ratios = append(ratios, got[b.WardenUser]/got[b.BareUser])
		}
	}
	med := func(v []float64) float64 {
		s := append([]float64(nil), v...)
		sort.Float64s(s)
		if len(s)%2 == 0 {
			return (s[len(s)/2-1] + s[len(s)/2]) / 2
		}
		return s[len(s)/2]
	}
	bare, with := med(rates[b.BareUser]), med(rates[b.WardenUser])
	ratio := med(ratios)
	met := "met"
	if ratio < 0.98 {
		met = "NOT met"
	}
	sorted := append([]float64(nil), ratios...)
	sort.Float64s(sorted)
	t.Logf("per-round ratios, sorted: %.3f", sorted)
	// The machine's busy CPU time (every CPU, every process: the client,
	// CHP, the server, the kernel) per download: what a GiB costs, which
	// the scheduler's luck in one round moves less than the rate.
	cpuW, cpuB := med(cpu[b.WardenUser]), med(cpu[b.BareUser])
	line := fmt.Sprintf("| 1 | fast-path throughput through the real proxy (JupyterHub + CHP %s, 1 GiB /files/ download, e2e bed, %d rounds, both pods back to back in each, the sidecar's default configuration with budgets too large to demote) | hubwarden %.0f MB/s, %.2f CPU-s per GiB; no qdisc (bare pod) %.0f MB/s, %.2f CPU-s per GiB (medians; CPU: the machine's busy time during the download) | %.2f× (median of the per-round ratios, from %.2f× to %.2f×); ratio of the medians %.2f×; CPU per GiB %.2f× | ≥ 0.98×: %s |",
		CHPVersion, n-1, with/1e6, cpuW, bare/1e6, cpuB, ratio, sorted[0], sorted[len(sorted)-1], with/bare, cpuW/cpuB, met)
	t.Log(line)
	if out := os.Getenv("HWE2E_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(strings.TrimSpace(line)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// withoutVars returns env without the variables named.
func withoutVars(env []string, names ...string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(names, k) {
			out = append(out, kv)
		}
	}
	return out
}

// busyCPU is the time every CPU of the machine has spent busy since boot
// (/proc/stat: user, nice, system, irq and softirq; not idle, iowait, or
// steal, the time the hypervisor gave to others), in USER_HZ ticks of 10 ms.
func busyCPU(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		t.Fatalf("/proc/stat: unexpected first line %q", line)
	}
	var ticks int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i == 7 { // idle, iowait, steal
			continue
		}
		if i >= 8 { // guest time is counted in user already
			break
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("/proc/stat: %q: %v", line, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}
