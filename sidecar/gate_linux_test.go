//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/internal/nstest"
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

// TestIntegrationStartupWithoutRecent: on a kernel that refuses the pod
// gate's rule, start-up applies everything else (the tripwire included),
// says so, and runs without the gate; nothing of the refused plan stays.
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
	old := newRunner
	newRunner = func(lockFile string) xtables.Runner { return noRecent{old(lockFile)} }
	t.Cleanup(func() { newRunner = old })

	var log bytes.Buffer
	var k *kernel
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Pod.Do(func() (err error) {
		k, err = startup(ctx, cfg, zerolog.New(&log))
		return err
	}); err != nil {
		t.Fatalf("start-up failed instead of degrading: %v\n%s", err, log.String())
	}
	defer k.plan.shape.Close()
	mangle := p.Pod.MustRun("iptables-nft-save", "-t", "mangle")
	if k.plan.shape.gated() || strings.Contains(mangle, "-m recent") || !strings.Contains(mangle, "--connbytes 67108864") {
		t.Errorf("gated %v; mangle:\n%s", k.plan.shape.gated(), mangle)
	}
	if !strings.Contains(log.String(), "refused the pod gate rule") {
		t.Errorf("no warning about the missing gate:\n%s", log.String())
	}
	// The next apply (the reconcile loop's) plans without the gate too.
	if err := p.Pod.Do(func() error { return k.apply(ctx) }); err != nil {
		t.Errorf("re-apply: %v", err)
	}
	for _, l := range strings.Split(log.String(), "\n") {
		if strings.Contains(l, "pod gate") {
			t.Logf("degraded start-up: %s", l)
		}
	}
}
