package resolve

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/dns/dnsmessage"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestLookup(t *testing.T) {
	tests := []struct {
		name    string
		records []dnsmessage.Resource
		setup   func(*testServer, *Resolver)
		host    string
		want    []netip.Addr
		wantTTL time.Duration
	}{
		{
			name:    "a and aaaa",
			records: []dnsmessage.Resource{rrA("pypi.test", 300, "198.18.0.9"), rrA("pypi.test", 200, "198.18.0.8"), rrAAAA("pypi.test", 100, "2001:2::9")},
			host:    "PyPI.test.", want: addrs("198.18.0.8", "198.18.0.9", "2001:2::9"), wantTTL: 100 * time.Second,
		},
		{
			name: "cname chain, ttl is the minimum over it",
			records: []dnsmessage.Resource{rrCNAME("www.test", 40, "edge.test"), rrCNAME("edge.test", 600, "node.test"),
				rrA("node.test", 300, "198.18.0.7")},
			host: "www.test", want: addrs("198.18.0.7"), wantTTL: 30 * time.Second, // the AAAA query's negative TTL
		},
		{
			name:    "cname chain outside the answer",
			records: []dnsmessage.Resource{rrCNAME("www.test", 40, "node.test"), rrA("node.test", 300, "198.18.0.7"), rrAAAA("node.test", 50, "2001:2::7")},
			setup:   func(s *testServer, _ *Resolver) { s.noChase = true },
			host:    "www.test", want: addrs("198.18.0.7", "2001:2::7"), wantTTL: 40 * time.Second,
		},
		{
			name:    "truncated over udp, asked again over tcp",
			records: []dnsmessage.Resource{rrA("big.test", 60, "198.18.0.6")},
			setup:   func(s *testServer, _ *Resolver) { s.truncateUDP = true },
			host:    "big.test", want: addrs("198.18.0.6"), wantTTL: 30 * time.Second,
		},
		{
			name: "nxdomain is an empty answer with the negative ttl", host: "gone.test", wantTTL: 30 * time.Second,
		},
		{
			name:    "search list for a short name",
			records: []dnsmessage.Resource{rrA("hub.jhub.svc.cluster.local", 30, "198.18.0.5")},
			setup: func(_ *testServer, r *Resolver) {
				r.Search, r.Ndots = []string{"jhub.svc.cluster.local", "svc.cluster.local"}, 5
			},
			host: "hub", want: addrs("198.18.0.5"), wantTTL: 30 * time.Second,
		},
		{
			name: "a dotted name is asked as is first, whatever ndots",
			records: []dnsmessage.Resource{rrA("pypi.test", 30, "198.18.0.5"),
				rrA("pypi.test.jhub.svc.cluster.local", 30, "198.18.0.6")},
			setup: func(_ *testServer, r *Resolver) {
				r.Search, r.Ndots = []string{"jhub.svc.cluster.local"}, 5
			},
			host: "pypi.test", want: addrs("198.18.0.5"), wantTTL: 30 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, ap := startLoopback(t)
			s.set(tt.records...)
			r := &Resolver{Servers: []netip.AddrPort{ap}, Ndots: 1, Timeout: time.Second}
			if tt.setup != nil {
				s.with(func(s *testServer) { tt.setup(s, r) })
			}
			got, ttl, err := r.Lookup(context.Background(), tt.host)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("Lookup(%s) (-want +got):\n%s", tt.host, diff)
			}
			if ttl != tt.wantTTL {
				t.Errorf("Lookup(%s) ttl = %s, want %s", tt.host, ttl, tt.wantTTL)
			}
		})
	}
}

func TestLookupFailover(t *testing.T) {
	bad, badAP := startLoopback(t)
	bad.with(func(s *testServer) { s.rcode = dnsmessage.RCodeServerFailure })
	good, goodAP := startLoopback(t)
	good.set(rrA("x.test", 60, "198.18.0.4"))
	// A closed port refuses at once.
	_, closedAP := startLoopback(t)
	r := &Resolver{Servers: []netip.AddrPort{netip.AddrPortFrom(closedAP.Addr(), 1), badAP, goodAP}, Timeout: time.Second}
	got, _, err := r.Lookup(context.Background(), "x.test")
	if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("198.18.0.4") {
		t.Fatalf("Lookup = %v, %v; want 198.18.0.4 from the third server", got, err)
	}

	r.Servers = r.Servers[:2]
	_, _, err = r.Lookup(context.Background(), "x.test")
	if !errors.Is(err, ErrNoAnswer) || !strings.Contains(err.Error(), "SERVFAIL") && !strings.Contains(err.Error(), "ServerFailure") {
		t.Fatalf("Lookup with only failing servers: err = %v, want ErrNoAnswer naming the server failure", err)
	}
}

