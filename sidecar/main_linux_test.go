package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/hubwarden/hubwarden/internal/hwtest"
	"github.com/hubwarden/hubwarden/internal/nstest"
	"github.com/hubwarden/hubwarden/warden"
)

// hubwardenBin is the binary under test: $HUBWARDEN_BIN or this module's,
// built once (package hwtest).
func hubwardenBin(t *testing.T) string { return hwtest.Binary(t) }

func TestMain(m *testing.M) {
	code := m.Run()
	hwtest.Cleanup()
	os.Exit(code)
}

// result is one run of the binary.
type result struct {
	stdout, stderr string
	code           int
}

// hw runs the hubwarden binary in ns with exactly the given environment
// (plus PATH), as a container would.
func hw(t *testing.T, ns *nstest.NS, env map[string]string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := hwCmd(t, ctx, ns, env, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r := result{stdout: o.String(), stderr: e.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("running hubwarden %v: %v", args, err)
	}
	return r
}

func hwCmd(t *testing.T, ctx context.Context, ns *nstest.NS, env map[string]string, args ...string) *exec.Cmd {
	t.Helper()
	argv := []string{"-i", "PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		argv = append(argv, k+"="+v)
	}
	argv = append(argv, hubwardenBin(t))
	return ns.Cmd(ctx, "env", append(argv, args...)...)
}

var (
	saveComments = regexp.MustCompile(`(?m)^#.*\n`)
	saveCounters = regexp.MustCompile(`\[[0-9]+:[0-9]+\]`) // legacy counts packets of built-in chains
)

// saveAll returns the iptables-save output of both backends and families,
// without comment lines and with the chain counters zeroed.
func saveAll(t *testing.T, ns *nstest.NS) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		b.WriteString(saveCounters.ReplaceAllString(saveComments.ReplaceAllString(ns.MustRun(tool), ""), "[0:0]"))
	}
	return b.String()
}

// baseEnv is a minimal valid configuration for a test namespace.
func baseEnv(t *testing.T, backend string) map[string]string {
	return map[string]string{
		"HUBWARDEN_STATE_DIR":        t.TempDir(),
		"HUBWARDEN_USER":             "jovyan",
		"HUBWARDEN_IPTABLES_BACKEND": backend,
		"HUBWARDEN_DNS_SERVERS":      "198.18.10.53",
		"HUBWARDEN_ALLOW":            "198.18.10.0/24,tcp://[2001:2:0:a::/64]:443",
		"HUBWARDEN_IPV6":             "true",
		"HUBWARDEN_LOG_LEVEL":        "debug",
		"HUBWARDEN_SHAPE":            "false", // no default route in a bare namespace; see TestIntegrationInitShapes
	}
}

