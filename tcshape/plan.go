// Package tcshape shapes the pod's egress with HTB: one slow class shared by
// every demoted flow, classified without tc filter modules by iptables
// mangle CLASSIFY from the connection mark (package demotion plans those
// rules). Every other packet takes HTB's direct queue, which has no rate and
// no class to account (Config.FastRate zero, the default), or a fast class
// capped at FastRate when one is set.
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
	RootMajor  = 0x4857
	RootHandle = Handle(RootMajor << 16) // the HTB qdisc, 4857:
	// ParentClass (4857:1, rate = ceil = FastRate) and FastClass (4857:10,
	// the default class) exist only when a FastRate caps the fast path.
	// Without one, packets that are not classified take the root's direct
	// queue.
	ParentClass = Handle(RootMajor<<16 | 1)
	FastClass   = Handle(RootMajor<<16 | 0x10)
	// SlowClass (4857:2) is the slow class: rate = ceil = SlowRate, the
	// parent of the three slow leaves. Its byte counter is everything the
	// demoted flows sent (HTB charges an inner class with its children's
	// packets).
	SlowClass = Handle(RootMajor<<16 | 2)
	// BulkClass (4857:20) is the slow leaf every demoted flow is classified
	// into, and where the flows the pod opened (a kernel's uploads) stay. It
	// has the id of the single slow class of earlier versions, so that their
	// rules still classify into a slow leaf.
	BulkClass = Handle(RootMajor<<16 | 0x20)
	// ServedClass (4857:22) is the slow leaf of the demoted flows a peer
	// opened to the pod (the proxy's connections to the notebook server:
	// the answers to the user's browser) that send too much for the
	// interactive leaf: a notebook, a plot. It shares the slow class with
	// the bulk leaf round robin, so such an answer does not wait behind a
	// kernel's uploads in one queue.
	ServedClass = Handle(RootMajor<<16 | 0x22)
	// InteractiveClass (4857:21) is the slow leaf of demoted flows that send
	// little (package demotion's rules decide which): it has the priority,
	// most of the guaranteed rate and a burst of one interactive answer, so
	// that the user's own requests do not queue behind a throttled bulk
	// transfer.
	InteractiveClass      = Handle(RootMajor<<16 | 0x21)
	FastLeafHandle        = Handle(0x4858 << 16)
	BulkLeafHandle        = Handle(0x4859 << 16)
	InteractiveLeafHandle = Handle(0x485a << 16)
	ServedLeafHandle      = Handle(0x485b << 16)
)

const (
	defaultR2Q = 10
	// directQlen is how many packets HTB's direct queue (the fast path
	// without a FastRate) holds when the interface pushes back: a veth's
	// and pfifo_fast's default txqueuelen. A queue only forms where the
	// interface is slower than what the pod sends; it is set rather than
	// left to the interface's txqueuelen, which may be 0 (the kernel then
	// takes 2).
	directQlen    = 1000
	maxQuantum    = 200000 // the kernel's own clamp for computed quanta
	gsoMax        = 64 * 1024
	ethHeader     = 14
	fastBurstTime = 0.002 // seconds of FastRate a fast class may burst
	slowBurstTime = 0.010 // seconds of SlowRate the slow class may burst
	fastLimitTime = 0.020 // seconds of FastRate the fast leaf fifo holds
	// fastLimitMax caps the fast leaf fifo at 20 ms of 10 Gbit/s: a queue
	// only forms there where the interface is slower than FastRate (the
	// default, 1 tbit, is above any), and 20 ms of a faster rate would only
	// be latency (2.5 GB at 1 tbit).
	fastLimitMax  = 25_000_000
	slowLimitTime = 0.100 // seconds of SlowRate a slow leaf fifo holds
	minRate       = 1000  // bytes/s (8 kbit): below, HTB buffers overflow u32 ticks
	defaultMTU    = 1500
	// The slow class's split: the interactive leaf is guaranteed 1/2 of
	// SlowRate and has the priority, the served leaf 1/4, the bulk leaf the
	// rest; each may borrow up to SlowRate from the slow class. The served
	// and bulk leaves' quarters are above the interactive allowance (1/8,
	// package demotion), so a flow alone in either stays above it.
	interactiveShareNum, interactiveShareDen = 1, 2
	servedShareNum, servedShareDen           = 1, 4
)

// InteractiveBurst is the interactive leaf's burst: one answer of up to
// 64 KiB (a JupyterLab action's: a directory listing, a cell's output, a
// small notebook) leaves at once, whatever the slow rate. It is also, with
// the bulk and served leaves' and the slow class's own bursts (10 ms of
// SlowRate, at least two frames each), what the slow class can send above
// SlowRate after an idle spell (Spec.SlowExcess): the long-run bound on
// what leaves the slow class grows by this constant, not with time. Package demotion lets a flow send this
// much in a window and stay interactive.
const InteractiveBurst = 64 * 1024

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
	// FastRate caps everything the interface sends (bytes/s). Zero, the
	// default, means no cap: packets that are not demoted take HTB's direct
	// queue, without a class or a rate.
	FastRate units.Rate
	SlowRate units.Rate
	MTU      uint32 // 0: 1500

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
	Handle Handle
	// Default is the class of unclassified packets; 0: none, they take the
	// direct queue (HTB_DIRECT), which has no rate.
	Default    Handle
	R2Q        uint32
	DirectQlen uint32 // packets the direct queue holds
}

