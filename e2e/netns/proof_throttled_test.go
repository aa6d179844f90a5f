//go:build e2e && linux

package netns

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// --- part 9 -----------------------------------------------------------------
//
// JupyterLab while the pod budget is spent (issue 20): the user's own bulk
// upload from a kernel has spent the pod budget and is being throttled, the
// pod gate is closed, and the user goes on working in the browser. Every
// flow that sends is then demoted; the slow class's interactive leaf keeps
// the small answers of JupyterLab ahead of the bulk. Measured, in the warden
// pod, before the upload (idle) and during it, interleaved by round; the
// goal (p95 ≤ 3× idle per action) is reported, not asserted: it is a
// figure of the machine's speed. What is asserted is the set-up: the gate
// closed, the upload demoted and held to the slow rate.

// The pod refill of this part: below the slow rate (1 mbit, 125 KB/s), so
// that the gate stays closed while the uploads send. That is the state a
// user who keeps spending the budget (a new connection after another)
// holds the pod in; with a refill above the slow rate (the bed's 128 KiB/s,
// the default 256 KiB/s) throttled uploads alone let the bucket refill and
// the gate reopens within seconds.
const throttledRefill = "32KiB/s"

// bulkCell starts six threads in the kernel that POST to the allowed web
// server, thread i until the file STOP.i exists: direct egress, each flow
// demoted at FLOW_BUDGET, together past the pod budget.
// A small send buffer and an abortive close: a throttled socket would
// otherwise go on sending megabytes it had queued after close.
const bulkCell = `import os, socket, struct, threading
def _hwe2e_bulk(stop):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    s.connect((ADDR, 80))
    s.sendall(b"POST /sink HTTP/1.1\r\nHost: allowed.e2e.test\r\nContent-Length: 1099511627776\r\n\r\n")
    b = b"x" * 16384
    while not os.path.exists(stop):
        s.sendall(b)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
for i in range(6):
    threading.Thread(target=_hwe2e_bulk, args=(STOP + ".%d" % i,), daemon=True).start()
print("started")`

var throttledActions = []browserAction{
	{"browse the file browser", 3, func(l *Lab, _, _ int) error { return l.Browse() }},
	{"open a notebook (kernel started)", 1, func(l *Lab, _, _ int) error { return l.Open(AnalysisNotebook, len(analysisCells), -1) }},
	{"run all cells (text, table, plot)", 1, func(l *Lab, _, _ int) error { return l.RunAll() }},
	{"edit and save", 3, func(l *Lab, r, i int) error {
		return l.EditSave(fmt.Sprintf(`print(f"{len(rows)} months")  # throttled %d.%d`, r, i))
	}},
}

// leafStats is what one HTB class of eth0 in the warden pod sent and how
// many packets its leaf dropped (zeros if absent).
type leafStats struct{ bytes, drops int64 }

func (p *proof) leafStats(class string) leafStats {
	out, _ := p.b.Exec(p.b.Warden, "tc", "-s", "class", "show", "dev", "eth0")
	m := regexp.MustCompile(`class htb ` + regexp.QuoteMeta(class) + ` [^\n]*\n\s*Sent (\d+) bytes \d+ pkt \(dropped (\d+),`).FindStringSubmatch(out)
	if m == nil {
		return leafStats{}
	}
	b, _ := strconv.ParseInt(m[1], 10, 64)
	d, _ := strconv.ParseInt(m[2], 10, 64)
	return leafStats{b, d}
}

// leaves is the three slow leaves' stats: interactive, served, bulk.
func (p *proof) leaves() [3]leafStats {
	return [3]leafStats{p.leafStats("4857:21"), p.leafStats("4857:22"), p.leafStats("4857:20")}
}

// gateState is the pod gate's state by the last pod_gate line of the log
// ("open", "closed", or "" before any).
func gateState(log string) string {
	o, c := strings.LastIndex(log, `"gate":"open"`), strings.LastIndex(log, `"gate":"closed"`)
	switch {
	case c > o:
		return "closed"
	case o > c:
		return "open"
	}
	return ""
}

