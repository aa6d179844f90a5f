//go:build linux

// Package nstest gives root-only integration tests fresh, named network
// namespaces that are removed when the test ends, and runs code and commands
// inside them without touching the host namespace.
//
// Namespaces are named ("hwt-<pid>-<n>") so that iproute2, nsenter and the
// iptables tools can enter them by path, and so that a leak is easy to spot
// with `ip netns list`.
//
// traffic.go adds the test traffic that the packages' tests share: Listen,
// ListenPacket and Serve on an NS (cleaned up with the test), a byte-counting
// Sink, Blast to send as fast as a connection takes, Drain to count what
// arrives, and dials from inside a namespace (DialContext, DialTimeout,
// DialRefused).
package nstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	seq       atomic.Uint32
	sweepOnce sync.Once
)

// sweepStale deletes namespaces left by test processes that were killed before
// their cleanups ran (a timeout, a crash): "hwt-<pid>-<n>" whose pid is gone.
func sweepStale() {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		var pid, n int
		if _, err := fmt.Sscanf(e.Name(), "hwt-%d-%d", &pid, &n); err != nil || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			ns := &NS{Name: e.Name()}
			ns.killAll()
			_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
}

// SkipUnlessRoot skips the test unless it runs as root with the tools it needs.
func SkipUnlessRoot(tb testing.TB, tools ...string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skipping: needs root (integration test)")
	}
	for _, t := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(t); err != nil {
			tb.Skipf("skipping: %s not found in PATH", t)
		}
	}
}

// NS is a named network namespace owned by one test.
type NS struct {
	Name string
	Path string
	tb   testing.TB
}

// New creates a fresh network namespace with lo up and registers its removal
// (after every process started with Start has been killed) with tb.Cleanup.
func New(tb testing.TB) *NS {
	tb.Helper()
	SkipUnlessRoot(tb)
	sweepOnce.Do(sweepStale)
	name := fmt.Sprintf("hwt-%d-%d", os.Getpid(), seq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("adding netns %s: %v: %s", name, err, out)
	}
	ns := &NS{Name: name, Path: "/run/netns/" + name, tb: tb}
	tb.Cleanup(func() {
		ns.killAll()
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Errorf("deleting netns %s: %v: %s", name, err, out)
		}
	})
	ns.MustRun("ip", "link", "set", "lo", "up")
	return ns
}

