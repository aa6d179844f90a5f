//go:build e2e && linux

package netns

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestE2EBenchProxy is issue 8 row 1 through the real proxy: the same
// 128 MiB /files/ download through JupyterHub and CHP from the bare pod and
// from the warden pod (hubwarden run with budgets too large to demote),
// alternating, and the ratio of the median rates. HWE2E_BENCH_OUT, when
// set, receives the BENCHMARKS.md row.
func TestE2EBenchProxy(t *testing.T) {
	b := newBed(t)
	ctx := context.Background()
	bin, err := BuildHubwarden(ctx, b.Dir)
	if err != nil {
		t.Fatal(err)
	}
	// The shaping's fast path alone: the guard, which refuses /files/, is
	// off here (its own cost is `make bench-guard`).
	env := append(b.SidecarEnv(), "HUBWARDEN_FLOW_BUDGET=64GiB", "HUBWARDEN_POD_BUDGET=64GiB", "HUBWARDEN_BACKSTOP=false", "HUBWARDEN_GUARD=off")
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
	// A download takes well under a second here: many rounds, the first
	// (cold page cache, cold connections) dropped.
	n := 10
	if os.Getenv("BENCH_QUICK") == "1" {
		n = 2
	}
	rates := map[string][]float64{}
	for r := 0; r < n; r++ {
		order := []string{b.BareUser, b.WardenUser}
		if r%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, u := range order {
			c := clients[u]
			tr := c.Download(ctx, c.UserURL()+"/files/big.bin", 60*time.Second, nil)
			if tr.Err != nil || tr.Status != 200 {
				t.Fatalf("%s: download: status %d, %v", u, tr.Status, tr.Err)
			}
			if r > 0 {
				rates[u] = append(rates[u], tr.Rate())
			}
			t.Logf("%s: %d bytes in %s, %.0f MB/s", u, tr.Bytes, tr.Elapsed.Round(time.Millisecond), tr.Rate()/1e6)
		}
	}
	med := func(v []float64) float64 {
		s := append([]float64(nil), v...)
		sort.Float64s(s)
		return s[len(s)/2]
	}
	bare, with := med(rates[b.BareUser]), med(rates[b.WardenUser])
	ratio := with / bare
	met := "met"
	if ratio < 0.95 {
		met = "NOT met"
	}
	line := fmt.Sprintf("| 1 | fast-path throughput through the real proxy (JupyterHub + CHP %s, 128 MiB /files/ download, e2e bed, %d rounds) | hubwarden %.0f MB/s; no qdisc (bare pod) %.0f MB/s | %.2f× | ≥ 0.95×: %s |",
		CHPVersion, n-1, with/1e6, bare/1e6, ratio, met)
	t.Log(line)
	if out := os.Getenv("HWE2E_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(strings.TrimSpace(line)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
