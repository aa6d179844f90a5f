//go:build linux

package netns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hubwarden/hubwarden/internal/hwtest"
)

// ErrNotImplemented means the hubwarden binary lacks a command or feature a
// proof needs; proofs skip (not fail) on it.
var ErrNotImplemented = errors.New("not implemented by this hubwarden build")

// BuildHubwarden builds the sidecar into dir with the main module's own
// builder (internal/hwtest, through the e2e module's replace of the main
// module) and returns its path. HWE2E_HUBWARDEN names a prebuilt binary
// instead.
func BuildHubwarden(ctx context.Context, dir string) (string, error) {
	if p := os.Getenv("HWE2E_HUBWARDEN"); p != "" {
		return filepath.Abs(p)
	}
	return hwtest.Build(ctx, dir)
}

// Sidecar is `hubwarden run` in the warden pod's netns.
type Sidecar struct {
	Bin  string
	Env  []string
	Proc *Proc
	bed  *Bed
	// NoHealth is set when the build serves no /readyz.
	NoHealth bool
}

// SidecarEnv is the configuration the proofs use: small budgets so that a
// run takes seconds, the bed's resolver, allowed and blocked servers.
func (b *Bed) SidecarEnv() []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HUBWARDEN_LOG_LEVEL=info",
		"HUBWARDEN_USER=" + b.WardenUser,
		"HUBWARDEN_STATE_DIR=" + filepath.Join(b.Dir, "warden-state"),
		"HUBWARDEN_HUB_API_URL=http://" + HubIP + ":8081/hub/api",
		"HUBWARDEN_DNS_SERVERS=" + DNS4 + "," + DNS6,
		"HUBWARDEN_ALLOW=tcp://" + Allowed4 + ":80,tcp://[" + Allowed6 + "]:80,tcp://" + Blocked4 + ":80",
		"HUBWARDEN_BLOCK=" + Blocked4,
		"HUBWARDEN_INTERFACE=eth0",
		"HUBWARDEN_SLOW_RATE=" + SlowRate,
		"HUBWARDEN_FLOW_BUDGET=" + FlowBudget,
		"HUBWARDEN_POD_BUDGET=" + PodBudget,
		"HUBWARDEN_FLOW_REFILL=1MiB/s",
		"HUBWARDEN_POD_REFILL=" + PodRefill,
		"HUBWARDEN_PROMOTE_IDLE=" + PromoteIdle.String(),
		"HUBWARDEN_DUMP_INTERVAL=250ms",
		"HUBWARDEN_RECONCILE_INTERVAL=2s",
		"HUBWARDEN_HEALTH_ADDR=:9280", // the kubelet probes the pod's address (part 8)
		// The HTTP guard stays at its default (enforce), as a z2jh admin
		// deploys it: the download routes are refused in this pod, and the
		// throttling is measured through the routes it allows (notebooks,
		// the kernel websocket) and on direct egress.
	}
}

// The sidecar figures, also used to compute the proofs' bounds.
const (
	SlowRate        = "1mbit"
	SlowRateBytes   = 125000.0
	FlowBudget      = "16MiB"
	FlowBudgetBytes = 16 << 20
	PodBudget       = "96MiB"
	PodBudgetBytes  = 96 << 20
	PodRefill       = "128KiB/s"
	PodRefillBytes  = 128 << 10
	PromoteIdle     = 2 * time.Second
	DNSRate         = 20  // HUBWARDEN_DNS_RATE default
	DNSBurst        = 100 // HUBWARDEN_DNS_BURST default
)

// StartSidecar runs `hubwarden run` in the warden pod (like a native
// sidecar, before the server starts) and waits for /readyz. It returns
// ErrNotImplemented when the binary has no `run` command yet.
func (b *Bed) StartSidecar(ctx context.Context, bin string, env []string, timeout time.Duration) (*Sidecar, error) {
	p, err := start("hubwarden", b.Warden.Name, []string{bin, "run"}, env, b.Dir, filepath.Join(b.Dir, "hubwarden.log"))
	if err != nil {
		return nil, err
	}
	b.track(p)
	s := &Sidecar{Bin: bin, Env: env, Proc: p, bed: b}
	t0 := time.Now()
	err = poll(timeout, func() error {
		if done, werr := p.Exited(); done {
			log := tail(p.Log, 2000)
			if strings.Contains(log, "unknown command") {
				return stop{fmt.Errorf("hubwarden run: %w (%s)", ErrNotImplemented, strings.TrimSpace(lastLine(log)))}
			}
			return stop{fmt.Errorf("hubwarden run exited (%w): %s", exitErr(werr), log)}
		}
		code, _, err := b.WardenGet(ctx, "http://127.0.0.1:9280/readyz")
		if err != nil {
			// A build without the health server: ready once its chains are
			// in and it has stayed up a few seconds (interim builds only).
			if errors.Is(err, syscall.ECONNREFUSED) && time.Since(t0) > 5*time.Second && b.IptablesBackend(b.Warden) != "" {
				s.NoHealth = true
				b.logf("hubwarden serves no /readyz (health not wired in this build); its rules are in, carrying on")
				return nil
			}
			return err
		}
		if code != 200 {
			return fmt.Errorf("/readyz: %d", code)
		}
		return nil
	})
	if err != nil {
		p.Stop(5 * time.Second)
		return nil, err
	}
	return s, nil
}

