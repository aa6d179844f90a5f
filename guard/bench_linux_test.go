//go:build bench

package guard

// `make bench-guard` (root): the guard's cost, side by side in one run.
// Two identical jupyter-server 2.19 pods behind one configurable-http-proxy
// 5.2.0 (the proxy z2jh ships), one with the guard (its redirect and its own
// process, as the sidecar runs it) and one bare; the same requests go to
// both in alternation. It reports; it asserts nothing about time.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/internal/nstest"
	"github.com/hubwarden/hubwarden/xtables"
)

const chpVersion = "5.2.0"

// benchQuick is BENCH_QUICK=1: short windows, to check the bench runs.
var benchQuick = os.Getenv("BENCH_QUICK") == "1"

func pickDur(quick, full time.Duration) time.Duration {
	if benchQuick {
		return quick
	}
	return full
}

// TestMain runs the guard as its own process when the bench re-executes the
// test binary inside the guarded pod (GUARD_BENCH_SERVE=<base URL>), so that
// its CPU and memory are its own.
func TestMain(m *testing.M) {
	if base := os.Getenv("GUARD_BENCH_SERVE"); base != "" {
		cfg := Config{Mode: Enforce, ServerPort: 8888, GuardPort: DefaultGuardPort, BaseURL: base, MaxNotebook: DefaultMaxNotebook,
			Terminals: true, ProgressInterval: time.Minute}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			io.Copy(io.Discard, os.Stdin) // the bench closes stdin to stop us
			cancel()
		}()
		if err := Run(ctx, cfg, zerolog.New(io.Discard), nil); err != nil {
			fmt.Fprintln(os.Stderr, "guard:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type benchBed struct {
	peer, guarded, bare *nstest.NS
	guardedIP, bareIP   string
	user, home, token   string
	client              *http.Client
	guardProc           *exec.Cmd
}

// Users and base URLs of the two pods (different users, so that the one
// proxy routes them apart; the same files).
const (
	guardedBase = "/user/guarded/"
	bareBase    = "/user/bare/"
)

func installCHP(t *testing.T) string {
	t.Helper()
	prefix, err := filepath.Abs(filepath.Join("..", "e2e", "netns", "work", "cache", "chp-"+chpVersion))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(prefix, "node_modules", ".bin", "configurable-http-proxy")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	t.Logf("installing configurable-http-proxy@%s with npm into %s", chpVersion, prefix)
	out, err := exec.Command("npm", "install", "--no-audit", "--no-fund", "--prefix", prefix, "configurable-http-proxy@"+chpVersion).CombinedOutput()
	if err != nil {
		t.Fatalf("npm install configurable-http-proxy@%s: %v: %s", chpVersion, err, out)
	}
	return bin
}

func newBenchBed(t *testing.T) *benchBed {
	t.Helper()
	nstest.SkipUnlessRoot(t, "iptables-nft-restore", "useradd", "runuser", "npm", "node")
	py := singleuserPython(t)
	venv := filepath.Dir(filepath.Dir(py))
	chp := installCHP(t)
	b := &benchBed{peer: nstest.New(t), guarded: nstest.New(t), bare: nstest.New(t), token: fmt.Sprintf("bench%d", os.Getpid())}
	nstest.Veth(t, b.peer, "ga0", b.guarded, "eth0")
	nstest.Veth(t, b.peer, "ba0", b.bare, "eth0")
	b.guardedIP, b.bareIP = "198.18.108.2", "198.18.109.2"
	b.peer.MustRun("ip", "addr", "add", "198.18.108.1/30", "dev", "ga0")
	b.peer.MustRun("ip", "addr", "add", "198.18.109.1/30", "dev", "ba0")
	b.guarded.MustRun("ip", "addr", "add", b.guardedIP+"/30", "dev", "eth0")
	b.bare.MustRun("ip", "addr", "add", b.bareIP+"/30", "dev", "eth0")
	b.guarded.MustRun("ip", "route", "add", "default", "via", "198.18.108.1")
	b.bare.MustRun("ip", "route", "add", "default", "via", "198.18.109.1")

	b.user = fmt.Sprintf("hwgb%d", os.Getpid())
	if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", "-c", "hubwarden guard bench", b.user).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v: %s", err, out)
	}
	t.Cleanup(func() { removeUser(t, b.user) })
	out, err := exec.Command("getent", "passwd", b.user).Output()
	if err != nil {
		t.Fatal(err)
	}
	b.home = strings.Split(strings.TrimSpace(string(out)), ":")[5]
	// A large notebook with plots (about 24 MiB as the server's JSON model:
	// 240 outputs of 100 KB base64 PNG), a small one, a directory of 100
	// files.
	prep := exec.Command("runuser", "-u", b.user, "--", "env", "HOME="+b.home, py, "-c", `
import os, base64, nbformat
os.chdir(os.environ["HOME"])
def nb(n, size):
    cells = []
    for i in range(n):
        png = base64.b64encode(os.urandom(size)).decode()
        cells.append(nbformat.v4.new_code_cell("plt.plot(x * %d)" % i, execution_count=i,
            outputs=[nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})]))
    return nbformat.v4.new_notebook(cells=cells)
nbformat.write(nb(240, 75000), "large.ipynb")
nbformat.write(nb(6, 30000), "small.ipynb")
os.makedirs("many", exist_ok=True)
for i in range(100):
    open("many/file%03d.csv" % i, "w").write("a,b\n")
`)
	if out, err := prep.CombinedOutput(); err != nil {
		t.Fatalf("preparing the home: %v: %s", err, out)
	}
	for _, p := range []struct {
		ns   *nstest.NS
		base string
	}{{b.guarded, guardedBase}, {b.bare, bareBase}} {
		logf, err := os.Create(filepath.Join(t.TempDir(), "server.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := p.ns.Cmd(context.Background(), "runuser", "-u", b.user, "--", "env", "HOME="+b.home, "PATH="+venv+"/bin:/usr/bin:/bin",
			venv+"/bin/jupyter-server", "--no-browser", "--ServerApp.ip=0.0.0.0", "--ServerApp.port=8888", "--ServerApp.port_retries=0",
			"--ServerApp.base_url="+p.base, "--IdentityProvider.token="+b.token, "--ServerApp.root_dir="+b.home,
			"--ServerApp.trust_xheaders=True", "--ServerApp.allow_remote_access=True")
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait(); logf.Close() })
	}
	// The guard: its rules and its own process in the guarded pod.
	cfg := Config{Mode: Enforce, ServerPort: 8888, GuardPort: DefaultGuardPort, BaseURL: guardedBase, MaxNotebook: DefaultMaxNotebook,
		Terminals: true, ProgressInterval: time.Minute}
	r, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	x := xtables.New(xtables.NFT, xtables.ExecRunner{LockFile: filepath.Join(t.TempDir(), "xtables.lock")}, zerolog.Nop())
	if err := b.guarded.Do(func() error { _, err := x.Apply(context.Background(), append(r.NAT, r.Filter...)); return err }); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	gp := b.guarded.Cmd(context.Background(), self)
	gp.Env = append(os.Environ(), "GUARD_BENCH_SERVE="+guardedBase)
	gp.Stderr = os.Stderr
	stdin, err := gp.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	gp.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := gp.Start(); err != nil {
		t.Fatal(err)
	}
	b.guardProc = gp
	t.Cleanup(func() { stdin.Close(); _ = gp.Wait() })

	// The proxy in the peer, routing each user's prefix to its pod.
	chpToken := b.token + "chp"
	chpLog, _ := os.Create(filepath.Join(t.TempDir(), "chp.log"))
	pc := b.peer.Cmd(context.Background(), "node", chp, "--ip=127.0.0.1", "--port=8000", "--api-ip=127.0.0.1", "--api-port=8001",
		"--default-target=http://127.0.0.1:9")
	pc.Env = append(os.Environ(), "CONFIGPROXY_AUTH_TOKEN="+chpToken)
	pc.Stdout, pc.Stderr = chpLog, chpLog
	pc.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := pc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-pc.Process.Pid, syscall.SIGKILL); _ = pc.Wait(); chpLog.Close() })
	api := &http.Client{Transport: &http.Transport{DialContext: b.peer.DialContext}, Timeout: 5 * time.Second}
	deadline := time.Now().Add(90 * time.Second)
	for _, route := range []struct{ path, target string }{{guardedBase, "http://" + b.guardedIP + ":8888"}, {bareBase, "http://" + b.bareIP + ":8888"}} {
		for {
			req, _ := http.NewRequest("POST", "http://127.0.0.1:8001/api/routes"+strings.TrimSuffix(route.path, "/"), strings.NewReader(`{"target":"`+route.target+`"}`))
			req.Header.Set("Authorization", "token "+chpToken)
			res, err := api.Do(req)
			if err == nil {
				res.Body.Close()
				if res.StatusCode == 201 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("adding the proxy route %s: %v", route.path, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	b.client = &http.Client{Transport: &http.Transport{DialContext: b.peer.DialContext, MaxIdleConnsPerHost: 64, DisableCompression: true}}
	for _, base := range []string{guardedBase, bareBase} {
		for {
			if st, _, _ := b.get(base + "api/contents/small.ipynb"); st == 200 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not answer through the proxy", base)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	return b
}

// get fetches a path through the proxy and returns the status, the body
// size and the time.
func (b *benchBed) get(path string) (int, int64, time.Duration) {
	req, _ := http.NewRequest("GET", "http://127.0.0.1:8000"+path, nil)
	req.Header.Set("Authorization", "token "+b.token)
	start := time.Now()
	res, err := b.client.Do(req)
	if err != nil {
		return 0, 0, 0
	}
	n, _ := io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode, n, time.Since(start)
}

// procStat returns a process's CPU time and resident memory.
func procStat(pid int) (cpu time.Duration, rss int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err == nil {
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		cpu = time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ 100
	}
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err == nil {
		for _, l := range strings.Split(string(s), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				rss = kb << 10
			}
		}
	}
	return cpu, rss
}

// guardPid is the pid of the guard process (ip netns exec execs it in place).
func (b *benchBed) guardPid() int { return b.guardProc.Process.Pid }

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return math.NaN()
	}
	return s[len(s)/2]
}

func percentile(xs []float64, p float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return math.NaN()
	}
	return s[min(len(s)-1, int(math.Ceil(p*float64(len(s))))-1)]
}

// regularMix is JupyterLab's regular traffic once it is loaded, from the
// capture: the polling it does every ten seconds, opening a notebook, its
// checkpoints, a listing, a settings and a kernelspec request. Static
// assets are not in it: their URLs carry a content hash and tornado lets
// the browser cache them for a year.
var regularMix = []string{
	"api/sessions", "api/kernels", "api/terminals", "lab/api/workspaces", "api/contents?content=1&hash=0",
	"api/contents/small.ipynb?type=notebook&content=1&hash=1", "api/contents/small.ipynb?content=0&hash=0",
	"api/contents/small.ipynb/checkpoints", "api/kernelspecs", "api/me", "lab/api/settings/@jupyterlab/notebook-extension:panel",
	"kernelspecs/python3/logo-64x64.png",
}

// TestBenchGuard measures, with and without the guard, side by side:
// the large notebook's and the contents listing's throughput, the p95 of
// the regular mix, and the guard process's CPU and memory at 100 requests
// a second. BENCH_OUT names a Markdown file for the table.
func TestBenchGuard(t *testing.T) {
	b := newBenchBed(t)
	reps := 7
	if benchQuick {
		reps = 1
	}
	type side struct{ name, base string }
	sides := []side{{"with", guardedBase}, {"without", bareBase}}
	res := map[string]map[string][]float64{"with": {}, "without": {}}
	// The guard's memory before any load (it has served the readiness
	// checks above).
	_, freshRSS := procStat(b.guardPid())
	add := func(s, k string, v float64) { res[s][k] = append(res[s][k], v) }
	// Warm both (the first notebook read fills the servers' caches).
	for _, s := range sides {
		b.get(s.base + "api/contents/large.ipynb")
		b.get(s.base + "api/contents/many?content=1")
	}
	for rep := range reps {
		order := sides
		if rep%2 == 1 {
			order = []side{sides[1], sides[0]}
		}
		for _, s := range order {
			// Large notebook: 3 reads back to back on a kept-alive connection.
			var bytesRead int64
			start := time.Now()
			for range 3 {
				st, n, _ := b.get(s.base + "api/contents/large.ipynb")
				if st != 200 {
					t.Fatalf("%s: large notebook: %d", s.name, st)
				}
				bytesRead += n
			}
			add(s.name, "notebook MB/s", float64(bytesRead)/time.Since(start).Seconds()/1e6)
			add(s.name, "notebook size", float64(bytesRead)/3)
			// Contents: a 100-file listing, 8 clients for a window.
			win := pickDur(time.Second, 3*time.Second)
			var mu sync.Mutex
			count := 0
			var wg sync.WaitGroup
			end := time.Now().Add(win)
			for range 8 {
				wg.Go(func() {
					for time.Now().Before(end) {
						if st, _, _ := b.get(s.base + "api/contents/many?content=1&hash=0"); st == 200 {
							mu.Lock()
							count++
							mu.Unlock()
						}
					}
				})
			}
			wg.Wait()
			add(s.name, "listing req/s", float64(count)/win.Seconds())
			// Regular use: the mix, one request at a time.
			var lat []float64
			for range pickDur(2, 10) {
				for _, p := range regularMix {
					st, _, d := b.get(s.base + p)
					if st != 200 {
						t.Fatalf("%s %s: %d", s.name, p, st)
					}
					lat = append(lat, d.Seconds()*1e3)
				}
			}
			add(s.name, "regular p95 ms", percentile(lat, 0.95))
			add(s.name, "regular median ms", median(lat))
		}
	}
	// The guard's CPU and memory, idle and at 100 requests/s of the mix.
	pid := b.guardPid()
	window := pickDur(3*time.Second, 30*time.Second)
	idle0, _ := procStat(pid)
	time.Sleep(window / 3)
	idle1, idleRSS := procStat(pid)
	idleShare := (idle1 - idle0).Seconds() / (window / 3).Seconds() * 100
	cpu0, _ := procStat(pid)
	t0 := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	var maxRSS int64
	sent := 0
	var wg sync.WaitGroup
	for time.Since(t0) < window {
		<-tick.C
		p := guardedBase + regularMix[sent%len(regularMix)]
		sent++
		wg.Go(func() { b.get(p) })
		if sent%100 == 0 {
			if _, r := procStat(pid); r > maxRSS {
				maxRSS = r
			}
		}
	}
	tick.Stop()
	wg.Wait()
	elapsed := time.Since(t0)
	cpu1, endRSS := procStat(pid)
	maxRSS = max(maxRSS, endRSS)
	cpuShare := (cpu1 - cpu0).Seconds() / elapsed.Seconds() * 100

	ratio := func(k string) float64 { return median(res["with"][k]) / median(res["without"][k]) }
	rows := [][]string{
		{"large notebook through the proxy (MB/s, model of " + fmt.Sprintf("%.1f MiB", median(res["with"]["notebook size"])/(1<<20)) + ")",
			fmt.Sprintf("%.1f", median(res["without"]["notebook MB/s"])), fmt.Sprintf("%.1f", median(res["with"]["notebook MB/s"])),
			fmt.Sprintf("%.2f×", ratio("notebook MB/s")), "≥ 0.95×"},
		{"/api/contents listing of 100 files, 8 clients (requests/s)",
			fmt.Sprintf("%.0f", median(res["without"]["listing req/s"])), fmt.Sprintf("%.0f", median(res["with"]["listing req/s"])),
			fmt.Sprintf("%.2f×", ratio("listing req/s")), "≥ 0.95×"},
		{"regular use, p95 latency (ms)",
			fmt.Sprintf("%.2f", median(res["without"]["regular p95 ms"])), fmt.Sprintf("%.2f", median(res["with"]["regular p95 ms"])),
			fmt.Sprintf("%.2f×", ratio("regular p95 ms")), "≤ 1.05×"},
		{"regular use, median latency (ms)",
			fmt.Sprintf("%.2f", median(res["without"]["regular median ms"])), fmt.Sprintf("%.2f", median(res["with"]["regular median ms"])),
			fmt.Sprintf("%.2f×", ratio("regular median ms")), "-"},
		{fmt.Sprintf("guard process CPU at %.0f requests/s (%% of a core; idle: %.2f %%)", float64(sent)/elapsed.Seconds(), idleShare), "-", fmt.Sprintf("%.2f %%", cpuShare), "-", "≤ 5 %"},
		{"guard process RSS: before any load / before the 100 requests/s (after the throughput runs) / max at that rate", "-",
			fmt.Sprintf("%.1f / %.1f / %.1f MiB (+%.1f MiB over the first)", float64(freshRSS)/(1<<20), float64(idleRSS)/(1<<20), float64(maxRSS)/(1<<20), float64(maxRSS-freshRSS)/(1<<20)),
			"-", "≤ 10 MiB more"},
	}
	var out strings.Builder
	fmt.Fprintf(&out, "| measure | without the guard | with the guard | ratio | goal |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&out, "| %s |\n", strings.Join(r, " | "))
	}
	raw, _ := json.Marshal(res)
	fmt.Fprintf(&out, "\nMedians of %d alternating repetitions through configurable-http-proxy %s; raw: `%s`\n", reps, chpVersion, raw)
	t.Log("\n" + out.String())
	if p := os.Getenv("BENCH_OUT"); p != "" {
		if err := os.WriteFile(p, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_ = net.IPv4len
}
