//go:build linux

package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// NS is a named network namespace created by the bed (/run/netns/<Name>).
type NS struct {
	Name string
}

// Path is the bind-mount path of the namespace.
func (n NS) Path() string { return "/run/netns/" + n.Name }

// Do runs f on a locked OS thread that has joined the namespace. Sockets f
// creates belong to the namespace and stay there after Do returns, so a
// listener or a connection made in f can be used from any goroutine.
func (n NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening the current netns: %w", err)
			return
		}
		defer self.Close()
		target, err := os.Open(n.Path())
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening netns %s: %w", n.Name, err)
			return
		}
		defer target.Close()
		if err := setns(int(target.Fd())); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering netns %s: %w", n.Name, err)
			return
		}
		ferr := f()
		if err := setns(int(self.Fd())); err != nil {
			// Leave the thread locked: the runtime ends it with the goroutine,
			// so no other goroutine ever runs in the wrong namespace.
			errc <- fmt.Errorf("leaving netns %s: %w", n.Name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func setns(fd int) error { return unix.Setns(fd, unix.CLONE_NEWNET) }

// DialContext dials from inside the namespace; use it as an
// http.Transport.DialContext.
func (n NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen opens a listener inside the namespace.
func (n NS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// ListenPacket opens a packet socket inside the namespace.
func (n NS) ListenPacket(network, addr string) (net.PacketConn, error) {
	var l net.PacketConn
	err := n.Do(func() error {
		var err error
		l, err = net.ListenPacket(network, addr)
		return err
	})
	return l, err
}
