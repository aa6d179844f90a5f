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

// verdict is what Ready or Healthy returns: ready/healthy, and why not.
type verdict struct {
	ok  bool
	why []string
}

// step is one transition of a Status and the verdict expected after it.
type step struct {
	name string
	do   func()
	want verdict
}

// runSteps applies the steps in order and checks get's verdict after each.
func runSteps(t *testing.T, what string, get func() (bool, []string), steps []step) {
	t.Helper()
	for _, s := range steps {
		s.do()
		ok, why := get()
		if diff := cmp.Diff(s.want, verdict{ok, why}, cmp.AllowUnexported(verdict{})); diff != "" {
			t.Errorf("%s: %s mismatch (-want +got):\n%s", s.name, what, diff)
		}
	}
}

func TestReadyTransitions(t *testing.T) {
	clk := newClock()
	st := NewStatus(clk.now)
	runSteps(t, "Ready", st.Ready, []step{
		{"fresh", func() {}, verdict{false, []string{"applied", "selftest: not run"}}},
		{"apply failed", func() { st.SetApplied(errors.New("boom")) }, verdict{false, []string{"applied", "selftest: not run"}}},
		{"applied", func() { st.SetApplied(nil) }, verdict{false, []string{"selftest: not run"}}},
		{"selftest failed", func() {
			st.SetSelftest([]Check{check("accounting", true), check("blocked-target", false), check("htb-classes", false)})
		}, verdict{false, []string{"selftest/blocked-target", "selftest/htb-classes"}}},
		{"selftest passed", func() { st.SetSelftest([]Check{check("accounting", true)}) }, verdict{true, nil}},
		{"reapply failed keeps ready", func() { st.SetApplied(errors.New("x")) }, verdict{true, nil}},
	})
}

func TestHealthyTransitions(t *testing.T) {
	clk := newClock()
	st := NewStatus(clk.now)
	runSteps(t, "Healthy", st.Healthy, []step{
		{"no loops", func() {}, verdict{true, nil}},
		{"registered", func() {
			st.AddLoop("watcher", 5*time.Second)
			st.AddLoop("reconcile", 30*time.Second)
		}, verdict{true, nil}},
		{"within max age", func() { clk.add(5 * time.Second) }, verdict{true, nil}},
		{"watcher stale", func() { clk.add(time.Second) }, verdict{false, []string{"loop watcher stale: last beat 6s ago (max 5s)"}}},
		{"watcher beat", func() { st.Beat("watcher") }, verdict{true, nil}},
		{"reconcile failed", func() { st.Fail("reconcile", errors.New("listing rules: exit 4")) },
			verdict{false, []string{"loop reconcile failed: listing rules: exit 4"}}},
		{"apply failed too", func() { st.SetApplied(errors.New("restore: exit 1")) },
			verdict{false, []string{"apply failed: restore: exit 1", "loop reconcile failed: listing rules: exit 4"}}},
		{"recovered", func() { st.Beat("reconcile"); st.SetApplied(nil) }, verdict{true, nil}},
		{"unknown beat ignored", func() { st.Beat("nope"); st.Fail("nope", nil) }, verdict{true, nil}},
		{"fail without error", func() { st.Fail("watcher", nil) }, verdict{false, []string{"loop watcher failed: failed"}}},
	})
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

// TestReadyAwaits: an awaited start-up step keeps ready false, and names
// itself, until it arrives.
func TestReadyAwaits(t *testing.T) {
	st := NewStatus(time.Now)
	st.Await("watcher")
	st.SetApplied(nil)
	st.SetSelftest([]Check{{Name: "chains", Passed: true}})
	if ok, why := st.Ready(); ok || len(why) != 1 || why[0] != "waiting: watcher" {
		t.Fatalf("Ready() = %v, %v; want false, [waiting: watcher]", ok, why)
	}
	st.Arrived("watcher")
	if ok, why := st.Ready(); !ok {
		t.Fatalf("Ready() after Arrived = false, %v", why)
	}
}
