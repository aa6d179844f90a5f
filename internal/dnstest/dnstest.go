// Package dnstest serves DNS to tests over UDP and TCP, with the framing of
// RFC 1035 section 4.2.2: over TCP every message carries a two-byte length
// prefix. What to answer is the test's business; this package only moves
// the messages.
package dnstest

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
)

// Serve answers the queries that arrive on pc and on the connections l
// accepts, until they are closed; it returns at once. respond gets one query
// in wire format and whether it came over UDP, and returns the answer in
// wire format, or nil to send none (over TCP this closes the connection). A
// TCP connection may carry any number of queries, answered in turn.
func Serve(pc net.PacketConn, l net.Listener, respond func(q []byte, udp bool) []byte) {
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if r := respond(buf[:n], true); r != nil {
				_, _ = pc.WriteTo(r, from)
			}
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					q, err := ReadTCP(c)
					if err != nil {
						return
					}
					r := respond(q, false)
					if r == nil || WriteTCP(c, r) != nil {
						return
					}
				}
			}()
		}
	}()
}

// ReadTCP reads one length-prefixed DNS message from r.
func ReadTCP(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, fmt.Errorf("reading a dns message's length: %w", err)
	}
	m := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(r, m); err != nil {
		return nil, fmt.Errorf("reading a %d-byte dns message: %w", len(m), err)
	}
	return m, nil
}

// AppendTCP appends m to b with its length prefix, so that several messages
// can go out in one write.
func AppendTCP(b, m []byte) []byte {
	return append(binary.BigEndian.AppendUint16(b, uint16(len(m))), m...)
}

// WriteTCP writes m to w with its length prefix, in one write.
func WriteTCP(w io.Writer, m []byte) error {
	if _, err := w.Write(AppendTCP(nil, m)); err != nil {
		return fmt.Errorf("writing a %d-byte dns message: %w", len(m), err)
	}
	return nil
}
