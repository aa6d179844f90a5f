//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/internal/nstest"
	"github.com/hubwarden/hubwarden/warden"
	"github.com/hubwarden/hubwarden/xtables"
)

// noRecent plays a kernel without xt_recent: iptables-restore refuses any
// input that uses the recent match, as such a kernel does at commit, with
// a message that does not name the match.
type noRecent struct{ xtables.Runner }

func (r noRecent) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	if strings.HasSuffix(name, "-restore") && bytes.Contains(stdin, []byte("-m recent")) {
		return nil, &xtables.ToolError{Name: name, Args: args, Stderr: name + ": line 9 failed", Err: errors.New("exit status 1")}
	}
	return r.Runner.Run(ctx, stdin, name, args...)
}

// TestIntegrationStartupWithoutRecent: on a kernel without an nftables
// quota (the recorded choice says so) that also refuses the recent gate's
// rule, start-up applies everything else (the tripwire included), says so,
// and runs without a pod gate; nothing of the refused plan stays.
func TestIntegrationStartupWithoutRecent(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-restore", "tc")
	p := nstest.NewPair(t, 17)
	for k, v := range baseEnv(t, "nft") {
		t.Setenv(k, v)
	}
	t.Setenv("HUBWARDEN_SHAPE", "true")
	cfg, err := loadConfig("/nonexistent")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.StateDir, warden.DetectedFile), []byte(`{"pod_gate":"recent"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	old := kernel
	kernel = func() warden.Kernel {
		k := old()
		run := k.Iptables
		k.Iptables = func(lockFile string) xtables.Runner { return noRecent{run(lockFile)} }
		return k
	}
	t.Cleanup(func() { kernel = old })

	var log bytes.Buffer
	var w *warden.Warden
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Pod.Do(func() (err error) {
		w, err = startup(ctx, cfg, zerolog.New(&log))
		return err
	}); err != nil {
		t.Fatalf("start-up failed instead of degrading: %v\n%s", err, log.String())
	}
	defer w.Close()
	mangle := p.Pod.MustRun("iptables-nft-save", "-t", "mangle")
	if g := w.Plan().Env.Gate; g != demotion.GateNone || strings.Contains(mangle, "-m recent") || !strings.Contains(mangle, "--connbytes 67108864") {
		t.Errorf("gate %v; mangle:\n%s", g, mangle)
	}
	if out, _ := p.Pod.Run("nft", "list", "table", "inet", demotion.NFTTable); strings.Contains(out, "quota") {
		t.Errorf("a quota gate was applied although the recorded choice is the recent gate:\n%s", out)
	}
	if !strings.Contains(log.String(), "neither an nftables quota nor xt_recent") {
		t.Errorf("no warning about the missing gate:\n%s", log.String())
	}
	// The next apply (the reconcile loop's) plans without the gate too.
	if err := p.Pod.Do(func() error { return w.Apply(ctx) }); err != nil {
		t.Errorf("re-apply: %v", err)
	}
	for _, l := range strings.Split(log.String(), "\n") {
		if strings.Contains(l, "pod gate") {
			t.Logf("degraded start-up: %s", l)
		}
	}
}
