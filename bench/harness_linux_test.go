//go:build bench

package bench

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/internal/hwtest"
	"github.com/hubwarden/hubwarden/internal/nstest"
)

// quick is BENCH_QUICK=1: tiny windows and one repetition, to check that the
// table is produced (CI), not to measure.
var quick = os.Getenv("BENCH_QUICK") == "1"

// reps is the number of repetitions a median is taken over (BENCH_REPS
// overrides it).
func reps() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_REPS")); err == nil && n > 0 {
		return n
	}
	if quick {
		return 1
	}
	return 3
}

// pick returns q in quick mode and full otherwise.
func pick[T any](q, full T) T {
	if quick {
		return q
	}
	return full
}

// hubwardenBin is BENCH_HUBWARDEN, or the binary hwtest builds once per run
// (the root tests' and the bench's one way to build it).
func hubwardenBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("BENCH_HUBWARDEN"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	return hwtest.Binary(t)
}

// Ports on the peer: hubwarden's allow-list opens 5000-5999 to it.
const (
	portTrickle = 5001
	portBulk    = 5002
	portEcho    = 5003
	portIperf   = 5201
)

// podEnv is hubwarden's configuration in a pair: the peer is the resolver
// and allowed on TCP 5000-5999; shaping and the watcher on; overrides win
// ("" removes a variable, as in internal/hwtest.Env: an earlier build
// refuses the HUBWARDEN_* variables it does not know).
func podEnv(t *testing.T, p *nstest.Pair, over map[string]string) []string {
	env := map[string]string{
		"PATH":                       "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HUBWARDEN_STATE_DIR":        t.TempDir(),
		"HUBWARDEN_LOG_LEVEL":        "info",
		"HUBWARDEN_DNS_SERVERS":      p.PeerIP4,
		"HUBWARDEN_ALLOW":            "tcp://" + p.PeerIP4 + ":5000-5999",
		"HUBWARDEN_SELFTEST_TARGET":  p.PeerIP4 + ":9",
		"HUBWARDEN_HEALTH_ADDR":      "127.0.0.1:9280",
		"HUBWARDEN_INTERFACE":        "eth0",
		"HUBWARDEN_SHAPE":            "true",
		"HUBWARDEN_WATCH":            "true",
		"HUBWARDEN_IPTABLES_BACKEND": "auto",
		"HUBWARDEN_GUARD":            "off", // as internal/hwtest: the rows measure shaping and the watch
	}
	for k, v := range over {
		if v == "" {
			delete(env, k)
		} else {
			env[k] = v
		}
	}
	// BENCH_HW_ENV="GOGC=50 GOMEMLIMIT=16MiB" passes runtime settings to
	// every sidecar, to see what they change.
	for _, kv := range strings.Fields(os.Getenv("BENCH_HW_ENV")) {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	var out []string
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// sidecar is a running `hubwarden run`.
type sidecar struct {
	cmd   *exec.Cmd
	pid   int
	start time.Time
	ready time.Duration // process start to the first /readyz 200
	http  *http.Client
	log   string
}

// nsHTTP is an HTTP client whose connections are opened inside ns.
func nsHTTP(ns *nstest.NS) *http.Client {
	return &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: ns.DialContext},
	}
}

// dial opens a TCP connection from inside ns.
func dial(ns *nstest.NS, addr string) (net.Conn, error) {
	return ns.DialTimeout("tcp", addr, 5*time.Second)
}

// startSidecar runs `hubwarden run` in the pod and waits for /readyz.
func startSidecar(t *testing.T, p *nstest.Pair, env []string) *sidecar {
	t.Helper()
	return startSidecarBin(t, p, env, hubwardenBin(t))
}

// startSidecarBin is startSidecar with another hubwarden binary (an earlier
// build, for a before/after row).
func startSidecarBin(t *testing.T, p *nstest.Pair, env []string, bin string) *sidecar {
	t.Helper()
	log := filepath.Join(t.TempDir(), "hubwarden.log")
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("ip", "netns", "exec", p.Pod.Name, bin, "run")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	s := &sidecar{cmd: cmd, http: nsHTTP(p.Pod), log: log}
	s.start = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.pid = cmd.Process.Pid // ip netns exec execs: the same pid
	t.Cleanup(func() { _ = syscall.Kill(-s.pid, syscall.SIGKILL); _ = cmd.Wait() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		if r, err := s.http.Get("http://127.0.0.1:9280/readyz"); err == nil {
			io.Copy(io.Discard, r.Body)
			r.Body.Close()
			if r.StatusCode == 200 {
				s.ready = time.Since(s.start)
				break
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(log)
			t.Fatalf("hubwarden run not ready in 60 s; log:\n%s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

// metric reads one unlabelled metric from /metrics (-1 when absent).
func (s *sidecar) metric(name string) float64 {
	r, err := s.http.Get("http://127.0.0.1:9280/metrics")
	if err != nil {
		return -1
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return -1
}

// usage is a process's CPU time (user+system, clock ticks; its waited-for
// children's, such as the reconcile's iptables-save, included) and RSS.
func usage(pid int) (ticks uint64, rssKiB uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseUint(f[11], 10, 64)  // field 14
	st, _ := strconv.ParseUint(f[12], 10, 64)  // field 15
	cut, _ := strconv.ParseUint(f[13], 10, 64) // field 16
	cst, _ := strconv.ParseUint(f[14], 10, 64) // field 17
	st2, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(st2), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			rssKiB, _ = strconv.ParseUint(strings.Fields(l)[1], 10, 64)
		}
	}
	return ut + st + cut + cst, rssKiB, nil
}

const clkTck = 100 // USER_HZ on Linux

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	i := int(p*float64(len(s))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(s) {
		i = len(s) - 1
	}
	return s[i]
}

// pod runs a shell command in ns and fails the test on error.
func sh(t *testing.T, ns *nstest.NS, script string) {
	t.Helper()
	if out, err := ns.Run("sh", "-c", script); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

// mib formats bytes as MiB.
func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }
