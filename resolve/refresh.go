package resolve

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// MaxInterval is the longest time an answer is kept without asking again,
// whatever its TTL.
const MaxInterval = time.Hour

// maxParallel bounds concurrent lookups, so that re-resolving many names at
// once does not burst through the pod's DNS rate limit.
const maxParallel = 4

// Lookuper is what the Refresher needs of a Resolver.
type Lookuper interface {
	Lookup(ctx context.Context, host string) ([]netip.Addr, time.Duration, error)
}

var _ Lookuper = (*Resolver)(nil)

// Result is the outcome of one lookup, for Schedule.
type Result struct {
	At  time.Time     // when the lookup finished
	TTL time.Duration // the answer's TTL
	Err error         // non-nil when the lookup failed (fully or partly)
}

// Schedule says when each name is next due: after its TTL, but never sooner
// than minTTL (HUBWARDEN_RESOLVE_MIN_TTL, which bounds the DNS traffic
// hubwarden adds to the pod's rate-limited budget) nor later than
// MaxInterval. A failed lookup is retried after minTTL.
func Schedule(results map[string]Result, minTTL time.Duration) map[string]time.Time {
	due := make(map[string]time.Time, len(results))
	for name, r := range results {
		wait := r.TTL
		if r.Err != nil {
			wait = minTTL
		}
		due[name] = r.At.Add(min(max(wait, minTTL), max(MaxInterval, minTTL)))
	}
	return due
}

// Refresher keeps the addresses of a fixed set of host names current and
// calls OnChange when any name's answer changes.
type Refresher struct {
	lookup   Lookuper
	hosts    []string
	minTTL   time.Duration
	log      zerolog.Logger
	onChange func(map[string][]netip.Addr)

	mu      sync.Mutex
	addrs   map[string][]netip.Addr
	results map[string]Result
}

// NewRefresher returns a Refresher for hosts. onChange receives a fresh copy
// of every name's addresses after any change; it runs on Run's goroutine (so
// calls never overlap) and should re-plan and re-apply.
func NewRefresher(l Lookuper, hosts []string, minTTL time.Duration, log zerolog.Logger, onChange func(map[string][]netip.Addr)) *Refresher {
	return &Refresher{
		lookup:   l,
		hosts:    slices.Compact(slices.Sorted(slices.Values(hosts))),
		minTTL:   max(minTTL, time.Millisecond),
		log:      log.With().Str("component", "resolve").Logger(),
		onChange: onChange,
		addrs:    map[string][]netip.Addr{},
		results:  map[string]Result{},
	}
}

// Snapshot returns a copy of the current addresses of every name that has
// any (a name never resolved has none: fail closed).
func (r *Refresher) Snapshot() map[string][]netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]netip.Addr, len(r.addrs))
	for k, v := range r.addrs {
		out[k] = slices.Clone(v)
	}
	return out
}

// Refresh looks up every name now, in parallel, and reports whether any
// answer changed. It does not call OnChange: use it at start, before the
// first plan. The error joins the failed lookups; their names keep their
// last good addresses.
func (r *Refresher) Refresh(ctx context.Context) (bool, error) {
	return r.refresh(ctx, r.hosts)
}

func (r *Refresher) refresh(ctx context.Context, names []string) (bool, error) {
	type res struct {
		addrs []netip.Addr
		ttl   time.Duration
		err   error
	}
	out := make([]res, len(names))
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxParallel)
	for i, n := range names {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			a, ttl, err := r.lookup.Lookup(ctx, n)
			out[i] = res{a, ttl, err}
		})
	}
	wg.Wait()
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	changed := false
	var errs []error
	for i, n := range names {
		o := out[i]
		r.results[n] = Result{At: now, TTL: o.ttl, Err: o.err}
		next := normalize(o.addrs)
		if o.err != nil {
			errs = append(errs, o.err)
			var pe *PartialError
			if !errors.As(o.err, &pe) {
				continue // keep the last good answer
			}
			// Keep the failed family's last good addresses.
			for _, a := range r.addrs[n] {
				if a.Is4() == (pe.Failed == 4) {
					next = append(next, a)
				}
			}
			next = normalize(next)
		}
		if !slices.Equal(next, r.addrs[n]) {
			changed = true
			r.log.Info().Str("host", n).Stringer("ttl", o.ttl).
				Interface("old", r.addrs[n]).Interface("new", next).Msg("host name answer changed")
			if len(next) == 0 {
				delete(r.addrs, n)
			} else {
				r.addrs[n] = next
			}
		}
	}
	return changed, errors.Join(errs...)
}

func normalize(as []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range as {
		if a.IsValid() {
			out = append(out, a.Unmap().WithZone(""))
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// Run re-resolves each name when Schedule says it is due, and calls OnChange
// after any change, until ctx ends. Names never looked up are due at once.
// Failed lookups are logged (warn) and retried; they never end Run.
func (r *Refresher) Run(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		r.mu.Lock()
		due := Schedule(r.results, r.minTTL)
		r.mu.Unlock()
		now := time.Now()
		var names []string
		next := now.Add(MaxInterval)
		for _, h := range r.hosts {
			d, ok := due[h]
			if !ok || !d.After(now) {
				names = append(names, h)
			} else if d.Before(next) {
				next = d
			}
		}
		if len(names) > 0 {
			changed, err := r.refresh(ctx, names)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				r.log.Warn().Err(err).Msg("re-resolving allow-list host names; keeping the last good answers")
			}
			if changed && r.onChange != nil {
				r.onChange(r.Snapshot())
			}
			continue
		}
		timer.Reset(next.Sub(now))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
	}
}

// Hosts returns the names the Refresher keeps current.
func (r *Refresher) Hosts() []string { return slices.Clone(r.hosts) }
