package resolve

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"
)

// fakeLookup answers from a table that the test changes.
type fakeLookup struct {
	mu  sync.Mutex
	ans map[string]fakeAnswer
}

type fakeAnswer struct {
	addrs []netip.Addr
	ttl   time.Duration
	err   error
}

func (f *fakeLookup) Lookup(_ context.Context, host string) ([]netip.Addr, time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.ans[host]
	return a.addrs, a.ttl, a.err
}

func (f *fakeLookup) set(host string, a fakeAnswer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ans[host] = a
}

var cmpAddr = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func TestRefresherKeepsLastGood(t *testing.T) {
	f := &fakeLookup{ans: map[string]fakeAnswer{
		"a.test": {addrs: addrs("198.18.0.2", "::ffff:198.18.0.1", "198.18.0.2"), ttl: time.Minute},
		"b.test": {err: errors.New("timeout")},
		"c.test": {addrs: addrs("198.18.0.3", "2001:2::3"), ttl: time.Minute},
	}}
	r := NewRefresher(f, []string{"c.test", "a.test", "b.test", "a.test"}, time.Second, zerolog.New(zerolog.NewTestWriter(t)), nil)
	changed, err := r.Refresh(context.Background())
	if !changed || err == nil {
		t.Fatalf("first Refresh = %v, %v; want a change and b.test's error", changed, err)
	}
	want := map[string][]netip.Addr{"a.test": addrs("198.18.0.1", "198.18.0.2"), "c.test": addrs("198.18.0.3", "2001:2::3")}
	if diff := cmp.Diff(want, r.Snapshot(), cmpAddr); diff != "" {
		t.Fatalf("Snapshot (-want +got):\n%s", diff)
	}

	// a fails: keep the last good. c's IPv6 query fails: keep its IPv6, take the new IPv4.
	f.set("a.test", fakeAnswer{err: errors.New("servfail")})
	f.set("c.test", fakeAnswer{addrs: addrs("198.18.0.4"), err: &PartialError{Failed: 6, Err: errors.New("timeout")}})
	changed, _ = r.Refresh(context.Background())
	want["c.test"] = addrs("198.18.0.4", "2001:2::3")
	if diff := cmp.Diff(want, r.Snapshot(), cmpAddr); diff != "" || !changed {
		t.Fatalf("after failures: changed = %v; Snapshot (-want +got):\n%s", changed, diff)
	}

	// The same answer in another order is no change.
	f.set("c.test", fakeAnswer{addrs: addrs("2001:2::3", "198.18.0.4")})
	if changed, _ := r.Refresh(context.Background()); changed {
		t.Fatal("reordered answer reported as a change")
	}
	// A name that no longer exists allows nothing.
	f.set("c.test", fakeAnswer{})
	changed, _ = r.Refresh(context.Background())
	delete(want, "c.test")
	if diff := cmp.Diff(want, r.Snapshot(), cmpAddr); diff != "" || !changed {
		t.Fatalf("after NXDOMAIN: changed = %v; Snapshot (-want +got):\n%s", changed, diff)
	}
}

func TestRefresherRun(t *testing.T) {
	f := &fakeLookup{ans: map[string]fakeAnswer{"a.test": {addrs: addrs("198.18.0.1"), ttl: 10 * time.Millisecond}}}
	changes := make(chan map[string][]netip.Addr, 10)
	r := NewRefresher(f, []string{"a.test"}, 20*time.Millisecond, zerolog.New(zerolog.NewTestWriter(t)), func(m map[string][]netip.Addr) { changes <- m })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	if got := <-changes; got["a.test"][0] != netip.MustParseAddr("198.18.0.1") {
		t.Fatalf("first change %v", got)
	}
	f.set("a.test", fakeAnswer{addrs: addrs("198.18.0.9"), ttl: 10 * time.Millisecond})
	select {
	case got := <-changes:
		if got["a.test"][0] != netip.MustParseAddr("198.18.0.9") {
			t.Fatalf("second change %v", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no change seen within 5s")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
}
