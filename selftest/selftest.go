// Package selftest proves, before hubwarden reports ready, that its rules
// work: conntrack accounting is on (the watcher and the tripwires count
// bytes), the HTB classes and the iptables chains are in place, a
// connection to an address that must be blocked is refused, fast, and a
// connection to the notebook server's port is taken to the HTTP guard.
//
// Each check is named, and every probe of the kernel is injected, so the
// package is pure and its tests need no root. The sidecar passes probes that
// read the kernel (tcshape and egress provide them).
package selftest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/hubwarden/hubwarden/health"
)

// Check names, as /readyz and the logs show them.
const (
	CheckAccounting = "conntrack-accounting"
	CheckHTB        = "htb-classes"
	CheckChains     = "iptables-chains"
	CheckBlocked    = "blocked-target-refused"
	CheckGuard      = "guard-redirect"
)

// AccountingPath is the sysctl that turns on per-flow byte counters in the
// caller's network namespace.
const AccountingPath = "/proc/sys/net/netfilter/nf_conntrack_acct"

// Check is the outcome of one named check.
type Check struct {
	Name     string
	Passed   bool
	Reason   string // why it failed, or a short note when it passed
	Duration time.Duration
}

// Result lists every check that ran, in order.
type Result struct{ Checks []Check }

// OK reports whether every check passed.
func (r Result) OK() bool {
	for _, c := range r.Checks {
		if !c.Passed {
			return false
		}
	}
	return true
}

// Err returns nil when every check passed, else an error naming each failed
// check and why: what the sidecar exits with when it fails closed.
func (r Result) Err() error {
	var failed []string
	for _, c := range r.Checks {
		if !c.Passed {
			failed = append(failed, c.Name+": "+c.Reason)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return fmt.Errorf("self-test failed: %s", strings.Join(failed, "; "))
}

// Health converts the checks for health.Status.SetSelftest.
func (r Result) Health() []health.Check {
	out := make([]health.Check, 0, len(r.Checks))
	for _, c := range r.Checks {
		out = append(out, health.Check{Name: c.Name, Passed: c.Passed, Reason: c.Reason})
	}
	return out
}

// Write prints one "PASS name" or "FAIL name: reason" line per check.
func (r Result) Write(w io.Writer) error {
	for _, c := range r.Checks {
		var err error
		if c.Passed {
			_, err = fmt.Fprintf(w, "PASS %s\n", c.Name)
		} else {
			_, err = fmt.Fprintf(w, "FAIL %s: %s\n", c.Name, c.Reason)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// DialFunc dials like net.Dialer.DialContext.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Probes are the self-test's views of the kernel. A nil probe skips its
// check (HTB classes when shaping is off, accounting when nothing counts
// bytes).
type Probes struct {
	// ReadFile reads AccountingPath (os.ReadFile in production).
	ReadFile func(path string) ([]byte, error)
	// HTBClasses returns nil when the qdisc and classes of the plan are on
	// the interface, else an error saying what is missing.
	HTBClasses func(ctx context.Context) error
	// Chains returns nil when hubwarden's mangle and filter chains are in
	// the chosen backend (IPv4 and, when enabled, IPv6).
	Chains func(ctx context.Context) error
	// Dial connects to the blocked target; nil skips the check.
	Dial DialFunc
	// GuardRedirect returns nil when a connection to the notebook server's
	// port, from inside the pod through the guard's redirect, is answered
	// by the HTTP guard (guard.Probe); nil skips the check.
	GuardRedirect func(ctx context.Context) error
}

// Options are the self-test's parameters.
type Options struct {
	Target  netip.AddrPort // SELFTEST_TARGET: must be refused
	Timeout time.Duration  // per check; 0 means 2s. A blocked target must be refused within it.
}

// Run runs every check whose probe is set and returns them all.
func Run(ctx context.Context, opts Options, p Probes) Result {
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	var r Result
	run := func(name string, f func(ctx context.Context) (string, error)) {
		cctx, cancel := context.WithTimeout(ctx, opts.Timeout)
		defer cancel()
		start := time.Now()
		note, err := f(cctx)
		c := Check{Name: name, Passed: err == nil, Reason: note, Duration: time.Since(start)}
		if err != nil {
			c.Reason = err.Error()
		}
		r.Checks = append(r.Checks, c)
	}
	if p.ReadFile != nil {
		run(CheckAccounting, func(context.Context) (string, error) { return "", accounting(p.ReadFile) })
	}
	if p.HTBClasses != nil {
		run(CheckHTB, func(ctx context.Context) (string, error) { return "", p.HTBClasses(ctx) })
	}
	if p.Chains != nil {
		run(CheckChains, func(ctx context.Context) (string, error) { return "", p.Chains(ctx) })
	}
	if p.Dial != nil {
		run(CheckBlocked, func(ctx context.Context) (string, error) {
			return DialBlocked(ctx, p.Dial, "tcp", opts.Target.String())
		})
	}
	if p.GuardRedirect != nil {
		run(CheckGuard, func(ctx context.Context) (string, error) { return "", p.GuardRedirect(ctx) })
	}
	return r
}

func accounting(read func(string) ([]byte, error)) error {
	b, err := read(AccountingPath)
	if err != nil {
		return fmt.Errorf("reading %s: %w", AccountingPath, err)
	}
	if v := strings.TrimSpace(string(b)); v != "1" {
		return fmt.Errorf("%s is %q, want 1 (flows carry no byte counters)", AccountingPath, v)
	}
	return nil
}

// ErrNotBlocked is returned (wrapped) when a connection that must be refused
// was accepted or hung.
var ErrNotBlocked = errors.New("not blocked")

// DialBlocked connects to addr and returns nil when the connection was
// refused before ctx's deadline (a REJECT: connection refused, host or
// network unreachable, or not permitted), with a note naming the refusal. A
// connection that succeeds, or that hangs until the deadline (a DROP, or no
// rule at all towards a silent network), is an error wrapping ErrNotBlocked.
func DialBlocked(ctx context.Context, dial DialFunc, network, addr string) (string, error) {
	start := time.Now()
	c, err := dial(ctx, network, addr)
	if err == nil {
		c.Close()
		return "", fmt.Errorf("connecting to %s: connected: %w", addr, ErrNotBlocked)
	}
	if why, ok := Refusal(err); ok {
		return fmt.Sprintf("%s refused in %s (%s)", addr, time.Since(start).Round(time.Microsecond), why), nil
	}
	if errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err) {
		return "", fmt.Errorf("connecting to %s: no answer in %s, dropped or routed away rather than rejected: %w",
			addr, time.Since(start).Round(time.Millisecond), ErrNotBlocked)
	}
	return "", fmt.Errorf("connecting to %s: %w (not a refusal): %w", addr, err, ErrNotBlocked)
}

// Refusal reports whether a dial error is a local refusal, and which.
func Refusal(err error) (string, bool) {
	for _, e := range []syscall.Errno{syscall.ECONNREFUSED, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.EPERM, syscall.EACCES, syscall.ECONNRESET} {
		if errors.Is(err, e) {
			return e.Error(), true
		}
	}
	return "", false
}
