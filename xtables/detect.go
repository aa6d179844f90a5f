package xtables

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// probeChain is the chain the backend probe writes: one rule in filter and
// in mangle that no hook jumps to.
const probeChain = Prefix + "PROBE"

// probeTables are the tables hubwarden writes, and so the tables the probe
// proves: a backend that can program filter may still lack mangle.
var probeTables = []string{"filter", "mangle"}

// ProbeTables returns the probe's chain in each table it proves, for family
// f. Every plan holds them: the probe's rule stays where the probe wrote it,
// because deleting anything from an nftables-backed table costs a wait for
// an RCU grace period when the tool closes its netlink socket (the kernel
// flushes its deferred destroy work then: tens of milliseconds per family on
// a loaded node, most of a fresh pod's start-up), and a rule no hook jumps
// to costs no packet anything.
func ProbeTables(f Family) []Table {
	var out []Table
	for _, t := range probeTables {
		out = append(out, Table{Family: f, Name: t, Chains: []Chain{{Name: probeChain, Rules: []Rule{probeRule}}}})
	}
	return out
}

var probeRule = Rule{Args: []string{"-j", "RETURN"}, Comment: "backend probe: proves this backend writes the table; no hook jumps here"}

// Detector chooses the iptables backend for a pod and remembers the choice.
//
// The order is: the choice persisted in StateFile by an earlier start of this
// pod (it must still work: a restarted container never flips backend, since
// rules written with one backend are invisible to the other); else Override;
// else the backend that already holds real rules in this namespace (counted
// as "-A" lines, so that tables that exist but are empty, as the probe
// itself leaves them, do not count: istio#61019 flipped backend after a
// restart because its probe primed the legacy tables); else nft if it works;
// else legacy. Every candidate is proven by a real rule in filter and mangle
// before it is chosen, and the choice is written to StateFile.
type Detector struct {
	Runner    Runner
	StateFile string  // where the choice is kept; "" keeps nothing
	Override  Backend // "" detects
	IPv6      bool    // also prove the ip6tables tools
	ProcNet   string  // /proc/net of the namespace; "" means /proc/thread-self/net (the calling thread's namespace)
	Log       zerolog.Logger
}

// Detect returns the backend to use and persists it in StateFile.
func (d Detector) Detect(ctx context.Context) (Backend, error) {
	log := d.Log.With().Str("component", "xtables").Logger()
	if d.StateFile != "" {
		b, err := ReadBackend(d.StateFile)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return "", err
		case d.Override != "" && d.Override != b:
			log.Warn().Str("persisted", string(b)).Str("override", string(d.Override)).Str("file", d.StateFile).
				Msg("iptables backend override differs from the persisted choice; following the override")
		default:
			if err := d.probe(ctx, b); err != nil {
				return "", fmt.Errorf("iptables backend %s recorded in %s no longer works (delete the file only if no rules of that backend remain): %w", b, d.StateFile, err)
			}
			log.Debug().Str("backend", string(b)).Str("file", d.StateFile).Msg("iptables backend from state file")
			return b, nil
		}
	}
	if d.Override != "" {
		if err := d.probe(ctx, d.Override); err != nil {
			return "", fmt.Errorf("probing iptables backend %s (override): %w", d.Override, err)
		}
		log.Info().Str("backend", string(d.Override)).Str("reason", "override").Msg("iptables backend chosen")
		return d.Override, d.persist(d.Override)
	}

	order, reason, err := d.preference(ctx)
	if err != nil {
		return "", err
	}
	var errs []error
	for _, b := range order {
		err := d.probe(ctx, b)
		if err == nil {
			log.Info().Str("backend", string(b)).Str("reason", reason).Msg("iptables backend chosen")
			return b, d.persist(b)
		}
		errs = append(errs, fmt.Errorf("probing iptables backend %s: %w", b, err))
		if ctx.Err() != nil {
			break // the deadline, not the backend, failed the probe
		}
		reason = "the preferred backend failed its probe"
	}
	return "", errors.Join(errs...)
}

// preference orders the backends: the one that holds rules first.
func (d Detector) preference(ctx context.Context) ([]Backend, string, error) {
	legacy, err := d.count(ctx, Legacy, true)
	if err != nil {
		return nil, "", err
	}
	if legacy.rules == 0 {
		return []Backend{NFT, Legacy}, "no legacy rules: nft preferred", nil
	}
	nft, err := d.count(ctx, NFT, false)
	if err != nil {
		// nft tools missing or unusable: legacy holds rules, and is the candidate.
		return []Backend{Legacy, NFT}, "legacy holds rules", nil
	}
	switch {
	case legacy.owned && !nft.owned:
		return []Backend{Legacy, NFT}, "legacy holds hubwarden's chains", nil
	case nft.owned && !legacy.owned:
		return []Backend{NFT, Legacy}, "nft holds hubwarden's chains", nil
	case legacy.rules > nft.rules:
		return []Backend{Legacy, NFT}, fmt.Sprintf("legacy holds more rules (%d vs %d)", legacy.rules, nft.rules), nil
	}
	return []Backend{NFT, Legacy}, fmt.Sprintf("nft holds at least as many rules (%d vs %d)", nft.rules, legacy.rules), nil
}

type ruleCount struct {
	rules int  // "-A" lines over the families
	owned bool // a chain named Prefix... exists
}

