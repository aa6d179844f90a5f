//go:build linux

package tcshape

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"

	tc "github.com/florianl/go-tc"
	"github.com/mdlayher/netlink"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// TC is the Kernel of one network namespace, over rtnetlink: go-tc for
// qdiscs and classes, plain rtnetlink for links and routes.
type TC struct {
	tc *tc.Tc
	rt *netlink.Conn
}

var _ Kernel = (*TC)(nil)

// Open opens rtnetlink sockets into the network namespace netnsFD (an open
// /proc/PID/ns/net or /run/netns/NAME), or into the caller's namespace when
// netnsFD is 0.
func Open(netnsFD int) (*TC, error) {
	t, err := tc.Open(&tc.Config{NetNS: netnsFD})
	if err != nil {
		return nil, fmt.Errorf("opening rtnetlink for tc: %w", err)
	}
	rt, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{NetNS: netnsFD})
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("opening rtnetlink: %w", err)
	}
	return &TC{tc: t, rt: rt}, nil
}

// Close closes the sockets.
func (k *TC) Close() error {
	return errors.Join(k.tc.Close(), k.rt.Close())
}

// link is what hubwarden needs of a network interface.
type link struct {
	Index int
	Name  string
	MTU   uint32
}

func (k *TC) links() ([]link, error) {
	msgs, err := k.rt.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request | netlink.Dump},
		Data:   make([]byte, unix.SizeofIfInfomsg),
	})
	if err != nil {
		return nil, fmt.Errorf("dumping links: %w", err)
	}
	var out []link
	for _, m := range msgs {
		if len(m.Data) < unix.SizeofIfInfomsg {
			continue
		}
		l := link{Index: int(int32(binary.NativeEndian.Uint32(m.Data[4:8])))}
		ad, err := netlink.NewAttributeDecoder(m.Data[unix.SizeofIfInfomsg:])
		if err != nil {
			return nil, fmt.Errorf("decoding link %d: %w", l.Index, err)
		}
		for ad.Next() {
			switch ad.Type() {
			case unix.IFLA_IFNAME:
				l.Name = ad.String()
			case unix.IFLA_MTU:
				l.MTU = ad.Uint32()
			}
		}
		out = append(out, l)
	}
	return out, nil
}

func (k *TC) linkByName(name string) (link, error) {
	ls, err := k.links()
	if err != nil {
		return link{}, err
	}
	for _, l := range ls {
		if l.Name == name {
			return l, nil
		}
	}
	return link{}, fmt.Errorf("finding interface %s: not in this network namespace: %w", name, os.ErrNotExist)
}

// DefaultRouteInterface returns the interface of the IPv4 default route in
// the main table, or of the IPv6 one when there is no IPv4 default route.
func (k *TC) DefaultRouteInterface() (string, error) {
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		req := make([]byte, unix.SizeofRtMsg)
		req[0] = fam
		msgs, err := k.rt.Execute(netlink.Message{
			Header: netlink.Header{Type: unix.RTM_GETROUTE, Flags: netlink.Request | netlink.Dump},
			Data:   req,
		})
		if err != nil {
			return "", fmt.Errorf("dumping routes: %w", err)
		}
		for _, m := range msgs {
			if len(m.Data) < unix.SizeofRtMsg || m.Data[1] != 0 { // dst_len 0: a default route
				continue
			}
			table, oif := uint32(m.Data[4]), uint32(0)
			ad, err := netlink.NewAttributeDecoder(m.Data[unix.SizeofRtMsg:])
			if err != nil {
				return "", fmt.Errorf("decoding a route: %w", err)
			}
			for ad.Next() {
				switch ad.Type() {
				case unix.RTA_TABLE:
					table = ad.Uint32()
				case unix.RTA_OIF:
					oif = ad.Uint32()
				}
			}
			if table != unix.RT_TABLE_MAIN || oif == 0 {
				continue
			}
			ls, err := k.links()
			if err != nil {
				return "", err
			}
			for _, l := range ls {
				if l.Index == int(oif) {
					return l.Name, nil
				}
			}
		}
	}
	return "", errors.New("finding the default route's interface: no default route with an output interface (set HUBWARDEN_INTERFACE)")
}

