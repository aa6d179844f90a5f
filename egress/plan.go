package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/hubwarden/hubwarden/xtables"
)

// Chain names hubwarden owns in the filter table of each family.
const (
	// ChainEgress is hooked from filter OUTPUT and holds the policy.
	ChainEgress = "HUBWARDEN-EGRESS"
	// ChainDNS rate-limits every packet to the resolvers, one bucket per family.
	ChainDNS = "HUBWARDEN-EGRESS-DNS"
	// ChainBlock logs and rejects traffic to the metadata and HUBWARDEN_BLOCK ranges.
	ChainBlock = "HUBWARDEN-EGRESS-BLOCK"
	// ChainRawOut is hooked from raw OUTPUT: it runs before conntrack
	// (RawTables).
	ChainRawOut = "HUBWARDEN-RAW-OUT"
)

// NFLOG prefixes, one per reason, so the log reader can tell denials apart.
const (
	LogPrefixDeny    = "hubwarden-deny"     // not on the allow-list
	LogPrefixBlock   = "hubwarden-block"    // metadata or HUBWARDEN_BLOCK
	LogPrefixDNSRate = "hubwarden-dns-rate" // DNS over HUBWARDEN_DNS_RATE, dropped
)

// Limits of the hashlimit match that rate-limits DNS (iptables refuses more).
const (
	MaxDNSRate  = 10000
	MaxDNSBurst = 10000
)

// MaxDNSPacket is the largest packet (IP header included) the pod may send to
// a resolver. Queries are far smaller; the cap stops a tunnel from packing
// many pipelined queries into one large TCP segment (a locally generated
// GSO segment of up to 64 KiB passes OUTPUT as one packet), so the packet
// rate limit also bounds bytes: DNSRate × MaxDNSPacket per second.
const MaxDNSPacket = 512

// nflogSize is how many bytes of each denied packet reach the log reader: an
// IPv6 header (40) and the largest TCP header (60) fit.
const nflogSize = "128"

// nflogThreshold caps how many packets the kernel may batch per netlink
// message to the reader (the reader's own setting applies when lower); it
// cuts the per-packet cost of a port scan, while the kernel's flush timeout
// still delivers a lone denial promptly.
const nflogThreshold = "32"

// kernelOnly matches packets that no user-space socket sent: the neighbour
// discovery the kernel itself generates has a kernel socket with no file, so
// it matches; a notebook's raw socket (NET_RAW is in the default container
// capabilities) has a file and an owner, so it does not, and cannot tunnel
// data out disguised as neighbour discovery.
var kernelOnly = []string{"-m", "owner", "!", "--uid-owner", "0-4294967294"}

// userSocket matches what kernelOnly does not: packets a user-space socket
// sent. The kernel's own packets with a foreign source (the TCP reset and
// ICMP error of a REJECT, which answer for the address rejected) must pass.
var userSocket = []string{"-m", "owner", "--uid-owner", "0-4294967294"}