func TestIntegrationInitTwiceAndCheck(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			nstest.SkipUnlessRoot(t, "iptables-"+backend+"-restore")
			ns := nstest.New(t)
			env := baseEnv(t, backend)
			if r := hw(t, ns, env, "check"); r.code == 0 {
				t.Errorf("check before init exited 0:\n%s%s", r.stdout, r.stderr)
			}
			if r := hw(t, ns, env, "init"); r.code != 0 {
				t.Fatalf("init exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			first := saveAll(t, ns)
			if !strings.Contains(first, "-A OUTPUT -m comment --comment \"hubwarden: hook\" -j HUBWARDEN-EGRESS") {
				t.Fatalf("no hook after init:\n%s", first)
			}
			if r := hw(t, ns, env, "check"); r.code != 0 || !strings.Contains(r.stdout, "matches the plan (iptables backend "+backend+")") {
				t.Errorf("check after init exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			r := hw(t, ns, env, "init")
			if r.code != 0 {
				t.Fatalf("second init exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			if strings.Contains(r.stdout, "fixing") {
				t.Errorf("second init changed something:\n%s", r.stdout)
			}
			if diff := cmp.Diff(first, saveAll(t, ns)); diff != "" {
				t.Errorf("second init changed the kernel (-first +second):\n%s", diff)
			}

			// A hand-deleted rule: check names it and exits 1; init converges.
			tool := "iptables-" + backend
			ns.MustRun(tool, "-w", "-D", "HUBWARDEN-EGRESS", "-o", "lo", "-m", "comment", "--comment", "hubwarden: loopback", "-j", "ACCEPT")
			r = hw(t, ns, env, "check")
			if r.code != 1 || !strings.Contains(r.stdout, `+ -A HUBWARDEN-EGRESS -o lo -m comment --comment "hubwarden: loopback" -j ACCEPT`) {
				t.Errorf("check after a hand-deleted rule exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			if r := hw(t, ns, env, "init"); r.code != 0 {
				t.Fatalf("converging init exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			if diff := cmp.Diff(first, saveAll(t, ns)); diff != "" {
				t.Errorf("converged state differs (-first +converged):\n%s", diff)
			}
		})
	}
}

func TestIntegrationBadConfigAppliesNothing(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-save", "iptables-legacy-save")
	ns := nstest.New(t)
	env := baseEnv(t, "auto")
	env["HUBWARDEN_ALLOW"] = "198.18.10.0/24,tcp://[2001:2::1:443"
	env["HUBWARDEN_FLOW_BUDGT"] = "64MiB"
	env["HUBWARDEN_SLOW_RATE"] = "fast"
	before := saveAll(t, ns)
	for _, cmd := range []string{"init", "run"} {
		r := hw(t, ns, env, cmd)
		if r.code == 0 {
			t.Fatalf("%s with a bad config exited 0", cmd)
		}
		for _, want := range []string{"HUBWARDEN_ALLOW", "HUBWARDEN_FLOW_BUDGT: unknown variable", "HUBWARDEN_SLOW_RATE"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("%s: stderr does not name %s:\n%s", cmd, want, r.stderr)
			}
		}
	}
	after := saveAll(t, ns)
	if after != before || strings.Contains(after, "-A ") || strings.Contains(after, "HUBWARDEN") {
		t.Errorf("a bad config changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := os.Stat(filepath.Join(env["HUBWARDEN_STATE_DIR"], warden.BackendFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a bad config wrote the backend choice (stat: %v)", err)
	}
}

func TestIntegrationRunKeepsRulesOnSIGTERM(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-save")
	ns := nstest.New(t)
	env := baseEnv(t, "auto")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd, out := startRun(t, ctx, ns, env)
	waitFor(t, 30*time.Second, out, "rules applied and checked")
	// ip netns exec execs hubwarden in place, so the pid is hubwarden's.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("run exited with %v after SIGTERM:\n%s", err, out.String())
	}
	if r := hw(t, ns, env, "check"); r.code != 0 {
		t.Errorf("rules gone after run stopped:\n%s%s", r.stdout, r.stderr)
	}
}

// startRun starts `hubwarden run` in ns (killed when the test ends) and
// returns it with its output so far.
func startRun(t *testing.T, ctx context.Context, ns *nstest.NS, env map[string]string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	cmd := hwCmd(t, ctx, ns, env, "run")
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd, out
}

// lockedBuffer is a buffer a child process writes to while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestIntegrationInitShapes(t *testing.T) {
	for i, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			nstest.SkipUnlessRoot(t, "iptables-"+backend+"-restore", "tc")
			p := nstest.NewPair(t, 14+i)
			env := baseEnv(t, backend)
			env["HUBWARDEN_SHAPE"] = "true"
			if r := hw(t, p.Pod, env, "init"); r.code != 0 {
				t.Fatalf("init exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			state := func() string {
				return saveAll(t, p.Pod) + qdiscs(p.Pod, "dev", "eth0") + p.Pod.MustRun("tc", "class", "show", "dev", "eth0")
			}
			first := state()
			for _, want := range []string{"qdisc htb 4857: root", "-A POSTROUTING -m comment --comment \"hubwarden: hook\" -j HUBWARDEN-SHAPE", "CLASSIFY"} {
				if !strings.Contains(first, want) {
					t.Errorf("after init, %q missing:\n%s", want, first)
				}
			}
			if r := hw(t, p.Pod, env, "check"); r.code != 0 {
				t.Errorf("check exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			if r := hw(t, p.Pod, env, "init"); r.code != 0 {
				t.Fatalf("second init exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			if diff := cmp.Diff(first, state()); diff != "" {
				t.Errorf("second init changed the kernel (-first +second):\n%s", diff)
			}
			// A hand-deleted qdisc is reported, and the next init restores it.
			p.Pod.MustRun("tc", "qdisc", "del", "dev", "eth0", "root")
			if r := hw(t, p.Pod, env, "check"); r.code != 1 || !strings.Contains(r.stdout, "qdiscs:") {
				t.Errorf("check after deleting the qdisc exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			if r := hw(t, p.Pod, env, "init"); r.code != 0 {
				t.Fatalf("converging init exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			if r := hw(t, p.Pod, env, "check"); r.code != 0 {
				t.Errorf("check after converging exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			if r := hw(t, p.Pod, env, "plan"); r.code != 0 || !strings.Contains(r.stdout, "# tc on eth0") || !strings.Contains(r.stdout, "*mangle") {
				t.Errorf("plan exited %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
		})
	}
}

// TestIntegrationStartupTimeout: a start-up that hangs (here: a resolver
// that never answers) ends at HUBWARDEN_STARTUP_TIMEOUT with an error that
// names it, instead of hanging the pod.
func TestIntegrationStartupTimeout(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-restore")
	ns := nstest.New(t)
	c := ns.ListenPacket("udp", "127.0.0.1:53") // reads and never answers
	go func() {
		buf := make([]byte, 512)
		for {
			if _, _, err := c.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	env := baseEnv(t, "auto")
	env["HUBWARDEN_DNS_SERVERS"] = "127.0.0.1"
	env["HUBWARDEN_ALLOW"] = "tcp://slow.hubwarden.test:443"
	env["HUBWARDEN_STARTUP_TIMEOUT"] = "1s"
	start := time.Now()
	r := hw(t, ns, env, "init")
	took := time.Since(start)
	t.Logf("init gave up after %s: %s", took, strings.TrimSpace(r.stderr))
	if r.code == 0 || !strings.Contains(r.stderr, "HUBWARDEN_STARTUP_TIMEOUT=1s") {
		t.Errorf("init exited %d after %s:\n%s%s", r.code, took, r.stdout, r.stderr)
	}
	if took > 20*time.Second {
		t.Errorf("init took %s with a 1s start-up timeout", took)
	}
}

// TestIntegrationKilledInitConverges kills init at several points of its
// work; the next init converges to the same state as an uninterrupted one.
func TestIntegrationKilledInitConverges(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-restore")
	refNS := nstest.New(t)
	env := baseEnv(t, "auto")
	if r := hw(t, refNS, env, "init"); r.code != 0 {
		t.Fatalf("reference init exited %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	want := saveAll(t, refNS)
	for _, after := range []time.Duration{15 * time.Millisecond, 40 * time.Millisecond, 60 * time.Millisecond, 80 * time.Millisecond, 120 * time.Millisecond} {
		t.Run(after.String(), func(t *testing.T) {
			ns := nstest.New(t)
			env := baseEnv(t, "auto")
			cmd := hwCmd(t, context.Background(), ns, env, "init")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(after) // the point of the kill is what this test varies
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			left := saveAll(t, ns)
			t.Logf("killed after %s: %d of %d rule lines in place", after, strings.Count(left, "\n-A "), strings.Count(want, "\n-A "))
			if r := hw(t, ns, env, "init"); r.code != 0 {
				t.Fatalf("init after a kill at %s exited %d:\n%s%s", after, r.code, r.stdout, r.stderr)
			}
			if r := hw(t, ns, env, "check"); r.code != 0 {
				t.Errorf("check after a kill at %s exited %d:\n%s%s", after, r.code, r.stdout, r.stderr)
			}
			if diff := cmp.Diff(want, saveAll(t, ns)); diff != "" {
				t.Errorf("state after a kill at %s and a new init differs from an uninterrupted init (-want +got):\n%s", after, diff)
			}
		})
	}
}

// TestIntegrationCheckWritesNothing: hubwarden check, documented as
// read-only, leaves the kernel byte for byte as it was (links, qdiscs and
// classes, every iptables table of both backends, the nftables ruleset,
// the state directory), and nothing is created and deleted meanwhile: `ip
// monitor` and `nft monitor` see no event while it runs. (The build before
// created and deleted a probe device for fq on every check.)
func TestIntegrationCheckWritesNothing(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-restore", "tc", "nft", "ip")
	p := nstest.NewPair(t, 18)
	env := baseEnv(t, "auto")
	env["HUBWARDEN_SHAPE"] = "true"
	if r := hw(t, p.Pod, env, "init"); r.code != 0 {
		t.Fatalf("init exited %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	state := func() string {
		var b strings.Builder
		b.WriteString(p.Pod.MustRun("ip", "-d", "link", "show"))
		b.WriteString(p.Pod.MustRun("ip", "addr", "show"))
		b.WriteString(qdiscs(p.Pod))
		b.WriteString(p.Pod.MustRun("tc", "class", "show", "dev", "eth0"))
		b.WriteString(saveAll(t, p.Pod))
		b.WriteString(p.Pod.MustRun("nft", "-s", "list", "ruleset")) // stateless: no counters
		entries, err := os.ReadDir(env["HUBWARDEN_STATE_DIR"])
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			data, err := os.ReadFile(filepath.Join(env["HUBWARDEN_STATE_DIR"], e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s: %s\n", e.Name(), data)
		}
		return b.String()
	}
	// The kernel's own changes first: IPv6 duplicate address detection
	// finishes on the link-local address (and adds its route).
	for i := 0; strings.TrimSpace(p.Pod.MustRun("ip", "-6", "addr", "show", "tentative")) != ""; i++ {
		if i == 100 {
			t.Fatalf("addresses still tentative after 10 s:\n%s", p.Pod.MustRun("ip", "-6", "addr", "show", "tentative"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	before := state()
	for _, want := range []string{"qdisc htb 4857: dev eth0 root", "table inet hubwarden", "HUBWARDEN-EGRESS", "detected.json"} {
		if !strings.Contains(before, want) {
			t.Fatalf("after init, %q missing:\n%s", want, before)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	monitor := func(out *bytes.Buffer, name string, args ...string) *exec.Cmd {
		c := p.Pod.Cmd(ctx, name, args...)
		c.Stdout = out
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	var linkEvents, nftEvents bytes.Buffer
	ipMon := monitor(&linkEvents, "ip", "-o", "monitor", "link", "address", "route")
	nftMon := monitor(&nftEvents, "nft", "monitor")
	time.Sleep(300 * time.Millisecond) // the monitors subscribe
	for range 3 {
		if r := hw(t, p.Pod, env, "check"); r.code != 0 {
			t.Errorf("check exited %d:\n%s%s", r.code, r.stdout, r.stderr)
		}
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	ipMon.Wait()
	nftMon.Wait()
	if linkEvents.Len() > 0 || nftEvents.Len() > 0 {
		t.Errorf("check changed the kernel while it ran:\nip monitor:\n%s\nnft monitor:\n%s", linkEvents.String(), nftEvents.String())
	}
	if diff := cmp.Diff(before, state()); diff != "" {
		t.Errorf("check changed the kernel (-before +after):\n%s", diff)
	}
}

// directPackets is the HTB root's counter of packets that took its direct
// queue: traffic, not configuration.
var directPackets = regexp.MustCompile(` direct_packets_stat \d+`)

// qdiscs is `tc qdisc show [args]` in ns, without the counters that traffic
// moves.
func qdiscs(ns *nstest.NS, args ...string) string {
	return directPackets.ReplaceAllString(ns.MustRun("tc", append([]string{"qdisc", "show"}, args...)...), "")
}