// Read returns the interface's root qdisc and, when it is hubwarden's, the
// classes and leaves below it.
func (k *TC) Read(iface string) (State, error) {
	l, err := k.linkByName(iface)
	if err != nil {
		return State{}, err
	}
	qs, err := k.tc.Qdisc().Get()
	if err != nil {
		return State{}, fmt.Errorf("dumping qdiscs: %w", err)
	}
	var s State
	var leaves []tc.Object
	for _, q := range qs {
		if int(q.Ifindex) != l.Index {
			continue
		}
		if q.Parent == tc.HandleRoot {
			s.RootKind, s.RootHandle = q.Kind, Handle(q.Handle)
			if q.Kind == "htb" && q.Htb != nil && q.Htb.Init != nil {
				s.Root = Root{Handle: Handle(q.Handle), R2Q: q.Htb.Init.Rate2Quantum}
				if q.Htb.Init.Defcls != 0 { // 0: no default class, the direct queue
					s.Root.Default = NewHandle(Handle(q.Handle).Major(), uint16(q.Htb.Init.Defcls))
				}
				if q.Htb.DirectQlen != nil {
					s.Root.DirectQlen = *q.Htb.DirectQlen
				}
			}
			continue
		}
		if Handle(q.Parent).Major() == RootMajor {
			leaves = append(leaves, q)
		}
	}
	if !s.Ours() {
		return s, nil
	}
	for _, q := range leaves {
		lf := Leaf{Handle: Handle(q.Handle), Parent: Handle(q.Parent), Kind: q.Kind}
		switch {
		case q.Bfifo != nil:
			lf.Limit = q.Bfifo.Limit
		case q.Pfifo != nil:
			lf.Limit = q.Pfifo.Limit
		case q.Fq != nil && q.Fq.PLimit != nil:
			lf.Limit = *q.Fq.PLimit
		}
		s.Leaves = append(s.Leaves, lf)
	}
	cs, err := k.tc.Class().Get(&tc.Msg{Family: unix.AF_UNSPEC, Ifindex: uint32(l.Index)})
	if err != nil {
		return State{}, fmt.Errorf("dumping classes of %s: %w", iface, err)
	}
	for _, c := range cs {
		if c.Kind != "htb" || c.Htb == nil || c.Htb.Parms == nil || Handle(c.Handle).Major() != RootMajor {
			continue
		}
		p := c.Htb.Parms
		cl := Class{ID: Handle(c.Handle), Parent: Handle(c.Parent), Rate: uint64(p.Rate.Rate), Ceil: uint64(p.Ceil.Rate),
			Buffer: p.Buffer, Cbuffer: p.Cbuffer, Quantum: p.Quantum, Prio: p.Prio}
		if cl.Parent == HandleRoot { // the kernel reports a top class's parent as root
			cl.Parent = RootHandle
		}
		if c.Htb.Rate64 != nil {
			cl.Rate = *c.Htb.Rate64
		}
		if c.Htb.Ceil64 != nil {
			cl.Ceil = *c.Htb.Ceil64
		}
		s.Classes = append(s.Classes, cl)
	}
	return s, nil
}

// ClassBytes returns the bytes the HTB class has sent on iface (what left
// the interface through it, after its queue's drops; frames, so each
// packet's link-layer header included). The counter starts at zero when the
// class is created.
func (k *TC) ClassBytes(iface string, class Handle) (uint64, error) {
	l, err := k.linkByName(iface)
	if err != nil {
		return 0, err
	}
	cs, err := k.tc.Class().Get(&tc.Msg{Family: unix.AF_UNSPEC, Ifindex: uint32(l.Index)})
	if err != nil {
		return 0, fmt.Errorf("dumping classes of %s: %w", iface, err)
	}
	for _, c := range cs {
		if Handle(c.Handle) != class {
			continue
		}
		// TCA_STATS (struct tc_stats): go-tc misdecodes the TCA_STATS2
		// byte counter of classes.
		if c.Stats != nil {
			return c.Stats.Bytes, nil
		}
		return 0, fmt.Errorf("class %s of %s has no statistics", class, iface)
	}
	return 0, fmt.Errorf("class %s of %s: %w", class, iface, ErrNoClass)
}

