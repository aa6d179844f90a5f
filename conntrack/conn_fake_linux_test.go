//go:build linux

package conntrack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// fakeKernel is an in-memory transport: handle answers each request with
// datagrams (or errors) that recv hands out in order.
type fakeKernel struct {
	handle   func(r request) []recvItem
	fixedSeq uint32 // if set, every request gets this sequence number

	mu       sync.Mutex
	reqs     []request
	queue    []recvItem
	seq      uint32
	wake     chan struct{}
	closed   bool
	deadline time.Time
	groups   []uint32
	readBuf  int
	closures int
}

type request struct {
	typ, flags uint16
	seq        uint32
	body       []byte
}

type recvItem struct {
	b   []byte
	err error
}

var _ transport = (*fakeKernel)(nil)

func newFake(handle func(r request) []recvItem) *fakeKernel {
	return &fakeKernel{handle: handle, wake: make(chan struct{}, 1)}
}

func (k *fakeKernel) poke() {
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

func (k *fakeKernel) send(typ, flags uint16, body []byte) (uint32, error) {
	k.mu.Lock()
	k.seq++
	r := request{typ: typ, flags: flags, seq: k.seq, body: append([]byte(nil), body...)}
	if k.fixedSeq != 0 {
		r.seq = k.fixedSeq
	}
	k.reqs = append(k.reqs, r)
	k.mu.Unlock()
	items := k.handle(r)
	k.mu.Lock()
	k.queue = append(k.queue, items...)
	k.mu.Unlock()
	k.poke()
	return r.seq, nil
}

func (k *fakeKernel) push(items ...recvItem) {
	k.mu.Lock()
	k.queue = append(k.queue, items...)
	k.mu.Unlock()
	k.poke()
}

func (k *fakeKernel) recv(b []byte) (int, error) {
	for {
		k.mu.Lock()
		switch {
		case k.closed:
			k.mu.Unlock()
			return 0, net.ErrClosed
		case !k.deadline.IsZero() && !time.Now().Before(k.deadline):
			k.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		case len(k.queue) > 0:
			it := k.queue[0]
			k.queue = k.queue[1:]
			k.mu.Unlock()
			if it.err != nil {
				return 0, it.err
			}
			return copy(b, it.b), nil
		}
		k.mu.Unlock()
		<-k.wake
	}
}

func (k *fakeKernel) setDeadline(t time.Time) error {
	k.mu.Lock()
	k.deadline = t
	k.mu.Unlock()
	k.poke()
	return nil
}

func (k *fakeKernel) joinGroup(g uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.groups = append(k.groups, g)
	return nil
}

func (k *fakeKernel) setReadBuffer(n int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.readBuf = n
	return nil
}

func (k *fakeKernel) close() error {
	k.mu.Lock()
	k.closed = true
	k.closures++
	k.mu.Unlock()
	k.poke()
	return nil
}

// msg encodes one netlink message.
func msg(typ, flags uint16, seq uint32, data []byte) []byte {
	data = append(data, make([]byte, align4(len(data))-len(data))...)
	b, err := (netlink.Message{
		Header: netlink.Header{Length: uint32(16 + len(data)), Type: netlink.HeaderType(typ), Flags: netlink.HeaderFlags(flags), Sequence: seq},
		Data:   data,
	}).MarshalBinary()
	if err != nil {
		panic(err)
	}
	return b
}

func datagram(msgs ...[]byte) recvItem {
	var b []byte
	for _, m := range msgs {
		b = append(b, m...)
	}
	return recvItem{b: b}
}

// errMsg is an NLMSG_ERROR reply (errno 0 is an ACK).
func errMsg(seq uint32, errno unix.Errno) []byte {
	b := binary.NativeEndian.AppendUint32(nil, uint32(-int32(errno)))
	return msg(nlmsgError, 0, seq, append(b, make([]byte, 16)...))
}

const multi = uint16(netlink.Multi)

func doneMsg(seq uint32) []byte { return msg(nlmsgDone, multi, seq, []byte{0, 0, 0, 0}) }

func flowReply(tb testing.TB, seq uint32, f Flow) []byte {
	return msg(subsysCT<<8|msgNew, multi, seq, flowMsg(tb, f))
}

func fakeConn(k *fakeKernel) (*Conn, *int) {
	dials := 0
	return newConn(Config{}, func() (transport, error) {
		dials++
		k.mu.Lock()
		k.closed, k.deadline = false, time.Time{} // a fresh socket
		k.mu.Unlock()
		return k, nil
	}), &dials
}

func TestDumpMultipart(t *testing.T) {
	flows := append(sampleFlows(), sampleFlows()...)
	flows[2].ID, flows[3].ID = 3, 4
	k := newFake(func(r request) []recvItem {
		return []recvItem{
			datagram(flowReply(t, r.seq-1, flows[0]), flowReply(t, r.seq, flows[0]), flowReply(t, r.seq, flows[1])), // a stale reply first
			datagram(flowReply(t, r.seq, flows[2])),
			datagram(flowReply(t, r.seq, flows[3]), doneMsg(r.seq)),
		}
	})
	c, _ := fakeConn(k)
	got, err := c.Dump(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(flows, got, addrs); diff != "" {
		t.Errorf("Dump (-want +got):\n%s", diff)
	}
	want := request{typ: 0x101, flags: uint16(netlink.Request | netlink.Dump), seq: 1, body: []byte{afUnspec, 0, 0, 0}}
	if diff := cmp.Diff(want, k.reqs[0], cmp.AllowUnexported(request{})); diff != "" {
		t.Errorf("request (-want +got):\n%s", diff)
	}

	again, err := c.DumpInto(t.Context(), got)
	if err != nil {
		t.Fatal(err)
	}
	if &again[0] != &got[0] || len(again) != len(flows) {
		t.Errorf("DumpInto did not reuse the buffer (len %d)", len(again))
	}
}

func TestDumpErrors(t *testing.T) {
	var k *fakeKernel
	ctx, cancel := context.WithCancel(t.Context())
	k = newFake(func(r request) []recvItem {
		switch r.seq {
		case 1:
			return []recvItem{datagram(errMsg(r.seq, unix.EPERM))}
		case 2:
			return []recvItem{datagram(msg(subsysCT<<8, multi, r.seq, []byte{2, 0, 0, 0, 6, 0, ctaMark, 0, 1, 2}))} // a 2-byte mark
		case 3:
			cancel() // the reply never comes
			return nil
		}
		return []recvItem{datagram(doneMsg(r.seq))}
	})
	c, dials := fakeConn(k)

	if _, err := c.Dump(t.Context()); !errors.Is(err, unix.EPERM) {
		t.Errorf("Dump error = %v, want EPERM", err)
	}
	if k.closures != 0 {
		t.Errorf("socket closed after a kernel error reply")
	}
	if _, err := c.Dump(t.Context()); err == nil {
		t.Error("Dump of a malformed flow succeeded")
	}
	if _, err := c.Dump(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Dump error = %v, want context.Canceled", err)
	}
	if k.closures != 2 {
		t.Errorf("socket closed %d times, want 2 (after the decoding error and the cancellation)", k.closures)
	}
	if _, err := c.Dump(t.Context()); err != nil {
		t.Errorf("Dump on a redialled socket: %v", err)
	}
	if *dials != 3 {
		t.Errorf("dialled %d times, want 3", *dials)
	}
}

// TestDeadlineReset checks that a request's deadline does not outlive it.
func TestDeadlineReset(t *testing.T) {
	k := newFake(func(r request) []recvItem { return []recvItem{datagram(doneMsg(r.seq))} })
	c, _ := fakeConn(k)
	ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
	defer cancel()
	if _, err := c.Dump(ctx); err != nil {
		t.Fatal(err)
	}
	if !k.deadline.IsZero() || k.closures != 0 {
		t.Errorf("after Dump: deadline %v, %d closures; want none left", k.deadline, k.closures)
	}
}

func TestGet(t *testing.T) {
	want := sampleFlows()[0]
	k := newFake(func(r request) []recvItem {
		switch r.seq {
		case 1: // the kernel flags the single reply NLM_F_MULTI and sends no DONE
			return []recvItem{datagram(flowReply(t, r.seq, want)), datagram(errMsg(r.seq, 0))}
		case 2:
			return []recvItem{datagram(errMsg(r.seq, unix.ENOENT))}
		}
		return []recvItem{datagram(errMsg(r.seq, 0))} // an ACK without a flow
	})
	c, _ := fakeConn(k)
	got, err := c.Get(t.Context(), want.Orig)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, addrs); diff != "" {
		t.Errorf("Get (-want +got):\n%s", diff)
	}
	body, _ := getBody(want.Orig)
	wantReq := request{typ: 0x101, flags: uint16(netlink.Request | netlink.Acknowledge), seq: 1, body: body}
	if diff := cmp.Diff(wantReq, k.reqs[0], cmp.AllowUnexported(request{})); diff != "" {
		t.Errorf("request (-want +got):\n%s", diff)
	}
	for range 2 {
		if _, err := c.Get(t.Context(), want.Orig); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get error = %v, want ErrNotFound", err)
		}
	}
}

