//go:build e2e && linux

package netns

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

//go:embed probe.py
var probePy string

// side is one pod of the side-by-side comparison.
type side struct {
	name string // "without" or "with"
	user string
	ns   NS
	c    *Client
	k    *Kernel
	lab  *Lab // JupyterLab in the browser
}

// proof is the shared state of TestE2EProof's parts.
type proof struct {
	b       *Bed
	rep     *Report
	bin     string // hubwarden for root in the pod
	userBin string // a copy the users can execute
	sc      *Sidecar
	bare    *side
	warden  *side
	big     int64
	br      *Browser
}

func envDuration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

// TestE2EProof is the proof of issue 7: one bed, two pods, the same
// workload to the pod without hubwarden and the pod with it, side by side.
// It prints the before/after table at the end. Parts whose hubwarden
// feature is missing skip with the reason.
func TestE2EProof(t *testing.T) {
	t0 := time.Now()
	b := newBed(t)
	ctx := context.Background()
	p := &proof{b: b, rep: &Report{}, big: 128 << 20}
	t.Cleanup(func() {
		if t.Failed() && !p.rep.Failed() {
			p.rep.Add(Row{"harness", "the proof run itself", "-", "-", "FAIL"})
		}
		p.rep.Print(os.Stdout)
		if f := os.Getenv("HWE2E_REPORT"); f != "" {
			if w, err := os.Create(f); err == nil {
				p.rep.Print(w)
				w.Close()
			}
		}
		t.Logf("timings: bed setup %s, whole proof %s", b.Timings["setup"].Round(time.Millisecond), time.Since(t0).Round(time.Second))
	})
	bin, err := BuildHubwarden(ctx, b.Dir)
	if err != nil {
		t.Fatal(err)
	}
	p.bin = bin
	p.userBin = "/tmp/" + b.Prefix + "hubwarden"
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.userBin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	b.AddFile(p.userBin)

	// Like a native sidecar: hubwarden is ready before the server starts.
	ts := time.Now()
	sc, err := b.StartSidecar(ctx, bin, b.SidecarEnv(), 30*time.Second)
	if errors.Is(err, ErrNotImplemented) {
		p.rep.Add(Row{"all", "hubwarden run", "-", "-", "SKIP (" + err.Error() + ")"})
		skip(t, "skipping the proof: %v", err)
	}
	if err != nil {
		t.Fatalf("starting the sidecar: %v", err)
	}
	p.sc = sc
	b.Timings["sidecar"] = time.Since(ts)
	t.Logf("hubwarden run ready in %s", b.Timings["sidecar"].Round(time.Millisecond))

	p.bare = &side{name: "without", user: b.BareUser, ns: b.Bare}
	p.warden = &side{name: "with", user: b.WardenUser, ns: b.Warden}
	for _, s := range []*side{p.bare, p.warden} {
		d, err := b.StartServer(ctx, s.user, SpawnTimeout)
		if err != nil {
			t.Fatalf("spawning %s: %v", s.user, err)
		}
		t.Logf("%s: server ready in %s", s.user, d.Round(time.Millisecond))
		s.c = b.NewClient(s.user)
		if err := s.c.Login(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.c.OpenLab(ctx); err != nil {
			t.Fatal(err)
		}
		if s.k, err = s.c.StartKernel(ctx); err != nil {
			t.Fatal(err)
		}
	}
	p.startBrowser(t)
	t.Run("1-regular-use", p.regularUse)
	t.Run("1-regular-use-browser", p.browserUse)
	// Part 3 runs before part 2, while the pod budget is still full: it
	// needs a download that goes over the flow budget and yet completes.
	t.Run("3-promotion", p.promotion)
	t.Run("2-download-browser", p.browserDownload)
	t.Run("2-large-download", p.largeDownload)
	t.Run("2-guard-forms", p.guardForms)
	t.Run("4-bypass", p.bypass)
	t.Run("5-egress", p.egress)
	t.Run("6-faults", p.faults)
	t.Run("7-verify", p.verify)
	t.Run("8-adversary", p.adversary)
	t.Run("9-ui-budget-spent", p.throttledUI)
}

// skip skips the test, or fails it under HWE2E_STRICT=1 (make demo: a
// proof that could not run proves nothing).
func skip(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("HWE2E_STRICT") == "1" {
		t.Fatalf("HWE2E_STRICT=1: "+format, args...)
	}
	t.Skipf(format, args...)
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// --- part 1 -----------------------------------------------------------------

// plotCell draws a real matplotlib figure (the inline backend sends it as a
// PNG in a display_data message, as a notebook's plot is sent).
const plotCell = `import numpy as np, matplotlib.pyplot as plt
rng = np.random.default_rng()
fig, ax = plt.subplots(figsize=(8, 4))
ax.scatter(rng.normal(size=3000), rng.normal(size=3000), s=4, alpha=.5)
ax.set_title("regular use")
plt.show()`

func (p *proof) regularUse(t *testing.T) {
	ctx := context.Background()
	dur := envDuration("HWE2E_REGULAR", 60*time.Second)
	_, slow0, shaped := p.b.SlowClassBytes(p.b.Warden)
	nbWithOutput := notebookJSON("print('hello')\n" + strings.Repeat("x = 1\n", 500))
	type op struct {
		name string
		f    func(s *side, i int) error
	}
	nb := func(i int) string { return fmt.Sprintf("nb%d.ipynb", i%5) }
	ops := []op{
		{"lab", func(s *side, i int) error { _, err := s.c.Do(ctx, "GET", s.c.UserURL()+"/lab", nil, nil); return err }},
		{"list", func(s *side, i int) error {
			_, err := s.c.Do(ctx, "GET", s.c.UserURL()+"/api/contents?content=1", nil, nil)
			if err == nil {
				_, err = s.c.Do(ctx, "GET", s.c.UserURL()+"/api/contents/work?content=1", nil, nil)
			}
			return err
		}},
		{"save", func(s *side, i int) error {
			_, err := s.c.Do(ctx, "PUT", s.c.UserURL()+"/api/contents/"+nb(i), nbWithOutput, nil)
			return err
		}},
		{"open", func(s *side, i int) error {
			_, err := s.c.Do(ctx, "GET", s.c.UserURL()+"/lab/tree/"+nb(i), nil, nil)
			if err == nil {
				_, err = s.c.Do(ctx, "GET", s.c.UserURL()+"/api/contents/"+nb(i)+"?content=1", nil, nil)
			}
			return err
		}},
		{"print", func(s *side, i int) error {
			r, err := p.execute(t, s, "part 1 (print)", "print(sum(range(100000)))", 30*time.Second)
			if err == nil && strings.TrimSpace(r.Stdout) != "4999950000" {
				err = fmt.Errorf("print cell: %+v", r)
			}
			return err
		}},
		{"plot", func(s *side, i int) error {
			r, err := p.execute(t, s, "part 1 (plot)", plotCell, 30*time.Second)
			if err == nil && r.Display < 20000 {
				err = fmt.Errorf("plot cell: %+v", r)
			}
			return err
		}},
	}
	// Create the notebooks first so "open" finds them.
	for _, s := range []*side{p.bare, p.warden} {
		for i := range 5 {
			if _, err := s.c.Do(ctx, "PUT", s.c.UserURL()+"/api/contents/"+nb(i), nbWithOutput, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	lat := map[string][]time.Duration{}
	perOp := map[string]map[string][]time.Duration{}
	end := time.Now().Add(dur)
	rounds := 0
	for i := 0; time.Now().Before(end); i++ {
		for _, o := range ops {
			order := []*side{p.bare, p.warden}
			if (i+len(o.name))%2 == 1 { // alternate who goes first
				order[0], order[1] = order[1], order[0]
			}
			for _, s := range order {
				t1 := time.Now()
				k := s.k
				if err := o.f(s, i); err != nil {
					t.Fatalf("%s, %s: %v", s.name, o.name, err)
				}
				d := time.Since(t1)
				if s.k != k {
					// The kernel hung and the cell ran again in a new one
					// (execute, noted in the report): the time is the
					// kernel's timeout, not a latency.
					continue
				}
				lat[s.name] = append(lat[s.name], d)
				if perOp[o.name] == nil {
					perOp[o.name] = map[string][]time.Duration{}
				}
				perOp[o.name][s.name] = append(perOp[o.name][s.name], d)
			}
		}
		rounds++
	}
	pb, pw := percentile(lat["without"], 0.95), percentile(lat["with"], 0.95)
	// The assertion uses latencies normalised by the median of the same
	// operation without hubwarden, so that the slowest kind of operation
	// (the notebook page, about 300 ms of server CPU) does not make the p95
	// alone; every kind weighs the same.
	norm := map[string][]time.Duration{}
	for _, o := range ops {
		med := percentile(perOp[o.name]["without"], .5)
		for _, sd := range []string{"without", "with"} {
			for _, d := range perOp[o.name][sd] {
				norm[sd] = append(norm[sd], time.Duration(float64(d)/float64(med)*1e6))
			}
		}
	}
	ratio := float64(percentile(norm["with"], .95)) / float64(percentile(norm["without"], .95))
	rawRatio := float64(pw) / float64(pb)
	for _, o := range ops {
		t.Logf("%-6s p50 %8s / %8s   p95 %8s / %8s (without / with)", o.name,
			percentile(perOp[o.name]["without"], .5).Round(10*time.Microsecond), percentile(perOp[o.name]["with"], .5).Round(10*time.Microsecond),
			percentile(perOp[o.name]["without"], .95).Round(10*time.Microsecond), percentile(perOp[o.name]["with"], .95).Round(10*time.Microsecond))
	}
	_, slow1, _ := p.b.SlowClassBytes(p.b.Warden)
	marked := p.b.MarkedFlows(p.b.Warden, 0x100000)
	demoted := slow1 - slow0
	p.rep.Add(Row{"1 regular use, HTTP", fmt.Sprintf("p95 latency, %d ops each (%s)", len(lat["with"]), dur),
		pb.Round(100 * time.Microsecond).String(), fmt.Sprintf("%s (%.2fx)", pw.Round(100*time.Microsecond), rawRatio), "-"})
	p.rep.Add(Row{"1 regular use, HTTP", "p95 of latency / median without, per op kind", "1.00x", fmt.Sprintf("%.2fx", ratio), verdict(ratio <= 1.2)})
	p.rep.Add(Row{"1 regular use, HTTP", "bytes in the slow class / marked flows", "-", fmt.Sprintf("%d B / %d", demoted, marked), verdict(shaped && demoted == 0 && marked == 0)})
	if !shaped {
		t.Errorf("no HTB classes on the warden pod's eth0: shaping is not applied")
	}
	if demoted != 0 || marked != 0 {
		t.Errorf("regular use was demoted: %d bytes in the slow class, %d marked flows", demoted, marked)
	}
	if ratio > 1.2 {
		t.Errorf("normalised p95 latency with hubwarden is %.2fx the one without; want <= 1.2x (raw p95 %s vs %s)", ratio, pw, pb)
	}
}

// --- part 2 -----------------------------------------------------------------

// fastPhase returns the bytes moved before the rate fell below limit.
func fastPhase(tr Transfer, limit float64) (int64, time.Duration) {
	prev := int64(0)
	for i, s := range tr.Samples {
		if float64(s-prev)/sampleEvery.Seconds() < limit && i > 0 {
			return prev, time.Duration(i) * sampleEvery
		}
		prev = s
	}
	return tr.Bytes, tr.Elapsed
}

// guardDenials counts the guard's audit lines in hubwarden's log that
// refused a request by a rule whose name starts with rule (e.g.
// "deny-files", "deny-contents-").
func (p *proof) guardDenials(rule string) int {
	b, _ := os.ReadFile(filepath.Join(p.b.Dir, "hubwarden.log"))
	return strings.Count(string(b), `"rule":"`+rule)
}

// refused is a download the guard refused: its 403 and a body that is the
// guard's message, not the file.
func refused(tr Transfer) bool { return tr.Err == nil && tr.Status == 403 && tr.Bytes < 1024 }

func (p *proof) largeDownload(t *testing.T) {
	ctx := context.Background()
	// The download routes: the bare pod serves the file, the guard refuses
	// it in the warden pod before the server sees the request.
	files0 := p.guardDenials("deny-files")
	bare := p.bare.c.Download(ctx, p.bare.c.UserURL()+"/files/big.bin", 60*time.Second, nil)
	if bare.Err != nil || bare.Bytes != p.big {
		t.Fatalf("download without hubwarden: %d bytes, %v", bare.Bytes, bare.Err)
	}
	with := p.warden.c.Download(ctx, p.warden.c.UserURL()+"/files/big.bin", 15*time.Second, nil)
	files1 := p.guardDenials("deny-files")
	ok := refused(with) && files1 > files0
	p.rep.Add(Row{"2 download /files (guard)", "GET /files/big.bin (128 MiB)", fmt.Sprintf("%d, %s in %s (%s)", bare.Status, HumanBytes(float64(bare.Bytes)), bare.Elapsed.Round(time.Millisecond), HumanRate(bare.Rate())),
		fmt.Sprintf("%d, %d B (guard: %d deny-files)", with.Status, with.Bytes, files1-files0), verdict(ok)})
	if !ok {
		t.Errorf("/files/big.bin with hubwarden: status %d, %d bytes, %v, guard denials %d; want the guard's 403", with.Status, with.Bytes, with.Err, files1-files0)
	}
	cu := "/api/contents/contents.bin?type=file&format=base64&content=1"
	c0 := p.guardDenials("deny-contents-")
	cb := p.bare.c.Download(ctx, p.bare.c.UserURL()+cu, 60*time.Second, nil)
	cw := p.warden.c.Download(ctx, p.warden.c.UserURL()+cu, 10*time.Second, nil)
	c1 := p.guardDenials("deny-contents-")
	if cb.Err != nil || cb.Status != 200 {
		t.Fatalf("contents API without hubwarden: %d %v", cb.Status, cb.Err)
	}
	ok = refused(cw) && c1 > c0
	p.rep.Add(Row{"2 download contents API (guard)", "24 MiB file as base64 JSON", fmt.Sprintf("%d, %s in %s", cb.Status, HumanBytes(float64(cb.Bytes)), cb.Elapsed.Round(time.Millisecond)),
		fmt.Sprintf("%d, %d B (guard: %d deny-contents-*)", cw.Status, cw.Bytes, c1-c0), verdict(ok)})
	if !ok {
		t.Errorf("contents API with hubwarden: status %d, %d bytes, %v, guard denials %d; want the guard's 403", cw.Status, cw.Bytes, cw.Err, c1-c0)
	}

	// The throttling, on the route the guard allows: a 28 MiB notebook
	// (random bytes as a saved image/png output) through the contents API,
	// over the 16 MiB flow budget.
	nu := "/api/contents/" + LargeNotebook + "?content=1"
	bare = p.bare.c.Download(ctx, p.bare.c.UserURL()+nu, 60*time.Second, nil)
	if bare.Err != nil || bare.Status != 200 || bare.Bytes < 27<<20 {
		t.Fatalf("%s without hubwarden: status %d, %d bytes, %v", LargeNotebook, bare.Status, bare.Bytes, bare.Err)
	}
	with = p.warden.c.Download(ctx, p.warden.c.UserURL()+nu, 15*time.Second, nil)
	if with.Err != nil || with.Status != 200 {
		t.Fatalf("%s with hubwarden: status %d, %v", LargeNotebook, with.Status, with.Err)
	}
	fastB, fastD := fastPhase(with, 20*SlowRateBytes)
	slow := with.TailRate(5 * time.Second)
	gib := float64(1 << 30)
	tBare := gib / bare.Rate()
	tWith := fastD.Seconds() + (gib-float64(fastB))/math.Max(slow, 1)
	t.Logf("%s without: %s in %s (%s); with: %s in %s, fast phase %s in %s, tail %s", LargeNotebook,
		HumanBytes(float64(bare.Bytes)), bare.Elapsed.Round(time.Millisecond), HumanRate(bare.Rate()),
		HumanBytes(float64(with.Bytes)), with.Elapsed.Round(time.Millisecond), HumanBytes(float64(fastB)), fastD, HumanRate(slow))
	what := "2 download, allowed route"
	p.rep.Add(Row{what, fmt.Sprintf("28 MiB notebook via the contents API: rate (with: after the budget; bytes in %s)", with.Elapsed.Round(time.Second)),
		fmt.Sprintf("%s (all %s)", HumanRate(bare.Rate()), HumanBytes(float64(bare.Bytes))), fmt.Sprintf("%s (%s)", HumanRate(slow), HumanBytes(float64(with.Bytes))),
		verdict(slow*20 < bare.Rate() && slow <= 4*SlowRateBytes && with.Bytes < bare.Bytes)})
	p.rep.Add(Row{what, "fast bytes before demotion", "all " + HumanBytes(float64(bare.Bytes)), HumanBytes(float64(fastB)), verdict(fastB >= 4<<20)})
	p.rep.Add(Row{what, "time for 1 GiB (extrapolated)", HumanDuration(tBare), HumanDuration(tWith), verdict(tWith >= 100*tBare)})
	if slow*20 >= bare.Rate() || slow > 4*SlowRateBytes || with.Bytes >= bare.Bytes {
		t.Errorf("rate after the budget %s is not the slow rate (%s configured, %s without hubwarden; %d of %d bytes)", HumanRate(slow), SlowRate, HumanRate(bare.Rate()), with.Bytes, bare.Bytes)
	}
	if fastB < 4<<20 {
		t.Errorf("only %s went fast before the demotion; want at least 4 MiB (the flow budget is %s)", HumanBytes(float64(fastB)), FlowBudget)
	}
	if tWith < 100*tBare {
		t.Errorf("1 GiB takes %s with hubwarden, %s without: want >= 100x", HumanDuration(tWith), HumanDuration(tBare))
	}
}

// --- part 3 -----------------------------------------------------------------

func (p *proof) openNotebook(ctx context.Context, s *side) (time.Duration, error) {
	// The notebook's content and a 100 KB uncached static asset; the page
	// itself costs ~300 ms of server CPU, which would hide the network.
	t0 := time.Now()
	if _, err := s.c.Do(ctx, "GET", s.c.UserURL()+p.b.LabAsset, nil, nil); err != nil {
		return 0, err
	}
	if _, err := s.c.Do(ctx, "GET", s.c.UserURL()+"/api/contents/nb0.ipynb?content=1", nil, nil); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

func (p *proof) promotion(t *testing.T) {
	ctx := context.Background()
	// A download that goes over the flow budget (an 18 MiB notebook, the
	// route the guard allows; budget 16 MiB: well past the watcher's few
	// percent of overshoot) and completes, so that CHP puts its upstream
	// socket, now demoted, back in its keep-alive pool; the next requests
	// reuse it (Node's agent picks the most recently used socket). Then open
	// a notebook on that client.
	_, slow0, _ := p.b.SlowClassBytes(p.b.Warden)
	ou := "/api/contents/" + OverNotebook + "?content=1"
	pb := p.bare.c.Download(ctx, p.bare.c.UserURL()+ou, 60*time.Second, nil)
	dl := p.warden.c.Download(ctx, p.warden.c.UserURL()+ou, 60*time.Second, nil)
	if dl.Err != nil || dl.Status != 200 || pb.Status != 200 || dl.Bytes != pb.Bytes || pb.Bytes < 17<<20 {
		t.Fatalf("over-budget download: without %d %d bytes, with %d %d bytes (%v); want the same ~18 MiB", pb.Status, pb.Bytes, dl.Status, dl.Bytes, dl.Err)
	}
	stopped := time.Now()
	_, slow1, _ := p.b.SlowClassBytes(p.b.Warden)
	demoted := slow1 > slow0
	p.rep.Add(Row{"3 after the download", "18 MiB notebook via the contents API (flow budget 16 MiB)", pb.Elapsed.Round(time.Millisecond).String(),
		fmt.Sprintf("%s (tail %s), slow class +%s", dl.Elapsed.Round(time.Millisecond), HumanRate(dl.TailRate(time.Second)), HumanBytes(float64(slow1-slow0))), verdict(demoted)})
	if !demoted {
		t.Errorf("the over-budget download was not demoted (no bytes in the slow class): promotion cannot be shown")
	}
	var base []time.Duration
	for range 5 {
		d, err := p.openNotebook(ctx, p.bare)
		if err != nil {
			t.Fatal(err)
		}
		base = append(base, d)
	}
	med := percentile(base, .5)
	// "Normal" is within 3x the bare median, or 250 ms of it for a median of
	// a few milliseconds that a loaded machine's jitter alone can multiply
	// (50 ms was seen to fail once with the connection promoted 1.6 s
	// earlier); a demoted open sends the whole notebook at the slow rate,
	// about 0.8-1 s, so this still tells the two apart.
	normalBound := func(med time.Duration) time.Duration { return max(3*med, med+250*time.Millisecond) }
	first := time.Duration(0)
	bound := PromoteIdle + 4*250*time.Millisecond + 3*time.Second
	var last time.Duration
	var normalAt time.Duration = -1
	var polls []string
	for time.Since(stopped) < bound+5*time.Second {
		d, err := p.openNotebook(ctx, p.warden)
		if err != nil {
			t.Fatal(err)
		}
		if first == 0 {
			first = d
		}
		last = d
		polls = append(polls, fmt.Sprintf("%s at %s", d.Round(100*time.Microsecond), time.Since(stopped).Round(10*time.Millisecond)))
		if d <= normalBound(med) {
			normalAt = time.Since(stopped)
			break
		}
		// Like a user reading the page before the next click: a request on
		// the demoted connection is itself traffic, so polling without a
		// pause would keep the connection from ever being idle.
		time.Sleep(PromoteIdle + time.Second)
	}
	t.Logf("download before: %s in %s (without: %s); open notebook without %s; with: first %s, normal (<= %s) after %s; every open: %s", HumanBytes(float64(dl.Bytes)),
		dl.Elapsed, pb.Elapsed, med, first, normalBound(med), normalAt, strings.Join(polls, ", "))
	ok := demoted && normalAt >= 0 && normalAt <= bound
	normal := "never"
	if normalAt >= 0 {
		normal = normalAt.Round(10 * time.Millisecond).String()
	}
	p.rep.Add(Row{"3 after the download", "open a notebook (same kept-alive connections)", med.Round(100 * time.Microsecond).String(),
		fmt.Sprintf("first %s, normal after %s (bound %s)", first.Round(100*time.Microsecond), normal, bound), verdict(ok)})
	if !ok {
		t.Errorf("opening a notebook stayed slow after the download stopped: last %s vs %s without (bound %s)", last, med, bound)
	}
}

// --- part 4 -----------------------------------------------------------------

func bypassBound(d time.Duration) float64 {
	return (PodBudgetBytes + (PodRefillBytes+SlowRateBytes)*d.Seconds()) * 1.1
}

// attempt runs f on both sides for d (the side without hubwarden stops once
// it has moved 3x the bound) and returns the bytes each moved.
func (p *proof) attempt(t *testing.T, name string, d time.Duration, f func(ctx context.Context, s *side, n *atomic.Int64)) {
	bound := bypassBound(d)
	moved := map[string]int64{}
	for _, s := range []*side{p.bare, p.warden} {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		var n atomic.Int64
		done := make(chan struct{})
		go func() { f(ctx, s, &n); close(done) }()
		tick := time.NewTicker(100 * time.Millisecond)
	loop:
		for {
			select {
			case <-done:
				break loop
			case <-tick.C:
				if s == p.bare && float64(n.Load()) > 3*bound {
					cancel()
				}
			}
		}
		tick.Stop()
		cancel()
		moved[s.name] = n.Load()
	}
	// When the bed is too slow for the attempt to pass the bound even
	// without hubwarden, the bound alone proves nothing: then hubwarden must
	// also move less than a quarter of what the bare pod moved.
	ok := float64(moved["with"]) <= bound && (float64(moved["without"]) > bound || 4*moved["with"] < moved["without"])
	p.rep.Add(Row{"4 bypass", fmt.Sprintf("%s, %s (bound %s)", name, d, HumanBytes(bound)), HumanBytes(float64(moved["without"])) + "+",
		HumanBytes(float64(moved["with"])), verdict(ok)})
	t.Logf("%s: without %s (stopped at 3x bound), with %s, bound %s", name, HumanBytes(float64(moved["without"])), HumanBytes(float64(moved["with"])), HumanBytes(bound))
	if !ok {
		t.Errorf("%s moved %s with hubwarden in %s, %s without; bound %s", name, HumanBytes(float64(moved["with"])), d, HumanBytes(float64(moved["without"])), HumanBytes(bound))
	}
	if float64(moved["without"]) <= bound {
		t.Logf("note: %s without hubwarden moved only %s (the bed is slow)", name, HumanBytes(float64(moved["without"])))
	}
}

func (p *proof) bypass(t *testing.T) {
	d := envDuration("HWE2E_BYPASS", 8*time.Second)
	// The routes the guard allows: notebooks through the contents API
	// (/files and its Range requests are refused in the warden pod, part 2).
	nu := "/api/contents/" + ChunkNotebook + "?content=1"
	p.attempt(t, "16 parallel connections requesting an 8 MiB notebook", d, func(ctx context.Context, s *side, n *atomic.Int64) {
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for ctx.Err() == nil {
					tr := s.c.Download(ctx, s.c.UserURL()+nu, time.Hour, nil)
					n.Add(tr.Bytes)
					if tr.Err != nil && ctx.Err() == nil {
						time.Sleep(50 * time.Millisecond)
					}
				}
			})
		}
		wg.Wait()
	})
	p.attempt(t, "new connection per request of an 8 MiB notebook", d, func(ctx context.Context, s *side, n *atomic.Int64) {
		c := p.b.NewChurnClient(s.user)
		c.HTTP.Jar = s.c.HTTP.Jar
		for ctx.Err() == nil {
			tr := c.Download(ctx, c.UserURL()+nu, time.Hour, nil)
			n.Add(tr.Bytes)
		}
	})
	// Kernels are started and answering before the clock starts.
	kernels := map[string]*Kernel{}
	for _, s := range []*side{p.bare, p.warden} {
		k, err := s.c.StartKernel(context.Background())
		if err != nil {
			t.Fatalf("%s: starting a kernel: %v", s.name, err)
		}
		// A hung warm-up (the ipykernel 7 freeze) is run again in a new
		// kernel, which then serves the attempt.
		_, err = p.executeIn(t, s, &k, "part 4, warming up a kernel", "1+1", 60*time.Second)
		defer k.Close(context.Background())
		if err != nil {
			t.Fatalf("%s: warming up a kernel: %v", s.name, err)
		}
		kernels[s.name] = k
	}
	p.attempt(t, "print a file as base64 in a kernel", d, func(ctx context.Context, s *side, n *atomic.Int64) {
		k := kernels[s.name]
		base := k.Received.Load()
		// Flush after every line, so that output streams instead of
		// piling up in the kernel's stdout buffer.
		code := `import base64, sys
with open("big.bin", "rb") as f:
    while True:
        b = f.read(1 << 16)
        if not b:
            f.seek(0); continue
        print(base64.b64encode(b).decode())
        sys.stdout.flush()`
		// Count while it runs: Execute returns only when ctx ends.
		go func() {
			for ctx.Err() == nil {
				n.Store(k.Received.Load() - base)
				time.Sleep(100 * time.Millisecond)
			}
		}()
		k.Execute(ctx, code, time.Hour)
		n.Store(k.Received.Load() - base)
		// Interrupt the endless cell.
		s.c.Do(context.Background(), "POST", s.c.UserURL()+"/api/kernels/"+k.ID+"/interrupt", nil, nil)
	})
}

// --- part 5 -----------------------------------------------------------------

func (p *proof) probe(ctx context.Context, s *side) (map[string]any, error) {
	targets, _ := json.Marshal(map[string]any{
		"allowed4": Allowed4, "allowed6": Allowed6, "forbid4": Forbid4, "forbid6": Forbid6,
		"blocked4": Blocked4, "dns4": DNS4, "dns6": DNS6, "hub": HubIP, "tunnel_n": 400, "tunnel_spread": 2.0,
	})
	code := strings.Replace(probePy, "T = {}", "T = "+string(targets), 1)
	r, err := s.k.Execute(ctx, code, 60*time.Second)
	if err != nil {
		return nil, err
	}
	if r.Status != "ok" {
		return nil, fmt.Errorf("probe cell: %s %s", r.Status, r.Error)
	}
	var out map[string]any
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		return nil, fmt.Errorf("decoding the probe output %q: %w", r.Stdout, err)
	}
	return out, nil
}

func (p *proof) egress(t *testing.T) {
	ctx := context.Background()
	res := map[string]map[string]any{}
	for _, s := range []*side{p.bare, p.warden} {
		r, err := p.probe(ctx, s)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		res[s.name] = r
		t.Logf("%s: %v", s.name, r)
	}
	str := func(side, k string) string { v, _ := res[side][k].(string); return v }
	isOK := func(v string) bool { return strings.HasPrefix(v, "ok") }
	check := func(measure string, keys []string, wantWith bool) {
		var wo, wi []string
		ok := true
		for _, k := range keys {
			wo = append(wo, str("without", k))
			wi = append(wi, str("with", k))
			if isOK(str("with", k)) != wantWith {
				ok = false
			}
		}
		p.rep.Add(Row{"5 egress", measure, strings.Join(wo, "; "), strings.Join(wi, "; "), verdict(ok)})
		if !ok {
			t.Errorf("%s: with hubwarden %v, want reachable=%v", measure, wi, wantWith)
		}
	}
	check("allowed server, TCP v4 / v6", []string{"allowed_tcp4", "allowed_tcp6"}, true)
	check("forbidden server, TCP v4 / v6", []string{"forbidden_tcp4", "forbidden_tcp6"}, false)
	check("forbidden server, UDP v4 / v6", []string{"forbidden_udp4", "forbidden_udp6"}, false)
	check("allowed CIDR but in BLOCK", []string{"blocked_tcp4"}, false)
	check("metadata 169.254.169.254 (no server in the bed)", []string{"metadata_tcp4"}, false)
	check("DNS through the resolver v4 / v6, name lookup", []string{"dns_resolver4", "dns_resolver6", "resolve_allowed"}, true)
	check("DNS to another server (rogue resolver) v4 / v6", []string{"rogue_dns4", "rogue_dns6"}, false)
	check("hub API", []string{"hub_api"}, true)

	tun := func(side string) (float64, float64, float64) {
		m, _ := res[side]["tunnel"].(map[string]any)
		a, _ := m["answered"].(float64)
		s, _ := m["sent"].(float64)
		e, _ := m["elapsed"].(float64)
		return a, s, e
	}
	ab, sb, _ := tun("without")
	aw, sw, ew := tun("with")
	limit := (DNSBurst + DNSRate*(ew+1.0)) * 1.2
	ok := aw <= limit && ab >= 2*aw
	p.rep.Add(Row{"5 egress", fmt.Sprintf("DNS tunnel burst: answers to 400 queries in 2 s (limit %.0f)", limit),
		fmt.Sprintf("%.0f of %.0f", ab, sb), fmt.Sprintf("%.0f of %.0f", aw, sw), verdict(ok)})
	if !ok {
		t.Errorf("DNS burst: %v answered with hubwarden (limit %.0f), %v without", aw, limit, ab)
	}
}

// --- part 6 -----------------------------------------------------------------

func (p *proof) restartSidecar(t *testing.T, env []string) {
	t.Helper()
	sc, err := p.b.StartSidecar(context.Background(), p.bin, env, 30*time.Second)
	if err != nil {
		t.Fatalf("restarting the sidecar: %v", err)
	}
	p.sc = sc
}

// reconnectKernel replaces the warden pod's kernel: its websocket ran
// through the guard, which a stopped or restarted hubwarden took with it.
func (p *proof) reconnectKernel(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	p.warden.k.Close(ctx)
	k, err := p.warden.c.StartKernel(ctx)
	if err != nil {
		t.Fatalf("with: a new kernel after the sidecar restarted: %v", err)
	}
	p.warden.k = k
}

// execute runs code in s's kernel and, when the kernel hung, once more in a
// new one. ipykernel 7 (7.3.0 is the z2jh 4.4 user image's pin) now and then
// freezes, with or without hubwarden (ipython/ipykernel#1471; kernelHung is
// the browser's test for it). Here a hang is a cell with no reply by its
// timeout (ErrStillRunning: the websocket is still up) while the server,
// asked over the same proxy and guard, answers for the kernel at once: the
// path works, the kernel does not. The kernel is replaced, the retry noted
// in the report, and the cell run again; a second hang, or any other
// failure, is returned as it is.
func (p *proof) execute(t *testing.T, s *side, what, code string, timeout time.Duration) (ExecResult, error) {
	t.Helper()
	return p.executeIn(t, s, &s.k, what, code, timeout)
}

// executeIn is execute in the kernel *kp of side s (a kernel of the part's
// own, not the side's), which it replaces when it runs the cell again.
func (p *proof) executeIn(t *testing.T, s *side, kp **Kernel, what, code string, timeout time.Duration) (ExecResult, error) {
	t.Helper()
	ctx := context.Background()
	r, err := (*kp).Execute(ctx, code, timeout)
	if !errors.Is(err, ErrStillRunning) {
		return r, err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	state, serr := (*kp).State(sctx)
	cancel()
	if serr != nil {
		return r, fmt.Errorf("%w; the server did not answer for the kernel either: %w", err, serr)
	}
	msg := fmt.Sprintf("%s, %s: the kernel hung (%v; the server answered for it at once: %q); run again in a new kernel. ipykernel 7 freezes now and then (ipython/ipykernel#1471)", what, s.name, err, state)
	t.Log(msg)
	p.rep.Note("%s", msg)
	(*kp).Close(ctx)
	k, kerr := s.c.StartKernel(ctx)
	if kerr != nil {
		return r, fmt.Errorf("%w; a new kernel: %w", err, kerr)
	}
	*kp = k
	return k.Execute(ctx, code, timeout)
}

// uploadCell starts, in a thread of the kernel, an upload of big.bin (over
// and over) to the allowed web server for 60 s once the file named by the
// placeholder TRIGGER exists: direct egress, a path the guard does not see.
const uploadCell = `import os, socket, threading, time
def _hwe2e_upload(trigger):
    while not os.path.exists(trigger):
        time.sleep(0.05)
    s = socket.create_connection((ADDR, 80))
    s.sendall(b"POST /sink HTTP/1.1\r\nHost: allowed.e2e.test\r\nContent-Length: 1099511627776\r\n\r\n")
    end = time.time() + 60
    with open("big.bin", "rb") as f:
        while time.time() < end:
            b = f.read(1 << 16)
            if not b:
                f.seek(0); continue
            s.sendall(b)
    s.close()
threading.Thread(target=_hwe2e_upload, args=(TRIGGER,), daemon=True).start()
print("armed")`

func (p *proof) faults(t *testing.T) {
	ctx := context.Background()
	// a. Kill hubwarden, then move data out on a path the guard does not
	// cover (an upload from the kernel to an allowed server): the kernel's
	// tripwire demotes alone. The kernel is armed first: with hubwarden
	// dead, nothing reaches the server (the guard's redirect stays).
	home := "/home/" + p.b.WardenUser
	if u, err := user.Lookup(p.b.WardenUser); err == nil {
		home = u.HomeDir
	}
	trigger := filepath.Join(home, ".hwe2e-upload")
	upload := strings.NewReplacer("ADDR", fmt.Sprintf("%q", Allowed4), "TRIGGER", fmt.Sprintf("%q", trigger)).Replace(uploadCell)
	if r, err := p.warden.k.Execute(ctx, upload, 30*time.Second); err != nil || strings.TrimSpace(r.Stdout) != "armed" {
		t.Fatalf("arming the upload: %+v %v", r, err)
	}
	if err := p.sc.Proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.sc.Proc.Wait(5 * time.Second)
	backend := p.b.IptablesBackend(p.b.Warden)
	_, _, shaped := p.b.SlowClassBytes(p.b.Warden)
	rulesStay := backend != "" && shaped
	p.rep.Add(Row{"6 faults", "hubwarden killed: rules and qdiscs stay", "-", fmt.Sprintf("iptables (%s): %v, htb: %v", backend, backend != "", shaped), verdict(rulesStay)})
	if !rulesStay {
		t.Errorf("after SIGKILL: iptables chains present=%v (%s), htb present=%v", backend != "", backend, shaped)
	}
	// Fail closed: the server is not reachable while the guard is dead.
	c := p.b.NewClient(p.b.WardenUser) // fresh connections to the proxy
	c.HTTP.Jar = p.warden.c.HTTP.Jar
	status := "no answer"
	reached := false
	if resp, err := c.Send(ctx, "GET", c.UserURL()+"/api/status", nil, nil); err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		status = resp.Status
		reached = resp.StatusCode == http.StatusOK
	}
	p.rep.Add(Row{"6 faults", "the server through the proxy while hubwarden is dead (the guard's redirect stays)", "-", status, verdict(!reached)})
	if reached {
		t.Errorf("with hubwarden dead, /api/status answered %s through the proxy: the guard's redirect did not fail closed", status)
	}

	var dl Transfer
	base := p.b.SinkBytes.Load()
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dlStart := time.Now()
	sampled := make(chan struct{})
	sctx, cancel := context.WithCancel(ctx)
	go func() {
		defer close(sampled)
		tick := time.NewTicker(sampleEvery)
		defer tick.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
				dl.Samples = append(dl.Samples, p.b.SinkBytes.Load()-base)
			}
		}
	}()
	// Let the tripwire act (at FLOW_BUDGET, counted by the kernel).
	time.Sleep(8 * time.Second)
	p.restartSidecar(t, p.sc.Env)
	ready := time.Since(dlStart)
	time.Sleep(3 * time.Second)
	cancel()
	<-sampled
	dl.Bytes, dl.Elapsed = p.b.SinkBytes.Load()-base, time.Since(dlStart)
	os.Remove(trigger)
	// The upload thread dies with its kernel.
	p.reconnectKernel(t)
	before := rateBetween(dl, 4*time.Second, 8*time.Second)
	after := rateBetween(dl, ready, ready+3*time.Second-sampleEvery)
	running := dl.Bytes < p.big
	ok := running && before <= 4*SlowRateBytes && dl.Bytes > 0
	p.rep.Add(Row{"6 faults", "upload from the kernel to an allowed server while hubwarden is dead (tripwire)", "-", fmt.Sprintf("%s after %s fast; %s in %s", HumanRate(before), HumanBytes(float64(sampleAt(dl, 4*time.Second))), HumanBytes(float64(dl.Bytes)), dl.Elapsed.Round(time.Second)), verdict(ok)})
	if !ok {
		t.Errorf("with the sidecar dead the upload ran at %s (%d bytes in all); want the slow rate (tripwire)", HumanRate(before), dl.Bytes)
	}
	if !running {
		t.Errorf("with the sidecar dead %s left in %s: no tripwire", HumanBytes(float64(dl.Bytes)), dl.Elapsed)
	}
	ok = running && after <= 4*SlowRateBytes
	p.rep.Add(Row{"6 faults", "same upload after the restart (adopted)", "-", HumanRate(after), verdict(ok)})
	if !ok {
		t.Errorf("after the restart the upload ran at %s; want the slow rate", HumanRate(after))
	}

	// b. Delete a rule by hand: the reconcile loop puts it back.
	if backend != "" {
		out, _ := p.b.Exec(p.b.Warden, backend, "-S", "OUTPUT")
		var rule string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "-A OUTPUT") && strings.Contains(strings.ToUpper(l), "HUBWARDEN") {
				rule = l
				break
			}
		}
		if rule == "" {
			t.Errorf("no hubwarden jump in OUTPUT: %s", out)
		} else {
			args := append([]string{backend, "-D"}, saveFields(rule)[1:]...)
			if _, err := p.b.Exec(p.b.Warden, args...); err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			err := poll(15*time.Second, func() error {
				out, _ := p.b.Exec(p.b.Warden, backend, "-S", "OUTPUT")
				if !strings.Contains(out, rule) {
					return errors.New("not back")
				}
				return nil
			})
			back := time.Since(t0)
			p.rep.Add(Row{"6 faults", "rule deleted by hand (OUTPUT jump)", "-", fmt.Sprintf("back after %s", back.Round(100*time.Millisecond)), verdict(err == nil)})
			if err != nil {
				t.Errorf("the deleted rule %q did not come back: %v", rule, err)
			}
		}
	}

	// c. A bad config: hubwarden exits non-zero naming the variable and never
	// reports ready, so the kubelet never starts the notebook container.
	if err := p.sc.Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	bad := append(append([]string(nil), p.sc.Env...), "HUBWARDEN_SLOW_RATE=fast")
	_, err := p.b.StartSidecar(ctx, p.bin, bad, 15*time.Second)
	log := tail(filepath.Join(p.b.Dir, "hubwarden.log"), 3000)
	named := strings.Contains(log, "HUBWARDEN_SLOW_RATE")
	code, _, rerr := p.b.WardenGet(ctx, "http://127.0.0.1:9280/readyz")
	ok = err != nil && named && (rerr != nil || code != 200)
	p.rep.Add(Row{"6 faults", "bad config (HUBWARDEN_SLOW_RATE=fast)", "-", fmt.Sprintf("exit: %v; names the variable: %v; ready: %v", err != nil, named, rerr == nil && code == 200), verdict(ok)})
	if !ok {
		t.Errorf("bad config: start error %v, variable named %v, readyz %d %v", err, named, code, rerr)
	}
	p.restartSidecar(t, p.sc.Env)
	p.reconnectKernel(t)
}

