package xtables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// ExecRunner runs the iptables tools as child processes. They act on the
// network namespace of the calling thread: the process's own in the
// sidecar, a locked thread's in tests (nstest.NS.Do).
type ExecRunner struct {
	// LockFile is the xtables lock the legacy tools take (XTABLES_LOCKFILE),
	// used when the environment does not name one. iptables-legacy-restore
	// fails outright when it cannot create its lock (default
	// /run/xtables.lock), as on a read-only root file system; a file in the
	// state directory (an emptyDir) serves, since the lock only serialises
	// the iptables processes of one container.
	LockFile string
}

var _ Runner = ExecRunner{}

// Run runs the tool and returns its standard output. A tool that is not in
// PATH yields an error wrapping ErrNoTool; a failing one a *ToolError.
func (r ExecRunner) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("running %s: %w", name, ErrNoTool)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if r.LockFile != "" && os.Getenv("XTABLES_LOCKFILE") == "" {
		cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+r.LockFile)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = errors.Join(ctxErr, err)
		}
		return nil, &ToolError{Name: name, Args: args, Stderr: strings.TrimSpace(stderr.String()), Err: err}
	}
	return stdout.Bytes(), nil
}