func TestSetMark(t *testing.T) {
	orig := sampleFlows()[1].Orig
	k := newFake(func(r request) []recvItem {
		if r.seq == 1 {
			return []recvItem{datagram(errMsg(r.seq, 0))}
		}
		return []recvItem{datagram(errMsg(r.seq, unix.ENOENT))}
	})
	c, _ := fakeConn(k)
	if err := c.SetMark(t.Context(), orig, 0, 0xff); err != nil {
		t.Fatal(err)
	}
	body, _ := setMarkBody(orig, 0, 0xff)
	// CT_NEW without NLM_F_CREATE: update only, ENOENT when gone.
	wantReq := request{typ: 0x100, flags: uint16(netlink.Request | netlink.Acknowledge), seq: 1, body: body}
	if diff := cmp.Diff(wantReq, k.reqs[0], cmp.AllowUnexported(request{})); diff != "" {
		t.Errorf("request (-want +got):\n%s", diff)
	}
	if err := c.SetMark(t.Context(), orig, 1, 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetMark error = %v, want ErrNotFound", err)
	}
}

func TestListen(t *testing.T) {
	k := newFake(nil)
	c, _ := fakeConn(k)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	fl := sampleFlows()
	k.push(
		datagram(msg(subsysCT<<8|msgNew, flagCreate|flagExcl, 0, flowMsg(t, fl[0]))),
		datagram(msg(subsysCT<<8|msgNew, 0, 0, flowMsg(t, fl[0])), msg(2<<8, 0, 0, nil)), // + an expectation: skipped
		recvItem{err: os.NewSyscallError("recvmsg", unix.ENOBUFS)},
		datagram(msg(subsysCT<<8|msgDelete, 0, 0, flowMsg(t, fl[1]))),
	)
	events, errs := c.Listen(ctx)
	var got []string
	for range 3 {
		ev := <-events
		got = append(got, fmt.Sprintf("%s %d", ev.Type, ev.Flow.ID))
	}
	if diff := cmp.Diff([]string{"new 3735928559", "update 3735928559", "destroy 1"}, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if err := <-errs; !errors.Is(err, ErrEventsLost) {
		t.Errorf("error = %v, want ErrEventsLost", err)
	}
	if diff := cmp.Diff([]uint32{1, 3}, k.groups); diff != "" {
		t.Errorf("groups (-want +got):\n%s", diff)
	}
	if k.readBuf != defaultReadBuffer {
		t.Errorf("read buffer = %d, want %d", k.readBuf, defaultReadBuffer)
	}
	cancel()
	for range events {
	}
	for range errs {
	}
}

func TestListenFatal(t *testing.T) {
	k := newFake(nil)
	c, _ := fakeConn(k)
	k.push(recvItem{err: os.NewSyscallError("recvmsg", unix.EBADF)})
	events, errs := c.Listen(t.Context(), GroupUpdate)
	if err := <-errs; err == nil || errors.Is(err, ErrEventsLost) {
		t.Errorf("error = %v, want a fatal error", err)
	}
	if _, ok := <-events; ok {
		t.Error("events channel open after a fatal error")
	}
}

// BenchmarkDecodeDump measures DumpInto against the in-memory kernel:
// framing, decoding and the copy of each datagram, for dumps of 10, 1,000
// and 10,000 flows packed into 32 KiB datagrams as the kernel packs them.
func BenchmarkDecodeDump(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			var dgrams []recvItem
			var cur []byte
			s := sampleFlows()[0]
			for i := range n {
				s.ID = uint32(i)
				s.Orig.SrcPort = uint16(i)
				m := flowReply(b, 1, s)
				if len(cur)+len(m) > 32<<10 {
					dgrams = append(dgrams, recvItem{b: cur})
					cur = nil
				}
				cur = append(cur, m...)
			}
			dgrams = append(dgrams, recvItem{b: append(cur, doneMsg(1)...)})
			k := newFake(func(request) []recvItem { return dgrams })
			k.fixedSeq = 1
			c, _ := fakeConn(k)
			var buf []Flow
			var err error
			b.ReportAllocs()
			for b.Loop() {
				if buf, err = c.DumpInto(b.Context(), buf); err != nil || len(buf) != n {
					b.Fatalf("DumpInto: %d flows, %v", len(buf), err)
				}
			}
		})
	}
}
