// Package nflog reads the packets that hubwarden's egress rules reject and
// log to an NFLOG group (nfnetlink_log), decodes their IP and transport
// headers into Denials, and aggregates them per destination over a window so
// that a port scan becomes a few log lines, not thousands.
//
// The wire formats follow the kernel's include/uapi/linux/netfilter/
// nfnetlink_log.h and nfnetlink.h. Decoding is pure and defensive (fuzzed):
// any byte string yields a value or an error, never a panic.
package nflog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// Netfilter netlink constants (nfnetlink.h, nfnetlink_log.h).
const (
	subsysULOG = 4 // NFNL_SUBSYS_ULOG

	msgPacket = 0 // NFULNL_MSG_PACKET
	msgConfig = 1 // NFULNL_MSG_CONFIG

	// Packet attributes (enum nfulnl_attr_type).
	attrPacketHdr = 1  // NFULA_PACKET_HDR: struct nfulnl_msg_packet_hdr
	attrMark      = 2  // NFULA_MARK: __be32
	attrTimestamp = 3  // NFULA_TIMESTAMP: struct nfulnl_msg_packet_timestamp
	attrPayload   = 9  // NFULA_PAYLOAD
	attrPrefix    = 10 // NFULA_PREFIX: NUL-terminated string
	attrUID       = 11 // NFULA_UID: __be32
	attrGID       = 14 // NFULA_GID: __be32

	// Config attributes (enum nfulnl_attr_config).
	attrCfgCmd  = 1 // NFULA_CFG_CMD: struct nfulnl_msg_config_cmd
	attrCfgMode = 2 // NFULA_CFG_MODE: struct nfulnl_msg_config_mode

	cmdBind   = 1 // NFULNL_CFG_CMD_BIND
	cmdUnbind = 2 // NFULNL_CFG_CMD_UNBIND

	copyPacket = 2 // NFULNL_COPY_PACKET

	afINET  = 2
	afINET6 = 10

	// nlattr type bits that are flags, not the type.
	nlaTypeMask = 0x3fff
)

// MsgType is the netlink message type of nfnetlink_log packets.
const MsgType = subsysULOG<<8 | msgPacket

// ConfigMsgType is the netlink message type of nfnetlink_log configuration.
const ConfigMsgType = subsysULOG<<8 | msgConfig

// Errors callers may branch on.
var (
	ErrShort     = errors.New("message too short")
	ErrMalformed = errors.New("malformed attribute")
)

// Packet is one logged packet as nfnetlink_log reports it.
type Packet struct {
	Family     uint8  // nfgen_family: 2 (IPv4) or 10 (IPv6)
	Group      uint16 // the NFLOG group (res_id)
	HWProtocol uint16 // ethertype from NFULA_PACKET_HDR, 0 when absent
	Hook       uint8  // netfilter hook from NFULA_PACKET_HDR
	Mark       uint32
	Prefix     string
	Time       time.Time // zero when the kernel sent no timestamp (usual for locally sent packets)
	UID, GID   uint32
	HasUID     bool
	Payload    []byte // the network header onwards, up to the copy range; aliases the message
}

// ParseMessage decodes the data of one NFULNL_MSG_PACKET netlink message
// (the nfgenmsg header, then attributes). The payload aliases b.
func ParseMessage(b []byte) (Packet, error) {
	var p Packet
	if len(b) < 4 {
		return p, fmt.Errorf("parsing nfgenmsg: %w", ErrShort)
	}
	p.Family = b[0]
	p.Group = binary.BigEndian.Uint16(b[2:4])
	err := walkAttrs(b[4:], func(typ uint16, v []byte) error {
		switch typ {
		case attrPacketHdr:
			if len(v) < 4 {
				return fmt.Errorf("parsing NFULA_PACKET_HDR: %w", ErrShort)
			}
			p.HWProtocol = binary.BigEndian.Uint16(v[0:2])
			p.Hook = v[2]
		case attrMark:
			if len(v) < 4 {
				return fmt.Errorf("parsing NFULA_MARK: %w", ErrShort)
			}
			p.Mark = binary.BigEndian.Uint32(v)
		case attrTimestamp:
			if len(v) < 16 {
				return fmt.Errorf("parsing NFULA_TIMESTAMP: %w", ErrShort)
			}
			sec := binary.BigEndian.Uint64(v[0:8])
			usec := binary.BigEndian.Uint64(v[8:16])
			if sec < 1<<40 && usec < 1e6 { // ignore nonsense rather than overflow
				p.Time = time.Unix(int64(sec), int64(usec)*1000)
			}
		case attrPayload:
			p.Payload = v
		case attrPrefix:
			p.Prefix = cString(v)
		case attrUID:
			if len(v) < 4 {
				return fmt.Errorf("parsing NFULA_UID: %w", ErrShort)
			}
			p.UID, p.HasUID = binary.BigEndian.Uint32(v), true
		case attrGID:
			if len(v) < 4 {
				return fmt.Errorf("parsing NFULA_GID: %w", ErrShort)
			}
			p.GID = binary.BigEndian.Uint32(v)
		}
		return nil
	})
	return p, err
}

