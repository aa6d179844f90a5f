//go:build bench && linux

package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/internal/nstest"
	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/units"
)

// The parts of the kernel's path that a pod's egress rules and qdisc add
// to, by the functions perf samples in them. A symbol is counted in the
// first part whose pattern it matches; what matches none is the rest of
// the path (TCP, the veth, copies), and the idle loop is left out.
var cycleParts = []struct {
	name string
	re   *regexp.Regexp
}{
	{"rules", regexp.MustCompile(`^(nft_|nf_tables|__nft|xt_|ipt_|ip6t_|nf_hook_slow|connmark|connbytes|owner_mt|hashlimit|addrtype|expr_call)`)},
	{"conntrack", regexp.MustCompile(`(conntrack|nf_ct_|nf_nat|__nf_ct|nf_confirm|nf_tcp|tcp_in_window|nf_checksum)`)},
	{"qdisc", regexp.MustCompile(`(htb|fifo|qdisc|__dev_xmit_skb|sch_direct|dequeue_skb|psched)`)},
	{"fib", regexp.MustCompile(`^(fib_|__fib|ip_route)`)},
}

var idleSym = regexp.MustCompile(`(idle|halt|cpuidle|acpi_|mwait)`)

// cycleShare is the share of the busy samples (all CPUs) in each of
// cycleParts, in percent.
type cycleShare map[string]float64

// total is the sum of the parts: the path's share that egress rules and a
// qdisc can add to.
func (c cycleShare) total() float64 {
	var s float64
	for _, p := range cycleParts {
		s += c[p.name]
	}
	return s
}

func (c cycleShare) String() string {
	var f []string
	for _, p := range cycleParts {
		f = append(f, fmt.Sprintf("%s %.1f", p.name, c[p.name]))
	}
	return fmt.Sprintf("%.1f%% (%s)", c.total(), strings.Join(f, ", "))
}

// perfUsable reports why perf cannot sample here ("" if it can).
func perfUsable() string {
	if _, err := exec.LookPath("perf"); err != nil {
		return "perf is not installed (Debian: linux-perf)"
	}
	if out, err := exec.Command("perf", "record", "-a", "-o", "/dev/null", "--", "true").CombinedOutput(); err != nil {
		return "perf cannot sample: " + strings.TrimSpace(string(out))
	}
	return ""
}

// cycleShares runs one iperf3 flow pod → peer in p and samples every CPU
// with perf (cpu-clock where the CPU's counters are not available, as in
// most VMs) for secs in its middle. It returns the shares and the flow's
// rate (bit/s): shares compare only between flows that both ran as fast as
// the CPU let them.
func cycleShares(t *testing.T, p *nstest.Pair, secs int) (cycleShare, float64, error) {
	t.Helper()
	data := filepath.Join(t.TempDir(), "perf.data")
	type result struct {
		bps float64
		err error
	}
	flow := make(chan result, 1)
	go func() {
		bps, err := iperfRun(p, secs+2)
		flow <- result{bps, err}
	}()
	time.Sleep(time.Second)
	out, err := exec.Command("perf", "record", "-a", "-F", "999", "-o", data, "--", "sleep", fmt.Sprint(secs)).CombinedOutput()
	r := <-flow
	if err != nil {
		return nil, 0, fmt.Errorf("perf record: %w: %s", err, out)
	}
	if r.err != nil {
		return nil, 0, fmt.Errorf("iperf3: %w", r.err)
	}
	c, err := perfReport(data)
	return c, r.bps, err
}

// perfReport reads perf's samples by symbol into a cycleShare.
func perfReport(data string) (cycleShare, error) {
	rep := exec.Command("perf", "report", "-i", data, "--sort", "sym", "--stdio")
	rep.Stderr = os.Stderr
	stdout, err := rep.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := rep.Start(); err != nil {
		return nil, err
	}
	c, err := parseCycles(stdout)
	if werr := rep.Wait(); err == nil && werr != nil {
		err = fmt.Errorf("perf report: %w", werr)
	}
	return c, err
}

// line is one line of `perf report --sort sym --stdio`: "  3.12%  [k] nft_do_chain".
var perfLine = regexp.MustCompile(`^\s*([\d.]+)%\s+\[[^\]]+\]\s+(\S+)`)

