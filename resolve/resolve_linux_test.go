package resolve

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/internal/nstest"
)

// subnet is this package's nstest subnet index.
const subnet = 20

// startIn starts a testServer on addr:53 (UDP and TCP) inside ns.
func startIn(t *testing.T, ns *nstest.NS, addr string) *testServer {
	t.Helper()
	ap := net.JoinHostPort(addr, "53")
	s := &testServer{}
	s.serve(ns.ListenPacket("udp", ap), ns.Listen("tcp", ap))
	return s
}

// TestIntegrationRefresherFollowsDNS runs a DNS server on the peer (both
// families) whose answer changes; a Refresher in the pod sees the change once
// the TTL has passed, and not before.
func TestIntegrationRefresherFollowsDNS(t *testing.T) {
	p := nstest.NewPair(t, subnet)
	s4 := startIn(t, p.Peer, p.PeerIP4)
	s6 := startIn(t, p.Peer, p.PeerIP6)
	for _, s := range []*testServer{s4, s6} {
		s.set(rrA("data.test", 2, "198.18.20.100"), rrAAAA("data.test", 2, "2001:2:0:20::100"))
	}
	// The IPv4 resolver first; TCP on the IPv6 one proves the fallback across families.
	s6.with(func(s *testServer) { s.truncateUDP = true })
	r := New(addrs(p.PeerIP4))
	r.Dial = p.Pod.DialContext
	r.Timeout = time.Second
	ctx := context.Background()
	got, ttl, err := r.Lookup(ctx, "data.test")
	if err != nil || len(got) != 2 || ttl != 2*time.Second {
		t.Fatalf("Lookup over IPv4 = %v, %s, %v", got, ttl, err)
	}
	r6 := New(addrs(p.PeerIP6))
	r6.Dial = p.Pod.DialContext
	if got, _, err := r6.Lookup(ctx, "data.test"); err != nil || len(got) != 2 || s6.tcp.Load() == 0 {
		t.Fatalf("Lookup over IPv6 with truncation = %v, %v (tcp queries %d)", got, err, s6.tcp.Load())
	}

	changes := make(chan map[string][]netip.Addr, 4)
	ref := NewRefresher(r, []string{"data.test"}, time.Second, zerolog.New(zerolog.NewTestWriter(t)),
		func(m map[string][]netip.Addr) { changes <- m })
	if _, err := ref.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = ref.Run(runCtx) }()

	start := time.Now()
	s4.set(rrA("data.test", 2, "198.18.20.101"), rrAAAA("data.test", 2, "2001:2:0:20::100"))
	select {
	case m := <-changes:
		el := time.Since(start)
		want := []netip.Addr{netip.MustParseAddr("198.18.20.101"), netip.MustParseAddr("2001:2:0:20::100")}
		if len(m["data.test"]) != 2 || m["data.test"][0] != want[0] || m["data.test"][1] != want[1] {
			t.Fatalf("change = %v, want %v", m, want)
		}
		if el < time.Second { // the old answer's TTL (2s) had not passed; a second at least
			t.Errorf("change seen after %s, before the TTL", el)
		}
		t.Logf("answer change seen after %s (TTL 2s)", el.Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("no change within 10s")
	}
}
