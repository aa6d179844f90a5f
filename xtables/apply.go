package xtables

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Runner runs one iptables tool (iptables-nft-save, ip6tables-legacy-restore,
// ...) in the network namespace hubwarden guards, feeding it stdin, and
// returns its standard output. It is the only way this package reaches the
// kernel, so Apply, Check and Detect are tested against an in-memory fake.
type Runner interface {
	Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)
}

// Backend is an iptables backend: the kernel interface the iptables tools
// program. The two are separate rule sets in the kernel; rules written with
// one are invisible to the other's tools, so one pod must stick to one.
type Backend string

// The backends.
const (
	NFT    Backend = "nft"
	Legacy Backend = "legacy"
)

// ParseBackend parses "nft" or "legacy".
func ParseBackend(s string) (Backend, error) {
	switch b := Backend(strings.TrimSpace(s)); b {
	case NFT, Legacy:
		return b, nil
	}
	return "", fmt.Errorf("unknown iptables backend %q (want nft or legacy)", s)
}

// Tool returns the name of a backend's tool for a family; kind is "save" or
// "restore" (or "" for iptables itself): "ip6tables-nft-restore".
func (b Backend) Tool(f Family, kind string) string {
	name := "iptables"
	if f == IPv6 {
		name = "ip6tables"
	}
	name += "-" + string(b)
	if kind != "" {
		name += "-" + kind
	}
	return name
}

// Iptables reads, checks and applies hubwarden's tables with one backend.
type Iptables struct {
	backend Backend
	run     Runner
	log     zerolog.Logger
}

// New returns an Iptables that programs the kernel through r with backend b.
func New(b Backend, r Runner, log zerolog.Logger) *Iptables {
	return &Iptables{backend: b, run: r, log: log.With().Str("component", "xtables").Str("backend", string(b)).Logger()}
}

// Backend returns the backend in use.
func (x *Iptables) Backend() Backend { return x.backend }

// Read returns the kernel's tables of one family, keyed by name, as
// iptables-save prints them. Tables that do not exist are absent.
func (x *Iptables) Read(ctx context.Context, f Family) (map[string]*State, error) {
	tool := x.backend.Tool(f, "save")
	out, err := x.run.Run(ctx, nil, tool)
	if err != nil {
		return nil, fmt.Errorf("reading %s tables: %w", f, err)
	}
	return ParseSave(f, string(out))
}

// Check compares the kernel with the planned tables and returns the tables
// that differ. An empty result means the kernel is as planned.
func (x *Iptables) Check(ctx context.Context, want []Table) ([]Drift, error) {
	if err := validateAll(want); err != nil {
		return nil, err
	}
	var out []Drift
	for _, f := range families(want) {
		cur, err := x.Read(ctx, f)
		if err != nil {
			return nil, err
		}
		for _, t := range want {
			if t.Family != f {
				continue
			}
			if d := Diff(cur[t.Name], t); len(d.Problems) > 0 {
				out = append(out, d)
			}
		}
	}
	return out, nil
}

// Result says what an Apply changed.
type Result struct {
	Changed []Drift // the tables that differed from the plan, and how
}

// Apply makes the kernel's tables equal to the plan. For each family it reads
// the current state once and, when some table differs, runs one
// iptables-restore --noflush with one transaction (COMMIT) per differing
// table (see Fix). A table already as planned is not written, so applying
// the same plan twice runs no restore the second time. A Table with no
// chains and no hooks removes every owned chain and hook from that table.
func (x *Iptables) Apply(ctx context.Context, want []Table) (Result, error) {
	var res Result
	if err := validateAll(want); err != nil {
		return res, err
	}
	start := time.Now()
	for _, f := range families(want) {
		cur, err := x.Read(ctx, f)
		if err != nil {
			return res, err
		}
		var doc strings.Builder
		for _, t := range want {
			if t.Family != f {
				continue
			}
			r := reconcile(cur[t.Name], t)
			if r.doc == "" {
				continue
			}
			d := Drift{Family: f, Table: t.Name, Problems: r.problems}
			for _, p := range r.problems {
				x.log.Debug().Str("family", f.String()).Str("table", t.Name).Msg("fixing: " + p)
			}
			res.Changed = append(res.Changed, d)
			doc.WriteString(r.doc)
		}
		if doc.Len() == 0 {
			continue
		}
		tool := x.backend.Tool(f, "restore")
		if _, err := x.run.Run(ctx, []byte(doc.String()), tool, "-w", "--noflush"); err != nil {
			return res, fmt.Errorf("applying %s tables with %s: %w", f, tool, err)
		}
	}
	ev := x.log.Debug()
	if len(res.Changed) > 0 {
		ev = x.log.Info()
	}
	ev.Int("tables_changed", len(res.Changed)).Dur("dur", time.Since(start)).Msg("applied iptables plan")
	return res, nil
}

// validateAll validates every table and rejects a table given twice.
func validateAll(ts []Table) error {
	seen := map[string]bool{}
	for _, t := range ts {
		if t.Family != IPv4 && t.Family != IPv6 {
			return fmt.Errorf("validating table %s: unknown family %d", t.Name, int(t.Family))
		}
		if err := t.Validate(); err != nil {
			return fmt.Errorf("validating plan: %w", err)
		}
		k := t.Family.String() + "/" + t.Name
		if seen[k] {
			return fmt.Errorf("validating plan: table %s given twice", k)
		}
		seen[k] = true
	}
	return nil
}

// families returns the families of the tables, IPv4 first.
func families(ts []Table) []Family {
	var has4, has6 bool
	for _, t := range ts {
		has4 = has4 || t.Family == IPv4
		has6 = has6 || t.Family == IPv6
	}
	var out []Family
	if has4 {
		out = append(out, IPv4)
	}
	if has6 {
		out = append(out, IPv6)
	}
	return out
}

// ErrNoTool is wrapped by the error of a Runner that cannot find a tool.
var ErrNoTool = errors.New("iptables tool not found in PATH")

// ToolError is a tool that ran and failed.
type ToolError struct {
	Name   string
	Args   []string
	Stderr string // what the tool said, trimmed
	Err    error  // usually an *exec.ExitError
}

func (e *ToolError) Error() string {
	s := fmt.Sprintf("running %s %s: %v", e.Name, strings.Join(e.Args, " "), e.Err)
	if e.Stderr != "" {
		s += ": " + e.Stderr
	}
	return s
}

func (e *ToolError) Unwrap() error { return e.Err }