// Do runs one op on the interface.
func (k *TC) Do(iface string, op Op) error {
	l, err := k.linkByName(iface)
	if err != nil {
		return err
	}
	idx := uint32(l.Index)
	switch op.Kind {
	case OpDeleteRoot:
		return k.tc.Qdisc().Delete(&tc.Object{
			Msg:       tc.Msg{Family: unix.AF_UNSPEC, Ifindex: idx, Handle: uint32(RootHandle), Parent: tc.HandleRoot},
			Attribute: tc.Attribute{Kind: "htb", Htb: &tc.Htb{}},
		})
	case OpAddRoot:
		return k.tc.Qdisc().Add(&tc.Object{
			Msg: tc.Msg{Family: unix.AF_UNSPEC, Ifindex: idx, Handle: uint32(op.Root.Handle), Parent: tc.HandleRoot},
			Attribute: tc.Attribute{Kind: "htb", Htb: &tc.Htb{
				Init:       &tc.HtbGlob{Version: 3, Rate2Quantum: op.Root.R2Q, Defcls: uint32(op.Root.Default.Minor())},
				DirectQlen: &op.Root.DirectQlen,
			}},
		})
	case OpAddClass, OpChangeClass:
		obj := htbClassObject(idx, op.Class)
		if op.Kind == OpAddClass {
			return k.tc.Class().Add(obj)
		}
		return k.tc.Class().Replace(obj) // NLM_F_CREATE without EXCL on an existing class: change it
	case OpAddLeaf, OpChangeLeaf:
		obj := &tc.Object{
			Msg:       tc.Msg{Family: unix.AF_UNSPEC, Ifindex: idx, Handle: uint32(op.Leaf.Handle), Parent: uint32(op.Leaf.Parent)},
			Attribute: leafAttribute(op.Leaf),
		}
		return k.tc.Qdisc().Replace(obj) // graft over the default leaf, or change ours in place
	}
	return fmt.Errorf("unknown op %d", op.Kind)
}

func leafAttribute(l Leaf) tc.Attribute {
	limit := l.Limit
	switch l.Kind {
	case "fq":
		return tc.Attribute{Kind: "fq", Fq: &tc.Fq{PLimit: &limit}}
	case "pfifo":
		return tc.Attribute{Kind: "pfifo", Pfifo: &tc.FifoOpt{Limit: limit}}
	default:
		return tc.Attribute{Kind: "bfifo", Bfifo: &tc.FifoOpt{Limit: limit}}
	}
}

// htbClassObject builds a complete HTB class: both rate specs with the
// ethernet link layer (so the kernel needs no rate tables), buffers in
// ticks, an explicit quantum and prio. Missing any of these is what makes
// the kernel answer EINVAL (florianl/go-tc#154). Rates of 2^32 B/s and more
// go in the 64-bit attributes.
func htbClassObject(ifindex uint32, c Class) *tc.Object {
	h := &tc.Htb{Parms: &tc.HtbOpt{
		Rate:    tc.RateSpec{Linklayer: 1, Rate: rate32(c.Rate)},
		Ceil:    tc.RateSpec{Linklayer: 1, Rate: rate32(c.Ceil)},
		Buffer:  c.Buffer,
		Cbuffer: c.Cbuffer,
		Quantum: c.Quantum,
		Prio:    c.Prio,
	}}
	if c.Rate >= math.MaxUint32 {
		r := c.Rate
		h.Rate64 = &r
	}
	if c.Ceil >= math.MaxUint32 {
		r := c.Ceil
		h.Ceil64 = &r
	}
	return &tc.Object{
		Msg:       tc.Msg{Family: unix.AF_UNSPEC, Ifindex: ifindex, Handle: uint32(c.ID), Parent: uint32(c.Parent)},
		Attribute: tc.Attribute{Kind: "htb", Htb: h},
	}
}

func rate32(r uint64) uint32 {
	if r >= math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(r)
}

// ReadClock reads the packet scheduler clock from /proc/net/psched, as
// iproute2 does.
func ReadClock() (Clock, error) {
	b, err := os.ReadFile("/proc/net/psched")
	if err != nil {
		return Clock{}, fmt.Errorf("reading the psched clock: %w", err)
	}
	return ParsePsched(string(b))
}

