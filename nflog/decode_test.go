package nflog

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func ipv4(proto uint8, src, dst string, l4 []byte) []byte {
	b := make([]byte, 20)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:4], uint16(20+len(l4)))
	b[8], b[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	return append(b, l4...)
}

func ipv6(next uint8, src, dst string, rest []byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:6], uint16(len(rest)))
	b[6], b[7] = next, 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	return append(b, rest...)
}

func ports(src, dst uint16) []byte {
	b := make([]byte, 20) // a TCP header's worth; UDP reads the first 8
	binary.BigEndian.PutUint16(b[0:2], src)
	binary.BigEndian.PutUint16(b[2:4], dst)
	return b
}

func TestDecodeHeaders(t *testing.T) {
	a4s, a4d := netip.MustParseAddr("198.18.60.1"), netip.MustParseAddr("198.18.60.2")
	a6s, a6d := netip.MustParseAddr("2001:2:0:3c::1"), netip.MustParseAddr("2001:2:0:3c::2")
	frag4 := ipv4(6, "198.18.60.1", "198.18.60.2", ports(1, 2))
	binary.BigEndian.PutUint16(frag4[6:8], 100) // fragment offset 100*8
	hopByHop := append([]byte{17, 0, 0, 0, 0, 0, 0, 0}, ports(5353, 53)...)
	fragHdr := append([]byte{6, 0, 0, 0x10, 0, 0, 0, 1}, ports(1, 443)...) // offset 2: no ports
	tests := []struct {
		name string
		in   []byte
		want Denial
		err  error
	}{
		{"ipv4 tcp", ipv4(6, "198.18.60.1", "198.18.60.2", ports(40000, 443)),
			Denial{Family: "ipv4", Proto: "tcp", ProtoNum: 6, Src: a4s, Dst: a4d, DstPort: 443, HasPort: true}, nil},
		{"ipv4 udp", ipv4(17, "198.18.60.1", "198.18.60.2", ports(40000, 53)[:8]),
			Denial{Family: "ipv4", Proto: "udp", ProtoNum: 17, Src: a4s, Dst: a4d, DstPort: 53, HasPort: true}, nil},
		{"ipv4 icmp echo", ipv4(1, "198.18.60.1", "198.18.60.2", []byte{8, 0, 0, 0}),
			Denial{Family: "ipv4", Proto: "icmp", ProtoNum: 1, Src: a4s, Dst: a4d, DstPort: 8, HasPort: true}, nil},
		{"ipv4 tcp truncated transport", ipv4(6, "198.18.60.1", "198.18.60.2", []byte{1, 2}),
			Denial{Family: "ipv4", Proto: "tcp", ProtoNum: 6, Src: a4s, Dst: a4d}, nil},
		{"ipv4 later fragment", frag4,
			Denial{Family: "ipv4", Proto: "tcp", ProtoNum: 6, Src: a4s, Dst: a4d}, nil},
		{"ipv4 gre", ipv4(47, "198.18.60.1", "198.18.60.2", nil),
			Denial{Family: "ipv4", Proto: "47", ProtoNum: 47, Src: a4s, Dst: a4d}, nil},
		{"ipv6 tcp", ipv6(6, "2001:2:0:3c::1", "2001:2:0:3c::2", ports(1, 8080)),
			Denial{Family: "ipv6", Proto: "tcp", ProtoNum: 6, Src: a6s, Dst: a6d, DstPort: 8080, HasPort: true}, nil},
		{"ipv6 hop-by-hop then udp", ipv6(0, "2001:2:0:3c::1", "2001:2:0:3c::2", hopByHop),
			Denial{Family: "ipv6", Proto: "udp", ProtoNum: 17, Src: a6s, Dst: a6d, DstPort: 53, HasPort: true}, nil},
		{"ipv6 later fragment", ipv6(44, "2001:2:0:3c::1", "2001:2:0:3c::2", fragHdr),
			Denial{Family: "ipv6", Proto: "tcp", ProtoNum: 6, Src: a6s, Dst: a6d}, nil},
		{"ipv6 icmpv6 echo", ipv6(58, "2001:2:0:3c::1", "2001:2:0:3c::2", []byte{128, 0}),
			Denial{Family: "ipv6", Proto: "icmpv6", ProtoNum: 58, Src: a6s, Dst: a6d, DstPort: 128, HasPort: true}, nil},
		{"empty", nil, Denial{}, ErrShort},
		{"short ipv4", []byte{0x45, 0, 0}, Denial{}, ErrShort},
		{"bad ihl", append([]byte{0x41}, make([]byte, 19)...), Denial{}, ErrMalformed},
		{"short ipv6", []byte{0x60, 0}, Denial{}, ErrShort},
		{"version 5", []byte{0x50}, Denial{}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeHeaders(tt.in)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// message builds the data of an NFULNL_MSG_PACKET message.
func message(family uint8, group uint16, prefix string, payload []byte, ts time.Time, uid *uint32) []byte {
	b := []byte{family, 0}
	b = binary.BigEndian.AppendUint16(b, group)
	b = appendAttr(b, attrPacketHdr, []byte{0x08, 0x00, 3, 0})
	b = appendAttr(b, attrMark, binary.BigEndian.AppendUint32(nil, 0x100000))
	if !ts.IsZero() {
		v := binary.BigEndian.AppendUint64(nil, uint64(ts.Unix()))
		v = binary.BigEndian.AppendUint64(v, uint64(ts.Nanosecond()/1000))
		b = appendAttr(b, attrTimestamp, v)
	}
	if prefix != "" {
		b = appendAttr(b, attrPrefix, append([]byte(prefix), 0))
	}
	if uid != nil {
		b = appendAttr(b, attrUID, binary.BigEndian.AppendUint32(nil, *uid))
		b = appendAttr(b, attrGID, binary.BigEndian.AppendUint32(nil, 100))
	}
	b = appendAttr(b, attrPayload, payload)
	return b
}

func TestParseMessage(t *testing.T) {
	pl := ipv4(6, "198.18.60.1", "198.18.60.2", ports(40000, 443))
	ts := time.Date(2026, 11, 23, 10, 0, 0, 123456000, time.UTC)
	uid := uint32(1000)
	got, err := ParseMessage(message(afINET, 1987, "hubwarden-deny", pl, ts, &uid))
	if err != nil {
		t.Fatal(err)
	}
	want := Packet{Family: afINET, Group: 1987, HWProtocol: 0x0800, Hook: 3, Mark: 0x100000,
		Prefix: "hubwarden-deny", Time: ts, UID: 1000, GID: 100, HasUID: true, Payload: pl}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
	d, err := Decode(got, time.Time{})
	if err != nil || d.Dst != netip.MustParseAddr("198.18.60.2") || d.DstPort != 443 || d.Prefix != "hubwarden-deny" || !d.Time.Equal(ts) || d.UID != 1000 {
		t.Errorf("Decode = %+v, %v", d, err)
	}
	// Without a timestamp, Decode stamps the packet with now.
	got, _ = ParseMessage(message(afINET, 1, "", pl, time.Time{}, nil))
	now := time.Unix(42, 0)
	if d, _ := Decode(got, now); !d.Time.Equal(now) || d.HasUID {
		t.Errorf("Decode without timestamp: %+v", d)
	}
}

func TestParseMessageErrors(t *testing.T) {
	good := message(afINET, 1, "p", ipv4(6, "198.18.60.1", "198.18.60.2", nil), time.Time{}, nil)
	tests := []struct {
		name string
		in   []byte
		err  error
	}{
		{"empty", nil, ErrShort},
		{"attr header cut", good[:6], ErrShort},
		{"attr longer than message", good[:10], ErrMalformed},
		{"attr length below 4", append([]byte{2, 0, 0, 0}, 2, 0, 1, 0), ErrMalformed},
		{"short packet hdr", appendAttr([]byte{2, 0, 0, 1}, attrPacketHdr, []byte{1}), ErrShort},
		{"short timestamp", appendAttr([]byte{2, 0, 0, 1}, attrTimestamp, []byte{1, 2, 3}), ErrShort},
		{"short uid", appendAttr([]byte{2, 0, 0, 1}, attrUID, []byte{1}), ErrShort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseMessage(tt.in); !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
		})
	}
}

func TestConfigMessage(t *testing.T) {
	got := ConfigMessage(1987, 128)
	want := []byte{
		0, 0, 0x07, 0xc3, // AF_UNSPEC, v0, group 1987 big endian
	}
	want = appendAttr(want, attrCfgCmd, []byte{cmdBind})
	want = appendAttr(want, attrCfgMode, []byte{0, 0, 0, 128, copyPacket, 0})
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
	var seen []uint16
	if err := walkAttrs(got[4:], func(typ uint16, v []byte) error { seen = append(seen, typ); return nil }); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]uint16{attrCfgCmd, attrCfgMode}, seen); diff != "" {
		t.Errorf("attributes (-want +got):\n%s", diff)
	}
}