func sampleAt(tr Transfer, at time.Duration) int64 {
	i := int(at/sampleEvery) - 1
	if i < 0 || len(tr.Samples) == 0 {
		return 0
	}
	if i >= len(tr.Samples) {
		i = len(tr.Samples) - 1
	}
	return tr.Samples[i]
}

func rateBetween(tr Transfer, from, to time.Duration) float64 {
	if to <= from {
		return 0
	}
	return float64(sampleAt(tr, to)-sampleAt(tr, from)) / (to - from).Seconds()
}

// --- part 7 -----------------------------------------------------------------

func (p *proof) runVerify(t *testing.T, s *side) (int, string, error) {
	// The target that must be refused is the bed's forbidden web server,
	// which the bare pod reaches: verify's default (192.0.2.1:443) has no
	// route in the bed, so it is "refused" in every pod, hubwarden or not.
	code := fmt.Sprintf(`import subprocess
r = subprocess.run([%q, "verify", "--target", %q], capture_output=True, text=True, timeout=60)
print("RC=%%d" %% r.returncode)
print(r.stdout[-1500:], r.stderr[-1500:])`, p.userBin, Forbid4+":80")
	r, err := p.execute(t, s, "part 7 (verify)", code, 90*time.Second)
	if err != nil {
		return 0, "", err
	}
	var rc int
	fmt.Sscanf(r.Stdout, "RC=%d", &rc)
	return rc, r.Stdout, nil
}

