package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// ctnetlink constants from include/uapi/linux/netfilter/nfnetlink.h and
// nfnetlink_conntrack.h. Attribute payloads are big-endian; netlink
// attribute and message headers are in host byte order.
const (
	subsysCT = 1 // NFNL_SUBSYS_CTNETLINK, the high byte of the message type

	msgNew     = 0 // IPCTNL_MSG_CT_NEW: dump replies, NEW/UPDATE events, updates
	msgGet     = 1 // IPCTNL_MSG_CT_GET
	msgDelete  = 2 // IPCTNL_MSG_CT_DELETE: DESTROY events
	msgGetZero = 3 // IPCTNL_MSG_CT_GET_CTRZERO: get and zero the counters

	nfgenLen = 4 // struct nfgenmsg: family u8, version u8, res_id be16

	afUnspec = 0
	afInet   = 2
	afInet6  = 10

	// Netlink header flags used to tell NEW from UPDATE events.
	flagExcl   = 0x200 // NLM_F_EXCL
	flagCreate = 0x400 // NLM_F_CREATE

	nlaNested   = 0x8000 // NLA_F_NESTED
	nlaTypeMask = 0x3fff // ^(NLA_F_NESTED | NLA_F_NET_BYTEORDER)
)

// enum ctattr_type
const (
	ctaTupleOrig     = 1
	ctaTupleReply    = 2
	ctaStatus        = 3
	ctaTimeout       = 7
	ctaMark          = 8
	ctaCountersOrig  = 9
	ctaCountersReply = 10
	ctaID            = 12
	ctaZone          = 18
	ctaTimestamp     = 20
	ctaMarkMask      = 21
)

// enum ctattr_tuple, ctattr_ip, ctattr_l4proto, ctattr_counters, ctattr_tstamp
const (
	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum      = 1
	ctaProtoSrcPort  = 2
	ctaProtoDstPort  = 3
	ctaProtoICMPID   = 4
	ctaProtoICMPType = 5
	ctaProtoICMPCode = 6
	ctaProtoICMP6ID  = 7
	ctaProtoICMP6Typ = 8
	ctaProtoICMP6Cod = 9

	ctaCountersPackets   = 1 // u64
	ctaCountersBytes     = 2 // u64
	ctaCounters32Packets = 3 // u32, very old kernels
	ctaCounters32Bytes   = 4

	ctaTimestampStart = 1 // u64 ns, wall clock
	ctaTimestampStop  = 2
)

const (
	protoICMP  = 1
	protoICMP6 = 58
)

var errTruncated = errors.New("truncated attribute")

// attrs walks a buffer of netlink attributes. Every length is checked:
// a header that does not fit, or a length smaller than the header or larger
// than what is left, stops the walk with errTruncated.
type attrs struct {
	b    []byte
	typ  uint16
	data []byte
	err  error
}

func (a *attrs) next() bool {
	if len(a.b) == 0 || a.err != nil {
		return false
	}
	if len(a.b) < 4 {
		a.err = errTruncated
		return false
	}
	l := int(binary.NativeEndian.Uint16(a.b))
	if l < 4 || l > len(a.b) {
		a.err = fmt.Errorf("%w: length %d with %d bytes left", errTruncated, l, len(a.b))
		return false
	}
	a.typ = binary.NativeEndian.Uint16(a.b[2:]) & nlaTypeMask
	a.data = a.b[4:l]
	a.b = a.b[min(align4(l), len(a.b)):]
	return true
}

func align4(n int) int { return (n + 3) &^ 3 }

func sizeErr(name string, want, got int) error {
	return fmt.Errorf("decoding %s: want %d bytes, got %d", name, want, got)
}

func be16(name string, b []byte) (uint16, error) {
	if len(b) != 2 {
		return 0, sizeErr(name, 2, len(b))
	}
	return binary.BigEndian.Uint16(b), nil
}

func be32(name string, b []byte) (uint32, error) {
	if len(b) != 4 {
		return 0, sizeErr(name, 4, len(b))
	}
	return binary.BigEndian.Uint32(b), nil
}

