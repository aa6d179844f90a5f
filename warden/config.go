package warden

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/egress"
	"github.com/hubwarden/hubwarden/guard"
	"github.com/hubwarden/hubwarden/units"
)

// Config is the validated configuration: typed values only, no strings to
// parse. The sidecar builds it from the HUBWARDEN_* variables (their
// defaults and meaning are there, in one place).
type Config struct {
	Deprecated      []string // warnings for deprecated variables that are set
	LogLevel        string
	User, Server    string
	StateDir        string
	IptablesBackend string // "auto", "legacy" or "nft"
	IPv6            string // "auto", "true" or "false"
	StartupTimeout  time.Duration

	Egress        bool
	Allow         []egress.Entry
	DNSServers    []netip.Addr
	DNSRate       uint32
	DNSBurst      uint32
	HubAPI        []egress.Entry // the hub API's host and port, empty when unknown
	Block         []netip.Prefix
	NFLogGroup    uint16
	ResolveMinTTL time.Duration

	Shape     bool
	Interface string
	FastRate  units.Rate
	SlowRate  units.Rate
	CTMark    uint32
	// Contract is the demotion contract (CTMARK and FLOW_BUDGET): the mark
	// bits and the tripwire tiers, given to both the rules and the watcher.
	Contract demotion.Contract

	Watch            bool
	FlowBudget       units.Size
	FlowRefill       units.Rate
	PodBudget        units.Size
	PodRefill        units.Rate
	PromoteIdle      time.Duration
	DumpInterval     time.Duration
	ProgressInterval time.Duration

	// Guard is the HTTP guard's configuration (the sidecar parses its
	// variables and refuses an enforcing or auditing guard without a base
	// URL). IPv6 is the plan's to set (Env.IPv6).
	Guard guard.Config

	HealthAddr        string
	ReconcileInterval time.Duration
	DenyLogWindow     time.Duration
	SelftestTarget    netip.AddrPort
}

// IPv6Decision decides whether to plan and apply IPv6 rules from the
// setting ("auto", "true", "false") and whether the kernel has IPv6 in the
// namespace.
func IPv6Decision(setting string, kernelHas bool) (bool, error) {
	switch setting {
	case "true":
		if !kernelHas {
			return false, errors.New("HUBWARDEN_IPV6=true, but the kernel has no IPv6 in this network namespace (no /proc/net/if_inet6)")
		}
		return true, nil
	case "false":
		return false, nil
	}
	return kernelHas, nil
}

// egressConfig is the egress package's part of the configuration.
func (c *Config) egressConfig(ipv6 bool) egress.Config {
	return egress.Config{
		Allow:      c.Allow,
		DNSServers: c.DNSServers,
		DNSRate:    c.DNSRate,
		DNSBurst:   c.DNSBurst,
		HubAPI:     c.HubAPI,
		Block:      c.Block,
		NFLogGroup: c.NFLogGroup,
		IPv6:       ipv6,
		ProbePort:  ProbePort(c.HealthAddr),
	}
}

// ProbePort returns the port of the health listener the kubelet probes,
// 0 when it listens on loopback only.
func ProbePort(addr string) uint16 {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	if a, err := netip.ParseAddr(host); err == nil && a.IsLoopback() {
		return 0
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return 0
	}
	return uint16(n)
}
