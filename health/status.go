// Package health serves hubwarden's read-only HTTP endpoints: /healthz
// (liveness: the long-running loops beat recently and have not failed),
// /readyz (rules applied and the start-up self-test passed) and /metrics
// (Prometheus, on a registry of its own).
//
// The notebook user can reach these endpoints on localhost, so the server is
// hardened (timeouts, small headers, GET and HEAD only, a cap on concurrent
// connections) and nothing it writes is secret: check names, loop names, ages
// and short reasons chosen by the caller.
//
// The package makes no kernel calls: the sidecar feeds it.
package health

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// maxReason bounds the length of a reason shown on /healthz and /readyz, so
// an error that carries a long kernel dump cannot bloat the response.
const maxReason = 200

// Status is the state /healthz and /readyz report. It is safe for concurrent use.
type Status struct {
	now func() time.Time

	mu       sync.Mutex
	applied  bool
	applyErr string
	selftest []Check // nil: not run yet
	loops    map[string]*loop
	waiting  map[string]bool // start-up steps ready waits for (Await)
}

// Check is the outcome of one named self-test check.
type Check struct {
	Name   string
	Passed bool
	Reason string // why it failed; empty when it passed
}

type loop struct {
	maxAge time.Duration
	last   time.Time // last heartbeat (or registration)
	err    string    // set by Fail, cleared by Beat
}

// NewStatus returns a Status that is neither ready nor tracking any loop.
// now is the clock (time.Now in production).
func NewStatus(now func() time.Time) *Status {
	return &Status{now: now, loops: map[string]*loop{}, waiting: map[string]bool{}}
}

// Await makes ready wait for a start-up step until Arrived(name): the
// conntrack watcher's first dump, so that every flow opened once the pod
// is ready is one the watcher sees begin.
func (s *Status) Await(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.waiting[name] = true
}

// Arrived records that the start-up step name is done.
func (s *Status) Arrived(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.waiting, name)
}

// SetApplied records the outcome of an apply. A failed re-apply after a
// successful one keeps the pod ready (the rules from the first apply are
// still in the kernel) but is reported by /healthz until an apply succeeds.
func (s *Status) SetApplied(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.applyErr = shorten(err.Error())
		return
	}
	s.applied, s.applyErr = true, ""
}

// SetSelftest records the self-test's checks; ready needs every one passed
// and at least one run.
func (s *Status) SetSelftest(checks []Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.selftest = append([]Check{}, checks...)
	if s.selftest == nil {
		s.selftest = []Check{}
	}
}

// AddLoop starts tracking a loop that must beat at least every maxAge.
// Registration counts as the first beat.
func (s *Status) AddLoop(name string, maxAge time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loops[name] = &loop{maxAge: maxAge, last: s.now()}
}

// Beat records that a loop completed an iteration; it clears a failure.
// Beats of unknown loops are ignored.
func (s *Status) Beat(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.loops[name]; ok {
		l.last, l.err = s.now(), ""
	}
}

// Fail marks a loop as failed (it stopped, or its last iteration failed)
// until its next Beat.
func (s *Status) Fail(name string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.loops[name]; ok {
		msg := "failed"
		if err != nil {
			msg = shorten(err.Error())
		}
		l.err = msg
	}
}

// Healthy reports whether every loop beat recently and none failed, and the
// reasons when not (sorted, one per problem).
func (s *Status) Healthy() (bool, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var reasons []string
	for name, l := range s.loops {
		switch age := now.Sub(l.last); {
		case l.err != "":
			reasons = append(reasons, fmt.Sprintf("loop %s failed: %s", name, l.err))
		case age > l.maxAge:
			reasons = append(reasons, fmt.Sprintf("loop %s stale: last beat %s ago (max %s)", name, age.Round(time.Millisecond), l.maxAge))
		}
	}
	if s.applyErr != "" {
		reasons = append(reasons, "apply failed: "+s.applyErr)
	}
	slices.Sort(reasons)
	return len(reasons) == 0, reasons
}

// Ready reports whether the rules are applied, the self-test passed and no
// start-up step is awaited, and the names of the failing checks when not
// ("applied", "selftest", then "selftest/<check>" for each failed check,
// then "waiting: <step>" for each awaited step).
func (s *Status) Ready() (bool, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var failing []string
	if !s.applied {
		failing = append(failing, "applied")
	}
	if s.selftest == nil {
		failing = append(failing, "selftest: not run")
	}
	for _, c := range s.selftest {
		if !c.Passed {
			failing = append(failing, "selftest/"+c.Name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(s.waiting)) {
		failing = append(failing, "waiting: "+name)
	}
	return len(failing) == 0, failing
}

func shorten(s string) string {
	if len(s) > maxReason {
		return s[:maxReason] + "…"
	}
	return s
}
