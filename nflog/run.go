package nflog

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// ErrOverrun means the kernel dropped log messages because the reader lagged.
var ErrOverrun = errors.New("nflog socket overrun, messages lost")

// Source yields logged packets: the Reader, or a fake in tests. Close must
// unblock a Receive in progress.
type Source interface {
	Receive() ([]Packet, error)
	Close() error
}

// Counter receives every decoded denial and every loss, for metrics. Its
// methods must be fast; they run on the reading goroutine.
type Counter interface {
	AddDenials(family, proto string, n int)
	AddDenialsDropped(n int)
}

// RunConfig is what Run needs besides its source.
type RunConfig struct {
	Window  time.Duration    // DENY_LOG_WINDOW
	MaxKeys int              // destinations per window; 0: DefaultMaxKeys
	Log     *zerolog.Logger  // carries component, user and server
	Counter Counter          // may be nil
	Now     func() time.Time // nil: time.Now
}

// Run reads src until ctx is done or src fails for good, and writes one
// aggregated line per destination every Window. It closes src on return and
// flushes the last window. It returns nil when ctx ended it.
func Run(ctx context.Context, src Source, cfg RunConfig) error {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	log := cfg.Log
	if log == nil {
		nop := zerolog.Nop()
		log = &nop
	}
	agg := NewAggregator(cfg.MaxKeys, now)
	var mu sync.Mutex // guards agg between the reader and the ticker

	readErr := make(chan error, 1)
	go func() {
		for {
			pkts, err := src.Receive()
			if err != nil {
				if errors.Is(err, ErrOverrun) || errors.Is(err, ErrMalformed) {
					if cfg.Counter != nil {
						cfg.Counter.AddDenialsDropped(1)
					}
					continue
				}
				readErr <- err
				return
			}
			t := now()
			mu.Lock()
			for _, p := range pkts {
				d, err := Decode(p, t)
				if err != nil {
					if cfg.Counter != nil {
						cfg.Counter.AddDenialsDropped(1)
					}
					continue
				}
				agg.Add(d)
				if cfg.Counter != nil {
					cfg.Counter.AddDenials(d.Family, metricProto(d.Proto), 1)
				}
			}
			mu.Unlock()
		}
	}()

	flush := func() {
		mu.Lock()
		var w Window
		if agg.Pending() > 0 {
			w = agg.Flush()
		} else {
			agg.Flush() // start a fresh window
		}
		mu.Unlock()
		w.Log(log)
	}
	tick := time.NewTicker(cfg.Window)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			flush()
		case err := <-readErr:
			_ = src.Close()
			flush()
			return err
		case <-ctx.Done():
			_ = src.Close()
			<-readErr // the reader goroutine ends once src is closed
			flush()
			return nil
		}
	}
}

// metricProto keeps the metric's label set small: named protocols, else "other".
func metricProto(p string) string {
	switch p {
	case "tcp", "udp", "icmp", "icmpv6", "sctp", "udplite":
		return p
	}
	return "other"
}
