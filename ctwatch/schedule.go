package ctwatch

import "time"

// Read scheduling: when each tracked flow is read next (a better tier for
// a re-armed flow, a check that a quiet one still exists), and which are
// due.

// scheduleUp sets when to re-arm f unasked: once its bucket has refilled to
// the next better tier (at most every PromoteIdle), else to check after
// CheckAfter that it still exists.
func (p *Policy) scheduleUp(now time.Time, f *flow) {
	at := now.Add(p.cfg.CheckAfter)
	if f.tier > 0 && p.flowRefill > 0 {
		need := float64(p.c.Threshold(f.tier-1)) - f.tokens
		at = minTime(at, now.Add(max(time.Duration(need/p.flowRefill*float64(time.Second)), p.cfg.PromoteIdle)))
	}
	p.setNext(f, at)
}

// setNext sets when f is due and keeps p.earliest a lower bound of every
// flow's, so that Due and Next need not look at every flow every time.
func (p *Policy) setNext(f *flow, at time.Time) {
	f.next = at
	if p.earliest.IsZero() || at.Before(p.earliest) {
		p.earliest = at
	}
}

// RearmFailed reports that the watcher could not read or zero f (an error other
// than the flow being gone): the next observation asks again.
func (p *Policy) RearmFailed(k Key) {
	if f, ok := p.flows[k]; ok {
		f.rearming, f.promoting = false, false
	}
	delete(p.pending, k)
	p.stats.Errors++
}

// Due appends to buf the tracked flows to re-arm unasked at now (a better
// tier, or a check that they still exist). It looks at the flows only when
// one may be due.
func (p *Policy) Due(now time.Time, buf []Key) []Key {
	if p.earliest.IsZero() || now.Before(p.earliest) {
		return buf
	}
	var earliest time.Time
	for _, f := range p.flows {
		switch {
		case f.next.IsZero() || f.rearming:
		case !now.Before(f.next):
			// A demoted flow's read may promote it (Zeroed decides).
			f.next = time.Time{}
			f.rearming, f.promoting = true, f.demoted
			buf = append(buf, f.key)
		case earliest.IsZero() || f.next.Before(earliest):
			earliest = f.next
		}
	}
	p.earliest = earliest
	return buf
}

// Next returns a time at or before the earliest a tracked flow is due
// (zero: none).
func (p *Policy) Next() time.Time { return p.earliest }