func (p *proof) verify(t *testing.T) {
	rcW, outW, err := p.runVerify(t, p.warden)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(outW, "unknown command") {
		p.rep.Add(Row{"7 verify", "hubwarden verify as the user", "-", "-", "SKIP (verify not implemented)"})
		skip(t, "hubwarden verify: %v: %s", ErrNotImplemented, outW)
	}
	rcB, outB, err := p.runVerify(t, p.bare)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("verify with: rc %d\n%s\nwithout: rc %d\n%s", rcW, outW, rcB, outB)
	// Remove a protection: delete the OUTPUT jumps of both families, with
	// the sidecar's reconcile loop out of the way (restarted with an
	// interval of an hour). Killing the sidecar instead would leave the
	// kernel unreachable: the guard's redirect stays and nothing serves it.
	env := p.sc.Env
	p.sc.Proc.Stop(10 * time.Second)
	p.restartSidecar(t, append(append([]string(nil), env...), "HUBWARDEN_RECONCILE_INTERVAL=1h"))
	p.reconnectKernel(t)
	// The later parts need the sidecar as configured, whatever happens here.
	defer func() {
		p.sc.Proc.Stop(10 * time.Second)
		p.restartSidecar(t, env)
		p.reconnectKernel(t)
	}()
	backend := p.b.IptablesBackend(p.b.Warden)
	for _, fam := range []string{backend, strings.Replace(backend, "iptables", "ip6tables", 1)} {
		out, _ := p.b.Exec(p.b.Warden, fam, "-S", "OUTPUT")
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "-A OUTPUT") && strings.Contains(strings.ToUpper(l), "HUBWARDEN") {
				p.b.Exec(p.b.Warden, append([]string{fam, "-D"}, saveFields(l)[1:]...)...)
			}
		}
	}
	rcR, outR, err := p.runVerify(t, p.warden)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("verify after removing the egress jump: rc %d\n%s", rcR, outR)
	// After the removal, verify must fail on the egress check itself (the
	// sidecar is up and ready).
	egressFailed := strings.Contains(outR, "FAIL egress-blocked")
	ok := rcW == 0 && rcB != 0 && rcR != 0 && egressFailed
	p.rep.Add(Row{"7 verify", "hubwarden verify --target <forbidden web> as the user (exit code); after removing egress", fmt.Sprintf("%d", rcB), fmt.Sprintf("%d; removed: %d (egress-blocked failed: %v)", rcW, rcR, egressFailed), verdict(ok)})
	if !ok {
		t.Errorf("verify exit codes: with %d (want 0), without %d (want != 0), protection removed %d (want != 0, failing egress-blocked: %v)", rcW, rcB, rcR, egressFailed)
	}
}

// saveFields splits an iptables -S line into arguments, keeping a quoted
// comment ("hubwarden: hook") as one argument, as a shell would.
func saveFields(line string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && inQuote && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQuote, have = !inQuote, true
		case c == ' ' && !inQuote:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}
