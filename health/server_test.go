package health

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func newMux(st *Status, m *Metrics) http.Handler {
	mux := http.NewServeMux()
	Register(mux, st, m)
	return readOnly(mux)
}

func get(t *testing.T, h http.Handler, method, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Code, rec.Body.String()
}

func TestHandlers(t *testing.T) {
	clk := newClock()
	st := NewStatus(clk.now)
	h := newMux(st, NewMetrics("v1.2.3"))

	tests := []struct {
		name, method, path string
		setup              func()
		code               int
		body               string // substring
	}{
		{"healthz with no loops", "GET", "/healthz", func() {}, 200, "ok\n"},
		{"readyz before apply", "GET", "/readyz", func() {}, 503, "not ready: applied; selftest: not run"},
		{"readyz applied, selftest failed", "GET", "/readyz", func() {
			st.SetApplied(nil)
			st.SetSelftest([]Check{{Name: "blocked-target", Reason: "connected"}})
		}, 503, "not ready: selftest/blocked-target\n"},
		{"readyz ready", "GET", "/readyz", func() { st.SetSelftest([]Check{{Name: "blocked-target", Passed: true}}) }, 200, "ok\n"},
		{"head readyz", "HEAD", "/readyz", func() {}, 200, ""},
		{"healthz stale watcher", "GET", "/healthz", func() {
			st.AddLoop("watcher", time.Second)
			clk.add(2 * time.Second)
		}, 503, "unhealthy: loop watcher stale"},
		{"healthz recovered", "GET", "/healthz", func() { st.Beat("watcher") }, 200, "ok\n"},
		{"post refused", "POST", "/readyz", func() {}, 405, "method not allowed"},
		{"delete refused", "DELETE", "/metrics", func() {}, 405, "method not allowed"},
		{"unknown path", "GET", "/debug/pprof/", func() {}, 404, ""},
		{"metrics", "GET", "/metrics", func() {}, 200, `hubwarden_build_info{goversion=`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.setup()
			code, body := get(t, h, tt.method, tt.path)
			if code != tt.code || !strings.Contains(body, tt.body) {
				t.Fatalf("%s %s = %d %q, want %d containing %q", tt.method, tt.path, code, body, tt.code, tt.body)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	m := NewMetrics("v9")
	m.AddDenials("ipv4", "tcp", 3)
	m.AddDenials("ipv6", "udp", 1)
	m.AddDenialsDropped(2)
	m.AddDrift()
	m.ObserveApply(1500*time.Millisecond, nil)
	m.ObserveApply(250*time.Millisecond, errors.New("x"))
	m.SetWatcher(func() WatcherStats {
		return WatcherStats{FlowsTracked: 1000, Demotions: 7, Promotions: 5, BytesFast: 1 << 30, BytesSlow: 4096, PodBucketBytes: 12345, PodGate: true, PodGateSets: 3,
			Rearms: 11, Parked: 2, Events: 99, EventsLost: 4, Errors: 6, RefillAge: 0.1, RefillLate: 0.002, DumpSeconds: 0.003, Dumps: 13, Reads: 17}
	})
	want := `
# HELP hubwarden_apply_errors_total Applies (at start or on reconcile) that failed.
# TYPE hubwarden_apply_errors_total counter
hubwarden_apply_errors_total 1
# HELP hubwarden_conntrack_dumps_total Conntrack dumps the watcher read (each walks the node's whole conntrack hash): one every DUMP_INTERVAL while flows are busy or events do not come, else one every 10 s.
# TYPE hubwarden_conntrack_dumps_total counter
hubwarden_conntrack_dumps_total 13
# HELP hubwarden_conntrack_events_lost_total Times the kernel dropped conntrack events because the watcher fell behind (it then dumps the table).
# TYPE hubwarden_conntrack_events_lost_total counter
hubwarden_conntrack_events_lost_total 4
# HELP hubwarden_conntrack_events_total Conntrack events the watcher took.
# TYPE hubwarden_conntrack_events_total counter
hubwarden_conntrack_events_total 99
# HELP hubwarden_conntrack_reads_total Flows the watcher read (and zeroed) one by one.
# TYPE hubwarden_conntrack_reads_total counter
hubwarden_conntrack_reads_total 17
# HELP hubwarden_demotions_total Flows demoted to the slow class.
# TYPE hubwarden_demotions_total counter
hubwarden_demotions_total 7
# HELP hubwarden_denial_log_dropped_total Denial log messages the kernel dropped because the reader lagged (ENOBUFS), or that did not decode.
# TYPE hubwarden_denial_log_dropped_total counter
hubwarden_denial_log_dropped_total 2
# HELP hubwarden_denials_total Egress packets denied and logged, by address family (ipv4, ipv6) and protocol (tcp, udp, icmp, icmpv6, other).
# TYPE hubwarden_denials_total counter
hubwarden_denials_total{family="ipv4",proto="tcp"} 3
hubwarden_denials_total{family="ipv6",proto="udp"} 1
# HELP hubwarden_dump_seconds Duration of the watcher's last conntrack dump.
# TYPE hubwarden_dump_seconds gauge
hubwarden_dump_seconds 0.003
# HELP hubwarden_flows_parked_total Flows left to the kernel (demoted, never promoted) because the watcher tracked its maximum.
# TYPE hubwarden_flows_parked_total counter
hubwarden_flows_parked_total 2
# HELP hubwarden_flows_tracked Flows the conntrack watcher currently tracks.
# TYPE hubwarden_flows_tracked gauge
hubwarden_flows_tracked 1000
# HELP hubwarden_last_apply_duration_seconds Duration of the last apply, successful or not.
# TYPE hubwarden_last_apply_duration_seconds gauge
hubwarden_last_apply_duration_seconds 0.25
# HELP hubwarden_pod_bucket_age_seconds Seconds since the watcher last kept the pod bucket (refilled the kernel quota, or read the transmit counter).
# TYPE hubwarden_pod_bucket_age_seconds gauge
hubwarden_pod_bucket_age_seconds 0.1
# HELP hubwarden_pod_bucket_bytes Tokens (bytes) left in the per-pod budget bucket.
# TYPE hubwarden_pod_bucket_bytes gauge
hubwarden_pod_bucket_bytes 12345
# HELP hubwarden_pod_gate 1 while the pod gate is closed: the pod budget is spent and the kernel demotes every flow that sends.
# TYPE hubwarden_pod_gate gauge
hubwarden_pod_gate 1
# HELP hubwarden_pod_gate_sets_total Times the pod gate closed (the pod budget was spent).
# TYPE hubwarden_pod_gate_sets_total counter
hubwarden_pod_gate_sets_total 3
# HELP hubwarden_promotions_total Demoted flows promoted back to the fast class after being idle.
# TYPE hubwarden_promotions_total counter
hubwarden_promotions_total 5
# HELP hubwarden_rearms_total Flows the watcher re-armed: counters zeroed and the tripwire tier of their bucket set.
# TYPE hubwarden_rearms_total counter
hubwarden_rearms_total 11
# HELP hubwarden_reconcile_drifts_total Reconcile passes that found hubwarden's rules or qdiscs drifted from the plan and re-applied them.
# TYPE hubwarden_reconcile_drifts_total counter
hubwarden_reconcile_drifts_total 1
# HELP hubwarden_sent_bytes_total Bytes the pod sent, by class (fast, slow).
# TYPE hubwarden_sent_bytes_total counter
hubwarden_sent_bytes_total{class="fast"} 1.073741824e+09
hubwarden_sent_bytes_total{class="slow"} 4096
# HELP hubwarden_watcher_errors_total Failed conntrack reads, mark updates and pod bucket updates.
# TYPE hubwarden_watcher_errors_total counter
hubwarden_watcher_errors_total 6
# HELP hubwarden_watcher_late_seconds How late the watcher's latest pod bucket tick came: a starved watcher refills late (the kernel's bound holds regardless).
# TYPE hubwarden_watcher_late_seconds gauge
hubwarden_watcher_late_seconds 0.002
`
	if diff := cmp.Diff(strings.TrimPrefix(want, "\n"), scrape(t, m, "hubwarden_", "hubwarden_build_info")); diff != "" {
		t.Fatalf("metrics mismatch (-want +got):\n%s", diff)
	}
	// Go and process collectors are there too.
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		seen[mf.GetName()] = true
	}
	for _, n := range []string{"go_goroutines", "process_resident_memory_bytes", "hubwarden_build_info"} {
		if !seen[n] {
			t.Errorf("metric %s missing", n)
		}
	}
}

func TestMetricsWithoutWatcher(t *testing.T) {
	m := NewMetrics("dev")
	if got := scrape(t, m, "hubwarden_flows_tracked"); got != "" {
		t.Fatalf("flows_tracked without watcher: %q, want nothing", got)
	}
}

// scrape returns the text exposition lines (HELP and TYPE included) of the
// metrics whose name starts with prefix, minus those starting with skip.
func scrape(t *testing.T, m *Metrics, prefix string, skip ...string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	var b strings.Builder
next:
	for _, line := range strings.SplitAfter(rec.Body.String(), "\n") {
		name := strings.TrimPrefix(strings.TrimPrefix(line, "# HELP "), "# TYPE ")
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		for _, s := range skip {
			if strings.HasPrefix(name, s) {
				continue next
			}
		}
		b.WriteString(line)
	}
	return b.String()
}

// startServer serves h on a loopback port with the hardened server.
func startServer(t *testing.T, h http.Handler, tweak func(*Server)) string {
	t.Helper()
	srv := NewServer("127.0.0.1:0", h)
	if tweak != nil {
		tweak(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.HTTP.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

func readyStatus() *Status {
	st := NewStatus(time.Now)
	st.SetApplied(nil)
	st.SetSelftest([]Check{{Name: "x", Passed: true}})
	return st
}

func TestAbuseSlowClientCutOff(t *testing.T) {
	addr := startServer(t, newMux(readyStatus(), nil), func(s *Server) {
		s.HTTP.ReadHeaderTimeout = 200 * time.Millisecond
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Slowloris: a request line, then headers dribbled forever.
	if _, err := io.WriteString(c, "GET /readyz HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-closed:
			// Cut off by the header timeout, long before we stopped dribbling.
			if d := time.Since(start); d > 20*time.Second {
				t.Fatalf("slow client held the connection for %s", d)
			}
			return
		case <-tick.C:
			_, _ = fmt.Fprintf(c, "X-%d: y\r\n", i) // errors once closed; the reader notices
			if i > 400 {
				t.Fatal("slow client was never cut off")
			}
		}
	}
}

func TestAbuseHugeHeader(t *testing.T) {
	addr := startServer(t, newMux(readyStatus(), nil), nil)
	req, _ := http.NewRequest("GET", "http://"+addr+"/readyz", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("huge header: status %d, want 431", resp.StatusCode)
	}
}

func TestAbuseBodyAndMethods(t *testing.T) {
	addr := startServer(t, newMux(readyStatus(), nil), nil)
	resp, err := http.Post("http://"+addr+"/readyz", "text/plain", strings.NewReader(strings.Repeat("z", 1<<20)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST: %d Allow=%q, want 405 GET, HEAD", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

func TestAbuseManyConcurrentRequests(t *testing.T) {
	st := readyStatus()
	addr := startServer(t, newMux(st, NewMetrics("dev")), func(s *Server) { s.MaxConns = 8 })
	tr := &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: 64, DisableKeepAlives: false}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	const n = 2000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := []string{"/healthz", "/readyz", "/metrics"}[i%3]
			resp, err := client.Get("http://" + addr + path)
			if err != nil {
				errs <- err
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			// /metrics sheds load with 503 beyond its in-flight limit.
			if resp.StatusCode != 200 && (path != "/metrics" || resp.StatusCode != 503) {
				errs <- fmt.Errorf("%s: %d", path, resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(errs)
	var failed []error
	for err := range errs {
		failed = append(failed, err)
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d concurrent requests failed; first: %v", len(failed), n, failed[0])
	}
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatalf("server dead after the flood: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("after the flood: %d", resp.StatusCode)
	}
}

// TestAbuseConnectionCap shows that idle connections beyond MaxConns wait
// instead of each getting a goroutine and buffers.
func TestAbuseConnectionCap(t *testing.T) {
	addr := startServer(t, newMux(readyStatus(), nil), func(s *Server) { s.MaxConns = 2 })
	var hold []net.Conn
	defer func() {
		for _, c := range hold {
			c.Close()
		}
	}()
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		hold = append(hold, c) // accepted, silent: each holds a slot
	}
	third, err := net.Dial("tcp", addr) // completes in the kernel backlog
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	_, _ = io.WriteString(third, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = third.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := bufio.NewReader(third).ReadString('\n'); err == nil {
		t.Fatal("third connection served while two slots were held")
	}
	hold[0].Close() // frees a slot: the third is served
	_ = third.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(third).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("third connection after a slot freed: %q %v", line, err)
	}
}