// MetadataPrefixes are the cloud metadata endpoints, always rejected on every
// protocol and port.
var MetadataPrefixes = []netip.Prefix{
	netip.MustParsePrefix("169.254.169.254/32"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
}

// Config is what the egress plan depends on.
type Config struct {
	Allow      []Entry
	DNSServers []netip.Addr
	DNSRate    uint32 // DNS packets/s per pod (and family) to the resolvers
	DNSBurst   uint32 // DNS packets the pod may send at once before DNSRate applies
	HubAPI     []Entry
	Block      []netip.Prefix // extra always-rejected CIDRs
	NFLogGroup uint16
	IPv6       bool // also plan the ip6tables table
	// ProbePort is hubwarden's health port for the kubelet's probes, 0 for
	// none: connections the pod itself opens to it are refused, so that the
	// notebook cannot hold its connections and starve the probes (it has
	// its own listener on 127.0.0.1).
	ProbePort uint16
}

// Hosts returns every host name in Allow and HubAPI, sorted, without
// duplicates: the names the caller must resolve before calling Plan.
func (c Config) Hosts() []string {
	var out []string
	for _, e := range slices.Concat(c.HubAPI, c.Allow) {
		if e.IsHost() {
			out = append(out, e.Host)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Plan returns the filter tables (IPv4, and IPv6 when cfg.IPv6) for
// hubwarden's egress chains. resolved maps the host names in Allow and
// HubAPI to their current addresses; a name without addresses allows nothing
// (fail closed) and is not an error.
//
// Plan is pure: the same input gives the same tables, whatever the order of
// the addresses in resolved.
func Plan(cfg Config, resolved map[string][]netip.Addr) ([]xtables.Table, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	fams := []xtables.Family{xtables.IPv4}
	if cfg.IPv6 {
		fams = append(fams, xtables.IPv6)
	}
	usable := 0
	for _, a := range cfg.DNSServers {
		if a.Unmap().Is4() || cfg.IPv6 {
			usable++
		}
	}
	if usable == 0 {
		return nil, fmt.Errorf("planning egress: no usable DNS servers: %v are IPv6 and IPv6 is off", cfg.DNSServers)
	}
	var out []xtables.Table
	for _, f := range fams {
		t := planFamily(cfg, f, resolved)
		if err := t.Validate(); err != nil {
			return nil, fmt.Errorf("planning egress: %w", err)
		}
		out = append(out, t)
	}
	return out, nil
}

func (c Config) validate() error {
	var errs []error
	if len(c.DNSServers) == 0 {
		errs = append(errs, errors.New("no DNS servers"))
	}
	for _, a := range c.DNSServers {
		if !a.IsValid() || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
			errs = append(errs, fmt.Errorf("DNS server %q is not a unicast address without zone", a))
		}
	}
	if c.DNSRate == 0 || c.DNSRate > MaxDNSRate {
		errs = append(errs, fmt.Errorf("DNS rate %d is not in 1-%d packets/s", c.DNSRate, MaxDNSRate))
	}
	if c.DNSBurst == 0 || c.DNSBurst > MaxDNSBurst {
		errs = append(errs, fmt.Errorf("DNS burst %d is not in 1-%d packets", c.DNSBurst, MaxDNSBurst))
	}
	for _, e := range slices.Concat(c.HubAPI, c.Allow) {
		if err := e.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range c.Block {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("blocked prefix %q is not valid", p))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("planning egress: %w", err)
	}
	return nil
}

// validate checks an entry built without ParseEntry.
func (e Entry) validate() error {
	switch {
	case e.IsHost() && e.Prefix.IsValid():
		return fmt.Errorf("entry %s: both a host name and a prefix", e)
	case e.IsHost():
		if err := checkHostname(e.Host); err != nil {
			return fmt.Errorf("entry %s: %w", e, err)
		}
	case !e.Prefix.IsValid():
		return errors.New("entry without host name or prefix")
	case e.Prefix.Addr().Zone() != "":
		return fmt.Errorf("entry %s: zones are not supported", e)
	}
	if e.Proto > ProtoUDP {
		return fmt.Errorf("entry %s: unknown protocol %d", e, e.Proto)
	}
	if !e.Ports.All() {
		if e.Proto == ProtoAny {
			return fmt.Errorf("entry %s: ports need a protocol (tcp or udp)", e)
		}
		if e.Ports.From == 0 || e.Ports.To < e.Ports.From {
			return fmt.Errorf("entry %s: invalid port range %d-%d", e, e.Ports.From, e.Ports.To)
		}
	}
	return nil
}

// familyOf reports an address's family (IPv4-mapped IPv6 counts as IPv4).
func familyOf(a netip.Addr) xtables.Family {
	if a.Unmap().Is4() {
		return xtables.IPv4
	}
	return xtables.IPv6
}

// hostPrefix returns the /32 or /128 of an address.
func hostPrefix(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen())
}

// normPrefix unmaps and masks a prefix so it renders as iptables-save does.
func normPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

func planFamily(cfg Config, f xtables.Family, resolved map[string][]netip.Addr) xtables.Table {
	v6 := f == xtables.IPv6
	icmpReject := "icmp-port-unreachable"
	if v6 {
		icmpReject = "icmp6-adm-prohibited"
	}
	rule := func(comment string, args ...string) xtables.Rule {
		return xtables.Rule{Args: args, Comment: truncate(comment)}
	}
	nflog := func(prefix string) []string {
		return []string{"-j", "NFLOG", "--nflog-prefix", prefix, "--nflog-group", strconv.Itoa(int(cfg.NFLogGroup)),
			"--nflog-size", nflogSize, "--nflog-threshold", nflogThreshold}
	}

	var blocked []netip.Prefix
	for _, p := range slices.Concat(MetadataPrefixes, cfg.Block) {
		p = normPrefix(p)
		if familyOf(p.Addr()) == f && !slices.Contains(blocked, p) {
			blocked = append(blocked, p)
		}
	}
	var resolvers []netip.Addr
	for _, a := range cfg.DNSServers {
		a = a.Unmap()
		if familyOf(a) == f && !slices.Contains(resolvers, a) {
			resolvers = append(resolvers, a)
		}
	}

	dns := func(a netip.Addr, why string) []xtables.Rule {
		d := hostPrefix(a).String()
		return []xtables.Rule{
			rule("dns to resolver "+a.String()+why+" (udp)", "-d", d, "-p", "udp", "-m", "udp", "--dport", "53", "-j", ChainDNS),
			rule("dns to resolver "+a.String()+why+" (tcp)", "-d", d, "-p", "tcp", "-m", "tcp", "--dport", "53", "-j", ChainDNS),
		}
	}
	inBlocked := func(a netip.Addr) bool {
		return slices.ContainsFunc(blocked, func(p netip.Prefix) bool { return p.Contains(a) })
	}

	// A packet a socket of the pod sends with a source that is not the
	// pod's is dropped ahead of every rule that accepts a packet that is
	// not established (SpoofArgs). The packets of established flows skip
	// the test: their source is the pod's by construction (below), and
	// they are nearly all the packets, so the FIB lookup is paid by a
	// flow's first packets only.
	//
	// The packets of established TCP flows (but DNS) pass with one rule
	// where the family has a single blocked range (the metadata address,
	// unless HUBWARDEN_BLOCK adds more): ahead of the spoof rule, which
	// never matches them, and of the block, whose range the rule leaves
	// out. Those to the range go on to the block below, as every packet
	// did before; with more ranges (iptables negates one address only)
	// the same rule comes after the blocks instead.
	estArgs := []string{"-p", "tcp", "-m", "conntrack", "--ctstate", "ESTABLISHED", "-m", "tcp", "!", "--dport", "53", "-j", "ACCEPT"}
	var eg []xtables.Rule
	if len(blocked) == 1 {
		eg = append(eg, rule("established tcp flows, but dns and "+blocked[0].String(), slices.Concat([]string{"!", "-d", blocked[0].String()}, estArgs)...))
	}
	eg = append(eg, rule(spoofComment, SpoofArgs(true)...))
	// A resolver inside a blocked range (GKE's Cloud DNS answers on the
	// metadata address) gets port 53 and nothing else, ahead of the block.
	for _, a := range resolvers {
		if inBlocked(a) {
			eg = append(eg, dns(a, " inside a blocked range, port 53 only")...)
		}
	}
	// The blocks come before any established flow passes: a flow that was
	// open before a range was blocked stops with the block.
	for _, p := range blocked {
		why := "blocked by HUBWARDEN_BLOCK: "
		if slices.Contains(MetadataPrefixes, p) {
			why = "cloud metadata, always rejected: "
		}
		eg = append(eg, rule(why+p.String(), "-d", p.String(), "-j", ChainBlock))
	}
	// With more than one blocked range, the packets of established TCP
	// flows, nearly all the packets the pod sends, pass here, after the
	// blocks, except those to port 53, which go on to the DNS rate limit
	// below (the first rule, with one range, leaves port 53 out as well).
	// Loopback is not tracked (RawTables): its packets never match, and go
	// on to the loopback rules.
	if len(blocked) != 1 {
		eg = append(eg, rule("replies and established tcp flows, but dns", estArgs...))
	}
	if cfg.ProbePort != 0 {
		var args []string
		if !v6 {
			args = append(args, "!", "-d", "127.0.0.1/32")
		}
		args = append(args, "-o", "lo", "-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(int(cfg.ProbePort)), "-j", "REJECT", "--reject-with", "tcp-reset")
		eg = append(eg, rule("the probe port is for the kubelet; the pod has 127.0.0.1", args...))
	}
	eg = append(eg, rule("loopback", "-o", "lo", "-j", "ACCEPT"))
	// DNS comes before ESTABLISHED so that every packet to a resolver counts
	// against the rate limit, including queries pipelined on an established
	// TCP connection.
	for _, a := range resolvers {
		if !inBlocked(a) {
			eg = append(eg, dns(a, "")...)
		}
	}
	eg = append(eg, rule("replies", "-m", "conntrack", "--ctstate", "ESTABLISHED", "-j", "ACCEPT"))
	// RELATED is what the kernel sends about a flow (ICMP errors, a TCP
	// reset): a notebook's raw socket could forge such errors about an
	// allowed flow and carry any payload in them, so only the kernel's
	// pass.
	eg = append(eg, rule("errors about a flow, from the kernel", slices.Concat(
		[]string{"-m", "conntrack", "--ctstate", "RELATED"}, kernelOnly, []string{"-j", "ACCEPT"})...))
	if v6 {
		for _, nd := range []struct{ typ, name string }{
			{"133", "router solicitation"}, {"135", "neighbour solicitation"}, {"136", "neighbour advertisement"},
		} {
			args := slices.Concat([]string{"-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", nd.typ}, kernelOnly, []string{"-j", "ACCEPT"})
			eg = append(eg, rule("ndp "+nd.name+" from the kernel", args...))
		}
		// The kernel announces its multicast groups (MLDv2 reports) when an
		// interface comes up; denying them would only fill the denial log.
		eg = append(eg, rule("mld report from the kernel", slices.Concat(
			[]string{"-d", "ff02::16/128", "-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", "143"}, kernelOnly, []string{"-j", "ACCEPT"})...))
	}
	seen := map[string]bool{}
	for _, r := range eg {
		seen[strings.Join(r.Args, " ")] = true
	}
	add := func(what string, e Entry) {
		var dsts []netip.Prefix
		if e.IsHost() {
			addrs := slices.Clone(resolved[e.Host])
			for i := range addrs {
				addrs[i] = addrs[i].Unmap()
			}
			slices.SortFunc(addrs, netip.Addr.Compare)
			for _, a := range slices.Compact(addrs) {
				if a.IsValid() && a.Zone() == "" && familyOf(a) == f {
					dsts = append(dsts, hostPrefix(a))
				}
			}
		} else if familyOf(e.Prefix.Addr()) == f {
			dsts = append(dsts, normPrefix(e.Prefix))
		}
		for _, d := range dsts {
			args := []string{"-d", d.String()}
			if e.Proto != ProtoAny {
				p := e.Proto.String()
				args = append(args, "-p", p)
				if !e.Ports.All() {
					port := strconv.Itoa(int(e.Ports.From))
					if e.Ports.To != e.Ports.From {
						port += ":" + strconv.Itoa(int(e.Ports.To))
					}
					args = append(args, "-m", p, "--dport", port)
				}
			}
			args = append(args, "-j", "ACCEPT")
			if k := strings.Join(args, " "); !seen[k] {
				seen[k] = true
				eg = append(eg, rule(what+" "+e.String(), args...))
			}
		}
	}
	for _, e := range cfg.HubAPI {
		add("hub api", e)
	}
	for _, e := range cfg.Allow {
		add("allow", e)
	}
	eg = append(eg,
		rule("log denied", nflog(LogPrefixDeny)...),
		rule("deny tcp with a reset", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"),
		rule("deny the rest with an icmp error", "-j", "REJECT", "--reject-with", icmpReject),
	)

	dnsChain := []xtables.Rule{
		rule(fmt.Sprintf("dns packets up to %d bytes, within %d/s, burst %d", MaxDNSPacket, cfg.DNSRate, cfg.DNSBurst),
			"-m", "length", "--length", "0:"+strconv.Itoa(MaxDNSPacket),
			"-m", "hashlimit", "--hashlimit-upto", fmt.Sprintf("%d/sec", cfg.DNSRate), "--hashlimit-burst", strconv.Itoa(int(cfg.DNSBurst)),
			"--hashlimit-name", hashlimitName(cfg.DNSRate, cfg.DNSBurst), "-j", "ACCEPT"),
		rule("log dns over the rate or size", nflog(LogPrefixDNSRate)...),
		rule("drop dns over the rate or size (the sender gets EPERM)", "-j", "DROP"),
	}
	blockChain := []xtables.Rule{
		rule("log blocked", nflog(LogPrefixBlock)...),
		rule("reject blocked tcp with a reset", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"),
		rule("reject blocked with an icmp error", "-j", "REJECT", "--reject-with", icmpReject),
	}
	return xtables.Table{
		Family: f,
		Name:   "filter",
		Chains: []xtables.Chain{
			{Name: ChainEgress, Rules: eg},
			{Name: ChainDNS, Rules: dnsChain},
			{Name: ChainBlock, Rules: blockChain},
		},
		Hooks: []xtables.Hook{{Base: "OUTPUT", Target: ChainEgress}},
	}
}

// spoofComment is the spoof rule's comment, in the raw and filter tables.
const spoofComment = "a user socket sending from an address that is not the pod address (spoofed)"

// SpoofArgs is the rule that drops a packet a socket of the pod sends with
// a source address that is not the pod's (one type only: for IPv6, addrtype
// requires every type it is given, so "UNSPEC,LOCAL" would match no
// ordinary address). Sent to the pod's own address with a forbidden host as
// its source, such a packet would make conntrack record the forbidden host
// as the opener of a flow, and the pod's "replies" to it would pass as
// established (IPV6_FREEBIND needs no privilege; a raw socket needs the
// NET_RAW a container has by default). The kernel's own packets with a
// foreign source pass (userSocket).
//
// afterConntrack: the rule sits in the filter table, after conntrack, and
// skips the packets of established flows. That is safe because no packet
// with a foreign source can belong to one: a flow on the pod's interface
// has the pod's address on the pod's side of both its tuples (the pod
// neither forwards nor rewrites sources), a packet to the pod's own
// address leaves over loopback, which is not tracked, and the packet that
// would have opened a flow for a foreign source is this rule's to drop
// before conntrack confirms it.
func SpoofArgs(afterConntrack bool) []string {
	var args []string
	if afterConntrack {
		args = []string{"-m", "conntrack", "!", "--ctstate", "ESTABLISHED"}
	}
	return slices.Concat(args, []string{"-m", "addrtype", "!", "--src-type", "LOCAL"}, userSocket, []string{"-j", "DROP"})
}

// RawTables returns the raw tables (IPv4, and IPv6 when ipv6) that run
// before conntrack sees a packet:
//
//   - with spoof, the spoof rule (SpoofArgs); the egress filter holds it
//     instead when there is one, where the packets of established flows
//     skip it (a FIB lookup per packet here);
//   - the pod's loopback traffic is not tracked: it never leaves the pod, so
//     it must cost the conntrack table and hubwarden nothing (a notebook can
//     open hundreds of thousands of loopback UDP flows in a second), and a
//     packet to the pod's own address, whatever its source, opens no flow.
//     Raw OUTPUT alone does it: every packet on the pod's loopback was sent
//     in the pod and left OUTPUT untracked, and conntrack ignores an
//     untracked packet where it arrives (PREROUTING), so no hook there
//     costs each packet the pod receives a chain.
func RawTables(ipv6, spoof bool) ([]xtables.Table, error) {
	fams := []xtables.Family{xtables.IPv4}
	if ipv6 {
		fams = append(fams, xtables.IPv6)
	}
	var out []xtables.Table
	for _, f := range fams {
		var rawOut []xtables.Rule
		if spoof {
			rawOut = append(rawOut, xtables.Rule{Args: SpoofArgs(false), Comment: spoofComment})
		}
		rawOut = append(rawOut, xtables.Rule{Args: []string{"-o", "lo", "-j", "CT", "--notrack"}, Comment: "loopback: never leaves the pod, not tracked"})
		t := xtables.Table{
			Family: f,
			Name:   "raw",
			Chains: []xtables.Chain{
				{Name: ChainRawOut, Rules: rawOut},
			},
			// Only loopback packets jump: every other packet the pod sends
			// meets one rule in raw, not a jump and a chain. With the spoof
			// rule here, every packet out must see it.
			Hooks: []xtables.Hook{{Base: "OUTPUT", Match: []string{"-o", "lo"}, Target: ChainRawOut}},
		}
		if spoof {
			t.Hooks[0].Match = nil
		}
		if err := t.Validate(); err != nil {
			return nil, fmt.Errorf("planning raw rules: %w", err)
		}
		out = append(out, t)
	}
	return out, nil
}

// hashlimitName names the DNS bucket after its settings: the kernel reuses an
// existing bucket of the same name with its old settings, so a changed rate
// must get a new name to take effect. At most 15 characters.
func hashlimitName(rate, burst uint32) string {
	return fmt.Sprintf("hwdns%x-%x", rate, burst)
}

// maxComment keeps "hubwarden: " plus the comment under the kernel's 256-byte limit.
const maxComment = 200

func truncate(s string) string {
	if len(s) <= maxComment {
		return s
	}
	return s[:maxComment-3] + "..."
}