// count counts the real rules a backend holds. For legacy it first looks at
// /proc/net/ip{,6}_tables_names: without legacy tables there is nothing to
// count and no tool to run (the common case, and the fast one).
func (d Detector) count(ctx context.Context, b Backend, tolerateMissing bool) (ruleCount, error) {
	var c ruleCount
	for _, f := range d.families() {
		if b == Legacy {
			procNet := d.ProcNet
			if procNet == "" {
				procNet = "/proc/thread-self/net"
			}
			names := "ip_tables_names"
			if f == IPv6 {
				names = "ip6_tables_names"
			}
			data, err := os.ReadFile(filepath.Join(procNet, names))
			if err != nil || strings.TrimSpace(string(data)) == "" {
				continue
			}
		}
		out, err := d.Runner.Run(ctx, nil, b.Tool(f, "save"))
		if err != nil {
			if tolerateMissing && errors.Is(err, ErrNoTool) {
				continue
			}
			return c, fmt.Errorf("counting rules of iptables backend %s: %w", b, err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			switch {
			case strings.HasPrefix(l, "-A "):
				c.rules++
			case strings.HasPrefix(l, ":"+Prefix):
				c.owned = true
			}
		}
	}
	return c, nil
}

// probe proves that a backend can program filter and mangle of every family
// in use with a real rule: per family, it reads the tables with the
// backend's save tool and, where the probe's chain is missing or differs,
// writes it in one restore (so the kernel accepted a real rule in each
// table; an nftables batch is atomic). A chain already in place, written by
// an earlier start of this pod, is proof enough: the backend's tools run and
// the kernel holds the rule. Nothing is deleted (see ProbeTables).
// A backend that fails its probe in one family is left as it was found:
// what the probe wrote with it in the families before is removed again.
func (d Detector) probe(ctx context.Context, b Backend) error {
	var wrote []Family
	for _, f := range d.families() {
		w, err := d.probeFamily(ctx, b, f)
		if w {
			wrote = append(wrote, f)
		}
		if err != nil {
			d.unprobe(b, wrote)
			return err
		}
	}
	return nil
}

// probeFamily probes one family; wrote reports whether it ran a restore.
func (d Detector) probeFamily(ctx context.Context, b Backend, f Family) (wrote bool, err error) {
	x := New(b, d.Runner, d.Log)
	cur, err := x.Read(ctx, f)
	if err != nil {
		return false, fmt.Errorf("probing iptables backend %s: %w", b, err)
	}
	var doc strings.Builder
	for _, t := range ProbeTables(f) {
		if probeInPlace(cur[t.Name]) {
			continue
		}
		doc.WriteString(Render(t))
	}
	if doc.Len() == 0 {
		return false, nil
	}
	tool := b.Tool(f, "restore")
	// A restore that fails may still have committed its first tables
	// (legacy commits each table on its own), so it counts as written.
	if _, err := d.Runner.Run(ctx, []byte(doc.String()), tool, "-w", "--noflush"); err != nil {
		return true, fmt.Errorf("probing %s: %w", tool, err)
	}
	return true, nil
}

// probeInPlace reports whether a table holds the probe's chain with its one
// rule and nothing else.
func probeInPlace(s *State) bool {
	c := s.Chain(probeChain)
	return c != nil && len(c.Rules) == 1 && c.Rules[0] == RuleLine(probeChain, probeRule)
}

// unprobe removes the probe's chains from the families of a backend that
// failed its probe, so that a backend hubwarden does not use holds nothing
// of it (Detect's preference counts owned chains). It runs on the way out
// of a failure, with its own deadline; what it cannot remove is logged.
func (d Detector) unprobe(b Backend, fams []Family) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	x := New(b, d.Runner, d.Log)
	for _, f := range fams {
		cur, err := x.Read(ctx, f)
		if err != nil {
			d.Log.Warn().Err(err).Str("backend", string(b)).Msg("removing the probe's chains of a backend that failed its probe")
			continue
		}
		var doc strings.Builder
		for _, t := range probeTables {
			if cur[t].Chain(probeChain) != nil {
				fmt.Fprintf(&doc, "*%s\n-F %s\n-X %s\nCOMMIT\n", t, probeChain, probeChain)
			}
		}
		if doc.Len() == 0 {
			continue
		}
		if _, err := d.Runner.Run(ctx, []byte(doc.String()), b.Tool(f, "restore"), "-w", "--noflush"); err != nil {
			d.Log.Warn().Err(err).Str("backend", string(b)).Msg("removing the probe's chains of a backend that failed its probe")
		}
	}
}

func (d Detector) families() []Family {
	if d.IPv6 {
		return []Family{IPv4, IPv6}
	}
	return []Family{IPv4}
}

// persist writes the choice atomically (a temporary file renamed over the
// old one), so a crash never leaves a half-written choice.
func (d Detector) persist(b Backend) error {
	if d.StateFile == "" {
		return nil
	}
	dir := filepath.Dir(d.StateFile)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("persisting iptables backend: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".iptables-backend-*")
	if err != nil {
		return fmt.Errorf("persisting iptables backend: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(string(b) + "\n"); err != nil {
		tmp.Close()
		return fmt.Errorf("persisting iptables backend in %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("persisting iptables backend in %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("persisting iptables backend in %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), d.StateFile); err != nil {
		return fmt.Errorf("persisting iptables backend: %w", err)
	}
	return nil
}

// ReadBackend reads the choice Detect persisted in path; a missing file
// yields an error wrapping fs.ErrNotExist.
func ReadBackend(path string) (Backend, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		return "", fmt.Errorf("reading iptables backend choice: %w", err)
	}
	b, err := ParseBackend(string(data))
	if err != nil {
		return "", fmt.Errorf("reading iptables backend choice from %s: %w", path, err)
	}
	return b, nil
}