func TestLookupPartial(t *testing.T) {
	s, ap := startLoopback(t)
	s.set(rrA("x.test", 60, "198.18.0.4"), rrAAAA("x.test", 60, "2001:2::4"))
	s.with(func(s *testServer) { s.failType = dnsmessage.TypeAAAA })
	r := &Resolver{Servers: []netip.AddrPort{ap}, Timeout: time.Second}
	got, _, err := r.Lookup(context.Background(), "x.test")
	var pe *PartialError
	if !errors.As(err, &pe) || pe.Failed != 6 || len(got) != 1 {
		t.Fatalf("Lookup = %v, %v; want the A record and a PartialError for IPv6", got, err)
	}
}

func TestLookupCancelled(t *testing.T) {
	// A cancelled context fails the lookup instead of waiting.
	s, ap := startLoopback(t)
	s.set()
	r := &Resolver{Servers: []netip.AddrPort{ap}, Timeout: 50 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := r.Lookup(ctx, "x.test"); err == nil {
		t.Fatal("Lookup with a cancelled context succeeded")
	}
}

func TestParseResolvConf(t *testing.T) {
	in := `# kubelet
nameserver 10.96.0.10
nameserver fe80::1%eth0
nameserver bogus
search jhub.svc.cluster.local svc.cluster.local cluster.local
options ndots:5 edns0
`
	got, err := ParseResolvConf(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := Conf{Servers: addrs("10.96.0.10", "fe80::1"), Search: []string{"jhub.svc.cluster.local", "svc.cluster.local", "cluster.local"}, Ndots: 5}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("ParseResolvConf (-want +got):\n%s", diff)
	}
}

func TestSchedule(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	got := Schedule(map[string]Result{
		"long":   {At: t0, TTL: 300 * time.Second},
		"short":  {At: t0, TTL: time.Second},
		"failed": {At: t0, TTL: 300 * time.Second, Err: errors.New("timeout")},
		"huge":   {At: t0, TTL: 7 * 24 * time.Hour},
	}, 30*time.Second)
	want := map[string]time.Time{
		"long": t0.Add(300 * time.Second), "short": t0.Add(30 * time.Second),
		"failed": t0.Add(30 * time.Second), "huge": t0.Add(MaxInterval),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Schedule (-want +got):\n%s", diff)
	}
}

func FuzzParseResponse(f *testing.F) {
	s := &testServer{}
	s.set(rrCNAME("www.test", 40, "node.test"), rrA("node.test", 300, "198.18.0.7"), rrAAAA("node.test", 50, "2001:2::7"))
	for _, n := range []string{"www.test", "node.test", "gone.test"} {
		for _, typ := range []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA} {
			q, _, err := buildQuery(n, typ)
			if err != nil {
				f.Fatal(err)
			}
			q[0], q[1] = 0, 0 // id 0
			f.Add(s.answer(q, false), n, typ == dnsmessage.TypeA)
		}
	}
	f.Fuzz(func(t *testing.T, resp []byte, name string, v4 bool) {
		typ := dnsmessage.TypeAAAA
		if v4 {
			typ = dnsmessage.TypeA
		}
		a, _, err := parseResponse(resp, 0, name, typ)
		if err != nil {
			return
		}
		for _, ad := range a.addrs {
			if !ad.IsValid() || ad.Is4() != v4 {
				t.Fatalf("address %s of the wrong family for %s", ad, typ)
			}
		}
		if a.ttl < 0 {
			t.Fatalf("negative ttl %s", a.ttl)
		}
	})
}

func FuzzParseResolvConf(f *testing.F) {
	f.Add("nameserver 10.96.0.10\nsearch a.b c\noptions ndots:5\n")
	f.Add("domain x\nnameserver fe80::1%eth0 # c\noptions ndots:99")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseResolvConf(strings.NewReader(s))
		if err != nil {
			return
		}
		if c.Ndots < 0 || c.Ndots > 15 {
			t.Fatalf("ndots %d", c.Ndots)
		}
		for _, a := range c.Servers {
			if !a.IsValid() || a.Is4In6() {
				t.Fatalf("server %s", a)
			}
		}
	})
}

// TestLookupQueryCount: a fully qualified name costs one query per type of
// the pod's DNS budget, even with Kubernetes' ndots:5.
func TestLookupQueryCount(t *testing.T) {
	s, ap := startLoopback(t)
	s.set(rrA("pypi.test", 30, "198.18.0.5"), rrAAAA("pypi.test", 30, "2001:2::5"))
	r := &Resolver{Servers: []netip.AddrPort{ap}, Search: []string{"jhub.svc.cluster.local", "svc.cluster.local", "cluster.local"}, Ndots: 5}
	if _, _, err := r.Lookup(context.Background(), "pypi.test"); err != nil {
		t.Fatal(err)
	}
	if n := s.udp.Load(); n != 2 {
		t.Errorf("Lookup sent %d queries, want 2 (A and AAAA)", n)
	}
}
