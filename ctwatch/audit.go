package ctwatch

import (
	"strconv"

	"github.com/rs/zerolog"
)

// Audit field names. They are a stable interface for log shippers; see
// docs/audit.md before changing one.
const (
	FieldAudit     = "audit" // flow_end, demote, promote, adopt, progress, pod_gate
	FieldFlowID    = "flow_id"
	FieldProto     = "proto"
	FieldDirection = "direction" // in: the peer opened it; out: the pod did
	FieldLocalAddr = "local_addr"
	FieldLocalPort = "local_port"
	FieldPeerAddr  = "peer_addr"
	FieldPeerPort  = "peer_port"
	FieldSentBytes = "sent_bytes"
	FieldSentPkts  = "sent_packets"
	FieldRecvBytes = "recv_bytes"
	FieldRecvPkts  = "recv_packets"
	FieldFastBytes = "fast_bytes"
	FieldSlowBytes = "slow_bytes"
	FieldStart     = "start"
	FieldDuration  = "duration_s"
	FieldDemoted   = "demoted"
	FieldReason    = "reason"
	FieldDemotedAt = "demoted_at_bytes"
	FieldDemotions = "demotions"
	FieldPromos    = "promotions"
	FieldFlowTok   = "flow_tokens"
	FieldPodTok    = "pod_tokens"
	FieldOvershoot = "overshoot_bytes"
	FieldFinal     = "final_counters"
	FieldAdopted   = "adopted"
	FieldTracked   = "tracked" // flow_end: false when the watcher never read the flow (it sent little)
	FieldTier      = "tier"    // the flow's tripwire tier
	FieldBy        = "by"      // demote: "watcher" or "kernel" (the tripwire or the pod gate)
	FieldWhy       = "why"     // promote: "idle" or "tokens_left"
	FieldGate      = "gate"    // pod_gate: "closed" or "open"
)

var auditMessages = map[Kind]string{
	Demote:   "flow demoted",
	Promote:  "flow promoted",
	Adopt:    "flow found demoted",
	Progress: "flow progress",
	Finish:   "flow end",
	// KernelDemote writes the same audit event as Demote, by "kernel".
	KernelDemote: "flow demoted",
	GateClose:    "pod gate closed: the pod budget is spent",
	GateOpen:     "pod gate open",
}

// protoName names the common IP protocols; others are written as numbers.
func protoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 1:
		return "icmp"
	case 58:
		return "icmpv6"
	case 132:
		return "sctp"
	case 136:
		return "udplite"
	}
	return strconv.Itoa(int(p))
}

// writeAudit writes one audit line for a, if a is an audit event. The
// logger carries the user and the server.
func writeAudit(log *zerolog.Logger, a *Action) {
	msg, ok := auditMessages[a.Kind]
	if !ok {
		return
	}
	ev := log.Info()
	if ev == nil {
		return
	}
	r := &a.Record
	if a.Kind == GateClose || a.Kind == GateOpen {
		state := "open"
		if a.Kind == GateClose {
			state = "closed"
		}
		ev.Str(FieldAudit, a.Kind.String()).
			Str(FieldGate, state).
			Int64(FieldPodTok, r.PodTokens).
			Msg(msg)
		return
	}
	dir := "out"
	if r.Inbound {
		dir = "in"
	}
	ev.Str(FieldAudit, a.Kind.String()).
		Uint32(FieldFlowID, r.ID).
		Str(FieldProto, protoName(r.Proto)).
		Str(FieldDirection, dir).
		Str(FieldLocalAddr, r.Local.Addr().String()).
		Uint16(FieldLocalPort, r.Local.Port()).
		Str(FieldPeerAddr, r.Peer.Addr().String()).
		Uint16(FieldPeerPort, r.Peer.Port()).
		Uint64(FieldSentBytes, r.Sent.Bytes).
		Uint64(FieldSentPkts, r.Sent.Packets).
		Uint64(FieldRecvBytes, r.Recv.Bytes).
		Uint64(FieldRecvPkts, r.Recv.Packets).
		Uint64(FieldFastBytes, r.FastBytes).
		Uint64(FieldSlowBytes, r.SlowBytes)
	if !r.Start.IsZero() {
		ev.Time(FieldStart, r.Start).Float64(FieldDuration, r.End.Sub(r.Start).Seconds())
	}
	ev.Bool(FieldDemoted, r.Demoted || r.Demotions > 0 && a.Kind == Finish).
		Uint64(FieldDemotedAt, r.DemotedAt).
		Uint32(FieldDemotions, r.Demotions).
		Uint32(FieldPromos, r.Promotions).
		Int(FieldTier, r.Tier).
		Int64(FieldPodTok, r.PodTokens).
		Bool(FieldAdopted, r.Adopted)
	if !r.Untracked {
		ev.Int64(FieldFlowTok, r.FlowTokens)
	}
	if r.Reason != ReasonNone {
		ev.Str(FieldReason, r.Reason.String())
	}
	switch a.Kind {
	case Demote:
		ev.Str(FieldBy, "watcher").Int64(FieldOvershoot, -r.FlowTokens)
	case KernelDemote:
		ev.Str(FieldBy, "kernel")
	case Promote:
		if r.Why != WhyNone {
			ev.Str(FieldWhy, r.Why.String())
		}
	case Finish:
		ev.Bool(FieldFinal, !r.Unfinished).Bool(FieldTracked, !r.Untracked)
	}
	ev.Msg(msg)
}
