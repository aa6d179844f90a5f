package health

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock               { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }
func check(name string, ok bool) Check   { return Check{Name: name, Passed: ok} }

func TestReadyTransitions(t *testing.T) {
	type want struct {
		ok      bool
		failing []string
	}
	clk := newClock()
	st := NewStatus(clk.now)
	steps := []struct {
		name string
		do   func()
		want want
	}{
		{"fresh", func() {}, want{false, []string{"applied", "selftest: not run"}}},
		{"apply failed", func() { st.SetApplied(errors.New("boom")) }, want{false, []string{"applied", "selftest: not run"}}},
		{"applied", func() { st.SetApplied(nil) }, want{false, []string{"selftest: not run"}}},
		{"selftest failed", func() {
			st.SetSelftest([]Check{check("accounting", true), check("blocked-target", false), check("htb-classes", false)})
		}, want{false, []string{"selftest/blocked-target", "selftest/htb-classes"}}},
		{"selftest passed", func() { st.SetSelftest([]Check{check("accounting", true)}) }, want{true, nil}},
		{"reapply failed keeps ready", func() { st.SetApplied(errors.New("x")) }, want{true, nil}},
	}
	for _, s := range steps {
		s.do()
		ok, failing := st.Ready()
		if diff := cmp.Diff(s.want, want{ok, failing}, cmp.AllowUnexported(want{})); diff != "" {
			t.Errorf("%s: Ready mismatch (-want +got):\n%s", s.name, diff)
		}
	}
}

func TestHealthyTransitions(t *testing.T) {
	type want struct {
		ok      bool
		reasons []string
	}
	clk := newClock()
	st := NewStatus(clk.now)
	steps := []struct {
		name string
		do   func()
		want want
	}{
		{"no loops", func() {}, want{true, nil}},
		{"registered", func() {
			st.AddLoop("watcher", 5*time.Second)
			st.AddLoop("reconcile", 30*time.Second)
		}, want{true, nil}},
		{"within max age", func() { clk.add(5 * time.Second) }, want{true, nil}},
		{"watcher stale", func() { clk.add(time.Second) }, want{false, []string{"loop watcher stale: last beat 6s ago (max 5s)"}}},
		{"watcher beat", func() { st.Beat("watcher") }, want{true, nil}},
		{"reconcile failed", func() { st.Fail("reconcile", errors.New("listing rules: exit 4")) },
			want{false, []string{"loop reconcile failed: listing rules: exit 4"}}},
		{"apply failed too", func() { st.SetApplied(errors.New("restore: exit 1")) },
			want{false, []string{"apply failed: restore: exit 1", "loop reconcile failed: listing rules: exit 4"}}},
		{"recovered", func() { st.Beat("reconcile"); st.SetApplied(nil) }, want{true, nil}},
		{"unknown beat ignored", func() { st.Beat("nope"); st.Fail("nope", nil) }, want{true, nil}},
		{"fail without error", func() { st.Fail("watcher", nil) }, want{false, []string{"loop watcher failed: failed"}}},
	}
	for _, s := range steps {
		s.do()
		ok, reasons := st.Healthy()
		if diff := cmp.Diff(s.want, want{ok, reasons}, cmp.AllowUnexported(want{})); diff != "" {
			t.Errorf("%s: Healthy mismatch (-want +got):\n%s", s.name, diff)
		}
	}
}

func TestReasonShortened(t *testing.T) {
	st := NewStatus(newClock().now)
	st.AddLoop("w", time.Second)
	long := make([]byte, 5000)
	for i := range long {
		long[i] = 'a'
	}
	st.Fail("w", errors.New(string(long)))
	_, reasons := st.Healthy()
	if len(reasons) != 1 || len(reasons[0]) > maxReason+50 {
		t.Fatalf("reason not shortened: %d bytes", len(reasons[0]))
	}
}
