package verify

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// ParseFlags parses the arguments of `hubwarden verify` into Options; usage
// and errors go to out. It returns flag.ErrHelp for -h.
func ParseFlags(args []string, out io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("hubwarden verify", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, `usage: hubwarden verify [flags]

Run inside the notebook container as the notebook user. Checks that the
lockdown holds from the user's side; prints PASS/FAIL per check and exits
non-zero if any check fails.

`)
		fs.PrintDefaults()
	}
	metadata := strings.Join(DefaultMetadata, ",")
	fs.StringVar(&o.Target, "target", DefaultTarget, "host:port that is not on the allow-list and must be refused")
	fs.StringVar(&metadata, "metadata", metadata, "comma-separated metadata endpoints (host:port) that must be blocked")
	fs.StringVar(&o.ReadyURL, "ready-url", DefaultReadyURL, "hubwarden's readiness URL, which must answer 200")
	fs.DurationVar(&o.Timeout, "timeout", DefaultTimeout, "time limit of each check; a blocked address must be refused within it")
	fs.StringVar(&o.Python, "python", "", "interpreter that runs the Jupyter server (default: jupyter's shebang, else python3 on PATH)")
	fs.StringVar(&o.Jupyter, "jupyter", "", `jupyter command (default: "jupyter" on PATH)`)
	fs.StringVar(&o.NotebookURL, "notebook-url", "", "the notebook server's URL (default: JUPYTERHUB_SERVICE_URL)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	o.Metadata = nil
	for _, m := range strings.Split(metadata, ",") {
		if m = strings.TrimSpace(m); m != "" {
			o.Metadata = append(o.Metadata, m)
		}
	}
	if o.Metadata == nil {
		o.Metadata = []string{} // explicitly none
	}
	return o, nil
}

// Main is `hubwarden verify`: it parses args, runs the checks and returns
// the exit code (0 all passed, 1 a check failed, 2 bad usage).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := ParseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "hubwarden verify:", err)
		return 2
	}
	if !Run(ctx, opts, stdout) {
		return 1
	}
	return 0
}
