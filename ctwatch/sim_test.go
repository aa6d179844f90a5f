package ctwatch

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/conntrack"
	"github.com/hubwarden/hubwarden/demotion"
	"github.com/hubwarden/hubwarden/units"
)

// The simulation: a model of the kernel half (conntrack counters, the
// tripwire tiers and busy mark, the pod quota, the slow class) driven by
// packets, and the real Watcher on a fake clock, with events delivered
// after a chosen delay (or never: a dead or starved watcher). Time jumps
// from event to event, so hours take milliseconds.

var (
	podIP  = netip.MustParseAddr("198.18.50.1")
	peerIP = netip.MustParseAddr("198.18.50.2")
	t0     = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

const (
	pkt      = 16 << 10 // bytes per simulated packet
	linkRate = 1e9      // the fast link, bytes/s
	slowRate = 125000.0 // the slow class, bytes/s
)

func testContract(t testing.TB, budget units.Size) demotion.Contract {
	t.Helper()
	c, err := demotion.New(0x100000, budget)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testConfig(t testing.TB) Config {
	return Config{
		Contract:         testContract(t, 64*units.MiB),
		FlowRefill:       units.Rate(units.MiB),
		PodBudget:        256 * units.MiB,
		PodRefill:        256 * units.Rate(units.KiB),
		PromoteIdle:      2 * time.Second,
		DumpInterval:     time.Second,
		ProgressInterval: time.Minute,
		LocalAddrs:       []netip.Addr{podIP},
	}
}

// kflow is a conntrack entry of the model.
type kflow struct {
	c        conntrack.Flow
	inbound  bool
	fast     float64 // bytes that went through the fast class
	slow     float64
	queue    []xfer // transfers to send, in order
	left     float64
	sending  bool
	closeAt  time.Duration // after the last transfer; 0: stays open
	closed   bool
	nextPkt  time.Time
	maxRate  float64 // per-flow cap (0: share of the link)
	gen      int
	fastLast float64 // fast bytes in the current transfer
}

type xfer struct {
	at   time.Duration // since the start; 0 with after: right after the previous
	size float64
}

// kernel is the model of the kernel half.
type kernel struct {
	t       *testing.T
	c       demotion.Contract
	now     time.Time
	flows   map[conntrack.Tuple]*kflow
	order   []*kflow
	limit   uint64
	used    uint64
	slowSum uint64
	pending []pendingEvent
	delay   time.Duration // event delivery; <0: never
	events  int
	port    uint16
}

type pendingEvent struct {
	at time.Time
	ev conntrack.Event
}

func newKernel(t *testing.T, c demotion.Contract, podLevel uint64) *kernel {
	return &kernel{t: t, c: c, now: t0, flows: map[conntrack.Tuple]*kflow{}, limit: podLevel, port: 40000}
}

func (k *kernel) sent(f *kflow) *conntrack.Counter {
	if f.inbound {
		return &f.c.ReplyCounter
	}
	return &f.c.OrigCounter
}

func (k *kernel) event(typ conntrack.EventType, f *kflow) {
	if k.delay < 0 {
		return
	}
	k.events++
	k.pending = append(k.pending, pendingEvent{at: k.now.Add(k.delay), ev: conntrack.Event{Type: typ, Flow: f.c}})
}

// setMark changes a flow's mark as a rule would: an UPDATE event when it
// changed.
func (k *kernel) setMark(f *kflow, mark, mask uint32) {
	m := f.c.Mark&^mask | mark&mask
	if m != f.c.Mark {
		f.c.Mark = m
		k.event(conntrack.EventUpdate, f)
	}
}

// packet sends n bytes from the pod on f through the rules; it returns
// whether the packet went to the slow class.
func (k *kernel) packet(f *kflow, n uint64) bool {
	c := k.sent(f)
	c.Bytes += n
	c.Packets++
	d, a := k.c.Demoted(), k.c.Attention()
	if f.c.Mark&d == 0 {
		// The quota gate (nftables, before mangle).
		k.used += n
		if k.used > k.limit {
			k.setMark(f, d|a, d|a)
		}
	}
	if f.c.Mark&d == 0 {
		tier := k.c.Tier(f.c.Mark)
		switch {
		case c.Bytes >= k.c.Threshold(tier):
			k.setMark(f, d|a, d|a)
		case c.Bytes >= k.c.BusyAt(tier) && f.c.Mark&a == 0:
			k.setMark(f, a, a)
		}
	}
	slow := f.c.Mark&d != 0
	if slow {
		k.slowSum += n
	}
	return slow
}

// Table.
func (k *kernel) Walk(_ context.Context, flt conntrack.Filter, fn func(*conntrack.Flow) error) error {
	for _, f := range k.order {
		if f.closed || f.c.Mark&flt.MarkMask != flt.Mark&flt.MarkMask {
			continue
		}
		c := f.c
		if err := fn(&c); err != nil {
			return err
		}
	}
	return nil
}

func (k *kernel) GetZero(_ context.Context, orig conntrack.Tuple) (conntrack.Flow, error) {
	f, ok := k.flows[orig]
	if !ok || f.closed {
		return conntrack.Flow{}, conntrack.ErrNotFound
	}
	c := f.c
	f.c.OrigCounter, f.c.ReplyCounter = conntrack.Counter{}, conntrack.Counter{}
	return c, nil
}

func (k *kernel) SetMark(_ context.Context, orig conntrack.Tuple, mark, mask uint32) error {
	f, ok := k.flows[orig]
	if !ok || f.closed {
		return conntrack.ErrNotFound
	}
	k.setMark(f, mark, mask)
	return nil
}

// Quota.
func (k *kernel) Quota() (uint64, uint64, error) { return k.limit, min(k.used, k.limit), nil } // the kernel caps the count it reports
func (k *kernel) SetLimit(l uint64) error        { k.limit = l; return nil }
func (k *kernel) SlowBytes() (uint64, error)     { return k.slowSum, nil }

// sim drives the kernel model and a Watcher.
type sim struct {
	t     *testing.T
	k     *kernel
	w     *Watcher
	cfg   Config
	start time.Time
	audit bytes.Buffer
	// dumpOnly: the watcher runs as without events (a dump every
	// DumpInterval), though the kernel model still sends them.
	dumpOnly bool
}

func newSim(t *testing.T, cfg Config) *sim {
	s := &sim{t: t, cfg: cfg, start: t0}
	s.k = newKernel(t, cfg.Contract, uint64(cfg.PodBudget))
	s.restart()
	return s
}

// restart replaces the watcher with a new one (a restart of hubwarden).
func (s *sim) restart() {
	log := zerolog.New(&s.audit)
	s.w = New(s.cfg, s.k, log, Options{Now: func() time.Time { return s.k.now }, Quota: s.k, SlowBytes: s.k.SlowBytes})
	if err := s.w.Start(context.Background()); err != nil {
		s.t.Fatal(err)
	}
	// As Run with the kernel's events: dumps only as a backstop. Tests of
	// the dump-only watcher set s.dumpOnly before.
	s.w.SetEvents(!s.dumpOnly)
}

func (s *sim) add(inbound bool, closeAt time.Duration, xs ...xfer) *kflow {
	k := s.k
	k.port++
	f := &kflow{inbound: inbound, queue: xs, closeAt: closeAt}
	f.c.ID = uint32(k.port)
	if inbound {
		f.c.Orig = conntrack.Tuple{Proto: 6, Src: peerIP, Dst: podIP, SrcPort: k.port, DstPort: 8888}
	} else {
		f.c.Orig = conntrack.Tuple{Proto: 6, Src: podIP, Dst: peerIP, SrcPort: k.port, DstPort: 443}
	}
	o := f.c.Orig
	f.c.Reply = conntrack.Tuple{Proto: 6, Src: o.Dst, Dst: o.Src, SrcPort: o.DstPort, DstPort: o.SrcPort}
	k.flows[f.c.Orig] = f
	k.order = append(k.order, f)
	return f
}

// rate is f's sending rate now: its share of the fast link or of the slow
// class.
func (s *sim) rate(f *kflow) float64 {
	slow := f.c.Mark&s.k.c.Demoted() != 0
	n := 0
	for _, g := range s.k.order {
		if g.sending && !g.closed && (g.c.Mark&s.k.c.Demoted() != 0) == slow {
			n++
		}
	}
	r := linkRate
	if slow {
		r = slowRate
	}
	r /= float64(max(n, 1))
	if f.maxRate > 0 && !slow {
		r = math.Min(r, f.maxRate)
	}
	return r
}

// run advances the simulation to d after the start.
func (s *sim) run(d time.Duration) {
	end := s.start.Add(d)
	ctx := context.Background()
	k := s.k
	wake := func() time.Time {
		// The next thing to happen: a packet, a transfer start, a close,
		// an event delivery, the watcher's wake-up (at most every 10 ms).
		t := k.now.Add(10 * time.Millisecond)
		for _, f := range k.order {
			if f.closed {
				continue
			}
			switch {
			case f.sending && f.nextPkt.Before(t):
				t = f.nextPkt
			case !f.sending && len(f.queue) > 0:
				if at := s.start.Add(f.queue[0].at); at.Before(t) {
					t = at
				}
			case !f.sending && len(f.queue) == 0 && f.closeAt > 0:
				if at := s.start.Add(f.closeAt); at.Before(t) {
					t = at
				}
			}
		}
		for _, e := range k.pending {
			if e.at.Before(t) {
				t = e.at
			}
		}
		return t
	}
	for k.now.Before(end) {
		next := wake()
		if next.After(end) {
			next = end
		}
		if next.After(k.now) {
			k.now = next
		}
		for _, f := range k.order {
			if f.closed {
				continue
			}
			if !f.sending && len(f.queue) > 0 && !k.now.Before(s.start.Add(f.queue[0].at)) {
				f.sending, f.left, f.fastLast = true, f.queue[0].size, 0
				f.queue = f.queue[1:]
				f.nextPkt = k.now
			}
			for f.sending && !f.nextPkt.After(k.now) {
				n := math.Min(pkt, f.left)
				slow := k.packet(f, uint64(n))
				if slow {
					f.slow += n
				} else {
					f.fast += n
					f.fastLast += n
				}
				f.left -= n
				if f.left <= 0 {
					f.sending = false
					break
				}
				f.nextPkt = f.nextPkt.Add(time.Duration(float64(pkt) / s.rate(f) * float64(time.Second)))
			}
			if !f.sending && len(f.queue) == 0 && f.closeAt > 0 && !k.now.Before(s.start.Add(f.closeAt)) {
				f.closed = true
				delete(k.flows, f.c.Orig)
				k.event(conntrack.EventDestroy, f)
			}
		}
		open := k.order[:0]
		for _, f := range k.order {
			if !f.closed {
				open = append(open, f)
			}
		}
		clear(k.order[len(open):])
		k.order = open
		var due []pendingEvent
		rest := k.pending[:0]
		for _, e := range k.pending {
			if !e.at.After(k.now) {
				due = append(due, e)
			} else {
				rest = append(rest, e)
			}
		}
		k.pending = rest
		for _, e := range due {
			s.w.HandleEvent(ctx, e.ev)
		}
		if k.delay >= 0 {
			s.w.Step(ctx)
		}
	}
}

// lines returns the audit lines of kind audit.
func (s *sim) lines(audit string) []map[string]any {
	var out []map[string]any
	for _, l := range bytes.Split(s.audit.Bytes(), []byte{'\n'}) {
		if len(l) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			s.t.Fatalf("audit line %q: %v", l, err)
		}
		if m[FieldAudit] == audit {
			out = append(out, m)
		}
	}
	return out
}
