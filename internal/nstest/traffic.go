//go:build linux

package nstest

// Test traffic inside namespaces: listeners and dials that run on a thread
// inside the namespace (a socket stays in the namespace it was created in,
// so it may be used from any goroutine afterwards), a byte-counting sink and
// a sender that writes as fast as it can.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Listen listens on addr ("tcp", "tcp4" or "tcp6") inside the namespace,
// fails the test on error, and closes the listener when the test ends.
func (ns *NS) Listen(network, addr string) net.Listener {
	ns.tb.Helper()
	return listen(ns, network, addr, net.Listen)
}

// ListenPacket listens on addr ("udp", "udp4" or "udp6") inside the
// namespace, fails the test on error, and closes the socket when the test
// ends.
func (ns *NS) ListenPacket(network, addr string) net.PacketConn {
	ns.tb.Helper()
	return listen(ns, network, addr, net.ListenPacket)
}

// listen calls f inside the namespace, and closes what it opened when the
// test ends.
func listen[T io.Closer](ns *NS, network, addr string, f func(network, addr string) (T, error)) T {
	ns.tb.Helper()
	var c T
	if err := ns.Do(func() (err error) { c, err = f(network, addr); return err }); err != nil {
		ns.tb.Fatalf("listening on %s %s in %s: %v", network, addr, ns.Name, err)
	}
	ns.tb.Cleanup(func() { c.Close() })
	return c
}

// Serve listens on the TCP address addr inside the namespace and runs handle
// in a goroutine of its own for every connection it accepts; the connection
// is closed when handle returns. When the test ends the listener and every
// connection still open are closed, which ends handlers blocked on them.
// The listener is returned for its address (port 0 picks a free one).
func (ns *NS) Serve(addr string, handle func(net.Conn)) net.Listener {
	ns.tb.Helper()
	ln := ns.Listen("tcp", addr)
	var (
		mu     sync.Mutex
		conns  = map[net.Conn]struct{}{}
		closed bool
	)
	ns.tb.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		closed = true
		for c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			conns[c] = struct{}{}
			mu.Unlock()
			go func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c)
			}()
		}
	}()
	return ln
}

// Sink is a TCP server that reads and counts every byte sent to it, on any
// number of connections, in all and per connection.
type Sink struct {
	ln    net.Listener
	bytes atomic.Int64
	mu    sync.Mutex
	conns map[string]*atomic.Int64 // by the sender's address
}

// Sink starts a Sink on the TCP address addr inside the namespace; it stops
// when the test ends.
func (ns *NS) Sink(addr string) *Sink {
	ns.tb.Helper()
	s := &Sink{conns: map[string]*atomic.Int64{}}
	s.ln = ns.Serve(addr, func(c net.Conn) { _ = Drain(c, &s.bytes, s.counter(c.RemoteAddr().String())) })
	return s
}

func (s *Sink) counter(from string) *atomic.Int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.conns[from]
	if n == nil {
		n = new(atomic.Int64)
		s.conns[from] = n
	}
	return n
}

// Bytes returns how many bytes the sink has received so far.
func (s *Sink) Bytes() int64 { return s.bytes.Load() }

// ConnBytes returns how many bytes the sink has received so far on the
// connection from the address from (the sender's LocalAddr; 0 before the
// sink has accepted it). Where a sender's earlier connections may still
// deliver (a closed socket sends what it holds), it is the count of one
// flow that Bytes is not. A later connection from the same address (a
// reused port) adds to the same count: take a base when it opens.
func (s *Sink) ConnBytes(from net.Addr) int64 { return s.counter(from.String()).Load() }

// Addr returns the address the sink listens on.
func (s *Sink) Addr() net.Addr { return s.ln.Addr() }

// Drain reads r until it fails (io.EOF included), adding every byte read to
// each of n as it arrives, so that another goroutine can watch the count
// grow. It returns the error that ended the reading.
func Drain(r io.Reader, n ...*atomic.Int64) error {
	buf := make([]byte, 64<<10) // small: a Sink may hold thousands of connections
	for {
		k, err := r.Read(buf)
		for _, c := range n {
			c.Add(int64(k))
		}
		if err != nil {
			return err
		}
	}
}

// Blast writes to c as fast as it can until ctx ends or a write fails, and
// returns the bytes written. The end of ctx interrupts a write in progress
// (through the write deadline).
func Blast(ctx context.Context, c net.Conn) int64 {
	stop := context.AfterFunc(ctx, func() { _ = c.SetWriteDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 256<<10)
	var sent int64
	for ctx.Err() == nil {
		k, err := c.Write(buf)
		sent += int64(k)
		if err != nil {
			break
		}
	}
	return sent
}

// DialContext connects to addr from inside the namespace. It has the
// signature of (*net.Dialer).DialContext, so that it can serve as the dial
// function of an http.Transport or a resolver.
func (ns *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// DialTimeout connects to addr from inside the namespace, giving up after
// timeout.
func (ns *NS) DialTimeout(network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// DialRefused connects to the TCP address addr from inside the namespace,
// expecting the connection to be refused (ECONNREFUSED: the target's reset,
// or a local REJECT). It returns how long the connect took to fail (timed
// inside the namespace, so without the cost of entering it), or an error
// when it connected or failed otherwise, a timeout included.
func (ns *NS) DialRefused(addr string, timeout time.Duration) (time.Duration, error) {
	var took time.Duration
	err := ns.Do(func() error {
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, timeout)
		took = time.Since(start)
		if err == nil {
			c.Close()
			return fmt.Errorf("dialling %s from %s: connected, want refused", addr, ns.Name)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("dialling %s from %s: %w, want refused", addr, ns.Name, err)
		}
		return nil
	})
	return took, err
}
