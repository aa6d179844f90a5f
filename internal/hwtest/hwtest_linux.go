//go:build linux

// Package hwtest runs the real hubwarden binary in a test's network
// namespaces: one way to build it and launch it, for root tests and the
// bench. HUBWARDEN_BIN names a prebuilt binary (an earlier build, to show a
// test fail on it); otherwise the module's ./sidecar is built once per test
// binary.
package hwtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/internal/nstest"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// moduleRoot is the repository's root, from this file's path.
func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Build builds the module's ./sidecar into dir (cgo off, paths trimmed) and
// returns the binary's path: the one way the root tests, the bench and the
// e2e bed build hubwarden.
func Build(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "hubwarden")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./sidecar")
	cmd.Dir = moduleRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building hubwarden in %s: %w: %s", cmd.Dir, err, out)
	}
	return bin, nil
}

// Binary returns the hubwarden binary: $HUBWARDEN_BIN, or the module's
// ./sidecar built once (removed by Cleanup).
func Binary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		if p := os.Getenv("HUBWARDEN_BIN"); p != "" {
			binPath, buildErr = filepath.Abs(p)
			return
		}
		dir, err := os.MkdirTemp("", "hwtest-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath, buildErr = Build(context.Background(), dir)
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return binPath
}

// Cleanup removes a binary Binary built; call it from TestMain after Run.
func Cleanup() {
	if binPath != "" && os.Getenv("HUBWARDEN_BIN") == "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
}

// Env is hubwarden's configuration in a pair: the peer is the resolver and
// is allowed on TCP and UDP 5000-5999; shaping and the watcher on; the
// health server on :9280, probed from the peer like a kubelet; the HTTP
// guard off (these beds measure the network path with a plain TCP server on
// the pod's port 8888, which an enforcing guard would refuse: a test of the
// guard turns it on); overrides win ("" removes a variable).
func Env(tb testing.TB, p *nstest.Pair, over map[string]string) map[string]string {
	env := map[string]string{
		"PATH":                       "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HUBWARDEN_STATE_DIR":        tb.TempDir(),
		"HUBWARDEN_LOG_LEVEL":        "info",
		"HUBWARDEN_USER":             "adversary",
		"HUBWARDEN_DNS_SERVERS":      p.PeerIP4,
		"HUBWARDEN_ALLOW":            "tcp://" + p.PeerIP4 + ":5000-5999,udp://" + p.PeerIP4 + ":5000-5999",
		"HUBWARDEN_SELFTEST_TARGET":  p.PeerIP4 + ":9",
		"HUBWARDEN_INTERFACE":        "eth0",
		"HUBWARDEN_IPV6":             "true",
		"HUBWARDEN_SHAPE":            "true",
		"HUBWARDEN_WATCH":            "true",
		"HUBWARDEN_IPTABLES_BACKEND": "auto",
		"HUBWARDEN_GUARD":            "off",
	}
	for k, v := range over {
		if v == "" {
			delete(env, k)
		} else {
			env[k] = v
		}
	}
	return env
}

// Sidecar is a running `hubwarden run` in a pair's pod.
type Sidecar struct {
	Cmd   *exec.Cmd
	Pid   int
	Env   map[string]string
	Log   string        // path of its stdout and stderr
	Ready time.Duration // process start to the first /readyz 200
	probe *http.Client  // from the peer, as the kubelet probes
	url   string
	p     *nstest.Pair
	tb    testing.TB
	bin   string
}

// Start runs `hubwarden run` with env in the pair's pod and waits until
// /readyz answers 200 to the peer (the kubelet's path, through eth0).
func Start(tb testing.TB, p *nstest.Pair, env map[string]string) *Sidecar {
	tb.Helper()
	return StartBin(tb, p, env, Binary(tb))
}

// StartBin is Start with another binary.
func StartBin(tb testing.TB, p *nstest.Pair, env map[string]string, bin string) *Sidecar {
	tb.Helper()
	s := &Sidecar{Env: env, probe: PeerHTTP(p.Peer, 2*time.Second), url: "http://" + net.JoinHostPort(p.PodIP4, "9280"), p: p, tb: tb, bin: bin}
	s.start()
	deadline := time.Now().Add(60 * time.Second)
	begin := time.Now()
	for {
		if code, _ := s.Get("/readyz"); code == 200 {
			s.Ready = time.Since(begin)
			return s
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(s.Log)
			tb.Fatalf("hubwarden run not ready in 60 s; log:\n%s", b)
		}
		if s.Cmd.ProcessState != nil {
			b, _ := os.ReadFile(s.Log)
			tb.Fatalf("hubwarden run exited: %v; log:\n%s", s.Cmd.ProcessState, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *Sidecar) start() {
	tb := s.tb
	if s.Log == "" {
		s.Log = filepath.Join(tb.TempDir(), "hubwarden.log")
	}
	f, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var env []string
	for k, v := range s.Env {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	cmd := exec.Command("ip", "netns", "exec", s.p.Pod.Name, s.bin, "run")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	s.Cmd, s.Pid = cmd, cmd.Process.Pid // ip netns exec execs: the same pid
	go cmd.Wait()
	tb.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
}

// Kill kills the sidecar with SIGKILL (its kernel rules stay).
func (s *Sidecar) Kill() {
	_ = syscall.Kill(-s.Pid, syscall.SIGKILL)
	for i := 0; i < 200 && s.alive(); i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *Sidecar) alive() bool { return syscall.Kill(s.Pid, 0) == nil }

// Restart starts the sidecar again, as the kubelet restarts a native
// sidecar, and waits until it is ready.
func (s *Sidecar) Restart() {
	s.tb.Helper()
	s.Kill()
	s.start()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if code, _ := s.Get("/readyz"); code == 200 {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(s.Log)
			s.tb.Fatalf("restarted hubwarden not ready in 60 s; log:\n%s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Get fetches path from the health server from the peer, as a kubelet does.
func (s *Sidecar) Get(path string) (int, string) {
	r, err := s.probe.Get(s.url + path)
	if err != nil {
		return 0, err.Error()
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, string(b)
}

// Metric reads one unlabelled metric (-1 when absent or unreachable).
func (s *Sidecar) Metric(name string) float64 {
	code, body := s.Get("/metrics")
	if code != 200 {
		return -1
	}
	for _, l := range strings.Split(body, "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return -1
}

// RSS returns the sidecar's resident set in KiB.
func (s *Sidecar) RSS() (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.Pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			return strconv.ParseUint(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS for %d", s.Pid)
}

// Alive says whether the sidecar process runs.
func (s *Sidecar) Alive() bool { return s.alive() }

// Logs returns what the sidecar wrote.
func (s *Sidecar) Logs() string {
	b, _ := os.ReadFile(s.Log)
	return string(b)
}

// PeerHTTP is an HTTP client whose connections are opened inside ns, one
// request per connection.
func PeerHTTP(ns *nstest.NS, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return ns.DialContext(ctx, network, addr)
			},
		},
	}
}
