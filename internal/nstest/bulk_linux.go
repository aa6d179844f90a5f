//go:build linux

package nstest

// A bulk and echo server for shaping tests, in the real direction: the peer
// (the proxy) connects to a server in the pod (the notebook), and the pod
// sends, so its bytes are the reply direction of the connection and leave
// through the shaped eth0.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	modeBulk = 'B' // then 8 bytes: max pacing rate in bytes/s, 0 for none
	modeEcho = 'E' // then 64-byte requests, each answered with 512 bytes
	modeSend = 'S' // then 8-byte counts, each answered with that many bytes
)

// ServeBulk starts the bulk and echo server on port (both families) in ns.
func (ns *NS) ServeBulk(port int) {
	ns.tb.Helper()
	ns.Serve(fmt.Sprintf("[::]:%d", port), serveBulk)
}

func serveBulk(c net.Conn) {
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case modeBulk:
		var r [8]byte
		if _, err := io.ReadFull(c, r[:]); err != nil {
			return
		}
		if pace := binary.BigEndian.Uint64(r[:]); pace != 0 {
			raw, _ := c.(*net.TCPConn).SyscallConn()
			_ = raw.Control(func(fd uintptr) {
				_ = unix.SetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, pace)
			})
		}
		Blast(context.Background(), c)
	case modeSend:
		var n [8]byte
		buf := make([]byte, 256<<10)
		for {
			if _, err := io.ReadFull(c, n[:]); err != nil {
				return
			}
			for left := binary.BigEndian.Uint64(n[:]); left > 0; {
				k := min(left, uint64(len(buf)))
				if _, err := c.Write(buf[:k]); err != nil {
					return
				}
				left -= k
			}
		}
	case modeEcho:
		req, resp := make([]byte, 64), make([]byte, 512)
		for {
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			if _, err := c.Write(resp); err != nil {
				return
			}
		}
	}
}

// DialRetry connects from ns to addr, retrying twice (the first IPv6 packet
// can be lost to neighbour discovery), and closes the connection when the
// test ends.
func (ns *NS) DialRetry(addr string) net.Conn {
	ns.tb.Helper()
	var c net.Conn
	var err error
	for range 3 {
		if c, err = ns.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			break
		}
	}
	if err != nil {
		ns.tb.Fatal(err)
	}
	ns.tb.Cleanup(func() { c.Close() })
	return c
}

type sample struct {
	at    time.Time
	bytes int64
}

// Bulk is a running download from a ServeBulk server: bytes received,
// sampled every few milliseconds.
type Bulk struct {
	Conn    net.Conn
	Port    int // the server side's port
	Got     atomic.Int64
	mu      sync.Mutex
	samples []sample
	stop    chan struct{}
	done    sync.WaitGroup
}

// StartBulk starts a download from the ServeBulk server at addr, from ns,
// paced by the server at pace bytes/s (0: as fast as it can).
func (ns *NS) StartBulk(addr string, pace uint64) *Bulk {
	ns.tb.Helper()
	c := ns.DialRetry(addr)
	var hdr [9]byte
	hdr[0] = modeBulk
	binary.BigEndian.PutUint64(hdr[1:], pace)
	if _, err := c.Write(hdr[:]); err != nil {
		ns.tb.Fatal(err)
	}
	b := &Bulk{Conn: c, Port: c.RemoteAddr().(*net.TCPAddr).Port, stop: make(chan struct{})}
	b.done.Add(2)
	go func() {
		defer b.done.Done()
		_ = Drain(c, &b.Got)
	}()
	go func() {
		defer b.done.Done()
		tk := time.NewTicker(2 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-b.stop:
				return
			case now := <-tk.C:
				b.mu.Lock()
				b.samples = append(b.samples, sample{now, b.Got.Load()})
				b.mu.Unlock()
			}
		}
	}()
	ns.tb.Cleanup(b.Close)
	return b
}

// Close stops the download.
func (b *Bulk) Close() {
	select {
	case <-b.stop:
		return
	default:
	}
	close(b.stop)
	b.Conn.Close()
	b.done.Wait()
}

