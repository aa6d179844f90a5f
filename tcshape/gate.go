package tcshape

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hubwarden/hubwarden/xtables"
)

// DefaultGateDir is where the kernel lists the xt_recent tables of the
// calling thread's network namespace. /proc/net would be the namespace of
// the process's main thread: the same in the sidecar, but not in a test
// that enters a namespace on one locked thread.
const DefaultGateDir = "/proc/thread-self/net/xt_recent"

// PodGate sets and clears the pod gate of MangleTables (Config.Gate). The
// gate rule matches while its xt_recent table holds the one masked address;
// the table is a file in /proc/thread-self/net/xt_recent, so setting the gate is a write
// of a few bytes: no iptables run, no xtables lock, no rule change for the
// reconcile loop to see.
type PodGate struct {
	Dir  string // "" means DefaultGateDir
	IPv6 bool   // the IPv6 table exists too
}

func (g PodGate) files() map[string]string {
	dir := g.Dir
	if dir == "" {
		dir = DefaultGateDir
	}
	m := map[string]string{filepath.Join(dir, GateName4): gateAddr[xtables.IPv4]}
	if g.IPv6 {
		m[filepath.Join(dir, GateName6)] = gateAddr[xtables.IPv6]
	}
	return m
}

// Set sets (on) or clears the gate in every family. Setting an already set
// gate, or clearing a clear one, is harmless, so callers may repeat it to
// restore a table that a rule change recreated empty.
func (g PodGate) Set(on bool) error {
	for path, addr := range g.files() {
		line := "/\n" // clears the table
		if on {
			line = "+" + addr + "\n"
		}
		if err := writeProc(path, line); err != nil {
			return fmt.Errorf("setting the pod gate to %v: %w", on, err)
		}
	}
	return nil
}

// State reports whether the gate is set in every family (true), in none
// (false), or differs between them (an error).
func (g PodGate) State() (bool, error) {
	var on, off int
	for path := range g.files() {
		b, err := os.ReadFile(path)
		if err != nil {
			return false, fmt.Errorf("reading the pod gate: %w", err)
		}
		if len(bytes.TrimSpace(b)) > 0 {
			on++
		} else {
			off++
		}
	}
	if on > 0 && off > 0 {
		return false, fmt.Errorf("reading the pod gate: set in %d of %d families", on, on+off)
	}
	return on > 0, nil
}

// writeProc writes line to an existing proc file in one write call (the
// kernel parses each write on its own).
func writeProc(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, werr := f.Write([]byte(line))
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("writing %s: %w", path, werr)
	}
	return cerr
}
