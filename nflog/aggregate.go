package nflog

import (
	"math/bits"
	"net/netip"
	"slices"
	"time"

	"github.com/rs/zerolog"
)

// Defaults of the Aggregator's memory bounds.
const (
	DefaultMaxKeys = 256 // distinct destinations per window
	portSampleLen  = 8   // ports listed per destination line
)

// Aggregator sums Denials per destination (family, protocol, address) over a
// window. Memory is bounded: at most MaxKeys destinations per window, each
// with an 8 KiB port bitmap at most; packets to further destinations are only
// counted ("others"). It is not safe for concurrent use and does no I/O
// except through the logger given to Flush.
type Aggregator struct {
	maxKeys int
	now     func() time.Time

	start  time.Time
	dsts   map[dstKey]*dstAgg
	order  []dstKey // first-seen order, for stable output
	others int      // packets to destinations beyond maxKeys
}

type dstKey struct {
	family, proto string
	dst           netip.Addr
}

type dstAgg struct {
	packets  int
	ports    *[1024]uint64 // distinct ports (or ICMP types) seen; nil until the first
	nports   int
	sample   []uint16
	noPort   int // packets without a transport header
	srcs     []netip.Addr
	prefix   string
	uid      uint32
	hasUID   bool
	first    time.Time
	lastSeen time.Time
}

// NewAggregator returns an Aggregator; maxKeys <= 0 means DefaultMaxKeys.
// now is the clock (time.Now in production).
func NewAggregator(maxKeys int, now func() time.Time) *Aggregator {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	return &Aggregator{maxKeys: maxKeys, now: now, start: now(), dsts: map[dstKey]*dstAgg{}}
}

// Add counts one denial.
func (a *Aggregator) Add(d Denial) {
	k := dstKey{d.Family, d.Proto, d.Dst}
	g, ok := a.dsts[k]
	if !ok {
		if len(a.dsts) >= a.maxKeys {
			a.others++
			return
		}
		g = &dstAgg{first: d.Time, prefix: d.Prefix, uid: d.UID, hasUID: d.HasUID}
		a.dsts[k] = g
		a.order = append(a.order, k)
	}
	g.packets++
	g.lastSeen = d.Time
	if len(g.srcs) < 2 && !slices.Contains(g.srcs, d.Src) {
		g.srcs = append(g.srcs, d.Src)
	}
	if !d.HasPort {
		g.noPort++
		return
	}
	if g.ports == nil {
		g.ports = new([1024]uint64)
	}
	w, bit := d.DstPort/64, uint64(1)<<(d.DstPort%64)
	if g.ports[w]&bit == 0 {
		g.ports[w] |= bit
		g.nports++
		if len(g.sample) < portSampleLen {
			g.sample = append(g.sample, d.DstPort)
		}
	}
}

// Pending reports how many packets the current window holds.
func (a *Aggregator) Pending() int {
	n := a.others
	for _, g := range a.dsts {
		n += g.packets
	}
	return n
}

// Summary is one destination's denials in a window.
type Summary struct {
	Family, Proto string
	Dst           netip.Addr
	Packets       int
	Ports         int      // distinct ports (ICMP: types)
	PortSample    []uint16 // the first few distinct ports seen
	NoPort        int      // packets whose transport header was not captured
	Srcs          []netip.Addr
	Prefix        string
	UID           uint32
	HasUID        bool
	First, Last   time.Time
}

// Window is what Flush returns: the summaries of one window, and the packets
// to destinations beyond the key cap.
type Window struct {
	Start, End time.Time
	Summaries  []Summary
	Others     int
}

// Flush ends the current window, returns it and starts the next one.
func (a *Aggregator) Flush() Window {
	end := a.now()
	w := Window{Start: a.start, End: end, Others: a.others}
	for _, k := range a.order {
		g := a.dsts[k]
		w.Summaries = append(w.Summaries, Summary{
			Family: k.family, Proto: k.proto, Dst: k.dst,
			Packets: g.packets, Ports: g.nports, PortSample: g.sample, NoPort: g.noPort,
			Srcs: g.srcs, Prefix: g.prefix, UID: g.uid, HasUID: g.hasUID,
			First: g.first, Last: g.lastSeen,
		})
	}
	a.start, a.others, a.order = end, 0, nil
	a.dsts = make(map[dstKey]*dstAgg, min(len(w.Summaries), a.maxKeys))
	return w
}

// Log writes one warn line per destination, plus one for the others, to log
// (which carries user and server, see the sidecar). An empty window writes
// nothing. It returns the number of lines written.
func (w Window) Log(log *zerolog.Logger) int {
	n := 0
	dur := w.End.Sub(w.Start)
	for _, s := range w.Summaries {
		ev := log.Warn().
			Str("event", "egress_denied").
			Str("family", s.Family).
			Str("proto", s.Proto).
			Stringer("dst", s.Dst).
			Int("packets", s.Packets)
		portKey, sampleKey := "ports", "port_sample"
		if s.Proto == "icmp" || s.Proto == "icmpv6" {
			portKey, sampleKey = "icmp_types", "icmp_type_sample"
		}
		if s.Ports == 1 {
			single := "port"
			if portKey == "icmp_types" {
				single = "icmp_type"
			}
			ev = ev.Uint16(single, s.PortSample[0])
		} else if s.Ports > 1 {
			ev = ev.Int(portKey, s.Ports).Uints16(sampleKey, s.PortSample)
		}
		if len(s.Srcs) > 0 {
			ev = ev.Stringer("src", s.Srcs[0])
		}
		if s.Prefix != "" {
			ev = ev.Str("rule", s.Prefix)
		}
		if s.HasUID {
			ev = ev.Uint32("uid", s.UID)
		}
		ev.Dur("window", dur).Msg("egress denied")
		n++
	}
	if w.Others > 0 {
		log.Warn().Str("event", "egress_denied").Str("dst", "others").Int("packets", w.Others).
			Dur("window", dur).Msg("egress denied to more destinations than the log keeps per window")
		n++
	}
	return n
}

// portCount is used by tests to cross-check nports.
func (g *dstAgg) portCount() int {
	if g.ports == nil {
		return 0
	}
	n := 0
	for _, w := range g.ports {
		n += bits.OnesCount64(w)
	}
	return n
}
