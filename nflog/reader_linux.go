//go:build linux

package nflog

import (
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Config configures a Reader.
type Config struct {
	Group uint16 // the NFLOG group the rules log to (--nflog-group)
	// CopyRange is how many bytes of each packet the kernel copies: enough for
	// the IP and transport headers. 0 means DefaultCopyRange.
	CopyRange uint32
	NetNS     int // network namespace fd; 0 means the caller's
	// ReadBuffer is the socket receive buffer; 0 keeps the system default.
	// A bigger buffer rides out bursts (a fast port scan) without ENOBUFS.
	ReadBuffer int
}

// DefaultCopyRange covers an IPv6 header with a few extension headers plus
// a TCP header.
const DefaultCopyRange = 128

// Reader receives the packets logged to one NFLOG group.
type Reader struct {
	c       *netlink.Conn
	group   uint16
	pending []Packet // packets received while waiting for the bind ack
}

var _ Source = (*Reader)(nil)

// Open binds a netfilter netlink socket to cfg.Group in copy-packet mode. It
// fails with an error wrapping unix.EPERM when another socket holds the group
// (or the caller lacks CAP_NET_ADMIN in the namespace).
func Open(cfg Config) (*Reader, error) {
	if cfg.CopyRange == 0 {
		cfg.CopyRange = DefaultCopyRange
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{
		NetNS: cfg.NetNS,
		// A pooled receive buffer saves the size-peeking recvmsg per
		// datagram; 64 KiB exceeds any nfnetlink_log datagram (the kernel
		// batches up to its nlbufsiz, 4 KiB by default, or one packet).
		MessageBufferSize: 1 << 16,
	})
	if err != nil {
		return nil, fmt.Errorf("opening netfilter netlink socket: %w", err)
	}
	r := &Reader{c: c, group: cfg.Group}
	if cfg.ReadBuffer > 0 {
		if err := c.SetReadBuffer(cfg.ReadBuffer); err != nil {
			c.Close()
			return nil, fmt.Errorf("setting nflog read buffer: %w", err)
		}
	}
	// ENOBUFS tells us the kernel dropped messages; report it, keep reading.
	if err := c.SetOption(netlink.NoENOBUFS, false); err != nil && !errors.Is(err, unix.ENOPROTOOPT) {
		c.Close()
		return nil, fmt.Errorf("enabling nflog overrun reports: %w", err)
	}
	if err := r.config(ConfigMessage(cfg.Group, cfg.CopyRange)); err != nil {
		c.Close()
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("binding nflog group %d (held by another socket, or no CAP_NET_ADMIN): %w", cfg.Group, err)
		}
		return nil, fmt.Errorf("binding nflog group %d: %w", cfg.Group, err)
	}
	return r, nil
}

// config sends a config message and waits for its ack, keeping any packet
// that arrives in between (the group may already be logging).
func (r *Reader) config(data []byte) error {
	req, err := r.c.Send(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(ConfigMsgType), Flags: netlink.Request | netlink.Acknowledge},
		Data:   data,
	})
	if err != nil {
		return err
	}
	for {
		msgs, err := r.c.Receive()
		if err != nil {
			return err // a kernel error (EBUSY, EPERM) comes back here
		}
		for _, m := range msgs {
			if m.Header.Type == netlink.Error && m.Header.Sequence == req.Header.Sequence {
				return nil
			}
			if p, err := ParseMessage(m.Data); err == nil && m.Header.Type == MsgType {
				r.pending = append(r.pending, p)
			}
		}
	}
}

// Receive blocks until packets arrive. Messages that do not decode are
// skipped and counted in the ErrDropped error only when nothing else came;
// a kernel overrun returns an error wrapping ErrOverrun, after which reading
// may go on.
func (r *Reader) Receive() ([]Packet, error) {
	if len(r.pending) > 0 {
		p := r.pending
		r.pending = nil
		return p, nil
	}
	msgs, err := r.c.Receive()
	if err != nil {
		if errors.Is(err, unix.ENOBUFS) {
			return nil, fmt.Errorf("receiving nflog messages: %w", ErrOverrun)
		}
		return nil, fmt.Errorf("receiving nflog messages: %w", err)
	}
	out := make([]Packet, 0, len(msgs))
	bad := 0
	for _, m := range msgs {
		if m.Header.Type != MsgType {
			continue
		}
		p, err := ParseMessage(m.Data)
		if err != nil {
			bad++
			continue
		}
		out = append(out, p)
	}
	if len(out) == 0 && bad > 0 {
		return nil, fmt.Errorf("decoding %d nflog messages: %w", bad, ErrMalformed)
	}
	return out, nil
}

// Close unbinds the group (best effort) and closes the socket, which also
// unblocks a Receive in progress.
func (r *Reader) Close() error {
	_, _ = r.c.Send(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(ConfigMsgType), Flags: netlink.Request},
		Data:   UnbindMessage(r.group),
	})
	return r.c.Close()
}