func be64(name string, b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, sizeErr(name, 8, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

func u8(name string, b []byte) (uint8, error) {
	if len(b) != 1 {
		return 0, sizeErr(name, 1, len(b))
	}
	return b[0], nil
}

// decodeFlow decodes the payload of a ctnetlink flow message (nfgenmsg
// followed by attributes) into f, which it resets first. Unknown attributes
// are skipped; a known attribute with a wrong size is an error.
func decodeFlow(b []byte, f *Flow) error {
	*f = Flow{}
	if len(b) < nfgenLen {
		return fmt.Errorf("decoding nfgenmsg: want %d bytes, got %d", nfgenLen, len(b))
	}
	a := attrs{b: b[nfgenLen:]}
	var err error
	for a.next() {
		switch a.typ {
		case ctaTupleOrig:
			err = decodeTuple(a.data, &f.Orig)
		case ctaTupleReply:
			err = decodeTuple(a.data, &f.Reply)
		case ctaCountersOrig:
			err = decodeCounter(a.data, &f.OrigCounter)
		case ctaCountersReply:
			err = decodeCounter(a.data, &f.ReplyCounter)
		case ctaStatus:
			f.Status, err = be32("CTA_STATUS", a.data)
		case ctaTimeout:
			f.Timeout, err = be32("CTA_TIMEOUT", a.data)
		case ctaMark:
			f.Mark, err = be32("CTA_MARK", a.data)
		case ctaID:
			f.ID, err = be32("CTA_ID", a.data)
		case ctaZone:
			f.Zone, err = be16("CTA_ZONE", a.data)
		case ctaTimestamp:
			err = decodeTimestamp(a.data, f)
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return fmt.Errorf("decoding flow attributes: %w", a.err)
	}
	return nil
}

func decodeTuple(b []byte, t *Tuple) error {
	a := attrs{b: b}
	for a.next() {
		var err error
		switch a.typ {
		case ctaTupleIP:
			err = decodeTupleIP(a.data, t)
		case ctaTupleProto:
			err = decodeTupleProto(a.data, t)
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return fmt.Errorf("decoding tuple: %w", a.err)
	}
	return nil
}

func decodeTupleIP(b []byte, t *Tuple) error {
	a := attrs{b: b}
	for a.next() {
		var dst *netip.Addr
		want := 4
		switch a.typ {
		case ctaIPv4Src:
			dst = &t.Src
		case ctaIPv4Dst:
			dst = &t.Dst
		case ctaIPv6Src:
			dst, want = &t.Src, 16
		case ctaIPv6Dst:
			dst, want = &t.Dst, 16
		default:
			continue
		}
		if len(a.data) != want {
			return sizeErr("tuple address", want, len(a.data))
		}
		if want == 4 {
			*dst = netip.AddrFrom4([4]byte(a.data))
		} else {
			*dst = netip.AddrFrom16([16]byte(a.data))
		}
	}
	if a.err != nil {
		return fmt.Errorf("decoding tuple addresses: %w", a.err)
	}
	return nil
}

func decodeTupleProto(b []byte, t *Tuple) error {
	a := attrs{b: b}
	var typ, code uint8
	for a.next() {
		var err error
		switch a.typ {
		case ctaProtoNum:
			t.Proto, err = u8("CTA_PROTO_NUM", a.data)
		case ctaProtoSrcPort:
			t.SrcPort, err = be16("CTA_PROTO_SRC_PORT", a.data)
		case ctaProtoDstPort:
			t.DstPort, err = be16("CTA_PROTO_DST_PORT", a.data)
		case ctaProtoICMPID, ctaProtoICMP6ID:
			t.SrcPort, err = be16("CTA_PROTO_ICMP_ID", a.data)
		case ctaProtoICMPType, ctaProtoICMP6Typ:
			typ, err = u8("CTA_PROTO_ICMP_TYPE", a.data)
			t.DstPort = uint16(typ)<<8 | uint16(code)
		case ctaProtoICMPCode, ctaProtoICMP6Cod:
			code, err = u8("CTA_PROTO_ICMP_CODE", a.data)
			t.DstPort = uint16(typ)<<8 | uint16(code)
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return fmt.Errorf("decoding tuple protocol: %w", a.err)
	}
	return nil
}

func decodeCounter(b []byte, c *Counter) error {
	a := attrs{b: b}
	for a.next() {
		var err error
		var v32 uint32
		switch a.typ {
		case ctaCountersPackets:
			c.Packets, err = be64("CTA_COUNTERS_PACKETS", a.data)
		case ctaCountersBytes:
			c.Bytes, err = be64("CTA_COUNTERS_BYTES", a.data)
		case ctaCounters32Packets:
			v32, err = be32("CTA_COUNTERS32_PACKETS", a.data)
			c.Packets = uint64(v32)
		case ctaCounters32Bytes:
			v32, err = be32("CTA_COUNTERS32_BYTES", a.data)
			c.Bytes = uint64(v32)
		}
		if err != nil {
			return err
		}
	}
	if a.err != nil {
		return fmt.Errorf("decoding counters: %w", a.err)
	}
	return nil
}

func decodeTimestamp(b []byte, f *Flow) error {
	a := attrs{b: b}
	for a.next() {
		var dst *time.Time
		switch a.typ {
		case ctaTimestampStart:
			dst = &f.Start
		case ctaTimestampStop:
			dst = &f.Stop
		default:
			continue
		}
		ns, err := be64("CTA_TIMESTAMP", a.data)
		if err != nil {
			return err
		}
		if ns != 0 && ns <= 1<<63-1 {
			*dst = time.Unix(0, int64(ns))
		}
	}
	if a.err != nil {
		return fmt.Errorf("decoding timestamp: %w", a.err)
	}
	return nil
}

// eventType classifies an event message by its header: DELETE messages are
// DESTROY events, NEW messages with NLM_F_CREATE or NLM_F_EXCL are NEW
// events, other NEW messages are UPDATE events (ctnetlink_conntrack_event).
func eventType(msgType, flags uint16) (EventType, bool) {
	if msgType>>8 != subsysCT {
		return 0, false
	}
	switch msgType & 0xff {
	case msgDelete:
		return EventDestroy, true
	case msgNew:
		if flags&(flagCreate|flagExcl) != 0 {
			return EventNew, true
		}
		return EventUpdate, true
	}
	return 0, false
}

// Encoding.

func appendAttr(b []byte, typ uint16, data ...byte) []byte {
	l := 4 + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for i := l; i < align4(l); i++ {
		b = append(b, 0)
	}
	return b
}

func appendBE16(b []byte, typ, v uint16) []byte {
	return appendAttr(b, typ, byte(v>>8), byte(v))
}

func appendBE32(b []byte, typ uint16, v uint32) []byte {
	return appendAttr(b, typ, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// beginNest appends a nested attribute header (with NLA_F_NESTED) whose
// length endNest fills in.
func beginNest(b []byte, typ uint16) ([]byte, int) {
	return appendAttr(b, typ|nlaNested), len(b)
}

func endNest(b []byte, start int) []byte {
	binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
	return b
}

// family returns the address family of a tuple, or an error when its
// addresses are missing or of different families.
func (t Tuple) family() (uint8, error) {
	switch {
	case !t.Src.IsValid() || !t.Dst.IsValid():
		return 0, errors.New("tuple needs source and destination addresses")
	case t.Src.Is4() && t.Dst.Is4():
		return afInet, nil
	case !t.Src.Is4() && !t.Dst.Is4():
		return afInet6, nil
	}
	return 0, fmt.Errorf("tuple mixes address families: %s and %s", t.Src, t.Dst)
}

// appendTuple appends t as the nested attribute typ (CTA_TUPLE_ORIG or
// CTA_TUPLE_REPLY).
func appendTuple(b []byte, typ uint16, t Tuple) ([]byte, error) {
	fam, err := t.family()
	if err != nil {
		return b, err
	}
	b, outer := beginNest(b, typ)
	b, ip := beginNest(b, ctaTupleIP)
	if fam == afInet {
		s, d := t.Src.As4(), t.Dst.As4()
		b = appendAttr(b, ctaIPv4Src, s[:]...)
		b = appendAttr(b, ctaIPv4Dst, d[:]...)
	} else {
		s, d := t.Src.As16(), t.Dst.As16()
		b = appendAttr(b, ctaIPv6Src, s[:]...)
		b = appendAttr(b, ctaIPv6Dst, d[:]...)
	}
	b = endNest(b, ip)
	b, proto := beginNest(b, ctaTupleProto)
	b = appendAttr(b, ctaProtoNum, t.Proto)
	switch {
	case t.Proto == protoICMP && fam == afInet:
		b = appendBE16(b, ctaProtoICMPID, t.SrcPort)
		b = appendAttr(b, ctaProtoICMPType, byte(t.DstPort>>8))
		b = appendAttr(b, ctaProtoICMPCode, byte(t.DstPort))
	case t.Proto == protoICMP6 && fam == afInet6:
		b = appendBE16(b, ctaProtoICMP6ID, t.SrcPort)
		b = appendAttr(b, ctaProtoICMP6Typ, byte(t.DstPort>>8))
		b = appendAttr(b, ctaProtoICMP6Cod, byte(t.DstPort))
	default:
		b = appendBE16(b, ctaProtoSrcPort, t.SrcPort)
		b = appendBE16(b, ctaProtoDstPort, t.DstPort)
	}
	b = endNest(b, proto)
	return endNest(b, outer), nil
}

func appendNfgen(b []byte, family uint8) []byte {
	return append(b, family, 0, 0, 0) // NFNETLINK_V0, res_id 0
}

// getBody is the payload of an IPCTNL_MSG_CT_GET request for one flow.
func getBody(orig Tuple) ([]byte, error) {
	fam, err := orig.family()
	if err != nil {
		return nil, fmt.Errorf("encoding tuple: %w", err)
	}
	b, err := appendTuple(appendNfgen(make([]byte, 0, 96), fam), ctaTupleOrig, orig)
	if err != nil {
		return nil, fmt.Errorf("encoding tuple: %w", err)
	}
	return b, nil
}

// setMarkBody is the payload of an IPCTNL_MSG_CT_NEW update that sets the
// bits of mark selected by mask. The kernel computes
// (old & ^mask) ^ value (ctnetlink_change_mark), so value is masked first.
func setMarkBody(orig Tuple, mark, mask uint32) ([]byte, error) {
	b, err := getBody(orig)
	if err != nil {
		return nil, err
	}
	b = appendBE32(b, ctaMark, mark&mask)
	return appendBE32(b, ctaMarkMask, mask), nil
}

// dumpBody is the payload of a dump request: AF_UNSPEC covers IPv4 and IPv6.
// A filter with a non-zero mask makes the kernel skip every flow whose
// mark&Mask is not Mark (ctnetlink_filter_match): those flows are never
// serialised, copied or decoded.
func dumpBody(f Filter) []byte {
	b := appendNfgen(nil, afUnspec)
	if f.MarkMask != 0 {
		b = appendBE32(b, ctaMark, f.Mark&f.MarkMask)
		b = appendBE32(b, ctaMarkMask, f.MarkMask)
	}
	return b
}

// Netlink message framing (include/uapi/linux/netlink.h).
const (
	nlmsgHdrLen = 16
	nlmsgError  = 2 // NLMSG_ERROR: errno (0 for an ACK) + the request header
	nlmsgDone   = 3 // NLMSG_DONE: end of a dump, optionally an errno
)

// nlmsg is one netlink message inside a received datagram; data aliases
// the receive buffer.
type nlmsg struct {
	typ, flags uint16
	seq        uint32
	data       []byte
}

// nextMsg splits the first netlink message off b. Lengths are checked; a
// message whose length does not fit is an error.
func nextMsg(b []byte) (nlmsg, []byte, error) {
	if len(b) < nlmsgHdrLen {
		return nlmsg{}, nil, fmt.Errorf("decoding netlink header: %d bytes left", len(b))
	}
	l := int(binary.NativeEndian.Uint32(b))
	if l < nlmsgHdrLen || l > len(b) {
		return nlmsg{}, nil, fmt.Errorf("decoding netlink header: length %d with %d bytes left", l, len(b))
	}
	m := nlmsg{
		typ:   binary.NativeEndian.Uint16(b[4:]),
		flags: binary.NativeEndian.Uint16(b[6:]),
		seq:   binary.NativeEndian.Uint32(b[8:]),
		data:  b[nlmsgHdrLen:l],
	}
	return m, b[min(align4(l), len(b)):], nil
}

// errno returns the (positive) error number of an NLMSG_ERROR or NLMSG_DONE
// message, 0 for an ACK or a plain DONE.
func (m nlmsg) errno() int32 {
	if len(m.data) < 4 {
		return 0
	}
	return -int32(binary.NativeEndian.Uint32(m.data))
}