// killAll kills every process still inside the namespace, so that deleting
// its name really frees it (a process inside keeps a namespace alive).
func (ns *NS) killAll() {
	out, _ := exec.Command("ip", "netns", "pids", ns.Name).Output()
	for _, f := range strings.Fields(string(out)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 && pid != os.Getpid() {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// Cmd returns a command that runs inside the namespace (via ip netns exec,
// which also bind-mounts /etc/netns/<name>/* and remounts /sys).
func (ns *NS) Cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output.
func (ns *NS) Run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var b bytes.Buffer
	c := ns.Cmd(ctx, name, args...)
	c.Stdout, c.Stderr = &b, &b
	err := c.Run()
	if err != nil {
		return b.String(), fmt.Errorf("running %s %s in %s: %w: %s", name, strings.Join(args, " "), ns.Name, err, b.String())
	}
	return b.String(), nil
}

// MustRun is Run that fails the test on error.
func (ns *NS) MustRun(name string, args ...string) string {
	ns.tb.Helper()
	out, err := ns.Run(name, args...)
	if err != nil {
		ns.tb.Fatal(err)
	}
	return out
}

// Start starts a long-running command inside the namespace; it is killed when
// the test ends (before the namespace is deleted, cleanups run last-in first-out).
func (ns *NS) Start(name string, args ...string) *exec.Cmd {
	ns.tb.Helper()
	c := ns.Cmd(context.Background(), name, args...)
	c.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		ns.tb.Fatalf("starting %s in %s: %v", name, ns.Name, err)
	}
	ns.tb.Cleanup(func() {
		_ = unix.Kill(-c.Process.Pid, unix.SIGKILL)
		_ = c.Wait()
	})
	return c
}

// FD opens the namespace and returns its file descriptor, closed at cleanup.
// Pass it to netlink.Config{NetNS: fd} or tc.Config{NetNS: fd}.
func (ns *NS) FD() int {
	ns.tb.Helper()
	f, err := os.Open(ns.Path)
	if err != nil {
		ns.tb.Fatalf("opening %s: %v", ns.Path, err)
	}
	ns.tb.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

// Do runs f on a locked OS thread that has joined the namespace, and returns
// the thread to the original namespace afterwards. If the thread cannot be
// returned, it is left locked so the runtime discards it.
func (ns *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(ns.Path)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering %s: %w", ns.Name, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("leaving %s: %w", ns.Name, err) // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Veth joins two namespaces with a veth pair named ifA in a and ifB in b, both up.
func Veth(tb testing.TB, a *NS, ifA string, b *NS, ifB string) {
	tb.Helper()
	// The temporary names live in the host namespace for a moment: include
	// the pid so that test binaries running in parallel don't collide.
	pid := strconv.FormatInt(int64(os.Getpid()), 36)
	tmpA := "hwa" + pid + "." + strconv.FormatUint(uint64(seq.Add(1)), 36)
	tmpB := "hwb" + pid + "." + strconv.FormatUint(uint64(seq.Add(1)), 36)
	cmds := [][]string{
		{"link", "add", tmpA, "type", "veth", "peer", "name", tmpB},
		{"link", "set", tmpA, "netns", a.Name},
		{"link", "set", tmpB, "netns", b.Name},
		{"-n", a.Name, "link", "set", tmpA, "name", ifA},
		{"-n", b.Name, "link", "set", tmpB, "name", ifB},
		{"-n", a.Name, "link", "set", ifA, "up"},
		{"-n", b.Name, "link", "set", ifB, "up"},
	}
	for i, c := range cmds {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			if i <= 1 { // the pair may still be in the host namespace: remove it
				_ = exec.Command("ip", "link", "del", tmpA).Run()
			}
			tb.Fatalf("ip %s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
}

// Pair is the usual two-host bed: a "pod" namespace and a "peer" namespace
// joined by pod:eth0 <-> peer:eth0, with IPv4 and IPv6 addresses from the
// benchmarking ranges and default routes pointing at each other.
type Pair struct {
	Pod, Peer       *NS
	PodIP4, PeerIP4 string
	PodIP6, PeerIP6 string
}

// NewPair builds a Pair. Subnet index n (0-255) keeps concurrent beds apart:
// 198.18.n.0/30 and 2001:2:0:n::/64.
func NewPair(tb testing.TB, n int) *Pair {
	tb.Helper()
	p := &Pair{
		Pod: New(tb), Peer: New(tb),
		PodIP4: fmt.Sprintf("198.18.%d.1", n), PeerIP4: fmt.Sprintf("198.18.%d.2", n),
		PodIP6: fmt.Sprintf("2001:2:0:%x::1", n), PeerIP6: fmt.Sprintf("2001:2:0:%x::2", n),
	}
	Veth(tb, p.Pod, "eth0", p.Peer, "eth0")
	p.Pod.MustRun("ip", "addr", "add", p.PodIP4+"/30", "dev", "eth0")
	p.Peer.MustRun("ip", "addr", "add", p.PeerIP4+"/30", "dev", "eth0")
	p.Pod.MustRun("ip", "addr", "add", p.PodIP6+"/64", "dev", "eth0", "nodad")
	p.Peer.MustRun("ip", "addr", "add", p.PeerIP6+"/64", "dev", "eth0", "nodad")
	p.Pod.MustRun("ip", "route", "add", "default", "via", p.PeerIP4)
	p.Pod.MustRun("ip", "-6", "route", "add", "default", "via", p.PeerIP6)
	p.Peer.MustRun("ip", "route", "add", "default", "via", p.PodIP4)
	p.Peer.MustRun("ip", "-6", "route", "add", "default", "via", p.PodIP6)
	return p
}
