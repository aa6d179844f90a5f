//go:build linux

package conntrack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

const defaultReadBuffer = 8 << 20

// Conn is a ctnetlink socket in one network namespace. Its methods are safe
// for concurrent use; requests are serialised on one socket, and Listen
// opens a socket of its own.
type Conn struct {
	cfg  Config
	dial func() (*netlink.Conn, error)

	mu sync.Mutex
	nl *netlink.Conn // nil after an interrupted request; dialled again on next use
}

// Dial opens a ctnetlink socket in the network namespace cfg.NetNS.
func Dial(cfg Config) (*Conn, error) {
	dial := func() (*netlink.Conn, error) {
		return netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: cfg.NetNS})
	}
	nl, err := dial()
	if err != nil {
		return nil, fmt.Errorf("dialing ctnetlink: %w", err)
	}
	return newConn(cfg, nl, dial), nil
}

// newConn wraps an open netlink socket; dial opens more (after an
// interrupted request, and for Listen). Tests pass nltest sockets.
func newConn(cfg Config, nl *netlink.Conn, dial func() (*netlink.Conn, error)) *Conn {
	return &Conn{cfg: cfg, dial: dial, nl: nl}
}

// Close closes the socket. Listen's sockets close when their context ends.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nl == nil {
		return nil
	}
	err := c.nl.Close()
	c.nl = nil
	c.dial = func() (*netlink.Conn, error) { return nil, os.ErrClosed }
	if err != nil {
		return fmt.Errorf("closing ctnetlink socket: %w", err)
	}
	return nil
}

