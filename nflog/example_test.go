package nflog_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/hubwarden/hubwarden/nflog"
)

// The sidecar's wiring: bind the NFLOG group of the egress rules and log an
// aggregated line per destination every window, until ctx ends. Open needs
// CAP_NET_ADMIN, so this example is compiled, not run.
func Example() {
	ctx := context.Background()
	// main's logger carries HUBWARDEN_USER and HUBWARDEN_SERVER.
	log := zerolog.New(os.Stdout).With().Timestamp().Str("user", "alice").Str("server", "gpu").Logger()

	r, err := nflog.Open(nflog.Config{Group: 1987, ReadBuffer: 1 << 20}) // HUBWARDEN_NFLOG_GROUP
	if err != nil {
		log.Error().Err(err).Msg("opening the denial log")
		return
	}
	dlog := log.With().Str("component", "denylog").Logger()
	// Counter is the sidecar's *health.Metrics; nil counts nothing.
	if err := nflog.Run(ctx, r, nflog.RunConfig{Window: 10 * time.Second, Log: &dlog}); err != nil { // HUBWARDEN_DENY_LOG_WINDOW
		log.Error().Err(err).Msg("denial log stopped")
	}
}

// batches is a Source that yields its batches, then ends as a closed socket
// would.
type batches [][]nflog.Packet

func (b *batches) Receive() ([]nflog.Packet, error) {
	if len(*b) == 0 {
		return nil, io.EOF
	}
	p := (*b)[0]
	*b = (*b)[1:]
	return p, nil
}

func (b *batches) Close() error { return nil }

// denied is a packet from src to dst:port (IPv4, TCP) as the egress rules'
// NFLOG reports it: sent by the notebook user (uid 1000) to a destination
// not on the allow-list (egress.LogPrefixDeny).
func denied(src, dst string, port uint16) nflog.Packet {
	ip := make([]byte, 40) // an IPv4 header and the start of a TCP header
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], 40)
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[20:], 40000)
	binary.BigEndian.PutUint16(ip[22:], port)
	return nflog.Packet{Family: 2 /* AF_INET */, Group: 1987, Prefix: "hubwarden-deny", UID: 1000, HasUID: true, Payload: ip}
}

// One refused connection and a scan of 1,000 ports in one 10 s window: one
// line per destination.
func ExampleRun() {
	src := &batches{{denied("198.18.60.1", "198.18.60.2", 443)}, nil}
	for port := range uint16(1000) {
		(*src)[1] = append((*src)[1], denied("198.18.61.1", "198.18.61.2", 1+port))
	}
	// A clock at the window's start when Run begins, 10 s later after.
	var mu sync.Mutex
	start := time.Date(2026, 12, 6, 1, 0, 0, 0, time.UTC)
	now := start
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t := now
		now = start.Add(10 * time.Second)
		return t
	}

	log := zerolog.New(os.Stdout).With().Str("user", "alice").Str("server", "gpu").Logger()
	dlog := log.With().Str("component", "denylog").Logger()
	err := nflog.Run(context.Background(), src, nflog.RunConfig{Window: time.Hour, Log: &dlog, Now: clock})
	if !errors.Is(err, io.EOF) {
		panic(err)
	}
	// Output:
	// {"level":"warn","user":"alice","server":"gpu","component":"denylog","event":"egress_denied","family":"ipv4","proto":"tcp","dst":"198.18.60.2","packets":1,"port":443,"src":"198.18.60.1","rule":"hubwarden-deny","uid":1000,"window":10000,"message":"egress denied"}
	// {"level":"warn","user":"alice","server":"gpu","component":"denylog","event":"egress_denied","family":"ipv4","proto":"tcp","dst":"198.18.61.2","packets":1000,"ports":1000,"port_sample":[1,2,3,4,5,6,7,8],"src":"198.18.61.1","rule":"hubwarden-deny","uid":1000,"window":10000,"message":"egress denied"}
}