func FuzzParseMessage(f *testing.F) {
	uid := uint32(1000)
	f.Add(message(afINET, 1987, "hubwarden-deny", ipv4(6, "198.18.60.1", "198.18.60.2", ports(1, 443)), time.Unix(1, 0), &uid))
	f.Add(message(afINET6, 1, "", ipv6(17, "2001:2::1", "2001:2::2", ports(1, 53)), time.Time{}, nil))
	f.Add([]byte{2, 0, 0, 1, 5, 0, 9, 0, 0x45})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseMessage(b)
		if err != nil {
			return
		}
		if len(p.Payload) > len(b) {
			t.Fatalf("payload longer than the message")
		}
		_, _ = Decode(p, time.Unix(0, 0))
	})
}

func FuzzDecodeHeaders(f *testing.F) {
	f.Add(ipv4(6, "198.18.60.1", "198.18.60.2", ports(1, 443)))
	f.Add(ipv4(1, "198.18.60.1", "198.18.60.2", []byte{8}))
	f.Add(ipv6(0, "2001:2::1", "2001:2::2", append([]byte{44, 0, 0, 0, 0, 0, 0, 0}, 17, 0, 0, 0, 0, 0, 0, 0)))
	f.Add(ipv6(51, "2001:2::1", "2001:2::2", []byte{6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}))
	f.Add([]byte{0x4f})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := DecodeHeaders(b)
		if err != nil {
			return
		}
		if d.Family == "ipv4" && !d.Dst.Is4() || d.Family == "ipv6" && !d.Dst.Is6() {
			t.Fatalf("family %s with dst %s", d.Family, d.Dst)
		}
		if d.Proto == "" {
			t.Fatal("no proto name")
		}
	})
}

func BenchmarkParseAndDecode(b *testing.B) {
	msg := message(afINET, 1987, "hubwarden-deny", ipv4(6, "198.18.60.1", "198.18.60.2", ports(1, 443)), time.Time{}, nil)
	now := time.Unix(0, 0)
	b.ReportAllocs()
	for b.Loop() {
		p, err := ParseMessage(msg)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Decode(p, now); err != nil {
			b.Fatal(err)
		}
	}
}
