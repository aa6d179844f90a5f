package guard

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Listen opens the guard's listening socket on every address of the pod
// (IPv4 and IPv6) at port. The socket is transparent (IP_TRANSPARENT /
// IPV6_TRANSPARENT, which needs NET_ADMIN): the filter rule of Plan lets
// only such a socket take connections to the guard's port, so no process
// of the notebook user can stand in for the guard.
func Listen(ctx context.Context, port uint16) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if network == "tcp4" {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			}
		})
		if err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("making the guard's socket transparent (needs NET_ADMIN): %w", serr)
		}
		return nil
	}}
	ln, err := lc.Listen(ctx, "tcp", ":"+strconv.Itoa(int(port)))
	if err != nil {
		return nil, fmt.Errorf("listening on HUBWARDEN_GUARD_PORT %d: %w", port, err)
	}
	return ln, nil
}

// dialServer dials the server with d and returns connections that
// acknowledge what they read at once (TCP_QUICKACK after every read).
//
// tornado leaves Nagle's algorithm on for websockets (jupyter-server never
// calls set_nodelay), so the server holds a small message back while an
// earlier one is unacknowledged. On the hub's proxy's connection to the pod
// (MSS 1448) that costs little; on loopback the MSS is 64 KiB, every kernel
// message is "small", and Linux's delayed ACK (40 ms at least) on the
// guard's side held the next message of a cell's burst (status, input,
// stream, reply, idle). Measured on the e2e bed (part 1 over HTTP, 40 s):
// a print cell took 20.4 ms at the median and 51 ms at p95 behind the
// guard against 9.8 and 21 ms in the bare pod; with this, 9.6 and 24 ms
// against 9.7 and 23 ms. TCP_QUICKACK is not sticky (the kernel returns
// to delayed ACKs), hence after every read.
func dialServer(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc, ok := c.(*net.TCPConn)
		if !ok {
			return c, nil
		}
		raw, err := tc.SyscallConn()
		if err != nil {
			return c, nil
		}
		return &quickAckConn{Conn: c, raw: raw}, nil
	}
}

// quickAckConn is a connection to the server that sets TCP_QUICKACK after
// every read. It embeds the net.Conn interface, not *net.TCPConn, so that
// no ReadFrom or WriteTo goes around Read.
type quickAckConn struct {
	net.Conn
	raw syscall.RawConn
}

func (c *quickAckConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		_ = c.raw.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1)
		})
	}
	return n, err
}
