package ctwatch

import (
	"math"
	"net/netip"
	"time"

	"github.com/hubwarden/hubwarden/conntrack"
)

// The flow lifecycle: a flow is tracked at its first fresh read, walks
// find the ones whose end was missed, and a finished flow gets one record.

// track returns the state of the flow c, creating it; nil for a flow that
// never leaves the pod, and for a new flow when MaxFlows are tracked.
func (p *Policy) track(now time.Time, c *conntrack.Flow) (f *flow, isNew bool) {
	k := keyOf(c)
	if f, ok := p.flows[k]; ok {
		if f.id == c.ID || c.ID == 0 || f.id == 0 {
			return f, false
		}
		// Same tuple, another entry: the old flow died unseen.
		p.finish(now, f, true)
	}
	inbound := p.isLocal(c.Orig.Dst)
	if inbound && p.isLocal(c.Orig.Src) {
		return nil, false
	}
	if len(p.flows) >= p.cfg.MaxFlows {
		return nil, false
	}
	f = &flow{key: k, id: c.ID, inbound: inbound, seen: now, active: now, quietFrom: now, start: now, progress: now, adopted: !p.started, rate: -1}
	if !c.Start.IsZero() && c.Start.Before(now) {
		f.start = c.Start
	}
	o, r := c.Orig, c.Reply
	if inbound {
		f.local = netip.AddrPortFrom(o.Dst, o.DstPort)
		f.peer = netip.AddrPortFrom(o.Src, o.SrcPort)
	} else {
		f.local = netip.AddrPortFrom(o.Src, o.SrcPort)
		f.peer = netip.AddrPortFrom(r.Src, r.SrcPort)
	}
	// What the kernel still allows it is all the watcher can vouch for: its
	// tier's threshold less what it has sent since the flow's start or its
	// counters' last reset (an earlier watcher run's), with no refill for
	// the time before (a restart must not hand an ongoing download a new
	// budget).
	f.sent, f.recv = counters(inbound, c)
	f.tier = p.c.Tier(c.Mark)
	f.tokens = float64(p.c.Threshold(f.tier)) - float64(f.sent.Bytes)
	f.progSent = f.sent.Bytes
	p.flows[k] = f
	return f, true
}

// BeginWalk feeds the start of a dump: started is when it was asked for
// (flows read on their own since keep their newer readings); full says it
// is unfiltered (every flow of the table), so tracked flows missing from it
// are gone.
func (p *Policy) BeginWalk(started time.Time, full bool) {
	p.gen++
	p.full = full
	p.walkStart = started
	p.acts = p.acts[:0]
}

// EndWalk ends a dump read at now. After a full one, tracked flows it did
// not show are finished. The returned actions are valid until the next
// call.
func (p *Policy) EndWalk(now time.Time) []Action {
	p.acts = p.acts[:0]
	p.stats.Walks++
	p.stats.LastWalk = now
	p.started = true
	if p.full {
		for _, f := range p.flows {
			if f.walkGen != p.gen && !f.rearming && !f.seen.After(p.walkStart) {
				p.finish(now, f, true)
			}
		}
	}
	for k, e := range p.ended {
		if now.Sub(e.at) > endedFor {
			delete(p.ended, k)
		}
	}
	return p.acts
}

// Started says whether the first dump has been read.
func (p *Policy) Started() bool { return p.started }

// Destroyed feeds a DESTROY event (final counters) at now: the flow's final
// record, whether the watcher tracked it or not.
func (p *Policy) Destroyed(now time.Time, c *conntrack.Flow) []Action {
	p.acts = p.acts[:0]
	p.stats.Events++
	if p.lateForEnded(c) {
		return p.acts
	}
	k := keyOf(c)
	if f, ok := p.flows[k]; ok && (f.id == c.ID || c.ID == 0 || f.id == 0) {
		p.charge(now, f, c)
		p.finish(now, f, false)
		return p.acts
	}
	inbound := p.isLocal(c.Orig.Dst)
	if inbound && p.isLocal(c.Orig.Src) {
		return p.acts
	}
	r := Record{ID: c.ID, Proto: c.Orig.Proto, Inbound: inbound, End: now, Start: c.Start,
		Tier: p.c.Tier(c.Mark), Untracked: true, PodTokens: int64(math.Round(p.pod)),
		Demoted: c.Mark&p.c.Demoted() != 0, Adopted: false}
	r.Sent, r.Recv = counters(inbound, c)
	r.FastBytes = r.Sent.Bytes
	if r.Demoted {
		r.FastBytes, r.SlowBytes = 0, r.Sent.Bytes
	}
	o := c.Orig
	if inbound {
		r.Local, r.Peer = netip.AddrPortFrom(o.Dst, o.DstPort), netip.AddrPortFrom(o.Src, o.SrcPort)
	} else {
		r.Local, r.Peer = netip.AddrPortFrom(o.Src, o.SrcPort), netip.AddrPortFrom(c.Reply.Src, c.Reply.SrcPort)
	}
	p.stats.Finished++
	p.acts = append(p.acts, Action{Kind: Finish, Key: k, Record: r})
	return p.acts
}

// Gone finishes the flow k with its last seen counters (a read said it no
// longer exists).
func (p *Policy) Gone(now time.Time, k Key) []Action {
	p.acts = p.acts[:0]
	delete(p.pending, k)
	if f, ok := p.flows[k]; ok {
		p.finish(now, f, true)
	}
	return p.acts
}

// lateForEnded says whether c is a flow already finished (its final record
// written): a DESTROY event after a read that no longer found it.
func (p *Policy) lateForEnded(c *conntrack.Flow) bool {
	e, ok := p.ended[keyOf(c)]
	return ok && e.id == c.ID && c.ID != 0
}

// finish writes f's final record and forgets it.
func (p *Policy) finish(now time.Time, f *flow, unfinished bool) {
	delete(p.flows, f.key)
	if f.demoted {
		p.nDemoted--
	}
	p.ended[f.key] = endedFlow{id: f.id, at: now}
	p.stats.Finished++
	end := f.seen
	if !unfinished {
		end = now
	}
	p.acts = append(p.acts, Action{Kind: Finish, Key: f.key, Record: p.record(f, end)})
	p.acts[len(p.acts)-1].Record.Unfinished = unfinished
}

// progressLine writes a progress line for f when ProgressInterval has
// passed since the last and it has sent since.
func (p *Policy) progressLine(now time.Time, f *flow) {
	if now.Sub(f.progress) < p.cfg.ProgressInterval {
		return
	}
	if s := f.totalSent().Bytes; s != f.progSent {
		p.emit(Progress, f, now)
		f.progSent = s
	}
	f.progress = now
}

func (p *Policy) emit(k Kind, f *flow, now time.Time) {
	p.acts = append(p.acts, Action{Kind: k, Key: f.key, Record: p.record(f, now)})
}

func (p *Policy) record(f *flow, end time.Time) Record {
	return Record{
		ID:         f.id,
		Proto:      f.key.Orig.Proto,
		Local:      f.local,
		Peer:       f.peer,
		Inbound:    f.inbound,
		Sent:       f.totalSent(),
		Recv:       f.totalRecv(),
		FastBytes:  f.fast,
		SlowBytes:  f.slow,
		Start:      f.start,
		End:        end,
		Demoted:    f.demoted,
		Reason:     f.reason,
		DemotedAt:  f.demotedAt,
		Demotions:  f.demotions,
		Promotions: f.promotions,
		FlowTokens: int64(math.Round(f.tokens)),
		PodTokens:  int64(math.Round(p.pod)),
		Tier:       f.tier,
		Adopted:    f.adopted,
	}
}