func parseCycles(r io.Reader) (cycleShare, error) {
	var total, idle float64
	parts := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := perfLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		pct, _ := strconv.ParseFloat(m[1], 64)
		total += pct
		sym := m[2]
		if idleSym.MatchString(sym) {
			idle += pct
			continue
		}
		for _, p := range cycleParts {
			if p.re.MatchString(sym) {
				parts[p.name] += pct
				break
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	busy := total - idle
	if busy <= 0 {
		return nil, fmt.Errorf("perf report: no busy samples")
	}
	c := cycleShare{}
	for k, v := range parts {
		c[k] = v / busy * 100
	}
	return c, nil
}

// medianShare is the median, part by part, of several samplings.
func medianShare(v []cycleShare) cycleShare {
	c := cycleShare{}
	for _, p := range cycleParts {
		var x []float64
		for _, s := range v {
			x = append(x, s[p.name])
		}
		c[p.name] = median(x)
	}
	return c
}

type cycleSetup struct {
	name string
	p    *nstest.Pair // nil: not measured (no BENCH_BEFORE)
}

// The setups fastPathCycles compares by name.
const (
	cyclesFloor     = "conntrack and hubwarden's HTB tree (the direct queue)"
	cyclesFastClass = "hubwarden with a fast class (FAST_RATE=1tbit)"
	cyclesHubwarden = "hubwarden"
	cyclesBefore    = "before"
)

// fastPathCycles is row 1's cost in cycles: where a flow's CPU goes, setup
// by setup, sampled in turn. A flow bound by the CPU runs at about
// 1 − share of the bare pod's rate, so the shares say what each layer
// costs without the throughput's swings on a shared machine.
func fastPathCycles(t *testing.T, setups []cycleSetup) {
	const what = "fast-path kernel cost, raw veth: share of the busy CPU samples in netfilter's rules, conntrack, the qdisc and FIB lookups (perf, every CPU, one iperf3 flow pod → peer)"
	if why := perfUsable(); why != "" {
		addRow(row{"1", what, "not measured: " + why, "—", "—"})
		return
	}
	secs := pick(2, 4)
	n := pick(1, reps())
	got := map[string][]cycleShare{}
	rates := map[string][]float64{}
	for r := 0; r < n; r++ {
		for k := range setups {
			s := setups[(k+r)%len(setups)]
			if s.p == nil {
				continue
			}
			c, bps, err := cycleShares(t, s.p, secs)
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			t.Logf("cycles, %s: %s at %.1f Gbit/s", s.name, c, bps/1e9)
			got[s.name] = append(got[s.name], c)
			rates[s.name] = append(rates[s.name], bps)
		}
	}
	var figs []string
	med := map[string]cycleShare{}
	rate := map[string]float64{}
	for _, s := range setups {
		if s.p == nil {
			continue
		}
		med[s.name], rate[s.name] = medianShare(got[s.name]), median(rates[s.name])
		figs = append(figs, fmt.Sprintf("%s %s at %.1f Gbit/s", s.name, med[s.name], rate[s.name]/1e9))
	}
	floor, hw := med[cyclesFloor].total(), med[cyclesHubwarden].total()
	side := fmt.Sprintf("hubwarden %.1f points above the floor of conntrack and an HTB root (%.1f%%); a flow bound by the CPU: hubwarden about %.2f×, the floor %.2f× of the bare pod",
		hw-floor, floor, 1-hw/100, 1-floor/100)
	if f, ok := med[cyclesFastClass]; ok {
		side += fmt.Sprintf("; with a fast class (FAST_RATE=1tbit) %.1f%%, of it the qdisc %.1f%% against %.1f%%", f.total(), f["qdisc"], med[cyclesHubwarden]["qdisc"])
	}
	if b, ok := med[cyclesBefore]; ok {
		// A flow held below what the CPU can do (an earlier build's rate
		// cap) leaves the CPU idle: its shares are of a different mix.
		if rate[cyclesBefore] >= 0.8*rate[cyclesHubwarden] {
			side += fmt.Sprintf("; hubwarden / before: %.2f× the cycles (%.1f%% against %.1f%%)", hw/b.total(), hw, b.total())
		} else {
			side += fmt.Sprintf("; before ran at %.1f Gbit/s (its rate cap), not as fast as the CPU lets it: its shares do not compare", rate[cyclesBefore]/1e9)
		}
	}
	addRow(row{"1", fmt.Sprintf("%s, median of %d samplings of %d s per setup", what, n, secs), strings.Join(figs, "; "), side, "—"})
}

// applyDefaultTree applies, in p's pod, the qdisc tree tcshape plans for
// the default configuration (no FAST_RATE, SLOW_RATE 1mbit), through
// tcshape itself, so that the floor setup has hubwarden's tree and not a
// copy of it.
func applyDefaultTree(t *testing.T, p *nstest.Pair) {
	t.Helper()
	slow, err := units.ParseRate("1mbit")
	if err != nil {
		t.Fatal(err)
	}
	k, err := tcshape.Open(p.Pod.FD())
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	cfg, err := k.Detect(tcshape.Config{SlowRate: slow}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	spec, err := tcshape.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tcshape.Apply(context.Background(), k, spec, zerolog.Nop(), false); err != nil {
		t.Fatal(err)
	}
}
