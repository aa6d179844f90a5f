package warden

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/ctwatch"
	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/resolve"
	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/xtables"
	"github.com/hubwarden/hubwarden/xtables/xtablestest"
)

// fakes is a kernel in memory: iptables (xtablestest), one interface's
// qdisc tree, the nftables pod gate and the resolvers. Every write is
// appended to writes, in order, so tests see what was done and when.
type fakes struct {
	mu     sync.Mutex
	ipt    *xtablestest.Kernel
	tc     tcState
	nft    nftState
	ipv6   bool
	answer map[string][]netip.Addr // the resolvers' current answers
	// Counters of what must not happen in some modes.
	lookups, leafProbes, nftProbes, tcOpens, nftOpens int
	// writes lists every change to the fakes, in order.
	writes []string
}

type tcState struct {
	state  tcshape.State
	leaves tcshape.LeafKind // what DetectLeaves finds
}

type nftState struct {
	probeErr error // the kernel has no nftables quotas
	applied  *demotion.QuotaGate
	limit    uint64
}

func newFakes() *fakes {
	f := &fakes{ipt: xtablestest.New(), ipv6: true, answer: map[string][]netip.Addr{}}
	f.tc.state = tcshape.State{RootKind: "noqueue"}
	f.tc.leaves = tcshape.LeafFIFO
	return f
}

func (f *fakes) wrote(format string, args ...any) {
	f.writes = append(f.writes, fmt.Sprintf(format, args...))
}

// kernel returns the Kernel that reaches the fakes.
func (f *fakes) kernel() Kernel {
	return Kernel{
		Iptables: func(string) xtables.Runner { return fakeRunner{f} },
		ProcNet:  "/nonexistent",
		TC: func() (TC, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.tcOpens++
			return fakeTC{f}, nil
		},
		NFT: func() (NFT, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.nftOpens++
			return fakeNFT{f}, nil
		},
		HasIPv6:  func() bool { return f.ipv6 },
		Resolver: func([]netip.Addr, zerolog.Logger) resolve.Lookuper { return fakeResolver{f} },
		Tx:       func() (uint64, error) { return 0, nil },
		RecentGate: func(bool) ctwatch.Gate {
			return noGate{}
		},
	}
}

// fakeRunner records every restore as a write.
type fakeRunner struct{ f *fakes }

func (r fakeRunner) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	out, err := r.f.ipt.Run(ctx, stdin, name, args...)
	if strings.HasSuffix(name, "-restore") {
		r.f.wrote("%s (err %v)", name, err)
	}
	return out, err
}

type fakeTC struct{ f *fakes }

func (k fakeTC) Read(string) (tcshape.State, error) {
	k.f.mu.Lock()
	defer k.f.mu.Unlock()
	return k.f.tc.state, nil
}

// Do keeps the tree as the kernel reports it (what it does not store is
// dropped by Diff's comparison).
func (k fakeTC) Do(iface string, op tcshape.Op) error {
	k.f.mu.Lock()
	defer k.f.mu.Unlock()
	k.f.wrote("tc %s: %s", iface, op)
	s := &k.f.tc.state
	switch op.Kind {
	case tcshape.OpDeleteRoot:
		*s = tcshape.State{RootKind: "noqueue"}
	case tcshape.OpAddRoot:
		if !s.Default() {
			return errors.New("EEXIST")
		}
		*s = tcshape.State{RootKind: "htb", RootHandle: op.Root.Handle, Root: op.Root}
	case tcshape.OpAddClass, tcshape.OpChangeClass:
		for i, c := range s.Classes {
			if c.ID == op.Class.ID {
				s.Classes[i] = op.Class
				return nil
			}
		}
		s.Classes = append(s.Classes, op.Class)
	case tcshape.OpAddLeaf, tcshape.OpChangeLeaf:
		for i, l := range s.Leaves {
			if l.Parent == op.Leaf.Parent {
				s.Leaves[i] = op.Leaf
				return nil
			}
		}
		s.Leaves = append(s.Leaves, op.Leaf)
	}
	return nil
}

func (k fakeTC) Environment(c tcshape.Config) (tcshape.Config, error) {
	if c.Interface == "" {
		c.Interface = "eth0"
	}
	if c.Interface != "eth0" {
		return c, fmt.Errorf("link %s not found", c.Interface)
	}
	c.MTU = 1500
	return c, nil
}

func (k fakeTC) DefaultRouteInterface() (string, error) { return "eth0", nil }

func (k fakeTC) DetectLeaves() (tcshape.LeafKind, string) {
	k.f.mu.Lock()
	defer k.f.mu.Unlock()
	k.f.leafProbes++
	k.f.wrote("tc: probe device")
	return k.f.tc.leaves, "fake"
}

func (k fakeTC) ClassBytes(string, tcshape.Handle) (uint64, error) { return 0, nil }

func (k fakeTC) Close() error { return nil }

type fakeNFT struct{ f *fakes }

func (n fakeNFT) Probe() error {
	n.f.mu.Lock()
	defer n.f.mu.Unlock()
	n.f.nftProbes++
	n.f.wrote("nft: probe table")
	return n.f.nft.probeErr
}

func (n fakeNFT) Apply(g demotion.QuotaGate, level uint64) (bool, error) {
	n.f.mu.Lock()
	defer n.f.mu.Unlock()
	if n.f.nft.probeErr != nil {
		return false, n.f.nft.probeErr
	}
	if a := n.f.nft.applied; a != nil && *a == g {
		return false, nil
	}
	n.f.wrote("nft: gate on %s, quota %d", g.Interface, level)
	n.f.nft.applied, n.f.nft.limit = &g, level
	return true, nil
}

func (n fakeNFT) Check(g demotion.QuotaGate) (string, error) {
	n.f.mu.Lock()
	defer n.f.mu.Unlock()
	if a := n.f.nft.applied; a == nil || *a != g {
		return "nftables: table inet hubwarden: missing\n", nil
	}
	return "", nil
}

func (n fakeNFT) Quota() (uint64, uint64, error) {
	n.f.mu.Lock()
	defer n.f.mu.Unlock()
	return n.f.nft.limit, 0, nil
}

func (n fakeNFT) SetLimit(l uint64) error {
	n.f.mu.Lock()
	defer n.f.mu.Unlock()
	n.f.wrote("nft: limit %d", l)
	n.f.nft.limit = l
	return nil
}

func (n fakeNFT) Close() error { return nil }

type fakeResolver struct{ f *fakes }

func (r fakeResolver) Lookup(_ context.Context, host string) ([]netip.Addr, time.Duration, error) {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	r.f.lookups++
	as, ok := r.f.answer[host]
	if !ok {
		return nil, 0, fmt.Errorf("%s: no such host", host)
	}
	return as, time.Millisecond, nil
}

// setAnswer changes what the resolvers answer for host.
func (f *fakes) setAnswer(host string, as ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer[host] = nil
	for _, a := range as {
		f.answer[host] = append(f.answer[host], netip.MustParseAddr(a))
	}
}

// snapshot is everything the fakes hold, to compare before and after.
func (f *fakes) snapshot() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, tool := range []string{"iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy"} {
		b.WriteString(f.ipt.Save(tool))
	}
	fmt.Fprintf(&b, "tc %+v\nnft %+v %d\n", f.tc.state, f.nft.applied, f.nft.limit)
	return b.String()
}

// reset forgets the writes so far.
func (f *fakes) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = nil
	f.ipt.Calls = nil
}
