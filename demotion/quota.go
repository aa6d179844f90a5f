package demotion

import (
	"fmt"
	"strings"
)

// The nftables objects of the quota gate, in their own table of the inet
// family (IPv4 and IPv6).
const (
	NFTTable = "hubwarden"
	NFTChain = "gate"
	NFTQuota = "pod"
	// NFTPriority runs the gate just before iptables' mangle table (-150),
	// whose CLASSIFY rule reads the demoted bit the gate sets.
	NFTPriority = -151
)

// QuotaGate is the pod's aggregate budget held in the kernel (GateQuota):
// the quota object NFTQuota counts the bytes of every packet the pod sends
// on a flow that is not demoted, and once it has counted more than its
// limit, the gate's rule demotes the flow of every such packet (from the
// first packet of a new connection on). The watcher raises the limit by the
// pod refill and lowers it by the bytes the slow class sent; it never
// lowers what the kernel counted. A dead or starved watcher only stops the
// refill: the bound holds without it.
type QuotaGate struct {
	Interface string
	Contract  Contract
}

// Match returns the mark bits the rule tests (must be clear) and Set the
// bits it sets.
func (g QuotaGate) Match() uint32 { return g.Contract.Demoted() }

// Set returns the bits the gate's rule sets on the flow.
func (g QuotaGate) Set() uint32 { return g.Contract.Demoted() | g.Contract.Attention() }

// Comment is the rule's comment (nftables user data).
func (g QuotaGate) Comment() string {
	return "hubwarden: gate: once the pod budget is spent, demote every flow that sends"
}

// Validate checks what the kernel would refuse.
func (g QuotaGate) Validate() error {
	if g.Interface == "" || len(g.Interface) >= 16 {
		return fmt.Errorf("planning the quota gate: interface name %q must have 1-15 characters", g.Interface)
	}
	if g.Contract.demoted == 0 {
		return fmt.Errorf("planning the quota gate: no demotion contract")
	}
	return nil
}

// String renders the table in nft syntax, as `nft list table inet
// hubwarden` prints it (the quota's limit and use are state, not plan).
func (g QuotaGate) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", NFTTable)
	fmt.Fprintf(&b, "\tquota %s {\n\t\tover <pod bucket> bytes\n\t}\n\n", NFTQuota)
	fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook postrouting priority mangle - 1; policy accept;\n", NFTChain)
	fmt.Fprintf(&b, "\t\toifname %q ct mark & 0x%08x == 0x00000000 quota name %q ct mark set ct mark | 0x%08x comment %q\n",
		g.Interface, g.Match(), NFTQuota, g.Set(), g.Comment())
	b.WriteString("\t}\n}\n")
	return b.String()
}
