//go:build linux

package conntrack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

const (
	defaultReadBuffer = 8 << 20
	// recvBufLen holds any datagram ctnetlink sends: dump batches are at
	// most 32 KiB (netlink_dump caps them), events are one flow each.
	recvBufLen = 64 << 10
)

// transport is what Conn needs from a netlink socket. The real one is a
// github.com/mdlayher/netlink Conn (which opens the socket in the target
// namespace, numbers and sends requests) read through its raw fd: netlink's
// own Receive waits for NLMSG_DONE after any NLM_F_MULTI message, and the
// kernel flags its single-flow GET reply NLM_F_MULTI without ever sending a
// DONE. Tests use an in-memory kernel.
type transport interface {
	send(typ, flags uint16, body []byte) (seq uint32, err error)
	recv(b []byte) (int, error) // one datagram
	setDeadline(t time.Time) error
	joinGroup(g uint32) error
	setReadBuffer(n int) error
	close() error
}

type nlTransport struct {
	nl *netlink.Conn
	rc syscall.RawConn
}

var _ transport = (*nlTransport)(nil)

func dialTransport(cfg Config) (transport, error) {
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: cfg.NetNS})
	if err != nil {
		return nil, err
	}
	rc, err := nl.SyscallConn()
	if err != nil {
		_ = nl.Close()
		return nil, err
	}
	return &nlTransport{nl: nl, rc: rc}, nil
}

func (t *nlTransport) send(typ, flags uint16, body []byte) (uint32, error) {
	m, err := t.nl.Send(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.HeaderFlags(flags)},
		Data:   body,
	})
	return m.Header.Sequence, err
}

func (t *nlTransport) recv(b []byte) (int, error) {
	var (
		n, flags int
		err      error
	)
	rerr := t.rc.Read(func(fd uintptr) bool {
		n, _, flags, _, err = unix.Recvmsg(int(fd), b, nil, unix.MSG_DONTWAIT)
		return err != unix.EAGAIN
	})
	if rerr != nil {
		return 0, rerr
	}
	if err != nil {
		return 0, os.NewSyscallError("recvmsg", err)
	}
	if flags&unix.MSG_TRUNC != 0 {
		return 0, fmt.Errorf("netlink datagram larger than %d bytes", len(b))
	}
	return n, nil
}

func (t *nlTransport) setDeadline(d time.Time) error { return t.nl.SetDeadline(d) }
func (t *nlTransport) joinGroup(g uint32) error      { return t.nl.JoinGroup(g) }
func (t *nlTransport) close() error                  { return t.nl.Close() }

// setReadBuffer sets SO_RCVBUFFORCE (CAP_NET_ADMIN; the sidecar has it),
// falling back to SO_RCVBUF, which net.core.rmem_max caps.
func (t *nlTransport) setReadBuffer(n int) error {
	var serr error
	if err := t.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	}); err == nil && serr == nil {
		return nil
	}
	return t.nl.SetReadBuffer(n)
}

// Conn is a ctnetlink socket in one network namespace. Its methods are safe
// for concurrent use; requests are serialised on one socket, and Listen
// opens a socket of its own.
type Conn struct {
	cfg  Config
	dial func() (transport, error)

	mu  sync.Mutex
	t   transport // nil after an interrupted request; dialled again on next use
	buf []byte
}

// Dial opens a ctnetlink socket in the network namespace cfg.NetNS.
func Dial(cfg Config) (*Conn, error) {
	c := newConn(cfg, func() (transport, error) { return dialTransport(cfg) })
	t, err := c.dial()
	if err != nil {
		return nil, fmt.Errorf("dialing ctnetlink: %w", err)
	}
	c.t = t
	return c, nil
}

func newConn(cfg Config, dial func() (transport, error)) *Conn {
	return &Conn{cfg: cfg, dial: dial}
}

// Close closes the socket. Listen's sockets close when their context ends.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dial = func() (transport, error) { return nil, os.ErrClosed }
	if c.t == nil {
		return nil
	}
	err := c.t.close()
	c.t = nil
	if err != nil {
		return fmt.Errorf("closing ctnetlink socket: %w", err)
	}
	return nil
}

// errKernel marks an error the kernel answered with; the exchange is then
// complete and the socket can be reused.
type errKernel struct{ errno unix.Errno }

func (e errKernel) Error() string { return e.errno.Error() }
func (e errKernel) Unwrap() error { return e.errno }

