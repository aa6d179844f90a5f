package health

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
)

// Connection limits of the two listeners (see Listen). The probe listener
// serves the kubelet and a metrics scraper, each from its own address: a
// per-source cap keeps any one client from holding the slots of the others.
// The local listener serves the pod itself (hubwarden verify, kubectl
// port-forward): whatever the notebook does to it, it cannot reach the probe
// listener's slots.
const (
	ProbeMaxConns       = 256
	ProbeConnsPerSource = 8
	LocalMaxConns       = 16
)

// Listen opens the health server's listeners: the probe listener on addr,
// for the kubelet's probes and scrapes from outside the pod, and, unless
// addr's host is itself loopback, a local listener on 127.0.0.1 at the same
// port. Both set SO_REUSEPORT, so the kernel gives 127.0.0.1 to the local
// one (the more specific address) and everything else to the probe one.
// The pod's own connections to the probe listener (to the pod's address
// through lo) are refused by the egress rules (egress.Config.ProbePort).
// local is nil when addr is loopback.
func Listen(addr string) (probe, local net.Listener, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	if a, err := netip.ParseAddr(host); err == nil && a.IsLoopback() {
		ln, err := listenReusePort(addr)
		return ln, nil, err
	}
	probe, err = listenReusePort(addr)
	if err != nil {
		return nil, nil, err
	}
	local, err = listenReusePort(net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		probe.Close()
		return nil, nil, err
	}
	return probe, local, nil
}

// LimitPerSource wraps ln so that at most n connections from one source
// address are open at once: Accept closes the others at once.
func LimitPerSource(ln net.Listener, n int) net.Listener {
	return &perSource{Listener: ln, max: n, open: map[netip.Addr]int{}}
}

type perSource struct {
	net.Listener
	max  int
	mu   sync.Mutex
	open map[netip.Addr]int
}

func (l *perSource) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
		if err != nil {
			return c, nil
		}
		src := ap.Addr().Unmap()
		l.mu.Lock()
		if l.open[src] >= l.max {
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.open[src]++
		l.mu.Unlock()
		return &sourceConn{Conn: c, l: l, src: src}, nil
	}
}

type sourceConn struct {
	net.Conn
	l    *perSource
	src  netip.Addr
	once sync.Once
}

func (c *sourceConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		if c.l.open[c.src]--; c.l.open[c.src] <= 0 {
			delete(c.l.open, c.src)
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
