package ctwatch

import (
	"strconv"

	"github.com/rs/zerolog"
)

// Audit field names. They are a stable interface for log shippers; see
// docs/audit.md before changing one.
const (
	FieldAudit     = "audit" // flow_end, demote, promote, adopt, progress
	FieldUser      = "user"
	FieldServer    = "server"
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
	FieldBy        = "by"      // demote: "watcher" or "kernel" (the tripwire or the pod gate)
	FieldWatched   = "watched" // the watcher, not the kernel tripwire, keeps this flow's budget
	FieldWhy       = "why"     // promote: "idle" or "tokens_left"
	FieldGate      = "gate"    // pod_gate: set (true) or cleared
)

var auditMessages = map[Kind]string{
	Demote:   "flow demoted",
	Reapply:  "flow mark set again",
	Watch:    "flow budget kept by the watcher from now on",
	Promote:  "flow promoted",
	Adopt:    "flow found demoted",
	Progress: "flow progress",
	Finish:   "flow end",
	// KernelDemote writes the same audit event as Demote, by "kernel".
	KernelDemote: "flow demoted",
	GateSet:      "pod gate set",
	GateClear:    "pod gate cleared",
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

// writeAudit writes one audit line for a. Reapply is not an audit event and
// goes out at debug level.
func writeAudit(log *zerolog.Logger, user, server string, a *Action) {
	ev := log.Info()
	if a.Kind == Reapply || a.Kind == Watch {
		ev = log.Debug()
	}
	if ev == nil {
		return
	}
	r := &a.Record
	if a.Kind == GateSet || a.Kind == GateClear {
		ev.Str(FieldAudit, a.Kind.String()).
			Str(FieldUser, user).
			Str(FieldServer, server).
			Bool(FieldGate, a.Kind == GateSet).
			Int64(FieldPodTok, r.PodTokens).
			Msg(auditMessages[a.Kind])
		return
	}
	dir := "out"
	if r.Inbound {
		dir = "in"
	}
	ev.Str(FieldAudit, a.Kind.String()).
		Str(FieldUser, user).
		Str(FieldServer, server).
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
		Uint64(FieldSlowBytes, r.SlowBytes).
		Time(FieldStart, r.Start).
		Float64(FieldDuration, r.End.Sub(r.Start).Seconds()).
		Bool(FieldDemoted, r.Demoted || r.Demotions > 0 && a.Kind == Finish).
		Uint64(FieldDemotedAt, r.DemotedAt).
		Uint32(FieldDemotions, r.Demotions).
		Uint32(FieldPromos, r.Promotions).
		Int64(FieldFlowTok, r.FlowTokens).
		Int64(FieldPodTok, r.PodTokens).
		Bool(FieldAdopted, r.Adopted).
		Bool(FieldWatched, r.Watched)
	if r.Reason != ReasonNone {
		ev.Str(FieldReason, r.Reason.String())
	}
	switch a.Kind {
	case Demote:
		ev.Str(FieldBy, "watcher").Int64(FieldOvershoot, r.Overshoot)
	case KernelDemote:
		ev.Str(FieldBy, "kernel")
	case Promote:
		if r.Why != WhyNone {
			ev.Str(FieldWhy, r.Why.String())
		}
	case Finish:
		ev.Bool(FieldFinal, !r.Unfinished)
	}
	ev.Msg(auditMessages[a.Kind])
}