// At returns the bytes received by time t (the last sample not after t).
func (b *Bulk) At(t time.Time) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := sort.Search(len(b.samples), func(i int) bool { return b.samples[i].at.After(t) })
	if i == 0 {
		return 0
	}
	return b.samples[i-1].bytes
}

// Rate returns the goodput in bytes/s between two times.
func (b *Bulk) Rate(from, to time.Time) float64 {
	return float64(b.At(to)-b.At(from)) / to.Sub(from).Seconds()
}

// DropTime returns the first time after from (within 2 s) at which the
// goodput over the next window is at most limit bytes/s.
func (b *Bulk) DropTime(from time.Time, window time.Duration, limit float64) (time.Time, bool) {
	for at := from; at.Before(from.Add(2 * time.Second)); at = at.Add(2 * time.Millisecond) {
		if b.Rate(at, at.Add(window)) <= limit {
			return at, true
		}
	}
	return time.Time{}, false
}

// Echo opens an echo exchange from ns to the ServeBulk server at addr.
func (ns *NS) Echo(addr string) net.Conn {
	ns.tb.Helper()
	c := ns.DialRetry(addr)
	if _, err := c.Write([]byte{modeEcho}); err != nil {
		ns.tb.Fatal(err)
	}
	return c
}

// EchoP95 runs n request/response exchanges on an Echo connection and
// returns the 95th percentile round trip.
func EchoP95(tb testing.TB, c net.Conn, n int) time.Duration {
	tb.Helper()
	req, resp := make([]byte, 64), make([]byte, 512)
	rtts := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if _, err := c.Write(req); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			tb.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	return rtts[n*95/100]
}

// Sender is a connection to a ServeBulk server that sends what it is asked.
type Sender struct {
	Conn net.Conn
	Port int // the server side's port
	buf  []byte
}

// Sender opens a connection from ns to the ServeBulk server at addr.
func (ns *NS) Sender(addr string) *Sender {
	ns.tb.Helper()
	c := ns.DialRetry(addr)
	if _, err := c.Write([]byte{modeSend}); err != nil {
		ns.tb.Fatal(err)
	}
	return &Sender{Conn: c, Port: c.RemoteAddr().(*net.TCPAddr).Port, buf: make([]byte, 256<<10)}
}

// Fetch asks the server for n bytes and reads them; it returns how long
// that took.
func (s *Sender) Fetch(n uint64) (time.Duration, error) {
	start := time.Now()
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], n)
	if _, err := s.Conn.Write(hdr[:]); err != nil {
		return 0, err
	}
	for left := n; left > 0; {
		k, err := s.Conn.Read(s.buf[:min(left, uint64(len(s.buf)))])
		if err != nil {
			return 0, err
		}
		left -= uint64(k)
	}
	return time.Since(start), nil
}

var sentRE = regexp.MustCompile(`Sent (\d+) bytes (\d+) pkt`)

// ClassSent reads the bytes and packets an HTB class (e.g. "4857:20") on dev
// has sent. tc counts frames: the IP packet plus the 14-byte Ethernet
// header, each GSO segment as a packet.
func (ns *NS) ClassSent(dev, class string) (bytes, pkts uint64) {
	ns.tb.Helper()
	out := ns.MustRun("tc", "-s", "class", "show", "dev", dev, "classid", class)
	m := sentRE.FindStringSubmatch(out)
	if m == nil {
		ns.tb.Fatalf("no counters for class %s:\n%s", class, out)
	}
	bytes, _ = strconv.ParseUint(m[1], 10, 64)
	pkts, _ = strconv.ParseUint(m[2], 10, 64)
	return bytes, pkts
}

// IPBytes converts a class's frame count to the IP bytes conntrack and
// connbytes count.
func IPBytes(bytes, pkts uint64) int64 { return int64(bytes) - 14*int64(pkts) }

// Mbit formats a rate in bytes/s as Mbit/s.
func Mbit(bps float64) string { return fmt.Sprintf("%.1f Mbit/s", bps*8/1e6) }
