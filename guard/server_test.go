package guard

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// seen is one request the upstream server got.
type seen struct {
	Method, Target, Proto, Host string
	Header                      http.Header
	Body                        []byte
	BodyErr                     error
}

// upstream is a stand-in for the notebook server on loopback that records
// every request it gets, exactly as it got it (Go's server keeps the
// request-target as received in RequestURI).
type upstream struct {
	ln      net.Listener
	mu      sync.Mutex
	reqs    []seen
	handler http.HandlerFunc
}

func newUpstream(t *testing.T, h http.HandlerFunc) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{ln: ln, handler: h}
	srv := &http.Server{Handler: u, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return u
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := seen{Method: r.Method, Target: r.RequestURI, Proto: r.Proto, Host: r.Host, Header: r.Header.Clone()}
	if r.Header.Get("Upgrade") == "" {
		s.Body, s.BodyErr = io.ReadAll(r.Body)
	}
	u.mu.Lock()
	u.reqs = append(u.reqs, s)
	u.mu.Unlock()
	if u.handler != nil {
		u.handler(w, r)
		return
	}
	// A contents model without content passes every check a decision can
	// ask for (the contents check, and every cap).
	w.Header().Set("Content-Type", "application/json")
	writeModel(w, `{"name":"x","path":"x","content":null,"format":null,"type":"file"}`)
}

// writeModel answers with a JSON body and its Content-Length, as tornado
// does.
func writeModel(w http.ResponseWriter, m string) {
	w.Header().Set("Content-Length", strconv.Itoa(len(m)))
	io.WriteString(w, m)
}

func (u *upstream) seen() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.reqs...)
}

func (u *upstream) reset() {
	u.mu.Lock()
	u.reqs = nil
	u.mu.Unlock()
}

// syncBuffer is a log sink for the audit lines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// waitAudits returns the audit lines once there are at least n: the guard
// writes a request's line after the client has read its answer.
func (s *syncBuffer) waitAudits(t *testing.T, n int) []map[string]any {
	t.Helper()
	for range 200 {
		if a := s.audits(t); len(a) >= n {
			return a
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("fewer than %d audit lines after 2 s: %v", n, s.audits(t))
	return nil
}

// lines returns the log's JSON lines that have an "audit" field.
func (s *syncBuffer) audits(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(s.b.String(), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if m["audit"] != nil {
			out = append(out, m)
		}
	}
	return out
}

// bed is a guard in front of an upstream, both on loopback.
type bed struct {
	g    *Guard
	up   *upstream
	addr string
	log  *syncBuffer
	reg  *prometheus.Registry
}

type bedOpts struct {
	mode        Mode
	maxNotebook int64
	opts        Options
	progress    time.Duration
}

func newBed(t *testing.T, h http.HandlerFunc, o bedOpts) *bed {
	t.Helper()
	up := newUpstream(t, h)
	if o.mode == "" {
		o.mode = Enforce
	}
	if o.maxNotebook == 0 {
		o.maxNotebook = DefaultMaxNotebook
	}
	if o.progress == 0 {
		o.progress = time.Minute
	}
	o.opts.Upstream = up.ln.Addr().String()
	cfg := Config{Mode: o.mode, ServerPort: 8888, GuardPort: DefaultGuardPort, BaseURL: tableBase, MaxNotebook: o.maxNotebook,
		Terminals: true, ProgressInterval: o.progress}
	b := &bed{up: up, log: &syncBuffer{}, reg: prometheus.NewRegistry()}
	g, err := New(cfg, zerolog.New(b.log), NewMetrics(b.reg), o.opts)
	if err != nil {
		t.Fatal(err)
	}
	b.g = g
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return b
}

// exchange writes raw (one or more pipelined requests) on one connection
// and reads n responses with their bodies (the first is for a request of
// method head[0], if given: a HEAD answer has no body).
func (b *bed) exchange(t *testing.T, raw string, n int, head ...string) []*http.Response {
	t.Helper()
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out []*http.Response
	for i := range n {
		var req *http.Request
		if i < len(head) {
			req = &http.Request{Method: head[i]}
		}
		res, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("reading response %d of %q: %v", len(out)+1, raw, err)
		}
		body, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatalf("reading body %d: %v", len(out)+1, err)
		}
		res.Body = io.NopCloser(bytes.NewReader(body))
		out = append(out, res)
	}
	return out
}

func body(res *http.Response) string {
	b, _ := io.ReadAll(res.Body)
	res.Body = io.NopCloser(bytes.NewReader(b))
	return string(b)
}

