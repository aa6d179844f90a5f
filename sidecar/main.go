package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/hubwarden/hubwarden/verify"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil && !errors.Is(err, context.Canceled) {
		var ex exitError
		if errors.As(err, &ex) {
			os.Exit(int(ex))
		}
		fmt.Fprintln(os.Stderr, "hubwarden:", err)
		os.Exit(1)
	}
}

// exitError ends the process with a status and no further message (the
// command has already written its report).
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

const usageHead = `hubwarden: egress filtering, download throttling and audit for a JupyterHub user pod.

Commands:
  init     apply egress filtering and shaping once, self-check, exit 0 (init container)
  run      apply, then watch, reconcile and serve health until SIGTERM (sidecar)
  plan     print what would be applied: iptables-restore text per family, tc objects
           (--offline: do not resolve allow-list host names; validates a configuration)
  check    compare the kernel with the plan; exit 0 when equal, 1 with a diff
  verify   run inside the notebook container as the user: prove the lockdown holds
  version  print the version

Configuration (environment variables only):
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageHead)
		_ = printUsage(stderr)
		return exitError(2)
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usageHead)
		return printUsage(stdout)
	case "version", "--version":
		fmt.Fprintln(stdout, "hubwarden", version)
		return nil
	case "verify":
		// verify runs in the notebook container, with flags, not the
		// sidecar's HUBWARDEN_* configuration.
		if rc := verify.Main(ctx, args[1:], stdout, stderr); rc != 0 {
			return exitError(rc)
		}
		return nil
	case "plan", "check", "init", "run":
	default:
		return fmt.Errorf("unknown command %q (see hubwarden --help)", args[0])
	}
	offline := args[0] == "plan" && len(args) == 2 && args[1] == "--offline"
	if len(args) > 1 && !offline {
		return fmt.Errorf("%s takes no arguments but plan's --offline (configuration is read from HUBWARDEN_* variables)", args[0])
	}
	// Fail closed: on any configuration error, exit before touching the kernel.
	cfg, err := loadConfig(resolvConf)
	if err != nil {
		return err
	}
	switch args[0] {
	case "plan":
		return cmdPlan(ctx, cfg, stdout, newLogger(stderr, cfg), offline)
	case "check":
		return cmdCheck(ctx, cfg, stdout, newLogger(stderr, cfg))
	}
	log := newLogger(stdout, cfg)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	log.Info().Str("command", args[0]).Str("version", version).Msg("starting")
	if args[0] == "init" {
		return cmdInit(ctx, cfg, log)
	}
	return cmdRun(ctx, cfg, log)
}