// WardenGet GETs a URL from inside the warden pod's netns (as root, not as the user).
func (b *Bed) WardenGet(ctx context.Context, u string) (int, []byte, error) {
	cl := &http.Client{Transport: &http.Transport{DialContext: b.Warden.DialContext, DisableKeepAlives: true}, Timeout: 3 * time.Second}
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	resp, err := cl.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body, nil
}

// Exec runs a command in ns and returns its combined output.
func (b *Bed) Exec(ns NS, argv ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("running %s in %s: %w: %s", strings.Join(argv, " "), ns.Name, err, out)
	}
	return string(out), nil
}

var sentRE = regexp.MustCompile(`class htb (\S+) (?:parent (\S+)|root) .*?rate (\S+) ceil (\S+) .*?\n\s*Sent (\d+) bytes`)

// SlowClassBytes returns the bytes sent by hubwarden's slow class on eth0
// of ns and its id; ok is false when there is no HTB. The slow class is the
// slowest class, or, where it has leaves (the bulk and interactive leaves
// of issue 20), their parent: from the slowest class up, while the parent
// has the same ceiling (HTB charges an inner class with its children's
// packets).
func (b *Bed) SlowClassBytes(ns NS) (id string, sent int64, ok bool) {
	out, err := b.Exec(ns, "tc", "-s", "class", "show", "dev", "eth0")
	if err != nil {
		return "", 0, false
	}
	return slowClass(out)
}

// slowClass is SlowClassBytes on the output of `tc -s class show`.
func slowClass(out string) (id string, sent int64, ok bool) {
	type class struct {
		id, parent string
		rate, ceil float64
		sent       int64
	}
	var cs []class
	byID := map[string]class{}
	for _, m := range sentRE.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.ParseInt(m[5], 10, 64)
		c := class{m[1], m[2], parseTCRate(m[3]), parseTCRate(m[4]), n}
		cs = append(cs, c)
		byID[c.id] = c
	}
	if len(cs) < 2 {
		return "", 0, false
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].rate < cs[j].rate })
	c := cs[0]
	for {
		p, found := byID[c.parent]
		if !found || p.ceil != c.ceil {
			break
		}
		c = p
	}
	return c.id, c.sent, true
}

func parseTCRate(s string) float64 {
	mult := 1.0
	for _, u := range []struct {
		suf string
		m   float64
	}{{"Tbit", 1e12}, {"Gbit", 1e9}, {"Mbit", 1e6}, {"Kbit", 1e3}, {"bit", 1}} {
		if strings.HasSuffix(s, u.suf) {
			s, mult = strings.TrimSuffix(s, u.suf), u.m
			break
		}
	}
	f, _ := strconv.ParseFloat(s, 64)
	return f * mult
}

// MarkedFlows counts conntrack entries in ns whose mark has any bit of mask.
func (b *Bed) MarkedFlows(ns NS, mask uint32) int {
	n := 0
	for _, fam := range []string{"ipv4", "ipv6"} {
		out, _ := b.Exec(ns, "conntrack", "-L", "-f", fam)
		for _, line := range strings.Split(out, "\n") {
			i := strings.Index(line, " mark=")
			if i < 0 {
				continue
			}
			f := strings.Fields(line[i+6:])
			if len(f) == 0 {
				continue
			}
			m, _ := strconv.ParseUint(f[0], 0, 32)
			if uint32(m)&mask != 0 {
				n++
			}
		}
	}
	return n
}

// TxBytes returns the bytes eth0 of ns has sent (what left the pod).
func (b *Bed) TxBytes(ns NS) (int64, error) {
	out, err := b.Exec(ns, "cat", "/sys/class/net/eth0/statistics/tx_bytes")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(out), 10, 64)
}

// IptablesBackend returns "iptables-nft" or "iptables-legacy": the one whose
// tables in ns hold hubwarden's chains ("" when neither does).
func (b *Bed) IptablesBackend(ns NS) string {
	for _, bk := range []string{"iptables-nft", "iptables-legacy"} {
		out, _ := b.Exec(ns, bk+"-save")
		if strings.Contains(strings.ToUpper(out), "HUBWARDEN") {
			return bk
		}
	}
	return ""
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