// rawRequest renders a request of policyTable's form.
func rawRequest(req Request) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s\r\n", req.Method, req.Target, req.Proto)
	if req.Host != "" {
		fmt.Fprintf(&b, "Host: %s\r\n", req.Host)
	}
	if req.Upgrade != "" {
		fmt.Fprintf(&b, "Upgrade: %s\r\n", req.Upgrade)
	}
	if req.ConnectionUpgrade {
		b.WriteString("Connection: Upgrade\r\n")
	}
	if req.Range {
		b.WriteString("Range: bytes=0-10\r\n")
	}
	if req.Upgrade == "websocket" {
		b.WriteString("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// TestServerTable sends every row of policyTable that Go's HTTP/1 server
// takes as a request to a guard in front of a recording upstream: a denied
// row gets the policy's status and never reaches the upstream; an allowed
// row reaches it with the same method, the same target byte for byte and
// the same Host, and its answer comes back. Rows whose request line Go's
// server itself refuses (a bad method token, a version it does not speak)
// must get a 4xx or 5xx and also never reach the upstream.
func TestServerTable(t *testing.T) {
	b := newBed(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			w.WriteHeader(http.StatusBadRequest) // no websocket here; the handshake is tested elsewhere
			return
		}
		// A body for every check a decision can ask for: a contents
		// metadata model passes CheckContents; short bodies pass caps.
		w.Header().Set("Content-Type", "application/json")
		writeModel(w, `{"name":"x","path":"x","content":null,"format":null,"type":"file"}`)
	}, bedOpts{})
	rows := 0
	for _, line := range strings.Split(policyTable, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.Contains(line, "noterm") || strings.Contains(line, "allow=") {
			continue
		}
		req, _, _, want := tableRow(t, line)
		rows++
		b.up.reset()
		res := b.exchange(t, rawRequest(req), 1, req.Method)[0]
		got := b.up.seen()
		// Go's server answers these 400 itself, before any handler (and
		// so without an audit line): a version it does not speak, CONNECT
		// without an authority, HTTP/1.1 without Host, a malformed
		// percent-escape in the path (url.ParseRequestURI).
		goRefuses := req.Proto != "HTTP/1.1" && req.Proto != "HTTP/1.0" || req.Method == "CONNECT" ||
			req.Host == "" && req.Proto == "HTTP/1.1" || want == "deny-path-escape"
		switch {
		case !strings.HasPrefix(want, "allow-"):
			if len(got) != 0 {
				t.Errorf("%s: reached the upstream: %+v", line, got)
			}
			if res.StatusCode < 400 {
				t.Errorf("%s: status %d", line, res.StatusCode)
			}
			if rule := res.Header.Get("X-Hubwarden-Rule"); rule != want && !goRefuses {
				t.Errorf("%s: rule %q, want %s (status %d %s)", line, rule, want, res.StatusCode, body(res))
			}
		case len(got) != 1:
			t.Errorf("%s: the upstream got %d requests, want 1 (status %d %s)", line, len(got), res.StatusCode, body(res))
		default:
			if got[0].Method != req.Method || got[0].Target != req.Target || got[0].Host != req.Host {
				t.Errorf("%s: the upstream got %s %s Host %q", line, got[0].Method, got[0].Target, got[0].Host)
			}
			if req.Upgrade != "" {
				if res.StatusCode != http.StatusBadRequest {
					t.Errorf("%s: status %d, want the upstream's 400", line, res.StatusCode)
				}
			} else if res.StatusCode != http.StatusOK && req.Method != "HEAD" {
				t.Errorf("%s: status %d %s", line, res.StatusCode, body(res))
			}
		}
	}
	t.Logf("%d rows sent", rows)
}

