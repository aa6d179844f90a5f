package demotion

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/hubwarden/hubwarden/xtables"
)

// DefaultRecentDir is where the kernel lists the xt_recent tables of the
// calling thread's network namespace. /proc/net would be the namespace of
// the process's main thread: the same in the sidecar, but not in a test
// that enters a namespace on one locked thread.
const DefaultRecentDir = "/proc/thread-self/net/xt_recent"

// RecentName returns the name of the recent gate's xt_recent table of
// family f (a recent table keeps the address mask of the rule that created
// it, so each family has its own).
func RecentName(f xtables.Family) string {
	if f == xtables.IPv6 {
		return "hubwarden-open6"
	}
	return "hubwarden-open4"
}

// recentAddr is the one address each table holds while the gate is open:
// the rule masks every source address to it (--mask of all zeros).
func recentAddr(f xtables.Family) string {
	if f == xtables.IPv6 {
		return "::"
	}
	return "0.0.0.0"
}

// RecentGate opens and closes the recent gate (GateRecent). The gate is a
// dead-man's switch: the rule demotes every flow that sends unless the
// table's one entry was refreshed within RecentWindowSeconds, so the watcher
// must call Open at least every RecentWindowSeconds/4 while the pod bucket
// holds tokens, and a watcher that stops (killed, starved) closes it.
//
// Its weakness, and why GateQuota is preferred: the table is a file in
// /proc that any process of the namespace running as uid 0 can write, even
// without capabilities (xt_recent's ip_list_perms), so root in the notebook
// container could keep it open.
type RecentGate struct {
	Dir  string // "" means DefaultRecentDir
	IPv6 bool   // the IPv6 table exists too
}

func (g RecentGate) files() map[string]string {
	dir := g.Dir
	if dir == "" {
		dir = DefaultRecentDir
	}
	m := map[string]string{filepath.Join(dir, RecentName(xtables.IPv4)): recentAddr(xtables.IPv4)}
	if g.IPv6 {
		m[filepath.Join(dir, RecentName(xtables.IPv6))] = recentAddr(xtables.IPv6)
	}
	return m
}

// Set opens the gate for RecentWindowSeconds from now (open) or closes it at
// once.
func (g RecentGate) Set(open bool) error {
	for path, addr := range g.files() {
		line := "/\n" // empties the table
		if open {
			line = "+" + addr + "\n"
		}
		if err := writeProc(path, line); err != nil {
			return fmt.Errorf("setting the recent gate open=%v: %w", open, err)
		}
	}
	return nil
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
