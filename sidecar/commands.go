package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/warden"
)

// resolvConf is where the pod's resolvers are listed.
const resolvConf = "/etc/resolv.conf"

// kernel is the kernel the commands work on; tests replace it with one that
// refuses something.
var kernel = warden.Linux

// newLogger builds the process's one logger: JSON lines with a timestamp and
// the user and server the pod belongs to (on every line, empty when unset,
// so that a log shipper always finds them), at the configured level.
func newLogger(w io.Writer, cfg *Config) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(cfg.LogLevel)
	if err != nil {
		lvl = zerolog.InfoLevel // loadConfig has validated the level
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Str("user", cfg.User).Str("server", cfg.Server).Logger()
}

// cmdPlan prints the plan. Offline, host names are not resolved (they
// contribute no rules), so checking a configuration sends no DNS query.
func cmdPlan(ctx context.Context, cfg *Config, stdout io.Writer, log zerolog.Logger, offline bool) error {
	w, err := warden.Open(ctx, cfg, warden.Options{Mode: warden.Preview, Offline: offline, Kernel: kernel(), Log: log})
	if err != nil {
		return err
	}
	defer w.Close()
	return w.Plan().Write(stdout)
}

// cmdCheck compares the kernel with the plan start-up recorded, writing
// nothing; exit status 1 with the difference.
func cmdCheck(ctx context.Context, cfg *Config, stdout io.Writer, log zerolog.Logger) error {
	w, err := warden.Open(ctx, cfg, warden.Options{Mode: warden.ReadOnly, Kernel: kernel(), Log: log})
	if err != nil {
		return err
	}
	defer w.Close()
	d, err := w.Check(ctx)
	if err != nil {
		return err
	}
	if !d.Empty() {
		fmt.Fprintf(stdout, "the kernel differs from the plan (iptables backend %s):\n%s", w.Backend(), d)
		return exitError(1)
	}
	fmt.Fprintf(stdout, "the kernel matches the plan (iptables backend %s)\n", w.Backend())
	return nil
}

// startup detects, plans, applies and checks within HUBWARDEN_STARTUP_TIMEOUT.
func startup(ctx context.Context, cfg *Config, log zerolog.Logger) (*warden.Warden, error) {
	sctx, cancel := context.WithTimeoutCause(ctx, cfg.StartupTimeout, fmt.Errorf("start-up took longer than HUBWARDEN_STARTUP_TIMEOUT=%s", cfg.StartupTimeout))
	defer cancel()
	start := time.Now()
	w, err := warden.Open(sctx, cfg, warden.Options{Mode: warden.Write, Kernel: kernel(), Log: log})
	if err == nil {
		if err = w.Apply(sctx); err != nil {
			w.Close()
		}
	}
	if err != nil {
		if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return nil, fmt.Errorf("%w: %w", cause, err)
		}
		return nil, err
	}
	log.Info().Str("backend", string(w.Backend())).Int("tables", len(w.Plan().Tables)).Dur("dur", time.Since(start)).Msg("rules applied and checked")
	return w, nil
}

func cmdInit(ctx context.Context, cfg *Config, log zerolog.Logger) error {
	w, err := startup(ctx, cfg, log)
	if err != nil {
		return err
	}
	return w.Close()
}