// Direct reports whether unclassified packets take the root's direct queue.
func (r Root) Direct() bool { return r.Default == 0 }

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
	if fast != 0 && fast <= slow {
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
	var classes []Class
	var leaves []Leaf
	root := Root{Handle: RootHandle, R2Q: defaultR2Q, DirectQlen: directQlen}
	slowParent := RootHandle
	if fast != 0 {
		parent, err := class("all", ParentClass, RootHandle, fast, fast, fastBurstTime, 2*gsoMax+frame, 0)
		if err != nil {
			return Spec{}, err
		}
		// The fast class is guaranteed what the slow class is not, and may
		// borrow the rest. It has the lower priority (1): the slow class is
		// capped at its own small rate so it can never starve the fast
		// class, while a fast class that always has tokens (a link slower
		// than FastRate) would starve a slow class of lower priority.
		fastC, err := class("fast", FastClass, ParentClass, fast-slow, fast, fastBurstTime, 2*gsoMax+frame, 1)
		if err != nil {
			return Spec{}, err
		}
		fastLeaf := Leaf{Handle: FastLeafHandle, Parent: FastClass, Kind: "bfifo", Limit: uint32(max(min(uint64(float64(fast)*fastLimitTime), fastLimitMax), 10*gsoMax))}
		if cfg.Leaves == LeafFQ {
			fastLeaf = Leaf{Handle: FastLeafHandle, Parent: FastClass, Kind: "fq", Limit: 10000} // fq's default packet limit
		}
		classes, leaves = []Class{parent, fastC}, []Leaf{fastLeaf}
		root.Default, slowParent = FastClass, ParentClass
	}
	// Without a FastRate the slow class hangs from the root, and HTB
	// dequeues the direct queue before any class: what is not demoted
	// leaves as it would with no qdisc but for the root's lock. The slow
	// class is not starved on a veth, which takes every packet at once;
	// where an interface pushes back, the pod's own fast traffic goes first,
	// and the demoted flows wait.
	slowC, err := class("slow", SlowClass, slowParent, slow, slow, slowBurstTime, 2*frame, 0)
	if err != nil {
		return Spec{}, err
	}
	// The slow class's three leaves. Their guaranteed rates sum to
	// SlowRate and each borrows up to it from the slow class (rate = ceil
	// = SlowRate, which never borrows), so that what leaves the slow class
	// in the long run is SlowRate, as with one leaf, plus the leaves'
	// bursts. The interactive leaf has the priority (0): HTB serves it
	// before the others whenever it has tokens, and lends to it first; its
	// burst is one interactive answer. The served and bulk leaves have the
	// same priority (1): HTB shares what they borrow round robin, by
	// quantum. The bulk leaf has the id, burst and queue of the single slow
	// class of earlier versions; the served leaf the same burst and queue.
	interRate := slow * interactiveShareNum / interactiveShareDen
	servedRate := slow * servedShareNum / servedShareDen
	bulkC, err := class("slow bulk", BulkClass, SlowClass, slow-interRate-servedRate, slow, slowBurstTime, 2*frame, 1)
	if err != nil {
		return Spec{}, err
	}
	servedC, err := class("slow served", ServedClass, SlowClass, servedRate, slow, slowBurstTime, 2*frame, 1)
	if err != nil {
		return Spec{}, err
	}
	interC, err := class("slow interactive", InteractiveClass, SlowClass, interRate, slow, 0, InteractiveBurst, 0)
	if err != nil {
		return Spec{}, err
	}
	// Fifo limits are in bytes: veth carries 64 KB GSO packets, so a packet
	// limit would mean seconds of backlog at the slow rate.
	slowLimit := clampU32(max(uint64(float64(slow)*slowLimitTime), 2*gsoMax))
	// The slow leaves stay byte fifos even where fq exists: fq limits only
	// packets, and the slow queues must be short in bytes. The interactive
	// queue holds at least one burst.
	bulkLeaf := Leaf{Handle: BulkLeafHandle, Parent: BulkClass, Kind: "bfifo", Limit: slowLimit}
	interLeaf := Leaf{Handle: InteractiveLeafHandle, Parent: InteractiveClass, Kind: "bfifo", Limit: max(slowLimit, clampU32(interC.Burst))}
	servedLeaf := Leaf{Handle: ServedLeafHandle, Parent: ServedClass, Kind: "bfifo", Limit: slowLimit}
	return Spec{
		Interface: cfg.Interface,
		Root:      root,
		Classes:   append(classes, slowC, bulkC, interC, servedC),
		Leaves:    append(leaves, bulkLeaf, interLeaf, servedLeaf),
	}, nil
}

// SlowExcess is what the slow class can send above SlowRate × t in any
// span t: the bursts of the slow class and of its leaves, the tokens HTB
// holds after an idle spell (docs/shaping.md, "The long-run bound"). On top
// of it HTB lets a leaf send one packet into token debt. It is the one
// source of the constant the tests and the documentation state.
func (s Spec) SlowExcess() uint64 {
	var n uint64
	for _, c := range s.Classes {
		if c.ID == SlowClass || c.Parent == SlowClass {
			n += c.Burst
		}
	}
	return n
}

func clampU32(v uint64) uint32 {
	if v > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(v)
}
