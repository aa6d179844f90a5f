package xtables

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/rs/zerolog"
)

// probeChain is the chain the backend probe creates and removes again.
const probeChain = Prefix + "PROBE"

// probeTables are the tables hubwarden writes, and so the tables the probe
// proves: a backend that can program filter may still lack mangle.
var probeTables = []string{"filter", "mangle"}

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
// in use: in one restore per family, it creates a chain with one rule and
// commits (so the kernel accepts a real rule), then deletes the rule and the
// chain in a second transaction.
func (d Detector) probe(ctx context.Context, b Backend) error {
	var doc strings.Builder
	rule := probeChain + ` -m comment --comment "hubwarden: probe" -j RETURN`
	for _, t := range probeTables {
		fmt.Fprintf(&doc, "*%s\n:%s - [0:0]\n-A %s\nCOMMIT\n", t, probeChain, rule)
		fmt.Fprintf(&doc, "*%s\n-D %s\n-X %s\nCOMMIT\n", t, rule, probeChain)
	}
	for _, f := range d.families() {
		tool := b.Tool(f, "restore")
		if _, err := d.Runner.Run(ctx, []byte(doc.String()), tool, "-w", "--noflush"); err != nil {
			return fmt.Errorf("probing %s: %w", tool, err)
		}
	}
	return nil
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