// DetectLeaves finds out whether the kernel has sch_fq by trying it: it
// adds fq as the root of a throwaway ifb device, then deletes the device.
// It never looks at the kernel version. The reason says why fq was not
// chosen.
func (k *TC) DetectLeaves() (kind LeafKind, reason string) {
	name := fmt.Sprintf("hwprobe%d", os.Getpid()%100000)
	if l, err := k.linkByName(name); err == nil { // left over by a crash (pid 1 in a container, every time)
		k.deleteLink(l.Index)
	}
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.IFLA_IFNAME, name)
	ae.Nested(unix.IFLA_LINKINFO, func(nae *netlink.AttributeEncoder) error {
		nae.String(unix.IFLA_INFO_KIND, "ifb")
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return LeafFIFO, "encoding the probe device: " + err.Error()
	}
	_, err = k.rt.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_NEWLINK, Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl},
		Data:   append(make([]byte, unix.SizeofIfInfomsg), attrs...),
	})
	if err != nil {
		return LeafFIFO, "cannot create an ifb probe device to try fq: " + err.Error()
	}
	l, err := k.linkByName(name)
	if err != nil {
		return LeafFIFO, "finding the probe device: " + err.Error()
	}
	defer k.deleteLink(l.Index)
	limit := uint32(10000)
	err = k.tc.Qdisc().Add(&tc.Object{
		Msg:       tc.Msg{Family: unix.AF_UNSPEC, Ifindex: uint32(l.Index), Handle: uint32(NewHandle(0x485a, 0)), Parent: tc.HandleRoot},
		Attribute: tc.Attribute{Kind: "fq", Fq: &tc.Fq{PLimit: &limit}},
	})
	if err != nil {
		return LeafFIFO, "the kernel refused fq: " + err.Error()
	}
	return LeafFQ, "fq works"
}

func (k *TC) deleteLink(index int) {
	del := make([]byte, unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(del[4:8], uint32(index))
	_, _ = k.rt.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_DELLINK, Flags: netlink.Request | netlink.Acknowledge},
		Data:   del,
	})
}

// Detect fills in what the plan needs from the kernel: Environment, and the
// leaf kind (DetectLeaves, which creates and deletes a probe device). It
// logs which leaf was chosen.
func (k *TC) Detect(cfg Config, log zerolog.Logger) (Config, error) {
	cfg, err := k.Environment(cfg)
	if err != nil {
		return cfg, err
	}
	kind, reason := k.DetectLeaves()
	cfg.Leaves = kind
	log.Info().Str("dev", cfg.Interface).Uint32("mtu", cfg.MTU).Str("leaf", string(kind)).Str("reason", reason).Msg("shaping environment detected")
	return cfg, nil
}

// Environment fills in what the plan needs from the kernel and can be read
// without changing anything: the interface (the default route's when
// cfg.Interface is empty), its MTU when cfg.MTU is 0, and the psched clock.
func (k *TC) Environment(cfg Config) (Config, error) {
	if cfg.Interface == "" {
		name, err := k.DefaultRouteInterface()
		if err != nil {
			return cfg, err
		}
		cfg.Interface = name
	}
	l, err := k.linkByName(cfg.Interface)
	if err != nil {
		return cfg, err
	}
	if cfg.MTU == 0 {
		cfg.MTU = l.MTU
	}
	if cfg.Clock, err = ReadClock(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// acctPath is the per-netns switch for conntrack byte counters.
const acctPath = "/proc/sys/net/netfilter/nf_conntrack_acct"

// EnableAccounting turns conntrack byte and packet accounting on in the
// network namespace of the calling thread (a new netns starts with it off;
// /proc/sys/net resolves to the opener's namespace) and checks that it
// stuck. The sidecar runs inside the pod netns, so it just calls this.
func EnableAccounting() error {
	if err := os.WriteFile(acctPath, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enabling conntrack accounting: %w", err)
	}
	b, err := os.ReadFile(acctPath)
	if err != nil {
		return fmt.Errorf("reading back conntrack accounting: %w", err)
	}
	if strings.TrimSpace(string(b)) != "1" {
		return fmt.Errorf("enabling conntrack accounting: %s reads %q after writing 1", acctPath, strings.TrimSpace(string(b)))
	}
	return nil
}