// walkAttrs calls f for each netlink attribute (struct nlattr: u16 length
// including the 4-byte header, u16 type; values padded to 4 bytes) in b.
func walkAttrs(b []byte, f func(typ uint16, v []byte) error) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return fmt.Errorf("parsing attribute header: %w", ErrShort)
		}
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if l < 4 || l > len(b) {
			return fmt.Errorf("parsing attribute %d of length %d in %d bytes: %w", typ, l, len(b), ErrMalformed)
		}
		if err := f(typ, b[4:l:l]); err != nil {
			return err
		}
		l = (l + 3) &^ 3
		if l > len(b) { // the last attribute need not be padded
			l = len(b)
		}
		b = b[l:]
	}
	return nil
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// Denial is a rejected packet: who it was for. For ICMP and ICMPv6, DstPort
// holds the ICMP type (there are no ports).
type Denial struct {
	Family   string // "ipv4" or "ipv6"
	Proto    string // "tcp", "udp", "icmp", "icmpv6", "sctp", "udplite" or the protocol number
	ProtoNum uint8
	Src, Dst netip.Addr
	DstPort  uint16
	HasPort  bool // false when the transport header was not captured (or a fragment)
	Prefix   string
	UID      uint32
	HasUID   bool
	Time     time.Time
}

// IP protocol numbers.
const (
	protoICMP    = 1
	protoTCP     = 6
	protoUDP     = 17
	protoICMPv6  = 58
	protoSCTP    = 132
	protoUDPLite = 136
)

// ProtoName names an IP protocol number as Denial.Proto does.
func ProtoName(n uint8) string {
	switch n {
	case protoICMP:
		return "icmp"
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoICMPv6:
		return "icmpv6"
	case protoSCTP:
		return "sctp"
	case protoUDPLite:
		return "udplite"
	}
	return strconv.Itoa(int(n))
}

// Decode turns a logged packet into a Denial; now stamps it when the kernel
// sent no timestamp.
func Decode(p Packet, now time.Time) (Denial, error) {
	d, err := DecodeHeaders(p.Payload)
	if err != nil {
		return d, err
	}
	d.Prefix, d.UID, d.HasUID = p.Prefix, p.UID, p.HasUID
	d.Time = p.Time
	if d.Time.IsZero() {
		d.Time = now
	}
	return d, nil
}

// maxExtHeaders bounds the IPv6 extension header chain we follow.
const maxExtHeaders = 8

// DecodeHeaders decodes an IPv4 or IPv6 header (chosen by the version nibble)
// and, when captured, the TCP/UDP/SCTP destination port or the ICMP type.
func DecodeHeaders(b []byte) (Denial, error) {
	var d Denial
	if len(b) < 1 {
		return d, fmt.Errorf("decoding ip header: %w", ErrShort)
	}
	var l4 []byte
	fragment := false
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return d, fmt.Errorf("decoding ipv4 header: %w", ErrShort)
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 {
			return d, fmt.Errorf("decoding ipv4 header length %d: %w", ihl, ErrMalformed)
		}
		d.Family = "ipv4"
		d.ProtoNum = b[9]
		d.Src = netip.AddrFrom4([4]byte(b[12:16]))
		d.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		fragment = binary.BigEndian.Uint16(b[6:8])&0x1fff != 0
		if ihl <= len(b) {
			l4 = b[ihl:]
		}
	case 6:
		if len(b) < 40 {
			return d, fmt.Errorf("decoding ipv6 header: %w", ErrShort)
		}
		d.Family = "ipv6"
		d.Src = netip.AddrFrom16([16]byte(b[8:24]))
		d.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		next, rest := b[6], b[40:]
	ext:
		for range maxExtHeaders {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(rest) < 8 {
					rest = nil
					break ext
				}
				n := (int(rest[1]) + 1) * 8
				next = rest[0]
				if n > len(rest) {
					rest = nil
					break ext
				}
				rest = rest[n:]
			case 44: // fragment
				if len(rest) < 8 {
					rest = nil
					break ext
				}
				fragment = fragment || binary.BigEndian.Uint16(rest[2:4])&^7 != 0
				next, rest = rest[0], rest[8:]
			case 51: // authentication header: length in 4-byte units, minus 2
				if len(rest) < 8 {
					rest = nil
					break ext
				}
				n := (int(rest[1]) + 2) * 4
				next = rest[0]
				if n > len(rest) {
					rest = nil
					break ext
				}
				rest = rest[n:]
			default:
				break ext
			}
		}
		d.ProtoNum = next
		l4 = rest
	default:
		return d, fmt.Errorf("decoding ip version %d: %w", b[0]>>4, ErrMalformed)
	}
	d.Proto = ProtoName(d.ProtoNum)
	if fragment {
		return d, nil // a later fragment carries no transport header
	}
	switch d.ProtoNum {
	case protoTCP, protoUDP, protoSCTP, protoUDPLite:
		if len(l4) >= 4 {
			d.DstPort, d.HasPort = binary.BigEndian.Uint16(l4[2:4]), true
		}
	case protoICMP, protoICMPv6:
		if len(l4) >= 1 {
			d.DstPort, d.HasPort = uint16(l4[0]), true
		}
	}
	return d, nil
}

// ConfigMessage returns the data of an NFULNL_MSG_CONFIG message that binds
// this socket to group and asks for the first copyRange bytes of each packet
// (NFULNL_COPY_PACKET).
func ConfigMessage(group uint16, copyRange uint32) []byte {
	b := make([]byte, 0, 4+8+12)
	b = append(b, 0 /* AF_UNSPEC */, 0 /* NFNETLINK_V0 */)
	b = binary.BigEndian.AppendUint16(b, group)
	b = appendAttr(b, attrCfgCmd, []byte{cmdBind})
	mode := binary.BigEndian.AppendUint32(nil, copyRange)
	mode = append(mode, copyPacket, 0)
	b = appendAttr(b, attrCfgMode, mode)
	return b
}

// UnbindMessage returns the data of a message that unbinds group.
func UnbindMessage(group uint16) []byte {
	b := []byte{0, 0}
	b = binary.BigEndian.AppendUint16(b, group)
	return appendAttr(b, attrCfgCmd, []byte{cmdUnbind})
}

func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
