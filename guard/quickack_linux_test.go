package guard

import (
	"context"
	"io"
	"net"
	"slices"
	"testing"
	"time"
)

// nagleServer answers each byte it reads with a burst of five small
// writes, Nagle's algorithm on, as tornado writes a kernel's messages on
// a websocket (status, input, stream, reply, idle).
func nagleServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.(*net.TCPConn).SetNoDelay(false)
				msg := make([]byte, 200)
				b := make([]byte, 1)
				for {
					if _, err := c.Read(b); err != nil {
						return
					}
					for range 5 {
						if _, err := c.Write(msg); err != nil {
							return
						}
						time.Sleep(200 * time.Microsecond)
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// burstMedian is the median time from a request byte to the whole burst,
// over 20 rounds after 10 of warm-up (a new connection ACKs at once for
// its first segments).
func burstMedian(t *testing.T, c net.Conn) time.Duration {
	t.Helper()
	buf := make([]byte, 1000)
	var ds []time.Duration
	for i := range 30 {
		t0 := time.Now()
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		if i >= 10 {
			ds = append(ds, time.Since(t0))
		}
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// TestDialServerQuickAck: behind the guard, a server that keeps Nagle's
// algorithm on (tornado's websockets) must not wait for Linux's delayed
// ACK (40 ms) on the guard's side between the messages of a burst. The
// control, a plain connection, shows the stall the test would catch.
func TestDialServerQuickAck(t *testing.T) {
	addr := nagleServer(t)
	d := &net.Dialer{Timeout: 5 * time.Second}
	plain, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	quick, err := dialServer(d)(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer quick.Close()
	if _, ok := quick.(*quickAckConn); !ok {
		t.Fatalf("dialServer returned a %T, want a *quickAckConn", quick)
	}
	control := burstMedian(t, plain)
	got := burstMedian(t, quick)
	t.Logf("median burst: plain connection %s, dialServer's %s", control, got)
	if control < 20*time.Millisecond {
		t.Skipf("the kernel did not delay its ACKs on the plain connection (median %s): nothing to show", control)
	}
	if got >= 20*time.Millisecond {
		t.Errorf("a burst through dialServer's connection took %s at the median (plain: %s): the delayed ACK still holds the server's messages", got, control)
	}
}