// exchange sends one request and calls fn with the payload of each
// ctnetlink message of the reply, until the kernel's NLMSG_DONE (dumps) or
// NLMSG_ERROR (errors and ACKs; every non-dump request asks for an ACK).
// ctx's deadline and cancellation interrupt blocking reads. After any
// failure other than a kernel error reply, unread replies may remain, so
// the socket is closed and a fresh one is dialled on next use.
func (c *Conn) exchange(ctx context.Context, msg, flags uint16, body []byte, fn func([]byte) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.t == nil {
		t, err := c.dial()
		if err != nil {
			return fmt.Errorf("dialing ctnetlink: %w", err)
		}
		c.t = t
	}
	if c.buf == nil {
		c.buf = make([]byte, recvBufLen)
	}
	t := c.t
	dl, hasDeadline := ctx.Deadline()
	if hasDeadline {
		_ = t.setDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = t.setDeadline(time.Unix(1, 0)) })
	err := c.roundTrip(t, msg, flags, body, fn)
	_, kernelErr := errors.AsType[errKernel](err)
	switch {
	case !stop() || (err != nil && !kernelErr):
		// ctx ended during the exchange (its callback may still be setting
		// a past deadline), or replies may be left unread: start afresh.
		_ = t.close()
		c.t = nil
	case hasDeadline:
		_ = t.setDeadline(time.Time{})
	}
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return err
	}
	return nil
}

func (c *Conn) roundTrip(t transport, msg, flags uint16, body []byte, fn func([]byte) error) error {
	dump := flags&uint16(netlink.Dump) == uint16(netlink.Dump)
	if !dump {
		flags |= uint16(netlink.Acknowledge)
	}
	seq, err := t.send(subsysCT<<8|msg, flags|uint16(netlink.Request), body)
	if err != nil {
		return fmt.Errorf("sending request: %w", err)
	}
	for {
		n, err := t.recv(c.buf)
		if err != nil {
			return fmt.Errorf("receiving reply: %w", err)
		}
		b := c.buf[:n]
		for len(b) > 0 {
			var m nlmsg
			m, b, err = nextMsg(b)
			if err != nil {
				return err
			}
			if m.seq != seq {
				continue // a reply to an earlier, abandoned request
			}
			switch {
			case m.typ == nlmsgError || m.typ == nlmsgDone:
				if e := m.errno(); e != 0 {
					return errKernel{unix.Errno(e)}
				}
				return nil
			case m.typ>>8 == subsysCT:
				if err := fn(m.data); err != nil {
					return err
				}
			}
		}
	}
}

// Dump returns every flow of the namespace, IPv4 and IPv6.
func (c *Conn) Dump(ctx context.Context) ([]Flow, error) {
	return c.DumpInto(ctx, nil)
}

// DumpInto is Dump that reuses buf's storage (it returns buf[:0] plus the
// flows), so a periodic dump allocates little once buf has grown to size.
func (c *Conn) DumpInto(ctx context.Context, buf []Flow) ([]Flow, error) {
	buf = buf[:0]
	err := c.exchange(ctx, msgGet, uint16(netlink.Dump), dumpBody(Filter{}), func(b []byte) error {
		if len(buf) < cap(buf) {
			buf = buf[:len(buf)+1]
		} else {
			buf = append(buf, Flow{})
		}
		return decodeFlow(b, &buf[len(buf)-1])
	})
	if err != nil {
		return buf[:0], fmt.Errorf("dumping conntrack table: %w", err)
	}
	return buf, nil
}

// Walk dumps the flows that f selects (the kernel filters them), calling fn
// with each as it is decoded: memory does not grow with the table. The
// *Flow is reused for the next flow; fn must copy what it keeps. An error
// from fn stops the walk and is returned (the socket is then re-dialled,
// since the rest of the dump is left unread).
func (c *Conn) Walk(ctx context.Context, f Filter, fn func(*Flow) error) error {
	var fl Flow
	err := c.exchange(ctx, msgGet, uint16(netlink.Dump), dumpBody(f), func(b []byte) error {
		fl = Flow{}
		if err := decodeFlow(b, &fl); err != nil {
			return err
		}
		return fn(&fl)
	})
	if err != nil {
		return fmt.Errorf("dumping conntrack table (mark %#x/%#x): %w", f.Mark, f.MarkMask, err)
	}
	return nil
}

// Get returns the flow whose original tuple is orig, or ErrNotFound.
func (c *Conn) Get(ctx context.Context, orig Tuple) (Flow, error) {
	f, err := c.get(ctx, msgGet, orig)
	if err != nil {
		return Flow{}, fmt.Errorf("getting conntrack flow %s: %w", orig, err)
	}
	return f, nil
}

// GetZero returns the flow whose original tuple is orig with its counters,
// and zeroes them in the same step (IPCTNL_MSG_CT_GET_CTRZERO: the kernel
// exchanges each counter with 0 atomically, so no byte is counted twice or
// lost between the read and the reset). Rules that match on the counters
// (connbytes) count from zero again. ErrNotFound when the flow is gone.
func (c *Conn) GetZero(ctx context.Context, orig Tuple) (Flow, error) {
	f, err := c.get(ctx, msgGetZero, orig)
	if err != nil {
		return Flow{}, fmt.Errorf("getting and zeroing conntrack flow %s: %w", orig, err)
	}
	return f, nil
}