// TestServerPipelining: three requests pipelined on one kept-alive
// connection, a denied one in the middle: each gets its answer in order,
// and the upstream sees only the allowed ones.
func TestServerPipelining(t *testing.T) {
	b := newBed(t, nil, bedOpts{})
	raw := "GET " + tableBase + "api/status HTTP/1.1\r\nHost: pod\r\n\r\n" +
		"GET " + tableBase + "files/data.csv HTTP/1.1\r\nHost: pod\r\n\r\n" +
		"GET " + tableBase + "api/me HTTP/1.1\r\nHost: pod\r\n\r\n" +
		"GET " + tableBase + "%66iles/data.csv HTTP/1.1\r\nHost: pod\r\n\r\n" +
		"GET " + tableBase + "lab HTTP/1.1\r\nHost: pod\r\n\r\n"
	res := b.exchange(t, raw, 5)
	for i, want := range []int{200, 403, 200, 403, 200} {
		if res[i].StatusCode != want {
			t.Errorf("response %d: %d, want %d (%s)", i+1, res[i].StatusCode, want, body(res[i]))
		}
	}
	var targets []string
	for _, s := range b.up.seen() {
		targets = append(targets, s.Target)
	}
	want := []string{tableBase + "api/status", tableBase + "api/me", tableBase + "lab"}
	if strings.Join(targets, " ") != strings.Join(want, " ") {
		t.Errorf("the upstream got %q, want %q", targets, want)
	}
}

// TestServerSmuggling: a request that frames its body two ways
// (Content-Length and chunked) with a denied request hidden in it, and
// requests with two Content-Lengths. The guard frames every request itself
// (Go's server: chunked wins over Content-Length, which it drops, as RFC
// 9112 tells an intermediary; differing Content-Lengths are refused) and
// forwards each request it decided on, framed again: a hidden request is
// either the next request the guard decides on, or body bytes; it never
// reaches the server as a request. Control: the same bytes sent straight to
// the upstream do smuggle the hidden request past a front that trusts
// Content-Length.
func TestServerSmuggling(t *testing.T) {
	b := newBed(t, nil, bedOpts{})
	hidden := "GET " + tableBase + "files/data.csv HTTP/1.1\r\nHost: pod\r\n\r\n"
	chunked := "0\r\n\r\n" + hidden
	raw := "POST " + tableBase + "api/contents HTTP/1.1\r\nHost: pod\r\nContent-Length: " + strconv.Itoa(len(chunked)) +
		"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
	res := b.exchange(t, raw, 2)
	if res[0].StatusCode != http.StatusOK || res[1].StatusCode != http.StatusForbidden || res[1].Header.Get("X-Hubwarden-Rule") != "deny-files" {
		t.Errorf("CL+TE: statuses %d %d (%s), want 200 and the hidden request denied", res[0].StatusCode, res[1].StatusCode, res[1].Header.Get("X-Hubwarden-Rule"))
	}
	for _, s := range b.up.seen() {
		if strings.Contains(s.Target, "files") || bytes.Contains(s.Body, []byte("files")) {
			t.Errorf("CL+TE: the upstream got %+v", s)
		}
		if s.Header.Get("Content-Length") != "" && len(s.Header["Transfer-Encoding"]) > 0 {
			t.Errorf("CL+TE: forwarded with both framings: %v", s.Header)
		}
	}
	// The reverse: chunked framing hides the request in a chunk.
	b.up.reset()
	inChunk := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(hidden), hidden)
	raw = "POST " + tableBase + "api/contents HTTP/1.1\r\nHost: pod\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + inChunk
	res = b.exchange(t, raw, 1)
	got := b.up.seen()
	if res[0].StatusCode != http.StatusOK || len(got) != 1 || got[0].Target != tableBase+"api/contents" || string(got[0].Body) != hidden {
		t.Errorf("TE with a short CL: %d, upstream %+v; want one POST whose body is the hidden bytes", res[0].StatusCode, got)
	}
	// Two Content-Lengths that differ: refused by Go's server, never forwarded.
	b.up.reset()
	raw = "POST " + tableBase + "api/contents HTTP/1.1\r\nHost: pod\r\nContent-Length: 5\r\nContent-Length: 47\r\n\r\nhello" + hidden
	res = b.exchange(t, raw, 1)
	if res[0].StatusCode != http.StatusBadRequest || len(b.up.seen()) != 0 {
		t.Errorf("duplicate CL: %d, upstream %+v; want 400 and nothing forwarded", res[0].StatusCode, b.up.seen())
	}
	// Equal duplicates are one length: forwarded with one Content-Length.
	b.up.reset()
	raw = "POST " + tableBase + "api/contents HTTP/1.1\r\nHost: pod\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
	res = b.exchange(t, raw, 1)
	got = b.up.seen()
	if res[0].StatusCode != http.StatusOK || len(got) != 1 || string(got[0].Body) != "hello" || len(got[0].Header["Content-Length"]) != 1 {
		t.Errorf("equal CLs: %d, upstream %+v", res[0].StatusCode, got)
	}
	// Transfer codings other than chunked: refused.
	b.up.reset()
	raw = "POST " + tableBase + "api/contents HTTP/1.1\r\nHost: pod\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
	res = b.exchange(t, raw, 1)
	if res[0].StatusCode < 400 || len(b.up.seen()) != 0 {
		t.Errorf("TE gzip, chunked: %d, upstream %+v", res[0].StatusCode, b.up.seen())
	}

	// Control: a front that frames by Content-Length passes the CL+TE
	// request on as one request, and a chunked-reading server behind it
	// then reads the hidden one as a second request.
	b.up.reset()
	c, err := net.Dial("tcp", b.up.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST "+tableBase+"api/contents HTTP/1.1\r\nHost: pod\r\nTransfer-Encoding: chunked\r\n\r\n"+chunked)
	br := bufio.NewReader(c)
	for range 2 {
		if res, err := http.ReadResponse(br, nil); err == nil {
			io.Copy(io.Discard, res.Body)
		}
	}
	smuggled := false
	for _, s := range b.up.seen() {
		smuggled = smuggled || strings.Contains(s.Target, "files/data.csv")
	}
	if !smuggled {
		t.Errorf("control: the upstream did not read the hidden request: %+v", b.up.seen())
	}
}

