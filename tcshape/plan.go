// Package tcshape shapes the pod's egress with HTB: a fast default class and
// one slow class shared by every demoted flow, classified without tc filter
// modules by iptables mangle CLASSIFY from the connection mark (package
// demotion plans those rules).
//
// Plan and Diff are pure: they turn a Config (plus what apply code read from
// the kernel: the psched clock and the available leaf qdisc) into a Spec,
// and a read kernel State plus a Spec into Ops. Apply runs Ops through a Kernel; apply_linux.go implements it with
// go-tc over rtnetlink.
//
// hubwarden owns the HTB root with major handle 4857: ("HW" in ASCII) on the
// shaped interface and everything below it. A root with another handle is
// someone else's, except a kernel default root (handle 0:), which hubwarden
// replaces.
package tcshape

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/hubwarden/hubwarden/units"
)

// Handle is a tc handle or class id: major in the upper 16 bits, minor in
// the lower 16.
type Handle uint32

// NewHandle builds a handle from its major and minor numbers.
func NewHandle(major, minor uint16) Handle { return Handle(uint32(major)<<16 | uint32(minor)) }

// Major returns the handle's major number.
func (h Handle) Major() uint16 { return uint16(h >> 16) }

// Minor returns the handle's minor number.
func (h Handle) Minor() uint16 { return uint16(h) }

// String prints the handle as tc does: "4857:" for a qdisc (minor 0) and
// "4857:20" for a class, both in hex.
func (h Handle) String() string {
	if h == HandleRoot {
		return "root"
	}
	if h.Minor() == 0 {
		return fmt.Sprintf("%x:", h.Major())
	}
	return fmt.Sprintf("%x:%x", h.Major(), h.Minor())
}

// HandleRoot is TC_H_ROOT, the parent of a root qdisc.
const HandleRoot Handle = 0xFFFFFFFF

// The handles hubwarden owns. 0x4857 is "HW" in ASCII.
const (
	RootMajor      = 0x4857
	RootHandle     = Handle(RootMajor << 16)   // the HTB qdisc, 4857:
	ParentClass    = Handle(RootMajor<<16 | 1) // 4857:1, rate = ceil = FastRate
	FastClass      = Handle(RootMajor<<16 | 0x10)
	SlowClass      = Handle(RootMajor<<16 | 0x20)
	FastLeafHandle = Handle(0x4858 << 16)
	SlowLeafHandle = Handle(0x4859 << 16)
	defaultR2Q     = 10
	maxQuantum     = 200000 // the kernel's own clamp for computed quanta
	gsoMax         = 64 * 1024
	ethHeader      = 14
	fastBurstTime  = 0.002 // seconds of FastRate a fast class may burst
	slowBurstTime  = 0.010 // seconds of SlowRate the slow class may burst
	fastLimitTime  = 0.020 // seconds of FastRate the fast leaf fifo holds
	slowLimitTime  = 0.100 // seconds of SlowRate the slow leaf fifo holds
	minRate        = 1000  // bytes/s (8 kbit): below, HTB buffers overflow u32 ticks
	defaultMTU     = 1500
)

// LeafKind is the kind of leaf qdisc the kernel offers, detected by apply
// code by trying, and an input to the plan.
type LeafKind string

// The leaf kinds.
const (
	// LeafFQ: sch_fq is available; the fast leaf is fq.
	LeafFQ LeafKind = "fq"
	// LeafFIFO: no sch_fq; the fast leaf is a byte fifo.
	LeafFIFO LeafKind = "fifo"
)

// Clock is the kernel's packet scheduler clock as /proc/net/psched reports
// it. HTB buffers are given in its ticks.
type Clock struct {
	TicksPerUsec float64
}

// DefaultClock is the clock of every kernel since 2.6.x with high resolution
// timers: one tick is 64 ns.
var DefaultClock = Clock{TicksPerUsec: 1000.0 / 64}

// ParsePsched parses the content of /proc/net/psched the way iproute2's
// tc_core_init does: t2us, us2t and the clock resolution in hex.
func ParsePsched(s string) (Clock, error) {
	f := strings.Fields(s)
	if len(f) < 3 {
		return Clock{}, fmt.Errorf("parsing psched %q: want at least 3 hex fields", s)
	}
	var v [3]uint64
	for i := range v {
		n, err := strconv.ParseUint(f[i], 16, 32)
		if err != nil {
			return Clock{}, fmt.Errorf("parsing psched field %d %q: %w", i+1, f[i], err)
		}
		v[i] = n
	}
	t2us, us2t, res := v[0], v[1], v[2]
	if res == 1000000000 { // iproute2 compatibility hack: nanosecond clocks
		t2us = us2t
	}
	if t2us == 0 || us2t == 0 || res == 0 {
		return Clock{}, fmt.Errorf("parsing psched %q: zero field", s)
	}
	c := Clock{TicksPerUsec: float64(t2us) / float64(us2t) * (float64(res) / 1e6)}
	if c.TicksPerUsec <= 0 || math.IsInf(c.TicksPerUsec, 0) || math.IsNaN(c.TicksPerUsec) {
		return Clock{}, fmt.Errorf("parsing psched %q: bad tick rate", s)
	}
	return c, nil
}

// ticks converts the time to send size bytes at rate bytes/s into ticks.
func (c Clock) ticks(size, rate uint64) (uint32, error) {
	t := float64(size) / float64(rate) * 1e6 * c.TicksPerUsec
	if t < 1 {
		t = 1
	}
	if t > math.MaxUint32 {
		return 0, fmt.Errorf("%d bytes at %d B/s is %.0f ticks, more than 32 bits hold", size, rate, t)
	}
	return uint32(math.Ceil(t)), nil
}

