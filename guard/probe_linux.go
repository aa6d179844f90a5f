package guard

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Probe is the guard's self-test: from inside the pod, it connects to the
// server's port on loopback with ProbeMark, which Plan's OUTPUT rule sends
// through the same redirect chain as the pod's inbound connections, and
// checks that the guard answers (it answers ProbeTarget itself, in every
// mode, with 204 and its rule header) and not the server. It fails when the
// redirect rule does not take the connection (the server answers), when
// nothing listens on the guard's port (refused), or when something else
// does. It needs NET_ADMIN (SO_MARK) and the rules of Plan.
func Probe(ctx context.Context, serverPort uint16) error {
	d := net.Dialer{Timeout: 2 * time.Second, Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, ProbeMark) }); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("marking the probe (needs NET_ADMIN): %w", serr)
		}
		return nil
	}}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(serverPort)))
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("probing the guard through the redirect of %s: %w", addr, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	}
	if _, err := io.WriteString(c, "GET "+ProbeTarget+" HTTP/1.1\r\nHost: hubwarden-selftest\r\nConnection: close\r\n\r\n"); err != nil {
		return fmt.Errorf("probing the guard through the redirect of %s: %w", addr, err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return fmt.Errorf("probing the guard through the redirect of %s: reading the answer: %w", addr, err)
	}
	res.Body.Close()
	if rule := res.Header.Get("X-Hubwarden-Rule"); res.StatusCode != http.StatusNoContent || rule != ruleProbe {
		return fmt.Errorf("probing the guard through the redirect of %s: answered %s (rule %q), not by the guard: the redirect does not take connections to the guard", addr, res.Status, rule)
	}
	return nil
}
