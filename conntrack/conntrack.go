// Package conntrack is a small ctnetlink client written on
// github.com/mdlayher/netlink: it dumps the connection tracking table of a
// network namespace (IPv4 and IPv6) with per-direction packet and byte
// counters, gets one flow by its original tuple, changes a flow's mark under a
// mask, and subscribes to NEW, UPDATE and DESTROY events.
//
// Events are hints: the kernel drops them when the listening socket's receive
// buffer is full, and Listen reports that as ErrEventsLost. Dumps are the
// truth; a caller that sees ErrEventsLost should dump the table.
//
// Counters (Flow.OrigCounter, Flow.ReplyCounter) are only filled when
// nf_conntrack_acct is on in the flow's namespace at the time the flow was
// created, and Flow.Start and Flow.Stop only when nf_conntrack_timestamp is;
// see EnableAccounting. A new network namespace starts with both off.
//
// Message encoding and decoding are pure Go and run on every OS; the socket
// code is Linux-only, elsewhere Dial returns an error wrapping
// errors.ErrUnsupported. See docs/conntrack.md for the message formats.
package conntrack

import (
	"errors"
	"net/netip"
	"strconv"
	"time"
)

// Tuple is one direction of a connection, as the kernel keys it.
//
// For ICMP and ICMPv6, which have no ports, SrcPort holds the echo identifier
// and DstPort holds type<<8 | code, the way the kernel stores them, so a
// Tuple taken from a dump can be fed back to Get and SetMark unchanged.
type Tuple struct {
	Proto   uint8 // IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...)
	Src     netip.Addr
	Dst     netip.Addr
	SrcPort uint16
	DstPort uint16
}

// String returns the tuple as "tcp 198.18.0.1:40000->198.18.0.2:80".
func (t Tuple) String() string {
	var p string
	switch t.Proto {
	case 6:
		p = "tcp"
	case 17:
		p = "udp"
	case 1:
		p = "icmp"
	case 58:
		p = "icmpv6"
	default:
		p = "proto" + strconv.Itoa(int(t.Proto))
	}
	return p + " " + netip.AddrPortFrom(t.Src, t.SrcPort).String() + "->" + netip.AddrPortFrom(t.Dst, t.DstPort).String()
}

// Counter is the packet and byte count of one direction of a flow. Bytes
// count whole IP packets (headers included).
type Counter struct {
	Packets, Bytes uint64
}

// Flow is one conntrack entry.
type Flow struct {
	ID           uint32 // CTA_ID: stable for the entry's life, reused after it dies
	Orig, Reply  Tuple
	OrigCounter  Counter // zero unless accounting was on when the flow was created
	ReplyCounter Counter
	Mark         uint32
	Status       uint32 // IPS_* bits (IPS_ASSURED, IPS_DYING, ...)
	Timeout      uint32 // seconds until the entry expires
	Zone         uint16
	Start, Stop  time.Time // CTA_TIMESTAMP when enabled, zero otherwise
}

// Config selects the network namespace of a Conn.
type Config struct {
	// NetNS is an open file descriptor of the network namespace to talk to
	// (as in /run/netns/NAME or /proc/PID/ns/net). 0 means the network
	// namespace of the calling thread.
	NetNS int
	// ReadBuffer is the receive buffer size in bytes of Listen's socket. 0
	// means 8 MiB. Larger buffers lose fewer events under load.
	ReadBuffer int
}

// Filter selects the flows of a dump in the kernel. The zero Filter
// selects every flow.
type Filter struct {
	// Mark and MarkMask select the flows whose mark&MarkMask == Mark.
	Mark, MarkMask uint32
}

// EventType says what happened to a flow.
type EventType uint8

// The event types Listen reports.
const (
	EventNew     EventType = 1 // the flow was confirmed (first packet passed)
	EventUpdate  EventType = 2 // status, mark, protocol state or helper changed
	EventDestroy EventType = 3 // the flow died; counters are final
)

// String returns "new", "update" or "destroy".
func (t EventType) String() string {
	switch t {
	case EventNew:
		return "new"
	case EventUpdate:
		return "update"
	case EventDestroy:
		return "destroy"
	}
	return "unknown"
}

// Event is one conntrack event.
type Event struct {
	Type EventType
	Flow Flow
}

// Group is a ctnetlink multicast group Listen can join.
type Group uint32

// The ctnetlink multicast groups (NFNLGRP_CONNTRACK_*).
const (
	GroupNew     Group = 1
	GroupUpdate  Group = 2
	GroupDestroy Group = 3
)

// Errors callers branch on.
var (
	// ErrNotFound means the kernel has no flow with the given tuple (ENOENT).
	ErrNotFound = errors.New("conntrack flow not found")
	// ErrEventsLost means the kernel dropped events because the listening
	// socket's receive buffer was full (ENOBUFS). Listening goes on; the
	// caller should dump the table to catch up.
	ErrEventsLost = errors.New("conntrack events lost")
)
