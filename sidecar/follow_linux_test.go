package main

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer answers A queries for one name with a changeable address and
// a TTL of one second; every other query gets an empty answer.
type dnsServer struct {
	name string
	mu   sync.Mutex
	addr netip.Addr
}

func (s *dnsServer) set(a netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addr = a
}

func (s *dnsServer) serve(c net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		var m dnsmessage.Message
		if m.Unpack(buf[:n]) != nil || len(m.Questions) != 1 {
			continue
		}
		q := m.Questions[0]
		resp := dnsmessage.Message{Header: dnsmessage.Header{ID: m.ID, Response: true, Authoritative: true}, Questions: m.Questions}
		if q.Type == dnsmessage.TypeA && strings.EqualFold(q.Name.String(), s.name+".") {
			s.mu.Lock()
			resp.Answers = []dnsmessage.Resource{{
				Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 1},
				Body:   &dnsmessage.AResource{A: s.addr.As4()},
			}}
			s.mu.Unlock()
		}
		out, err := resp.Pack()
		if err == nil {
			_, _ = c.WriteTo(out, from)
		}
	}
}

// TestIntegrationRunFollowsDNS: `hubwarden run` allows a host name's
// current address, and follows a changed answer within its TTL: the new
// address becomes reachable, the old one is refused.
func TestIntegrationRunFollowsDNS(t *testing.T) {
	e := newEgressBed(t, 13)
	oldIP, newIP := netip.MustParseAddr("198.19.13.10"), netip.MustParseAddr("198.19.13.11")
	for _, a := range []netip.Addr{oldIP, newIP} {
		e.Peer.MustRun("ip", "addr", "add", a.String()+"/32", "dev", "lo")
	}
	dns := &dnsServer{name: "app.hubwarden.test", addr: oldIP}
	resolver := "198.19.13.60"
	e.Peer.MustRun("ip", "addr", "add", resolver+"/32", "dev", "lo")
	go dns.serve(e.Peer.ListenPacket("udp", resolver+":53"))

	env := baseEnv(t, "auto")
	env["HUBWARDEN_DNS_SERVERS"] = resolver
	env["HUBWARDEN_ALLOW"] = "tcp://app.hubwarden.test:8080"
	env["HUBWARDEN_RESOLVE_MIN_TTL"] = "1s"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd, out := startRun(t, ctx, e.Pod, env)
	waitFor(t, 30*time.Second, out, "rules applied and checked")

	addr := func(a netip.Addr) string { return netip.AddrPortFrom(a, 8080).String() }
	if _, err := e.dial(addr(oldIP)); err != nil {
		t.Fatalf("the name's address %s is not reachable: %v\n%s", oldIP, err, out.String())
	}
	if _, err := e.dial(addr(newIP)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("%s, not (yet) the name's address: %v, want refused", newIP, err)
	}

	dns.set(newIP)
	changed := time.Now()
	deadline := changed.Add(15 * time.Second)
	for {
		_, err := e.dial(addr(newIP))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rules did not follow the new answer within 15s: %v\n%s", err, out.String())
		}
		time.Sleep(50 * time.Millisecond) // polling for the re-resolution
	}
	t.Logf("rules followed the changed answer after %s (TTL 1s)", time.Since(changed).Round(time.Millisecond))
	if _, err := e.dial(addr(oldIP)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("the old address %s after the change: %v, want refused", oldIP, err)
	}
	waitFor(t, 10*time.Second, out, "rules follow new host name answers")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("run exited with %v after SIGTERM:\n%s", err, out.String())
	}
}

// waitFor polls the output of a child until it contains s.
func waitFor(t *testing.T, limit time.Duration, out *lockedBuffer, s string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !strings.Contains(out.String(), s) {
		// main prints a fatal error as a line "hubwarden: ..." on stderr.
		if strings.HasPrefix(out.String(), "hubwarden: ") || strings.Contains(out.String(), "\nhubwarden: ") || time.Now().After(deadline) {
			t.Fatalf("waiting for %q:\n%s", s, out.String())
		}
		time.Sleep(20 * time.Millisecond) // polling the child's output
	}
}