// TestServerExpectContinue: an allowed upload that waits for 100 Continue
// gets it from the guard and goes through (the server gets no Expect
// header, as the guard answered it); a denied one gets 403 at once, its
// body is never read and nothing reaches the server.
func TestServerExpectContinue(t *testing.T) {
	b := newBed(t, nil, bedOpts{})
	for _, tc := range []struct {
		target string
		goesOn bool
	}{{tableBase + "api/contents/up.txt", true}, {tableBase + "files/up.txt", false}} {
		b.up.reset()
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "PUT "+tc.target+" HTTP/1.1\r\nHost: pod\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		br := bufio.NewReader(c)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !tc.goesOn {
			if res.StatusCode != http.StatusForbidden || len(b.up.seen()) != 0 {
				t.Errorf("%s: %d, upstream %+v", tc.target, res.StatusCode, b.up.seen())
			}
			c.Close()
			continue
		}
		if res.StatusCode != http.StatusContinue {
			t.Fatalf("%s: %d, want 100", tc.target, res.StatusCode)
		}
		io.WriteString(c, "hello")
		res, err = http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := b.up.seen()
		if res.StatusCode != http.StatusOK || len(got) != 1 || string(got[0].Body) != "hello" || got[0].Header.Get("Expect") != "" {
			t.Errorf("%s: %d, upstream %+v", tc.target, res.StatusCode, got)
		}
		c.Close()
	}
}

// TestServerLimits: headers over tornado's 64 KiB get 431, a body over the
// limit 413, both before the server sees anything; HTTP/2 prior knowledge
// is refused; the guard keeps serving.
func TestServerLimits(t *testing.T) {
	b := newBed(t, nil, bedOpts{opts: Options{MaxRequestBody: 1 << 20}})
	big := strings.Repeat("a", MaxHeaderBytes)
	res := b.exchange(t, "GET "+tableBase+"api/status HTTP/1.1\r\nHost: pod\r\nX-Big: "+big+"\r\n\r\n", 1)
	if res[0].StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB header: %d", res[0].StatusCode)
	}
	res = b.exchange(t, "PUT "+tableBase+"api/contents/x HTTP/1.1\r\nHost: pod\r\nContent-Length: 2000000\r\n\r\n", 1)
	if res[0].StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("declared 2 MB body: %d", res[0].StatusCode)
	}
	chunk := strings.Repeat("x", 64<<10)
	var sb strings.Builder
	for range 20 {
		fmt.Fprintf(&sb, "%x\r\n%s\r\n", len(chunk), chunk)
	}
	sb.WriteString("0\r\n\r\n")
	res = b.exchange(t, "PUT "+tableBase+"api/contents/x HTTP/1.1\r\nHost: pod\r\nTransfer-Encoding: chunked\r\n\r\n"+sb.String(), 1)
	if res[0].StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked 1.25 MiB body: %d", res[0].StatusCode)
	}
	for _, s := range b.up.seen() {
		if s.BodyErr == nil && len(s.Body) > 1<<20 {
			t.Errorf("the upstream got a whole body of %d bytes", len(s.Body))
		}
	}
	// HTTP/2 prior knowledge (h2c): not spoken.
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	reply, _ := io.ReadAll(c)
	c.Close()
	if bytes.HasPrefix(reply, []byte("HTTP/1.1 2")) || len(b.up.seen()) > 3 {
		t.Errorf("h2c preface: %q", reply)
	}
	if res := b.exchange(t, "GET "+tableBase+"api/status HTTP/1.1\r\nHost: pod\r\n\r\n", 1); res[0].StatusCode != 200 {
		t.Errorf("after the abuse: %d", res[0].StatusCode)
	}
}

