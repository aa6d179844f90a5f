package main

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/internal/nstest"
)

// curl fetches a URL from inside ns and returns the status code and body.
func curl(ns *nstest.NS, url string) (int, string) {
	out, err := ns.Run("curl", "-s", "-m", "2", "-w", "\n%{http_code}", url)
	if err != nil && out == "" {
		return 0, err.Error()
	}
	i := strings.LastIndex(out, "\n")
	code, _ := strconv.Atoi(strings.TrimSpace(out[i+1:]))
	return code, out[:i]
}

func metric(body, name string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestIntegrationRunHealsDrift runs the sidecar as in a pod: it must become
// ready only after apply and self-test, restore a rule and a qdisc deleted by
// hand (counting the drift), and stop on SIGTERM leaving its rules in place.
func TestIntegrationRunHealsDrift(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-save", "curl", "tc")
	p := nstest.NewPair(t, 19)
	env := baseEnv(t, "auto")
	env["HUBWARDEN_SHAPE"] = "true"
	env["HUBWARDEN_DNS_SERVERS"] = p.PeerIP4
	env["HUBWARDEN_SELFTEST_TARGET"] = p.PeerIP4 + ":9"
	env["HUBWARDEN_RECONCILE_INTERVAL"] = "1s"
	env["HUBWARDEN_HEALTH_ADDR"] = "127.0.0.1:9280"
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd, out := startRun(t, ctx, p.Pod, env)

	poll := func(what string, limit time.Duration, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(limit)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %s; log:\n%s", what, limit, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	poll("ready", 30*time.Second, func() bool { c, _ := curl(p.Pod, "http://127.0.0.1:9280/readyz"); return c == 200 })
	if !strings.Contains(out.String(), `"check":"blocked-target-refused","passed":true`) {
		t.Errorf("ready without a passed blocked-target self-test; log:\n%s", out.String())
	}
	if c, body := curl(p.Pod, "http://127.0.0.1:9280/healthz"); c != 200 {
		t.Fatalf("/healthz = %d %s", c, body)
	}
	_, body := curl(p.Pod, "http://127.0.0.1:9280/metrics")
	if got := metric(body, "hubwarden_reconcile_drifts_total"); got != 0 {
		t.Fatalf("drifts before any damage = %v, want 0", got)
	}
	// The kernel half: the tripwire of tier 0 at FLOW_BUDGET (64MiB by
	// default) in both directions, and the pod's quota gate, open at start.
	mangle := p.Pod.MustRun("iptables-nft-save", "-t", "mangle")
	for _, want := range []string{
		"-A HUBWARDEN-TIER0-R -m connbytes --connbytes 67108864 --connbytes-mode bytes --connbytes-dir reply",
		"-A HUBWARDEN-TIER0 -m connbytes --connbytes 67108864 --connbytes-mode bytes --connbytes-dir original",
	} {
		if !strings.Contains(mangle, want) {
			t.Errorf("mangle table lacks %q:\n%s", want, mangle)
		}
	}
	if nft := p.Pod.MustRun("nft", "list", "table", "inet", "hubwarden"); !strings.Contains(nft, "quota pod") || !strings.Contains(nft, `quota name "pod"`) {
		t.Errorf("no pod quota gate:\n%s", nft)
	}
	poll("the pod gate's first state", 5*time.Second, func() bool { return strings.Contains(out.String(), `"audit":"pod_gate"`) })
	if !strings.Contains(out.String(), `"audit":"pod_gate","gate":"open"`) || !strings.Contains(out.String(), `"user":`) {
		t.Errorf("no pod_gate line saying the gate is open at start:\n%s", out.String())
	}
	if got := metric(body, "hubwarden_pod_gate"); got != 0 {
		t.Errorf("hubwarden_pod_gate = %v, want 0", got)
	}

	// Damage: the egress hook and the HTB root.
	p.Pod.MustRun("iptables-nft", "-D", "OUTPUT", "-m", "comment", "--comment", "hubwarden: hook", "-j", "HUBWARDEN-EGRESS")
	p.Pod.MustRun("tc", "qdisc", "del", "dev", "eth0", "root")
	poll("drift healed", 15*time.Second, func() bool { return hw(t, p.Pod, env, "check").code == 0 })
	_, body = curl(p.Pod, "http://127.0.0.1:9280/metrics")
	if got := metric(body, "hubwarden_reconcile_drifts_total"); got < 1 {
		t.Errorf("hubwarden_reconcile_drifts_total = %v after healing, want >= 1", got)
	}
	if !strings.Contains(out.String(), "drifted; re-applying") {
		t.Errorf("no drift log line:\n%s", out.String())
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("run exited with %v after SIGTERM:\n%s", err, out.String())
	}
	if r := hw(t, p.Pod, env, "check"); r.code != 0 {
		t.Errorf("rules gone after run stopped:\n%s%s", r.stdout, r.stderr)
	}
}
