package resolve

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/hubwarden/hubwarden/internal/dnstest"
)

// testServer is a tiny authoritative DNS server for tests, on UDP and TCP.
type testServer struct {
	mu      sync.Mutex
	records map[string][]dnsmessage.Resource // by lower-case name without the dot
	rcode   dnsmessage.RCode                 // forced answer code, when not success
	// truncateUDP answers every UDP query with TC set and no records.
	truncateUDP bool
	noChase     bool            // answer CNAMEs without the records they point to
	failType    dnsmessage.Type // answer SERVFAIL to queries of this type
	udp, tcp    atomic.Int32    // queries served
}

func name(s string) dnsmessage.Name { return dnsmessage.MustNewName(s + ".") }

func rrA(n string, ttl uint32, a string) dnsmessage.Resource {
	return dnsmessage.Resource{Header: dnsmessage.ResourceHeader{Name: name(n), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: ttl},
		Body: &dnsmessage.AResource{A: netip.MustParseAddr(a).As4()}}
}

func rrAAAA(n string, ttl uint32, a string) dnsmessage.Resource {
	return dnsmessage.Resource{Header: dnsmessage.ResourceHeader{Name: name(n), Type: dnsmessage.TypeAAAA, Class: dnsmessage.ClassINET, TTL: ttl},
		Body: &dnsmessage.AAAAResource{AAAA: netip.MustParseAddr(a).As16()}}
}

func rrCNAME(n string, ttl uint32, target string) dnsmessage.Resource {
	return dnsmessage.Resource{Header: dnsmessage.ResourceHeader{Name: name(n), Type: dnsmessage.TypeCNAME, Class: dnsmessage.ClassINET, TTL: ttl},
		Body: &dnsmessage.CNAMEResource{CNAME: name(target)}}
}

// with changes the server's settings under its lock.
func (s *testServer) with(f func(*testServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// set replaces the records of the server.
func (s *testServer) set(rrs ...dnsmessage.Resource) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records = map[string][]dnsmessage.Resource{}
	for _, rr := range rrs {
		k := strings.TrimSuffix(strings.ToLower(rr.Header.Name.String()), ".")
		s.records[k] = append(s.records[k], rr)
	}
}

func (s *testServer) answer(q []byte, udp bool) []byte {
	var m dnsmessage.Message
	if err := m.Unpack(q); err != nil || len(m.Questions) != 1 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := dnsmessage.Message{Header: dnsmessage.Header{ID: m.ID, Response: true, Authoritative: true, RecursionDesired: m.RecursionDesired},
		Questions: m.Questions}
	switch {
	case udp && s.truncateUDP:
		resp.Truncated = true
	case s.rcode != dnsmessage.RCodeSuccess:
		resp.RCode = s.rcode
	case s.failType != 0 && m.Questions[0].Type == s.failType:
		resp.RCode = dnsmessage.RCodeServerFailure
	default:
		qn := m.Questions[0]
		cur := strings.TrimSuffix(strings.ToLower(qn.Name.String()), ".")
		if _, ok := s.records[cur]; !ok {
			resp.RCode = dnsmessage.RCodeNameError
		}
		for range 10 {
			next := ""
			for _, rr := range s.records[cur] {
				if c, ok := rr.Body.(*dnsmessage.CNAMEResource); ok {
					resp.Answers = append(resp.Answers, rr)
					next = strings.TrimSuffix(strings.ToLower(c.CNAME.String()), ".")
				}
			}
			if next == "" || s.noChase {
				break
			}
			cur = next
		}
		for _, rr := range s.records[cur] {
			if rr.Header.Type == qn.Type && (!s.noChase || len(resp.Answers) == 0) {
				resp.Answers = append(resp.Answers, rr)
			}
		}
		if len(resp.Answers) == 0 {
			resp.Authorities = []dnsmessage.Resource{{
				Header: dnsmessage.ResourceHeader{Name: name("test"), Type: dnsmessage.TypeSOA, Class: dnsmessage.ClassINET, TTL: 60},
				Body:   &dnsmessage.SOAResource{NS: name("ns.test"), MBox: name("root.test"), Serial: 1, Refresh: 60, Retry: 60, Expire: 60, MinTTL: 30},
			}}
		}
	}
	b, err := resp.Pack()
	if err != nil {
		return nil
	}
	return b
}

// serve answers on pc and l until they are closed.
func (s *testServer) serve(pc net.PacketConn, l net.Listener) {
	dnstest.Serve(pc, l, func(q []byte, udp bool) []byte {
		if udp {
			s.udp.Add(1)
		} else {
			s.tcp.Add(1)
		}
		return s.answer(q, udp)
	})
}

// startLoopback starts a testServer on 127.0.0.1 with a free port (the same
// port on UDP and TCP).
func startLoopback(t *testing.T) (*testServer, netip.AddrPort) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ap := netip.MustParseAddrPort(pc.LocalAddr().String())
		l, err := net.Listen("tcp4", ap.String())
		if err != nil {
			pc.Close()
			var oe *net.OpError
			if errors.As(err, &oe) {
				continue // port taken on TCP: try another
			}
			t.Fatal(err)
		}
		s := &testServer{}
		s.serve(pc, l)
		t.Cleanup(func() { pc.Close(); l.Close() })
		return s, ap
	}
	t.Fatal("no free port on 127.0.0.1")
	return nil, netip.AddrPort{}
}