// TestServerSlowClient: a client that sends its headers a byte at a time is
// cut off at the header timeout; another client is served meanwhile.
func TestServerSlowClient(t *testing.T) {
	b := newBed(t, nil, bedOpts{opts: Options{ReadHeaderTimeout: 500 * time.Millisecond}})
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stop := make(chan struct{})
	closed := make(chan time.Duration, 1)
	start := time.Now()
	go func() {
		req := "GET " + tableBase + "files/data.csv HTTP/1.1\r\nHost: pod\r\nX-Slow: " + strings.Repeat("s", 100)
		for i := 0; i < len(req); i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := c.Write([]byte{req[i]}); err != nil {
				closed <- time.Since(start)
				return
			}
		}
		closed <- 0
	}()
	res := b.exchange(t, "GET "+tableBase+"api/status HTTP/1.1\r\nHost: pod\r\n\r\n", 1)
	if res[0].StatusCode != 200 {
		t.Errorf("the other client: %d", res[0].StatusCode)
	}
	select {
	case d := <-closed:
		if d == 0 {
			t.Fatal("the slow client sent its whole request without being cut off")
		}
		t.Logf("slow client cut off after %s", d.Round(time.Millisecond))
	case <-time.After(8 * time.Second):
		close(stop)
		t.Fatal("the slow client was not cut off")
	}
	if len(b.up.seen()) != 1 {
		t.Errorf("the upstream got %d requests", len(b.up.seen()))
	}
}

// TestServerForwardedFor: the server sees the client's address as it
// would without the guard (X-Forwarded-For as it came; the peer's address
// when none came), never the guard's and never an X-Real-Ip a client set;
// the audit records the TCP peer, which a client cannot choose, and the
// last X-Forwarded-For hop separately.
func TestServerForwardedFor(t *testing.T) {
	b := newBed(t, nil, bedOpts{})
	b.exchange(t, "GET "+tableBase+"api/status HTTP/1.1\r\nHost: pod\r\n\r\n", 1)
	b.exchange(t, "GET "+tableBase+"api/status HTTP/1.1\r\nHost: pod\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 198.18.0.1\r\nX-Forwarded-Proto: https\r\nX-Real-Ip: 6.6.6.7\r\n\r\n", 1)
	got := b.up.seen()
	if len(got) != 2 {
		t.Fatalf("upstream got %d", len(got))
	}
	if xff := got[0].Header["X-Forwarded-For"]; len(xff) != 1 || xff[0] != "127.0.0.1" {
		t.Errorf("no X-Forwarded-For: the server got %q, want the peer 127.0.0.1", xff)
	}
	if xff := got[1].Header["X-Forwarded-For"]; strings.Join(xff, ",") != "6.6.6.6,198.18.0.1" {
		t.Errorf("X-Forwarded-For: the server got %q, want it as sent", xff)
	}
	if got[1].Header.Get("X-Forwarded-Proto") != "https" || got[1].Header.Get("X-Real-Ip") != "" {
		t.Errorf("forwarding headers: %v", got[1].Header)
	}
	a := b.log.waitAudits(t, 2)
	if len(a) != 2 || a[0]["peer"] != "127.0.0.1" || a[0]["forwarded_for"] != nil || a[1]["peer"] != "127.0.0.1" || a[1]["forwarded_for"] != "198.18.0.1" {
		t.Errorf("audit: %v", a)
	}
}

