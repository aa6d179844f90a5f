package warden

import (
	"net/netip"
	"os"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/ctwatch"
	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/resolve"
	"github.com/hubwarden/hubwarden/tcshape"
	"github.com/hubwarden/hubwarden/xtables"
)

// Kernel is how the composition reaches the kernel and the network: the
// small interfaces of the leaf packages, opened on demand. Linux gives the
// real ones; the tests give fakes that record what was asked of them.
type Kernel struct {
	// Iptables runs the iptables tools, with lockFile as the xtables lock.
	Iptables func(lockFile string) xtables.Runner
	// ProcNet is /proc/net of the namespace for the iptables backend's
	// detection ("": the calling thread's).
	ProcNet string
	// TC opens the qdisc side of the namespace.
	TC func() (TC, error)
	// NFT opens nftables in the namespace.
	NFT func() (NFT, error)
	// HasIPv6 reports whether the namespace has IPv6.
	HasIPv6 func() bool
	// Resolver asks the pod's resolvers (the allow-list's host names).
	Resolver func(servers []netip.Addr, log zerolog.Logger) resolve.Lookuper
	// Tx reads what the pod sent (the userspace pod bucket without a quota).
	Tx func() (uint64, error)
	// RecentGate opens and closes the recent gate.
	RecentGate func(ipv6 bool) ctwatch.Gate
}

// TC is the qdisc side: tcshape's Kernel, detection and the slow class's
// counter.
type TC interface {
	tcshape.Kernel
	// Environment reads the interface, its MTU and the clock; it writes
	// nothing.
	Environment(tcshape.Config) (tcshape.Config, error)
	// DefaultRouteInterface names the default route's interface.
	DefaultRouteInterface() (string, error)
	// DetectLeaves tries the leaf qdiscs (it creates a probe device).
	DetectLeaves() (tcshape.LeafKind, string)
	ClassBytes(iface string, class tcshape.Handle) (uint64, error)
	Close() error
}

// NFT is the pod gate's nftables side (demotion.NFT).
type NFT interface {
	ctwatch.Quota
	Apply(g demotion.QuotaGate, level uint64) (bool, error)
	Check(g demotion.QuotaGate) (string, error)
	// Probe finds out whether the kernel has nftables quotas (it creates
	// and deletes a table).
	Probe() error
	Close() error
}

var (
	_ TC  = (*tcshape.TC)(nil)
	_ NFT = (*demotion.NFT)(nil)
)

// resolvConf is where the pod's resolvers are listed.
const resolvConf = "/etc/resolv.conf"

// Linux is the kernel of the calling thread's network namespace.
func Linux() Kernel {
	return Kernel{
		Iptables: func(lockFile string) xtables.Runner { return xtables.ExecRunner{LockFile: lockFile} },
		TC:       func() (TC, error) { return tcshape.Open(0) },
		NFT:      func() (NFT, error) { return demotion.OpenNFT(0) },
		HasIPv6: func() bool {
			_, err := os.Stat("/proc/thread-self/net/if_inet6")
			return err == nil
		},
		Resolver:   newResolver,
		Tx:         ctwatch.TxBytes("/proc/net/dev"),
		RecentGate: func(ipv6 bool) ctwatch.Gate { return demotion.RecentGate{IPv6: ipv6} },
	}
}

// newResolver asks the pod's allowed resolvers, with the search list and
// ndots of resolv.conf so that short cluster names ("hub") resolve as the
// notebook would resolve them.
func newResolver(servers []netip.Addr, log zerolog.Logger) resolve.Lookuper {
	r := resolve.New(servers)
	f, err := os.Open(resolvConf)
	if err != nil {
		log.Debug().Err(err).Msg("no resolv.conf: host names are resolved without a search list")
		return r
	}
	defer f.Close()
	if rc, err := resolve.ParseResolvConf(f); err == nil {
		r.Search, r.Ndots = rc.Search, rc.Ndots
	}
	return r
}

// noGate is the gate of a kernel without any (neither an nftables quota nor
// xt_recent): the watcher keeps the pod bucket for promotions only.
type noGate struct{}

func (noGate) Set(bool) error { return nil }
