package egress

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hubwarden/hubwarden/xtables"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func entries(t testing.TB, s string) []Entry {
	t.Helper()
	es, err := ParseEntries(s)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

type goldenCase struct {
	name     string
	cfg      Config
	resolved map[string][]netip.Addr
	want     string
}

func goldenCases() []goldenCase {
	must := func(s string) []Entry {
		es, err := ParseEntries(s)
		if err != nil {
			panic(err)
		}
		return es
	}
	return []goldenCase{
		{
			name: "defaults",
			cfg: Config{
				DNSServers: addrs("10.96.0.10"), DNSRate: 20, DNSBurst: 100, NFLogGroup: 1987, IPv6: true,
				HubAPI: must("tcp://hub:8081"),
			},
			resolved: map[string][]netip.Addr{"hub": addrs("10.100.0.5")},
			want:     goldenDefaults,
		},
		{
			name: "allow-list",
			cfg: Config{
				Allow:      must("198.51.100.0/24, tcp://pypi.org:443, udp://[2001:db8::1]:123, db.example.org:5432-5440, udp://ntp.example.org, 2001:db8:1::/48"),
				DNSServers: addrs("10.96.0.10", "fd00:10::a"), DNSRate: 50, DNSBurst: 200, NFLogGroup: 7, IPv6: true,
			},
			resolved: map[string][]netip.Addr{
				// unsorted, duplicated and mapped on purpose
				"pypi.org":        addrs("2a04:4e42::223", "151.101.64.223", "151.101.0.223", "151.101.0.223"),
				"ntp.example.org": addrs("::ffff:192.0.2.123"),
			},
			want: goldenAllowList,
		},
		{
			name: "ipv6 off",
			cfg: Config{
				Allow:      must("tcp://[2001:db8::1]:443, 192.0.2.0/24"),
				DNSServers: addrs("fd00:10::a", "10.96.0.10"), DNSRate: 20, DNSBurst: 100, NFLogGroup: 1987,
			},
			want: goldenIPv6Off,
		},
		{
			name: "metadata overlap",
			cfg: Config{
				Allow:      must("169.254.0.0/16, fd00::/8, tcp://169.254.169.254:80, 10.0.0.0/8"),
				DNSServers: addrs("169.254.169.254"), DNSRate: 20, DNSBurst: 100, NFLogGroup: 1987, IPv6: true,
				Block: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("fd00:ec2::254/128")},
			},
			want: goldenMetadata,
		},
	}
}