// TestServerContents: the guard passes a notebook and a directory listing,
// refuses a file model (before any of it is sent), a notebook over the cap
// (by Content-Length, and mid-way without one), a model that turns out not
// to be what its content promised (its closing brace is withheld), and
// replaces error messages that can quote the file.
func TestServerContents(t *testing.T) {
	models := map[string]string{
		"nb.ipynb":     `{"name":"nb.ipynb","path":"nb.ipynb","content":{"cells":[{"source":"print(1)"}],"nbformat":4},"format":"json","type":"notebook"}`,
		"dir":          `{"name":"dir","path":"dir","content":[{"name":"a.csv","content":null,"type":"file"}],"format":"json","type":"directory"}`,
		"data.csv":     `{"name":"data.csv","path":"data.csv","content":"id,salary\n1,100\n","format":"text","type":"file"}`,
		"meta.csv":     `{"name":"meta.csv","path":"meta.csv","content":null,"format":null,"type":"file"}`,
		"liar.ipynb":   `{"name":"liar.ipynb","path":"liar.ipynb","content":{"raw":"id,salary"},"format":"text","type":"file"}`,
		"big.ipynb":    `{"name":"big.ipynb","content":{"cells":["` + strings.Repeat("x", 4096) + `"]},"format":"json","type":"notebook"}`,
		"stream.ipynb": `{"name":"stream.ipynb","content":{"cells":["` + strings.Repeat("x", 4096) + `"]},"format":"json","type":"notebook"}`,
	}
	b := newBed(t, func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		switch name {
		case "bad.ipynb":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"message": "Unreadable Notebook: /home/jane/bad.ipynb NotJSONError('Notebook does not appear to be JSON: \"id,salary\\n1,100\"')", "reason": null}`)
			return
		case "missing.ipynb":
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"message": "file or directory 'missing.ipynb' does not exist", "reason": null}`)
			return
		case "stream.ipynb":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(200)
			w.(http.Flusher).Flush() // no Content-Length: chunked
			io.WriteString(w, models[name])
			return
		}
		w.Header().Set("Content-Type", "application/json")
		writeModel(w, models[name])
	}, bedOpts{maxNotebook: 2048})
	get := func(name string) *http.Response {
		return b.exchange(t, "GET "+tableBase+"api/contents/"+name+" HTTP/1.1\r\nHost: pod\r\nAccept-Encoding: gzip\r\n\r\n", 1)[0]
	}
	for _, name := range []string{"nb.ipynb", "dir", "meta.csv"} {
		if res := get(name); res.StatusCode != 200 || body(res) != models[name] {
			t.Errorf("%s: %d %q", name, res.StatusCode, body(res))
		}
	}
	for name, rule := range map[string]string{"data.csv": "deny-contents-not-notebook", "big.ipynb": "deny-notebook-over-cap"} {
		res := get(name)
		if res.StatusCode != 403 || res.Header.Get("X-Hubwarden-Rule") != rule || strings.Contains(body(res), "salary") {
			t.Errorf("%s: %d %s %q", name, res.StatusCode, res.Header.Get("X-Hubwarden-Rule"), body(res))
		}
	}
	for _, s := range b.up.seen() {
		if s.Header.Get("Accept-Encoding") != "" {
			t.Errorf("contents request forwarded with Accept-Encoding %q", s.Header.Get("Accept-Encoding"))
		}
	}
	// Cut off mid-way: the answer is aborted, and what the client got is
	// not the whole model.
	for _, name := range []string{"liar.ipynb", "stream.ipynb"} {
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET "+tableBase+"api/contents/"+name+" HTTP/1.1\r\nHost: pod\r\n\r\n")
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			// The guard aborted before anything left its buffers.
			t.Logf("%s: no answer at all (%v)", name, err)
			c.Close()
			continue
		}
		got, rerr := io.ReadAll(res.Body)
		c.Close()
		if rerr == nil || bytes.Equal(got, []byte(models[name])) || json.Valid(got) {
			t.Errorf("%s: status %d, read %d bytes (err %v): want an aborted, unusable answer", name, res.StatusCode, len(got), rerr)
		}
	}
	res := get("bad.ipynb")
	if res.StatusCode != 400 || strings.Contains(body(res), "salary") || !strings.Contains(body(res), "withheld") {
		t.Errorf("unreadable notebook: %d %q", res.StatusCode, body(res))
	}
	if res := get("missing.ipynb"); res.StatusCode != 404 || !strings.Contains(body(res), "does not exist") {
		t.Errorf("missing: %d %q", res.StatusCode, body(res))
	}
	rules := map[string]int{}
	for _, a := range b.log.waitAudits(t, 9) {
		rules[a["rule"].(string)]++
		if a["withheld"] == true && a["rule"] != "allow-contents-read" {
			t.Errorf("withheld on %v", a)
		}
	}
	if rules["deny-contents-not-notebook"] != 2 || rules["deny-notebook-over-cap"] != 1 || rules["deny-over-cap"] != 1 {
		t.Errorf("audit rules: %v", rules)
	}
	if n := testutil.ToFloat64(b.g.m.errors.WithLabelValues(ErrAborted)); n != 2 {
		t.Errorf("aborted answers counted: %v", n)
	}
}

