package main

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/internal/nstest"
)

// realisticEnv is a production-sized configuration: 20 allow entries over
// both families, a hub API, two resolvers.
func realisticEnv(t *testing.T, backend string) map[string]string {
	var allow []string
	for i := range 8 {
		allow = append(allow, fmt.Sprintf("198.18.%d.0/24", 100+i))
	}
	for i := range 4 {
		allow = append(allow, fmt.Sprintf("tcp://198.19.%d.10:443", i), fmt.Sprintf("tcp://[2001:2:9:%x::10]:443", i))
	}
	allow = append(allow, "udp://198.19.50.1:123", "udp://[2001:2:50::1]:123", "tcp://198.19.60.0/24:5432-5440",
		"2001:2:70::/48")
	if len(allow) != 20 {
		t.Fatalf("%d allow entries, want 20", len(allow))
	}
	env := baseEnv(t, backend)
	env["HUBWARDEN_ALLOW"] = strings.Join(allow, ",")
	env["HUBWARDEN_DNS_SERVERS"] = "198.18.0.10,2001:2::10"
	env["HUBWARDEN_HUB_API_URL"] = "http://198.18.0.20:8081/hub/api"
	env["HUBWARDEN_LOG_LEVEL"] = "info"
	return env
}

// TestIntegrationInitWallTime measures `hubwarden init` with a realistic
// configuration in fresh namespaces (the first start of a pod) and again in
// the same namespace (a restart, nothing to change). It reports numbers and
// asserts nothing absolute: the machine is shared.
func TestIntegrationInitWallTime(t *testing.T) {
	const runs = 3
	for _, tc := range []struct{ backend, shape string }{{"auto", "false"}, {"nft", "false"}, {"legacy", "false"}, {"auto", "true"}} {
		backend := tc.backend
		t.Run(backend+"/shape="+tc.shape, func(t *testing.T) {
			nstest.SkipUnlessRoot(t, "iptables-nft-restore", "iptables-legacy-restore")
			hubwardenBin(t)
			var first, again, version, inFirst, inAgain []time.Duration
			for range runs {
				ns := nstest.NewPair(t, 16).Pod // shaping needs the default route's interface
				env := realisticEnv(t, backend)
				env["HUBWARDEN_SHAPE"] = tc.shape
				for i, d := range []*[]time.Duration{&first, &again} {
					start := time.Now()
					r := hw(t, ns, env, "init")
					if r.code != 0 {
						t.Fatalf("init exited %d:\n%s%s", r.code, r.stdout, r.stderr)
					}
					*d = append(*d, time.Since(start))
					m := applyDur.FindStringSubmatch(r.stdout)
					if m == nil {
						t.Fatalf("no duration in the log:\n%s", r.stdout)
					}
					ms, _ := strconv.ParseFloat(m[1], 64)
					in := []*[]time.Duration{&inFirst, &inAgain}[i]
					*in = append(*in, time.Duration(ms*float64(time.Millisecond)))
				}
				// The same exec path with no work, for scale.
				start := time.Now()
				_ = hwCmd(t, context.Background(), ns, nil, "version").Run()
				version = append(version, time.Since(start))
			}
			t.Logf("hubwarden init, 20 allow entries, IPv4+IPv6, backend %s, shaping %s, median of %d: fresh netns %s wall (%s inside the process), restart %s wall (%s inside); `hubwarden version` through the same ip netns exec: %s",
				backend, tc.shape, runs, median(first), median(inFirst), median(again), median(inAgain), median(version))
		})
	}
}

// applyDur finds the start-up duration (ms) in the log line of init.
var applyDur = regexp.MustCompile(`"dur":([0-9.]+)[^\n]*"message":"rules applied and checked"`)

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