func TestPlanGolden(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			ts, err := Plan(tc.cfg, tc.resolved)
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			for _, x := range ts {
				b.WriteString(xtables.Render(x))
			}
			if diff := cmp.Diff(strings.TrimLeft(tc.want, "\n"), b.String()); diff != "" {
				t.Errorf("Plan rendered (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPlanErrors(t *testing.T) {
	ok := Config{DNSServers: addrs("10.96.0.10"), DNSRate: 20, DNSBurst: 100}
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no dns", func(c *Config) { c.DNSServers = nil }, "no DNS servers"},
		{"only v6 dns, v6 off", func(c *Config) { c.DNSServers = addrs("fd00::a") }, "no usable DNS servers: [fd00::a] are IPv6 and IPv6 is off"},
		{"unspecified dns", func(c *Config) { c.DNSServers = addrs("0.0.0.0") }, `DNS server "0.0.0.0" is not a unicast address`},
		{"zero rate", func(c *Config) { c.DNSRate = 0 }, "DNS rate 0 is not in 1-10000"},
		{"huge burst", func(c *Config) { c.DNSBurst = 10001 }, "DNS burst 10001 is not in 1-10000"},
		{"empty entry", func(c *Config) { c.Allow = []Entry{{}} }, "entry without host name or prefix"},
		{"ports without proto", func(c *Config) {
			c.Allow = []Entry{{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Ports: PortRange{80, 80}}}
		}, "ports need a protocol"},
		{"reversed ports", func(c *Config) {
			c.HubAPI = []Entry{{Host: "hub", Proto: ProtoTCP, Ports: PortRange{90, 80}}}
		}, "invalid port range 90-80"},
		{"bad host", func(c *Config) { c.Allow = []Entry{{Host: "bad host"}} }, "invalid host name"},
		{"bad block", func(c *Config) { c.Block = []netip.Prefix{{}} }, "blocked prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mod(&c)
			_, err := Plan(c, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Plan error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	if _, err := Plan(ok, nil); err != nil {
		t.Fatalf("Plan(valid) = %v", err)
	}
}

func TestConfigHosts(t *testing.T) {
	c := Config{Allow: entries(t, "b.example, 192.0.2.1, tcp://a.example:443, udp://b.example:53"), HubAPI: entries(t, "tcp://hub:8081")}
	if diff := cmp.Diff([]string{"a.example", "b.example", "hub"}, c.Hosts()); diff != "" {
		t.Errorf("Hosts (-want +got):\n%s", diff)
	}
}

// checkInvariants checks what every plan must keep, whatever the config.
func checkInvariants(t *testing.T, cfg Config, ts []xtables.Table) {
	t.Helper()
	wantFams := 1
	if cfg.IPv6 {
		wantFams = 2
	}
	if len(ts) != wantFams {
		t.Fatalf("got %d tables, want %d", len(ts), wantFams)
	}
	for _, tb := range ts {
		if err := tb.Validate(); err != nil {
			t.Fatal(err)
		}
		if tb.Name != "filter" || len(tb.Hooks) != 1 || !cmp.Equal(tb.Hooks[0], xtables.Hook{Base: "OUTPUT", Target: ChainEgress}) {
			t.Fatalf("table %s/%s hooks = %v", tb.Family, tb.Name, tb.Hooks)
		}
		eg := tb.Chains[0]
		if eg.Name != ChainEgress {
			t.Fatalf("first chain %s", eg.Name)
		}
		// The spoof rule comes before every rule that can accept a packet
		// that is not established: only the accept of established TCP
		// flows, leaving out the family's single blocked range, may come
		// before it (and before the block, which it cannot skip).
		spoof := strings.Join(SpoofArgs(true), " ")
		var blocks []string
		for _, r := range eg.Rules {
			if line := strings.Join(r.Args, " "); strings.HasSuffix(line, "-j "+ChainBlock) && r.Args[0] == "-d" {
				blocks = append(blocks, r.Args[1])
			}
		}
		estFirst := func(line string) bool {
			return len(blocks) == 1 &&
				line == "! -d "+blocks[0]+" -p tcp -m conntrack --ctstate ESTABLISHED -m tcp ! --dport 53 -j ACCEPT"
		}
		switch first := strings.Join(eg.Rules[0].Args, " "); {
		case first == spoof:
		case estFirst(first) && len(eg.Rules) > 1 && strings.Join(eg.Rules[1].Args, " ") == spoof:
		default:
			t.Errorf("%s: first rules %q, %q, want the spoof rule, or the established accept (one blocked range) and then it", tb.Family, first, eg.Rules[1].Args)
		}
		firstBlock, lastBlock, established := -1, -1, -1
		for i, r := range eg.Rules {
			line := strings.Join(r.Args, " ")
			if strings.HasSuffix(line, "-j "+ChainBlock) {
				if firstBlock < 0 {
					firstBlock = i
				}
				lastBlock = i
			}
			if strings.Contains(line, "--ctstate ESTABLISHED") {
				established = i
			}
			for j, a := range r.Args {
				if a == "-d" {
					p := netip.MustParsePrefix(r.Args[j+1])
					if familyOf(p.Addr()) != tb.Family || p.Masked() != p {
						t.Errorf("%s rule %q: destination of the wrong family or unmasked", tb.Family, line)
					}
				}
			}
		}
		if firstBlock < 0 || established < lastBlock {
			t.Fatalf("%s: block rules %d-%d, established at %d: %v", tb.Family, firstBlock, lastBlock, established, eg.Rules)
		}
		// Before the last block rule, only loopback and DNS (port 53 to a
		// resolver inside a blocked range) may let anything through.
		for _, r := range eg.Rules[:lastBlock] {
			line := strings.Join(r.Args, " ")
			switch {
			case line == spoof,
				estFirst(line),
				line == "-o lo -j ACCEPT",
				strings.HasSuffix(line, "-j "+ChainBlock),
				strings.Contains(line, "--dport 53 -j "+ChainDNS):
			default:
				t.Errorf("%s: rule %q comes before the block rules", tb.Family, line)
			}
		}
		n := len(eg.Rules)
		if !strings.Contains(strings.Join(eg.Rules[n-3].Args, " "), "-j NFLOG") ||
			eg.Rules[n-2].Args[len(eg.Rules[n-2].Args)-3] != "REJECT" || eg.Rules[n-1].Args[1] != "REJECT" {
			t.Errorf("%s: chain does not end with NFLOG, REJECT tcp, REJECT: %v", tb.Family, eg.Rules[n-3:])
		}
	}
}

func FuzzPlan(f *testing.F) {
	f.Add("198.51.100.0/24, tcp://pypi.org:443, udp://[2001:db8::1]:123", "10.96.0.10,fd00::a", "10.0.0.0/8", "151.101.0.223 2a04:4e42::223", true, uint32(20), uint32(100))
	f.Add("169.254.0.0/16 fd00::/8 tcp://169.254.169.254:80", "169.254.169.254", "", "", true, uint32(1), uint32(1))
	f.Add("a.example b.example:1-65535", "fd00::a", "::/0", "::ffff:192.0.2.1", false, uint32(10000), uint32(10000))
	f.Fuzz(func(t *testing.T, allow, dns, block, hostAddrs string, v6 bool, rate, burst uint32) {
		cfg := Config{DNSRate: rate, DNSBurst: burst, IPv6: v6, NFLogGroup: 5}
		cfg.Allow, _ = ParseEntries(allow)
		for _, s := range strings.Fields(strings.ReplaceAll(dns, ",", " ")) {
			if a, err := netip.ParseAddr(s); err == nil {
				cfg.DNSServers = append(cfg.DNSServers, a)
			}
		}
		for _, s := range strings.Fields(block) {
			if p, err := netip.ParsePrefix(s); err == nil {
				cfg.Block = append(cfg.Block, p)
			}
		}
		var as []netip.Addr
		for _, s := range strings.Fields(hostAddrs) {
			if a, err := netip.ParseAddr(s); err == nil {
				as = append(as, a)
			}
		}
		resolved := map[string][]netip.Addr{}
		for _, h := range cfg.Hosts() {
			resolved[h] = as
		}
		ts, err := Plan(cfg, resolved)
		if err != nil {
			return
		}
		checkInvariants(t, cfg, ts)
		// Deterministic, whatever the order of the answers.
		rev := map[string][]netip.Addr{}
		for h, a := range resolved {
			r := append([]netip.Addr(nil), a...)
			for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
				r[i], r[j] = r[j], r[i]
			}
			rev[h] = r
		}
		again, err := Plan(cfg, rev)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(ts, again); diff != "" {
			t.Errorf("Plan not deterministic (-first +second):\n%s", diff)
		}
	})
}

func BenchmarkPlan(b *testing.B) {
	for _, n := range []int{20, 200} {
		b.Run(strconv.Itoa(n)+" entries", func(b *testing.B) {
			var allow []Entry
			resolved := map[string][]netip.Addr{}
			for i := range n {
				h := "h" + strconv.Itoa(i) + ".example"
				allow = append(allow, Entry{Host: h, Proto: ProtoTCP, Ports: PortRange{443, 443}})
				resolved[h] = []netip.Addr{netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), netip.MustParseAddr("2001:db8::" + strconv.FormatInt(int64(i+1), 16))}
			}
			cfg := Config{Allow: allow, DNSServers: addrs("10.96.0.10"), DNSRate: 20, DNSBurst: 100, IPv6: true}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Plan(cfg, resolved); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestRawTables(t *testing.T) {
	rules := `-A HUBWARDEN-RAW-OUT -o lo -m comment --comment "hubwarden: loopback: never leaves the pod, not tracked" -j CT --notrack
`
	// Only loopback packets jump into the chains, but with the spoof rule
	// in raw every packet out must reach it.
	hooksAll := `-I OUTPUT 1 -m comment --comment "hubwarden: hook" -j HUBWARDEN-RAW-OUT
COMMIT
`
	hooksLo := `-I OUTPUT 1 -o lo -m comment --comment "hubwarden: hook" -j HUBWARDEN-RAW-OUT
COMMIT
`
	spoof := `-A HUBWARDEN-RAW-OUT -m addrtype ! --src-type LOCAL -m owner --uid-owner 0-4294967294 -m comment --comment "hubwarden: a user socket sending from an address that is not the pod address (spoofed)" -j DROP
`
	head := `*raw
:HUBWARDEN-RAW-OUT - [0:0]
`
	for _, tc := range []struct {
		spoof bool
		want  string
	}{
		// Without the egress filter, raw holds the spoof rule.
		{true, head + spoof + rules + hooksAll},
		// With it, the filter does (TestSpoofRule).
		{false, head + rules + hooksLo},
	} {
		ts, err := RawTables(true, tc.spoof)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, tb := range ts {
			got = append(got, "# "+tb.Family.String(), xtables.RenderWithHooks(tb, tb.Hooks, nil))
		}
		if diff := cmp.Diff([]string{"# ipv4", tc.want, "# ipv6"}, got[:3]); diff != "" {
			t.Errorf("raw tables, spoof %v (-want +got):\n%s", tc.spoof, diff)
		}
		// No hook in PREROUTING: each packet the pod receives would pay
		// for it, and a loopback packet arrives untracked already.
		if ts[1].Name != "raw" || len(ts[1].Chains) != 1 || len(ts[1].Hooks) != 1 || ts[1].Hooks[0].Base != "OUTPUT" {
			t.Errorf("ipv6 table %+v", ts[1])
		}
	}
}

// TestSpoofRule: in the egress filter the spoof rule is the first rule of
// both families, ahead of every rule that accepts (loopback, DNS, replies,
// the allow-list), and skips only the packets of established flows.
func TestSpoofRule(t *testing.T) {
	cfg := Config{DNSServers: []netip.Addr{netip.MustParseAddr("198.18.1.53"), netip.MustParseAddr("2001:2::53")}, DNSRate: 20, DNSBurst: 100, IPv6: true, ProbePort: 9280}
	for _, a := range []string{"198.18.7.0/24", "2001:2:7::/48"} {
		e, err := ParseEntry(a)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Allow = append(cfg.Allow, e)
	}
	ts, err := Plan(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := `-A HUBWARDEN-EGRESS -m conntrack ! --ctstate ESTABLISHED -m addrtype ! --src-type LOCAL -m owner --uid-owner 0-4294967294 -m comment --comment "hubwarden: a user socket sending from an address that is not the pod address (spoofed)" -j DROP`
	// Second: after the established accept, which the metadata address
	// (the one blocked range of each family) is left out of.
	for _, tb := range ts {
		if got := xtables.RuleLine(ChainEgress, tb.Chains[0].Rules[1]); got != want {
			t.Errorf("%s: second rule\n got %s\nwant %s", tb.Family, got, want)
		}
		for i, r := range tb.Chains[0].Rules {
			if strings.Contains(strings.Join(r.Args, " "), "src-type") && i != 1 {
				t.Errorf("%s: a second spoof rule at %d: %v", tb.Family, i, r.Args)
			}
		}
	}
}

// TestProbePort: the pod's own connections to hubwarden's probe port are
// refused ahead of the loopback accept, except to 127.0.0.1 (IPv4), where
// the notebook's listener is.
func TestProbePort(t *testing.T) {
	cfg := Config{DNSServers: []netip.Addr{netip.MustParseAddr("198.18.1.53")}, DNSRate: 20, DNSBurst: 100, IPv6: true, ProbePort: 9280}
	ts, err := Plan(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range ts {
		rules := tb.Chains[0].Rules
		lo := slices.IndexFunc(rules, func(r xtables.Rule) bool { return strings.Join(r.Args, " ") == "-o lo -j ACCEPT" })
		if lo < 1 {
			t.Fatalf("%s: no loopback accept after a first rule: %v", tb.Family, rules)
		}
		first := xtables.RuleLine(ChainEgress, rules[lo-1]) // right before the loopback accept
		want := `-A HUBWARDEN-EGRESS ! -d 127.0.0.1/32 -o lo -p tcp -m tcp --dport 9280 -m comment --comment "hubwarden: the probe port is for the kubelet; the pod has 127.0.0.1" -j REJECT --reject-with tcp-reset`
		if tb.Family == xtables.IPv6 {
			want = `-A HUBWARDEN-EGRESS -o lo -p tcp -m tcp --dport 9280 -m comment --comment "hubwarden: the probe port is for the kubelet; the pod has 127.0.0.1" -j REJECT --reject-with tcp-reset`
		}
		if first != want {
			t.Errorf("%s: the rule before the loopback accept\n%s\nwant\n%s", tb.Family, first, want)
		}
	}
}
