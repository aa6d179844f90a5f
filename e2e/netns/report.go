//go:build linux

package netns

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Report collects the before/after figures of a proof run.
type Report struct {
	mu   sync.Mutex
	rows []Row
	// Stack names the versions the run used; it heads the table.
	Stack string
	notes []string
}

// Note adds a line printed under the table (e.g. where the screenshots are).
func (r *Report) Note(format string, args ...any) {
	r.mu.Lock()
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

// Row is one line of the before/after table.
type Row struct {
	Part, Measure, Without, With string
	// Verdict is "PASS", "FAIL" or "SKIP (reason)"; a row with a goal
	// that is reported, not asserted, says whether it was met.
	Verdict string
}

// Add appends a row.
func (r *Report) Add(row Row) {
	r.mu.Lock()
	r.rows = append(r.rows, row)
	r.mu.Unlock()
}

// Failed reports whether any row failed.
func (r *Report) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, row := range r.rows {
		if row.Verdict == "FAIL" {
			return true
		}
	}
	return false
}

// Print writes the table.
func (r *Report) Print(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintln(w, "\n=== hubwarden e2e proof: the same workload without and with hubwarden, side by side ===")
	if r.Stack != "" {
		fmt.Fprintln(w, "stack:", r.Stack)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PART\tMEASURE\tWITHOUT hubwarden\tWITH hubwarden\tVERDICT")
	for _, row := range r.rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", row.Part, row.Measure, row.Without, row.With, row.Verdict)
	}
	tw.Flush()
	for _, n := range r.notes {
		fmt.Fprintln(w, n)
	}
	verdict := "ALL PROTECTIONS HELD"
	switch {
	case r.failedLocked():
		verdict = "SOME PROTECTION FAILED"
	case len(r.rows) == 0:
		verdict = "NOTHING PROVEN"
	case r.skippedLocked():
		verdict = "INCOMPLETE: SOME PARTS SKIPPED"
	}
	fmt.Fprintln(w, strings.Repeat("=", 20), verdict, strings.Repeat("=", 20))
}

// Skipped reports whether any row was skipped.
func (r *Report) Skipped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.skippedLocked()
}

func (r *Report) skippedLocked() bool {
	for _, row := range r.rows {
		if strings.HasPrefix(row.Verdict, "SKIP") {
			return true
		}
	}
	return false
}

func (r *Report) failedLocked() bool {
	for _, row := range r.rows {
		if row.Verdict == "FAIL" {
			return true
		}
	}
	return false
}

// percentile is the q-quantile of xs, interpolated linearly between the
// order statistics (type 7 of Hyndman and Fan, numpy's default): with a
// dozen samples the p95 is mostly the second largest, not the largest
// alone, so that one reading the machine's other work delayed does not make
// the tail.
func percentile(xs []time.Duration, q float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), xs...)
	slices.Sort(s)
	h := q * float64(len(s)-1)
	lo := int(math.Floor(h))
	if lo+1 >= len(s) {
		return s[len(s)-1]
	}
	return s[lo] + time.Duration(math.Round((h-float64(lo))*float64(s[lo+1]-s[lo])))
}

// HumanRate formats bytes/s.
func HumanRate(bps float64) string {
	switch {
	case bps >= 1e9:
		return fmt.Sprintf("%.2f GB/s", bps/1e9)
	case bps >= 1e6:
		return fmt.Sprintf("%.1f MB/s", bps/1e6)
	case bps >= 1e3:
		return fmt.Sprintf("%.0f kB/s", bps/1e3)
	}
	return fmt.Sprintf("%.0f B/s", bps)
}

// HumanBytes formats a byte count.
func HumanBytes(n float64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", n/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", n/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KiB", n/(1<<10))
	}
	return fmt.Sprintf("%.0f B", n)
}

// HumanDuration formats seconds for the 1 GiB extrapolation.
func HumanDuration(s float64) string {
	switch {
	case s >= 3600:
		return fmt.Sprintf("%.1f h", s/3600)
	case s >= 60:
		return fmt.Sprintf("%.1f min", s/60)
	}
	return fmt.Sprintf("%.2f s", s)
}