func (c *Conn) get(ctx context.Context, msg uint16, orig Tuple) (Flow, error) {
	body, err := getBody(orig)
	if err != nil {
		return Flow{}, err
	}
	var f Flow
	found := false
	err = c.exchange(ctx, msg, 0, body, func(b []byte) error {
		if found {
			return nil
		}
		found = true
		return decodeFlow(b, &f)
	})
	if err == nil && !found {
		err = unix.ENOENT
	}
	if err != nil {
		return Flow{}, notFound(err)
	}
	return f, nil
}

// SetMark sets the bits of the flow's mark selected by mask to those of
// mark, leaving the other bits alone: new = (old &^ mask) | (mark & mask).
// A zero mark clears the masked bits. The kernel applies the mask
// atomically (CTA_MARK_MASK, ctnetlink_change_mark), so concurrent changes
// to other bits are not lost. It returns ErrNotFound when the flow is gone.
func (c *Conn) SetMark(ctx context.Context, orig Tuple, mark, mask uint32) error {
	body, err := setMarkBody(orig, mark, mask)
	if err != nil {
		return fmt.Errorf("setting conntrack mark: %w", err)
	}
	// IPCTNL_MSG_CT_NEW without NLM_F_CREATE updates an existing entry and
	// fails with ENOENT otherwise.
	err = c.exchange(ctx, msgNew, 0, body, func([]byte) error { return nil })
	if err != nil {
		return fmt.Errorf("setting mark %#x/%#x on conntrack flow %s: %w", mark, mask, orig, notFound(err))
	}
	return nil
}

func notFound(err error) error {
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

// Listen subscribes to conntrack events on a socket of its own with a
// receive buffer of cfg.ReadBuffer bytes. With no groups it joins GroupNew
// and GroupDestroy.
//
// Events arrive on the first channel. The second channel carries errors:
// one wrapping ErrEventsLost each time the kernel dropped events (listening
// goes on; losses the caller has not read yet are reported once), or a
// fatal error, after which both channels are closed. Both are closed when
// ctx ends. A slow reader makes the kernel drop events, which is then
// reported as ErrEventsLost.
func (c *Conn) Listen(ctx context.Context, groups ...Group) (<-chan Event, <-chan error) {
	events := make(chan Event, 256)
	errs := make(chan error, 1)
	if len(groups) == 0 {
		groups = []Group{GroupNew, GroupDestroy}
	}
	c.mu.Lock()
	dial := c.dial
	c.mu.Unlock()
	t, err := c.openListener(dial, groups)
	if err != nil {
		errs <- err
		close(events)
		close(errs)
		return events, errs
	}
	go listen(ctx, t, events, errs)
	return events, errs
}

func (c *Conn) openListener(dial func() (transport, error), groups []Group) (transport, error) {
	t, err := dial()
	if err != nil {
		return nil, fmt.Errorf("dialing ctnetlink for events: %w", err)
	}
	size := c.cfg.ReadBuffer
	if size <= 0 {
		size = defaultReadBuffer
	}
	if err := t.setReadBuffer(size); err != nil {
		_ = t.close()
		return nil, fmt.Errorf("setting ctnetlink receive buffer to %d bytes: %w", size, err)
	}
	for _, g := range groups {
		if err := t.joinGroup(uint32(g)); err != nil {
			_ = t.close()
			return nil, fmt.Errorf("joining ctnetlink group %d: %w", g, err)
		}
	}
	return t, nil
}

func listen(ctx context.Context, t transport, events chan<- Event, errs chan error) {
	defer close(errs)
	defer close(events)
	stop := context.AfterFunc(ctx, func() { _ = t.close() })
	defer func() {
		if stop() {
			_ = t.close()
		}
	}()
	fatal := func(err error) {
		select {
		case errs <- err:
		case <-ctx.Done():
		}
	}
	buf := make([]byte, recvBufLen)
	for {
		n, err := t.recv(buf)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, unix.ENOBUFS) {
			select {
			case errs <- fmt.Errorf("receiving conntrack events: %w: %w", ErrEventsLost, err):
			default: // a loss is already pending
			}
			continue
		}
		if err != nil {
			fatal(fmt.Errorf("receiving conntrack events: %w", err))
			return
		}
		b := buf[:n]
		for len(b) > 0 {
			var m nlmsg
			m, b, err = nextMsg(b)
			if err != nil {
				fatal(fmt.Errorf("decoding conntrack event: %w", err))
				return
			}
			typ, ok := eventType(m.typ, m.flags)
			if !ok {
				continue
			}
			ev := Event{Type: typ}
			if err := decodeFlow(m.data, &ev.Flow); err != nil {
				fatal(fmt.Errorf("decoding conntrack event: %w", err))
				return
			}
			select {
			case events <- ev:
			case <-ctx.Done():
				return
			}
		}
	}
}