func (p *proof) throttledUI(t *testing.T) {
	ctx := context.Background()
	s := p.warden
	env := p.sc.Env
	logPath := filepath.Join(p.b.Dir, "hubwarden.log")
	nRounds := envInt("HWE2E_THROTTLED_ROUNDS", 5)
	// round does every action once (or a.times), timed; a round in which
	// the kernel hung (ipykernel 7's freeze, as in part 1: kernelHung) is
	// dropped, reported and made up, at most two per phase; any other
	// failure fails the part.
	var dropped []string
	round := func(phase string, r int, lat map[string][]time.Duration) bool {
		got := map[string][]time.Duration{}
		for _, a := range throttledActions {
			for rep := range a.times {
				t1 := time.Now()
				if err := a.do(s.lab, r, rep); err != nil {
					path := filepath.Join(p.b.Dir, fmt.Sprintf("failed-throttled-%s-round%d.png", phase, r))
					s.lab.Screenshot(path)
					if h, herr := Eval[bool](s.lab.Tab, 10*time.Second, kernelHung); herr != nil || !h {
						t.Fatalf("%s, round %d, %s: %v (screenshot %s)", phase, r, a.name, err, path)
					}
					dropped = append(dropped, fmt.Sprintf("%s round %d, %s: the kernel hung (screenshot %s)", phase, r, a.name, path))
					t.Logf("%s; dropping the round: %v", dropped[len(dropped)-1], err)
					// Close the notebooks in place, then their kernels: a
					// reload of JupyterLab through the throttled slow class
					// can outlast the lab's timeout (CI run 9 failed so). A
					// reload only if closing fails.
					cerr := s.lab.CloseAll()
					if err := p.b.ShutdownSessions(ctx, s.user, AnalysisNotebook, ReportNotebook); err != nil {
						t.Fatal(err)
					}
					if cerr != nil {
						t.Logf("closing the notebooks after the hung kernel: %v; reloading", cerr)
						if err := s.lab.Reload(); err != nil {
							t.Fatal(err)
						}
					}
					return false
				}
				got[a.name] = append(got[a.name], time.Since(t1))
			}
		}
		if err := s.lab.CloseAll(); err != nil {
			t.Fatalf("closing the notebooks: %v", err)
		}
		if err := p.b.ShutdownSessions(ctx, s.user, AnalysisNotebook, ReportNotebook); err != nil {
			t.Fatal(err)
		}
		for k, v := range got {
			lat[k] = append(lat[k], v...)
		}
		return true
	}
	rounds := func(phase string, lat map[string][]time.Duration) {
		for r, done := 0, 0; done < nRounds; r++ {
			if r >= nRounds+2 {
				t.Fatalf("%s: more than two rounds lost to hung kernels: %s", phase, strings.Join(dropped, "; "))
			}
			if round(phase, r, lat) {
				done++
			}
		}
	}
	defer func() {
		for _, d := range dropped {
			p.rep.Note("part 9: dropped %s; ipykernel 7 freezes now and then (ipython/ipykernel#1471)", d)
		}
	}()
	// Idle: the bed's own configuration, once the pod gate is open (the
	// earlier parts may have spent the pod budget; the bed's refill soon
	// opens it again).
	if err := poll(90*time.Second, func() error {
		if g := gateState(tail(logPath, 1<<30)); g != "open" {
			return fmt.Errorf("the pod gate is %q", g)
		}
		return nil
	}); err != nil {
		t.Fatalf("before the idle rounds: %v", err)
	}
	if err := s.lab.Reload(); err != nil {
		t.Fatal(err)
	}
	closedIdle := strings.Count(tail(logPath, 1<<30), `"gate":"closed"`)
	idle := map[string][]time.Duration{}
	rounds("idle", idle)
	closedIdle = strings.Count(tail(logPath, 1<<30), `"gate":"closed"`) - closedIdle

	// The budget spent: a refill below the slow rate, and uploads.
	p.sc.Proc.Stop(10 * time.Second)
	p.restartSidecar(t, append(append([]string(nil), env...), "HUBWARDEN_POD_REFILL="+throttledRefill))
	p.reconnectKernel(t)
	defer func() {
		p.sc.Proc.Stop(10 * time.Second)
		p.restartSidecar(t, env)
		p.reconnectKernel(t)
	}()
	// The page's websockets went with the guard: a fresh page, unmeasured.
	if err := s.lab.Reload(); err != nil {
		t.Fatal(err)
	}

	// The bulk upload, until the gate closes.
	home := "/home/" + p.b.WardenUser
	if u, err := user.Lookup(p.b.WardenUser); err == nil {
		home = u.HomeDir
	}
	stop := filepath.Join(home, ".hwe2e-bulk-stop")
	for i := range 6 {
		name := fmt.Sprintf("%s.%d", stop, i)
		os.Remove(name)
		defer os.Remove(name)
	}
	sink0 := p.b.SinkBytes.Load()
	cell := strings.NewReplacer("ADDR", fmt.Sprintf("%q", Allowed4), "STOP", fmt.Sprintf("%q", stop)).Replace(bulkCell)
	if r, err := p.warden.k.Execute(ctx, cell, 30*time.Second); err != nil || strings.TrimSpace(r.Stdout) != "started" {
		t.Fatalf("starting the bulk upload: %+v %v", r, err)
	}
	t0 := time.Now()
	if err := poll(90*time.Second, func() error {
		if gateState(tail(logPath, 1<<30)) == "closed" {
			return nil
		}
		return fmt.Errorf("the pod gate did not close (%s uploaded)", HumanBytes(float64(p.b.SinkBytes.Load()-sink0)))
	}); err != nil {
		for i := range 6 {
			os.WriteFile(fmt.Sprintf("%s.%d", stop, i), nil, 0o644)
		}
		t.Fatal(err)
	}
	gateAfter := time.Since(t0)
	stopFlows := func(from, to int) {
		for i := from; i < to; i++ {
			os.WriteFile(fmt.Sprintf("%s.%d", stop, i), nil, 0o644)
		}
	}
	defer stopFlows(0, 6)
	// Two regimes, one after the other: six uploads (each is under the
	// interactive allowance when six share the slow rate), then one (the
	// issue's case: one demoted bulk flow while the budget is spent).
	for _, phase := range []struct {
		name  string
		flows int
	}{{"six bulk flows", 6}, {"one bulk flow", 1}} {
		stopFlows(phase.flows, 6)
		// Let the flows demoted at the gate settle into the slow class.
		time.Sleep(3 * time.Second)
		leaves0 := p.leaves()
		sinkT0, tT0 := p.b.SinkBytes.Load(), time.Now()
		throttled := map[string][]time.Duration{}
		rounds("throttled", throttled)
		upRate := float64(p.b.SinkBytes.Load()-sinkT0) / time.Since(tT0).Seconds()
		leaves1 := p.leaves()
		var sent, drops [3]int64
		for i := range leaves1 {
			sent[i], drops[i] = leaves1[i].bytes-leaves0[i].bytes, leaves1[i].drops-leaves0[i].drops
		}
		reopened := gateState(tail(logPath, 1<<30)) != "closed"
		// The set-up held: the uploads throttled to the slow class (1 mbit)
		// and the gate closed to the end.
		ok := upRate <= 2*SlowRateBytes && !reopened
		p.rep.Add(Row{"9 UI, pod budget spent", fmt.Sprintf("%s: POD_REFILL=%s, uploads from a kernel to the allowed server; gate closed %s after they began (idle rounds: the bed's configuration, gate open, closed %d times)", phase.name, throttledRefill, gateAfter.Round(100*time.Millisecond), closedIdle),
			"-", fmt.Sprintf("uploads %s during the rounds; gate reopened: %v; slow class: interactive leaf %s (%d packets dropped), served leaf %s (%d dropped), bulk leaf %s (%d dropped)", HumanRate(upRate), reopened, HumanBytes(float64(sent[0])), drops[0], HumanBytes(float64(sent[1])), drops[1], HumanBytes(float64(sent[2])), drops[2]), verdict(ok)})
		if !ok {
			t.Errorf("%s: the uploads ran at %s (slow rate %s), gate reopened %v", phase.name, HumanRate(upRate), HumanRate(SlowRateBytes), reopened)
		}
		for _, a := range throttledActions {
			i, th := idle[a.name], throttled[a.name]
			ratio := float64(percentile(th, .95)) / float64(percentile(i, .95))
			goal := "goal met"
			if ratio > 3 {
				goal = "goal NOT met"
			}
			t.Logf("budget spent, %s: %-36s idle p50 %s p95 %s; spent p50 %s p95 %s (%.2fx); idle %v, spent %v", phase.name, a.name,
				percentile(i, .5).Round(time.Millisecond), percentile(i, .95).Round(time.Millisecond),
				percentile(th, .5).Round(time.Millisecond), percentile(th, .95).Round(time.Millisecond), ratio, roundAll(i), roundAll(th))
			p.rep.Add(Row{"9 UI, pod budget spent", fmt.Sprintf("%s, %s: p50 / p95 of %d (goal: p95 ≤ 3x idle)", phase.name, a.name, len(th)),
				fmt.Sprintf("idle %s / %s", percentile(i, .5).Round(time.Millisecond), percentile(i, .95).Round(time.Millisecond)),
				fmt.Sprintf("%s / %s (p95 %.2fx)", percentile(th, .5).Round(time.Millisecond), percentile(th, .95).Round(time.Millisecond), ratio),
				goal})
		}
	}
}