// Config is what shaping needs, filled by the sidecar from its Config and
// from what apply code detected (Interface when it was empty, MTU, Clock,
// Leaves).
type Config struct {
	Interface string
	FastRate  units.Rate
	SlowRate  units.Rate
	MTU       uint32 // 0: 1500

	Clock  Clock    // from /proc/net/psched; zero value: DefaultClock
	Leaves LeafKind // detected; empty: LeafFIFO
}

// Spec is the desired qdisc tree on one interface.
type Spec struct {
	Interface string
	Root      Root
	Classes   []Class // parents before children
	Leaves    []Leaf
}

// Root is the HTB root qdisc.
type Root struct {
	Handle  Handle
	Default Handle // class of unclassified packets
	R2Q     uint32
}

// Class is one HTB class. Rates are in bytes per second, buffers in psched
// ticks, as the kernel takes and reports them.
type Class struct {
	Name            string // for humans; not in the kernel (Diff ignores it)
	ID, Parent      Handle
	Rate, Ceil      uint64
	Burst, Cburst   uint64 // bytes; what Buffer and Cbuffer were computed from
	Buffer, Cbuffer uint32
	Quantum         uint32
	Prio            uint32
}

// Leaf is a leaf qdisc under a class.
type Leaf struct {
	Handle, Parent Handle
	Kind           string // "fq", "pfifo", "bfifo"
	Limit          uint32 // bfifo: bytes; pfifo, fq: packets
}

// Plan computes the qdisc tree for cfg.
func Plan(cfg Config) (Spec, error) {
	if cfg.Interface == "" {
		return Spec{}, errors.New("planning shaping: no interface (resolve the default route's interface first)")
	}
	fast, slow := uint64(cfg.FastRate), uint64(cfg.SlowRate)
	if slow < minRate {
		return Spec{}, fmt.Errorf("planning shaping: slow rate %s is below the minimum 8kbit", cfg.SlowRate)
	}
	if fast <= slow {
		return Spec{}, fmt.Errorf("planning shaping: fast rate %s must be above the slow rate %s", cfg.FastRate, cfg.SlowRate)
	}
	mtu := uint64(cfg.MTU)
	if mtu == 0 {
		mtu = defaultMTU
	}
	if mtu < 68 || mtu > 65535 {
		return Spec{}, fmt.Errorf("planning shaping: MTU %d of %s is out of range 68-65535", mtu, cfg.Interface)
	}
	clock := cfg.Clock
	if clock.TicksPerUsec == 0 {
		clock = DefaultClock
	}
	frame := mtu + ethHeader

	class := func(name string, id, parent Handle, rate, ceil uint64, burstTime float64, minBurst uint64, prio uint32) (Class, error) {
		burst := max(uint64(float64(ceil)*burstTime), minBurst)
		c := Class{Name: name, ID: id, Parent: parent, Rate: rate, Ceil: ceil, Burst: burst, Cburst: burst, Prio: prio}
		var err error
		if c.Buffer, err = clock.ticks(burst, rate); err != nil {
			return c, fmt.Errorf("planning class %s (%s) buffer: %w", id, name, err)
		}
		if c.Cbuffer, err = clock.ticks(burst, ceil); err != nil {
			return c, fmt.Errorf("planning class %s (%s) cbuffer: %w", id, name, err)
		}
		// As the kernel computes it from r2q, clamped to 1000-200000, but
		// never below one full frame.
		c.Quantum = uint32(min(max(rate/defaultR2Q, frame, 1000), maxQuantum))
		return c, nil
	}
	parent, err := class("all", ParentClass, RootHandle, fast, fast, fastBurstTime, 2*gsoMax+frame, 0)
	if err != nil {
		return Spec{}, err
	}
	// The fast class is guaranteed what the slow class is not, and may borrow
	// the rest. It has the lower priority (1): the slow class is capped at
	// its own small rate so it can never starve the fast class, while a fast
	// class that always has tokens (a link slower than FastRate) would
	// starve a slow class of lower priority.
	fastC, err := class("fast", FastClass, ParentClass, fast-slow, fast, fastBurstTime, 2*gsoMax+frame, 1)
	if err != nil {
		return Spec{}, err
	}
	slowC, err := class("slow", SlowClass, ParentClass, slow, slow, slowBurstTime, 2*frame, 0)
	if err != nil {
		return Spec{}, err
	}
	// Fifo limits are in bytes: veth carries 64 KB GSO packets, so a packet
	// limit would mean seconds of backlog at the slow rate.
	slowLimit := clampU32(max(uint64(float64(slow)*slowLimitTime), 2*gsoMax))
	fastLeaf := Leaf{Handle: FastLeafHandle, Parent: FastClass, Kind: "bfifo", Limit: clampU32(max(uint64(float64(fast)*fastLimitTime), 10*gsoMax))}
	if cfg.Leaves == LeafFQ {
		fastLeaf = Leaf{Handle: FastLeafHandle, Parent: FastClass, Kind: "fq", Limit: 10000} // fq's default packet limit
	}
	// The slow leaf stays a byte fifo even where fq exists: fq limits only
	// packets, and the slow queue must be short in bytes.
	slowLeaf := Leaf{Handle: SlowLeafHandle, Parent: SlowClass, Kind: "bfifo", Limit: slowLimit}
	return Spec{
		Interface: cfg.Interface,
		Root:      Root{Handle: RootHandle, Default: FastClass, R2Q: defaultR2Q},
		Classes:   []Class{parent, fastC, slowC},
		Leaves:    []Leaf{fastLeaf, slowLeaf},
	}, nil
}

func clampU32(v uint64) uint32 {
	if v > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(v)
}