// do runs fn on the request socket under ctx: ctx's deadline and
// cancellation interrupt blocking reads. A request that fails may leave
// unread replies in the socket, so the socket is then closed and a fresh one
// is dialled on next use.
func (c *Conn) do(ctx context.Context, fn func(nl *netlink.Conn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nl == nil {
		nl, err := c.dial()
		if err != nil {
			return fmt.Errorf("dialing ctnetlink: %w", err)
		}
		c.nl = nl
	}
	nl := c.nl
	if dl, ok := ctx.Deadline(); ok {
		_ = nl.SetDeadline(dl) // best effort: unsupported on test sockets
	}
	stop := context.AfterFunc(ctx, func() { _ = nl.SetDeadline(time.Unix(1, 0)) })
	err := fn(nl)
	stop()
	if err != nil {
		// A kernel error reply (an OpError holding a bare errno) ends the
		// exchange cleanly; anything else (timeouts, socket errors,
		// decoding errors mid-dump) may leave replies behind.
		if ne, ok := errors.AsType[*netlink.OpError](err); !ok || !isErrno(ne.Err) {
			_ = nl.Close()
			c.nl = nil
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return err
	}
	_ = nl.SetDeadline(time.Time{})
	return nil
}

// Dump returns every flow of the namespace, IPv4 and IPv6.
func (c *Conn) Dump(ctx context.Context) ([]Flow, error) {
	return c.DumpInto(ctx, nil)
}

// DumpInto is Dump that reuses buf's storage (it returns buf[:0] plus the
// flows), so a periodic dump allocates little once buf has grown to size.
func (c *Conn) DumpInto(ctx context.Context, buf []Flow) ([]Flow, error) {
	buf = buf[:0]
	err := c.do(ctx, func(nl *netlink.Conn) error {
		req, err := nl.Send(netlink.Message{
			Header: netlink.Header{
				Type:  ctType(msgGet),
				Flags: netlink.Request | netlink.Dump,
			},
			Data: dumpBody(),
		})
		if err != nil {
			return err
		}
		for m, err := range nl.ReceiveIter() {
			if err != nil {
				return err
			}
			if m.Header.Sequence != req.Header.Sequence || m.Header.Type>>8 != subsysCT {
				continue
			}
			if len(buf) < cap(buf) {
				buf = buf[:len(buf)+1]
			} else {
				buf = append(buf, Flow{})
			}
			if err := decodeFlow(m.Data, &buf[len(buf)-1]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return buf[:0], fmt.Errorf("dumping conntrack table: %w", err)
	}
	return buf, nil
}

// Get returns the flow whose original tuple is orig, or ErrNotFound.
func (c *Conn) Get(ctx context.Context, orig Tuple) (Flow, error) {
	body, err := getBody(orig)
	if err != nil {
		return Flow{}, fmt.Errorf("getting conntrack flow: %w", err)
	}
	var f Flow
	found := false
	err = c.do(ctx, func(nl *netlink.Conn) error {
		msgs, err := nl.Execute(netlink.Message{
			Header: netlink.Header{Type: ctType(msgGet), Flags: netlink.Request},
			Data:   body,
		})
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type>>8 == subsysCT {
				found = true
				return decodeFlow(m.Data, &f)
			}
		}
		return nil
	})
	if err == nil && !found {
		err = unix.ENOENT
	}
	if err != nil {
		return Flow{}, fmt.Errorf("getting conntrack flow %s: %w", orig, notFound(err))
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
	err = c.do(ctx, func(nl *netlink.Conn) error {
		// IPCTNL_MSG_CT_NEW without NLM_F_CREATE updates an existing entry
		// and fails with ENOENT otherwise.
		_, err := nl.Execute(netlink.Message{
			Header: netlink.Header{Type: ctType(msgNew), Flags: netlink.Request | netlink.Acknowledge},
			Data:   body,
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("setting mark %#x/%#x on conntrack flow %s: %w", mark, mask, orig, notFound(err))
	}
	return nil
}

func isErrno(err error) bool {
	_, ok := err.(unix.Errno)
	return ok
}

func notFound(err error) error {
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

func ctType(msg uint16) netlink.HeaderType {
	return netlink.HeaderType(subsysCT<<8 | msg)
}

// Listen subscribes to conntrack events on a socket of its own with a
// receive buffer of cfg.ReadBuffer bytes. With no groups it joins GroupNew
// and GroupDestroy.
//
// Events arrive on the first channel. The second channel carries errors:
// one wrapping ErrEventsLost each time the kernel dropped events (listening
// goes on; consecutive losses the caller has not read yet are reported
// once), or a fatal error, after which both channels are closed. Both are
// closed when ctx ends. A slow reader makes the kernel drop events, which
// is then reported as ErrEventsLost.
func (c *Conn) Listen(ctx context.Context, groups ...Group) (<-chan Event, <-chan error) {
	events := make(chan Event, 256)
	errs := make(chan error, 1)
	if len(groups) == 0 {
		groups = []Group{GroupNew, GroupDestroy}
	}
	c.mu.Lock()
	dial := c.dial
	c.mu.Unlock()
	nl, err := c.openListener(dial, groups)
	if err != nil {
		errs <- err
		close(events)
		close(errs)
		return events, errs
	}
	go c.listen(ctx, nl, events, errs)
	return events, errs
}

func (c *Conn) openListener(dial func() (*netlink.Conn, error), groups []Group) (*netlink.Conn, error) {
	nl, err := dial()
	if err != nil {
		return nil, fmt.Errorf("dialing ctnetlink for events: %w", err)
	}
	size := c.cfg.ReadBuffer
	if size <= 0 {
		size = defaultReadBuffer
	}
	if err := setReadBuffer(nl, size); err != nil {
		_ = nl.Close()
		return nil, err
	}
	for _, g := range groups {
		if err := nl.JoinGroup(uint32(g)); err != nil {
			_ = nl.Close()
			return nil, fmt.Errorf("joining ctnetlink group %d: %w", g, err)
		}
	}
	return nl, nil
}

// setReadBuffer sets SO_RCVBUFFORCE (CAP_NET_ADMIN; the sidecar has it),
// falling back to SO_RCVBUF, which net.core.rmem_max caps.
func setReadBuffer(nl *netlink.Conn, size int) error {
	rc, err := nl.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
		})
		if err == nil && serr == nil {
			return nil
		}
	}
	if err := nl.SetReadBuffer(size); err != nil && !errors.Is(err, errors.ErrUnsupported) && !isNotSupported(err) {
		return fmt.Errorf("setting ctnetlink receive buffer to %d bytes: %w", size, err)
	}
	return nil
}

// isNotSupported reports mdlayher/netlink's "not supported" OpError, which
// test sockets return for socket options.
func isNotSupported(err error) bool {
	var ne *netlink.OpError
	return errors.As(err, &ne) && ne.Err != nil && ne.Err.Error() == "not supported"
}

func (c *Conn) listen(ctx context.Context, nl *netlink.Conn, events chan<- Event, errs chan error) {
	defer close(errs)
	defer close(events)
	stop := context.AfterFunc(ctx, func() { _ = nl.Close() })
	defer func() {
		if stop() {
			_ = nl.Close()
		}
	}()
	for {
		msgs, err := nl.Receive()
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
			select {
			case errs <- fmt.Errorf("receiving conntrack events: %w", err):
			case <-ctx.Done():
			}
			return
		}
		for _, m := range msgs {
			typ, ok := eventType(uint16(m.Header.Type), uint16(m.Header.Flags))
			if !ok {
				continue
			}
			ev := Event{Type: typ}
			if err := decodeFlow(m.Data, &ev.Flow); err != nil {
				select {
				case errs <- fmt.Errorf("decoding conntrack event: %w", err):
				case <-ctx.Done():
				}
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
