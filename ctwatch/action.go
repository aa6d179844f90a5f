package ctwatch

import (
	"net/netip"
	"time"

	"github.com/hubwarden/hubwarden/conntrack"
)

// Key identifies a flow: its original tuple and its conntrack zone.
type Key struct {
	Orig conntrack.Tuple
	Zone uint16
}

// Reason says why a flow is demoted.
type Reason uint8

// The reasons for a demotion.
const (
	ReasonNone   Reason = iota
	ReasonFlow          // the flow's own bucket ran out (the tripwire, or the watcher at a re-arm)
	ReasonPod           // the flow sent while the pod bucket was spent (the gate)
	ReasonKernel        // the mark was already set when the watcher first saw the flow
)

// String returns the reason as written in audit lines.
func (r Reason) String() string {
	switch r {
	case ReasonFlow:
		return "flow_budget"
	case ReasonPod:
		return "pod_budget"
	case ReasonKernel:
		return "kernel"
	}
	return ""
}

// Why says why a flow is promoted.
type Why uint8

// The causes of a promotion.
const (
	WhyNone Why = iota
	WhyIdle     // idle for PromoteIdle, and the pod bucket allows
)

// String returns the cause as written in audit lines.
func (w Why) String() string {
	if w == WhyIdle {
		return "idle"
	}
	return ""
}

// Kind is what an Action asks for.
type Kind uint8

// The kinds of Action.
const (
	// Rearm: read and zero the flow's counters (conntrack GetZero) and feed
	// the result to Policy.Zeroed, which decides the flow's tier, its
	// promotion or its demotion. Not an audit event.
	Rearm Kind = iota + 1
	// Arm: set the flow's mark to Mark under Mask (the contract's Arm: a
	// tier, not demoted, no attention). Not an audit event unless it
	// carries a promotion (Promote follows it).
	Arm
	// Demote: set the demoted and attention bits and write a demotion line
	// (by the watcher).
	Demote
	// Park: clear the attention bit of a flow the watcher cannot track
	// (MaxFlows): it stays as the kernel has it, out of the watcher's reads.
	Park
	// Promote: write a promotion line (the Arm before it did the work).
	Promote
	// KernelDemote: the kernel demoted the flow (the tripwire or the pod
	// gate); write a demotion line. Nothing to apply.
	KernelDemote
	// Adopt: the flow was found demoted when the watcher started; write a
	// demotion line. Nothing to apply.
	Adopt
	// Progress: write a progress line for a long-lived flow.
	Progress
	// Finish: the flow is gone; write its final record.
	Finish
	// GateClose and GateOpen: the pod gate closed (the pod bucket is
	// spent) or opened again; write a line. Their Key is zero; the Record
	// has only PodTokens and End.
	GateClose
	GateOpen
)

// String returns the kind as written in audit lines.
func (k Kind) String() string {
	switch k {
	case Rearm:
		return "rearm"
	case Arm:
		return "arm"
	case Demote, KernelDemote:
		return "demote"
	case Park:
		return "park"
	case Promote:
		return "promote"
	case Adopt:
		return "adopt"
	case Progress:
		return "progress"
	case Finish:
		return "flow_end"
	case GateClose, GateOpen:
		return "pod_gate"
	}
	return "unknown"
}

// Action is one thing the watcher must do: change a mark, read a flow,
// write a line.
type Action struct {
	Kind       Kind
	Key        Key
	Mark, Mask uint32 // Arm, Demote, Park: the mark to set under the mask
	Record     Record
}

// Record is a flow as the audit log describes it, from the pod's side.
type Record struct {
	ID          uint32
	Proto       uint8
	Local, Peer netip.AddrPort
	Inbound     bool              // the peer opened the connection (the pod accepted it)
	Sent, Recv  conntrack.Counter // what the pod sent and received, as counted by conntrack
	FastBytes   uint64            // sent bytes counted while the flow was not demoted (tracked flows)
	SlowBytes   uint64            // sent bytes counted while it was
	Start       time.Time         // kernel start time if known, else first seen
	End         time.Time         // last observation (Finish: when it was found gone)
	Demoted     bool              // demoted now
	Reason      Reason            // reason of the latest demotion
	DemotedAt   uint64            // sent bytes at the first demotion, 0 if never demoted
	Demotions   uint32
	Promotions  uint32
	FlowTokens  int64 // the flow bucket's level in bytes
	PodTokens   int64 // the pod bucket's level in bytes (negative: in debt)
	Tier        int   // the flow's tripwire tier (demotion.Contract)
	Unfinished  bool  // Finish only: the final counters are the last seen ones (no DESTROY event)
	Adopted     bool  // the flow existed before the watcher started
	Untracked   bool  // Finish only: the watcher never read this flow before it ended (it sent little); Sent counts from its start, or from its counters' last reset by an earlier watcher run
	Why         Why   // Promote only
}