// TestServerCapped: answers that can carry bytes the user wrote are cut at
// their cap: refused by Content-Length, aborted mid-way without it.
func TestServerCapped(t *testing.T) {
	size := SettingsCap + 1
	b := newBed(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "chunked") {
			w.(http.Flusher).Flush()
		} else {
			w.Header().Set("Content-Length", strconv.Itoa(size))
		}
		w.Write(bytes.Repeat([]byte("x"), size))
	}, bedOpts{})
	res := b.exchange(t, "GET "+tableBase+"lab/api/settings/big HTTP/1.1\r\nHost: pod\r\n\r\n", 1)[0]
	if res.StatusCode != 403 || res.Header.Get("X-Hubwarden-Rule") != "deny-over-cap" {
		t.Errorf("settings over the cap: %d %s", res.StatusCode, res.Header.Get("X-Hubwarden-Rule"))
	}
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET "+tableBase+"lab/api/settings/chunked HTTP/1.1\r\nHost: pod\r\n\r\n")
	r2, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, r2.Body)
	if err == nil || n > SettingsCap {
		t.Errorf("chunked settings over the cap: read %d bytes, err %v", n, err)
	}
}

// TestServerWebsocket: a websocket passes with its subprotocol and token;
// its bytes are counted each way; progress lines are written while it is
// open and one line when it closes.
func TestServerWebsocket(t *testing.T) {
	b := newBed(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" || r.Header.Get("Sec-WebSocket-Protocol") != "v1.kernel.websocket.jupyter.org" {
			w.WriteHeader(400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: v1.kernel.websocket.jupyter.org\r\n\r\n")
		brw.Flush()
		buf := make([]byte, 100)
		for {
			n, err := brw.Read(buf)
			if err != nil {
				return
			}
			// An echo, three times as much back (like kernel output).
			for range 3 {
				c.Write(buf[:n])
			}
		}
	}, bedOpts{progress: 200 * time.Millisecond})
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	target := tableBase + "api/kernels/7091b900-987a-47e2-9560-7a232c15a227/channels?session_id=s&token=sekrit"
	io.WriteString(c, "GET "+target+" HTTP/1.1\r\nHost: pod\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v1.kernel.websocket.jupyter.org\r\n\r\n")
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != 101 {
		t.Fatalf("handshake: %v %v", res, err)
	}
	for range 5 {
		io.WriteString(c, "0123456789")
		if _, err := io.ReadFull(br, make([]byte, 30)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(150 * time.Millisecond)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	var end map[string]any
	progress := 0
	for end == nil && time.Now().Before(deadline) {
		progress = 0
		for _, a := range b.log.audits(t) {
			switch a["audit"] {
			case AuditWebsocket:
				end = a
			case AuditWSProgress:
				progress++
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if end == nil {
		t.Fatalf("no websocket line: %v", b.log.audits(t))
	}
	if end["bytes_to_server"] != 50.0 || end["bytes_to_client"] != 150.0 || end["id"] != "7091b900-987a-47e2-9560-7a232c15a227" ||
		end["status"] != 101.0 || strings.Contains(end["path"].(string), "sekrit") || end["family"] != "kernel-ws" {
		t.Errorf("websocket line: %v", end)
	}
	if progress == 0 {
		t.Errorf("no progress lines in %v", b.log.audits(t))
	}
	if got := b.up.seen(); len(got) != 1 || got[0].Target != target {
		t.Errorf("upstream: %+v", got)
	}
	if n := testutil.ToFloat64(b.g.m.wsBytes.WithLabelValues("kernel-ws", "to_client")); n != 150 {
		t.Errorf("websocket bytes metric: %v", n)
	}
}

// TestServerAuditMode: audit mode forwards what enforce refuses and logs
// the same decisions, as would-deny.
func TestServerAuditMode(t *testing.T) {
	targets := []string{"files/data.csv", "api/contents/data.csv?type=file", "nbconvert/html/nb.ipynb", "api/status", "%66iles/x"}
	decisions := map[Mode][]string{}
	for _, mode := range []Mode{Enforce, Audit} {
		b := newBed(t, nil, bedOpts{mode: mode})
		for _, tg := range targets {
			b.exchange(t, "GET "+tableBase+tg+" HTTP/1.1\r\nHost: pod\r\n\r\n", 1)
		}
		for _, a := range b.log.waitAudits(t, len(targets)) {
			decisions[mode] = append(decisions[mode], fmt.Sprint(a["decision"], " ", a["rule"], " ", a["enforced"]))
		}
		want := 1
		if mode == Audit {
			want = len(targets)
		}
		if n := len(b.up.seen()); n != want {
			t.Errorf("%s: the upstream got %d requests, want %d", mode, n, want)
		}
		if mode == Audit {
			if n := testutil.ToFloat64(b.g.m.requests.WithLabelValues(LabelWouldDeny, "files")); n != 1 {
				t.Errorf("would-deny metric: %v", n)
			}
		}
	}
	for i := range decisions[Enforce] {
		e, a := decisions[Enforce][i], decisions[Audit][i]
		if strings.HasPrefix(e, "deny") && strings.Replace(e, "true", "false", 1) != a || strings.HasPrefix(e, "allow") && e != a {
			t.Errorf("decision %d: enforce %q, audit %q", i, e, a)
		}
	}
}

// TestServerProbe: the self-test's request is answered by the guard itself
// in every mode, and never reaches the server.
func TestServerProbe(t *testing.T) {
	for _, mode := range []Mode{Enforce, Audit} {
		b := newBed(t, nil, bedOpts{mode: mode})
		res := b.exchange(t, "GET "+ProbeTarget+" HTTP/1.1\r\nHost: hubwarden-selftest\r\n\r\n", 1)[0]
		if res.StatusCode != http.StatusNoContent || res.Header.Get("X-Hubwarden-Rule") != "guard-probe" || len(b.up.seen()) != 0 {
			t.Errorf("%s: %d %q, upstream %v", mode, res.StatusCode, res.Header.Get("X-Hubwarden-Rule"), b.up.seen())
		}
	}
}

// TestServerDenialForms: JupyterLab's fetches get JSON with a message; a
// browser navigating to the address gets a page.
func TestServerDenialForms(t *testing.T) {
	b := newBed(t, nil, bedOpts{})
	res := b.exchange(t, "GET "+tableBase+"files/data.csv HTTP/1.1\r\nHost: pod\r\nAccept: */*\r\n\r\n", 1)[0]
	var m struct{ Message, Reason string }
	if err := json.Unmarshal([]byte(body(res)), &m); err != nil || !strings.Contains(m.Message, "downloading files") || m.Reason != "deny-files" {
		t.Errorf("JSON denial: %q (%v)", body(res), err)
	}
	res = b.exchange(t, "GET "+tableBase+"files/data.csv HTTP/1.1\r\nHost: pod\r\nSec-Fetch-Dest: document\r\nAccept: text/html\r\n\r\n", 1)[0]
	if !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") || !strings.Contains(body(res), "403 Forbidden") {
		t.Errorf("HTML denial: %q %q", res.Header.Get("Content-Type"), body(res))
	}
}

// TestServerUpstreamDown: when the server does not answer, the client gets
// 502 and the error is counted.
func TestServerUpstreamDown(t *testing.T) {
	b := newBed(t, nil, bedOpts{})
	b.up.ln.Close()
	res := b.exchange(t, "GET "+tableBase+"api/status HTTP/1.1\r\nHost: pod\r\n\r\n", 1)[0]
	if res.StatusCode != http.StatusBadGateway {
		t.Errorf("%d", res.StatusCode)
	}
	if n := testutil.ToFloat64(b.g.m.errors.WithLabelValues(ErrUpstream)); n != 1 {
		t.Errorf("upstream errors: %v", n)
	}
}

func TestScrubTarget(t *testing.T) {
	for in, want := range map[string]string{
		"/a/files/x?_xsrf=abc&download=1":                "/a/files/x?download=1",
		"/a/api/kernels/k/channels?session_id=s&token=t": "/a/api/kernels/k/channels?session_id=s",
		"/a/oauth_callback?code=c&state=s":               "/a/oauth_callback",
		"/a/lab?TOKEN=x":                                 "/a/lab",
		"/a/lab?tok%65n=x&a=1":                           "/a/lab?a=1",
		"/a/lab?access_token=x&auth=y&apikey=z&keep=1":   "/a/lab?keep=1",
		"/a/api/contents?content=1&hash=0&1796519036249": "/a/api/contents?content=1&hash=0&1796519036249",
		"/a/lab": "/a/lab",
	} {
		if got := ScrubTarget(in); got != want {
			t.Errorf("ScrubTarget(%q) = %q, want %q", in, got, want)
		}
	}
}

var _ = errors.New
