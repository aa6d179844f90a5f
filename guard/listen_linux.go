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
