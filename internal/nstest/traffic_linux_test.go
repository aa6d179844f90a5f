//go:build linux

package nstest

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// TestIntegrationTraffic: a Sink in the peer counts what Blast sends from
// the pod, on both families; Serve answers; a closed port is refused; a
// UDP socket made with ListenPacket lives in the namespace.
func TestIntegrationTraffic(t *testing.T) {
	p := NewPair(t, 250)
	sink := p.Peer.Sink("[::]:7001")
	var want int64
	per := map[net.Addr]int64{}
	for _, addr := range []string{net.JoinHostPort(p.PeerIP4, "7001"), net.JoinHostPort(p.PeerIP6, "7001")} {
		c, err := p.Pod.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dialling the sink at %s: %v", addr, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		sent := Blast(ctx, c)
		cancel()
		c.Close()
		if sent == 0 {
			t.Fatalf("Blast to %s sent nothing", addr)
		}
		want += sent
		per[c.LocalAddr()] = sent
	}
	deadline := time.Now().Add(5 * time.Second)
	for sink.Bytes() < want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := sink.Bytes(); got != want {
		t.Errorf("the sink counted %d bytes, Blast sent %d", got, want)
	}
	for from, sent := range per {
		if got := sink.ConnBytes(from); got != sent {
			t.Errorf("the sink counted %d bytes from %s, Blast sent %d", got, from, sent)
		}
	}
	t.Logf("blasted %d bytes in 2 × 200 ms over the veth pair", want)

	ln := p.Peer.Serve(net.JoinHostPort(p.PeerIP4, "0"), func(c net.Conn) { _, _ = c.Write([]byte("ok")) })
	c, err := p.Pod.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "ok" {
		t.Errorf("Serve answered %q, %v; want \"ok\" and the connection closed", b, err)
	}

	if took, err := p.Pod.DialRefused(net.JoinHostPort(p.PeerIP4, "7002"), 5*time.Second); err != nil {
		t.Error(err)
	} else {
		t.Logf("refused in %v", took)
	}
	if _, err := p.Pod.DialRefused(ln.Addr().String(), 5*time.Second); err == nil {
		t.Error("DialRefused to a listening port succeeded, want an error")
	}

	pc := p.Peer.ListenPacket("udp", net.JoinHostPort(p.PeerIP6, "7003"))
	u, err := p.Pod.DialTimeout("udp", pc.LocalAddr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.Write([]byte("dgram")); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	if n, _, err := pc.ReadFrom(buf); err != nil || string(buf[:n]) != "dgram" {
		t.Errorf("the peer's UDP socket read %q, %v", buf[:n], err)
	}
}
