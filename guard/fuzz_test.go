package guard

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// FuzzParseTarget: no panic; an accepted target splits back into itself
// and keeps the promises ParseTarget makes about its path.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"/user/x/lab", "/user/x/files/a%2Fb", "/a/../b", "/a//b", "/a/%2e%2e/b", "/a;b", "/a?b=c?d", "*",
		"http://h/p", "/a%", "/a%zz", "/a%252e", "/%C3%A9", "/a#b", "/\x00", "/a?", "/a/./b?x=/../"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		tg, ref := ParseTarget(raw)
		if ref != nil {
			if ref.Rule == "" || ref.Reason == "" {
				t.Fatalf("%q: refusal without rule or reason", raw)
			}
			return
		}
		if tg.String() != raw {
			t.Fatalf("%q: splits into %+v", raw, tg)
		}
		if !strings.HasPrefix(tg.Path, "/") || strings.Contains(tg.Path, "//") || strings.ContainsAny(tg.Path, ";#\\") {
			t.Fatalf("%q: accepted path %q", raw, tg.Path)
		}
		for _, seg := range strings.Split(tg.Path, "/")[1:] {
			d := Unquote(seg)
			if d == "." || d == ".." || strings.ContainsAny(d, "/\\") || hasEscape(d) {
				t.Fatalf("%q: accepted segment %q (%q)", raw, seg, d)
			}
		}
	})
}

// FuzzDecide: no panic on any request, and every decision is well formed:
// an allowed request is under the base URL and not a download route; a
// denial has a status, a rule and a reason.
func FuzzDecide(f *testing.F) {
	for _, line := range strings.Split(policyTable, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		lhs, _, _ := strings.Cut(line, " => ")
		fs := strings.Fields(lhs)
		if len(fs) < 2 {
			continue
		}
		target := strings.Replace(fs[1], "~", tableBase[:len(tableBase)-1], 1)
		f.Add(fs[0], target, "HTTP/1.1", "pod", strings.Contains(lhs, " ws"), strings.Contains(lhs, "range"))
	}
	p := NewPolicy(PolicyConfig{BaseURL: tableBase, MaxNotebook: DefaultMaxNotebook, Terminals: true, ProxyAllow: []string{"proxy/8050/"}})
	f.Fuzz(func(t *testing.T, method, target, proto, host string, ws, rng bool) {
		r := Request{Method: method, Target: target, Proto: proto, Host: host, Range: rng}
		if ws {
			r.Upgrade, r.ConnectionUpgrade = "websocket", true
		}
		d := p.Decide(r)
		if d.Rule == "" {
			t.Fatalf("%+v: no rule", r)
		}
		if !d.Allow {
			if (d.Status != 400 && d.Status != 403) || d.Reason == "" {
				t.Fatalf("%+v: denial %+v", r, d)
			}
			return
		}
		tg, ref := ParseTarget(target)
		if ref != nil {
			t.Fatalf("%+v: allowed a target ParseTarget refuses", r)
		}
		if !strings.HasPrefix(tg.Path, tableBase) && tg.Path != tableBase[:len(tableBase)-1] {
			t.Fatalf("%+v: allowed outside the base URL", r)
		}
		switch d.Family {
		case FamilyFiles, FamilyView, FamilyNbconvert, FamilyProxy, FamilyUnknown, FamilyOutside, FamilyMalformed:
			t.Fatalf("%+v: allowed %s", r, d.Family)
		}
	})
}

// recorder is a RoundTripper standing in for the notebook server: it
// records every request the guard forwards and answers each with a small
// contents model.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (rt *recorder) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	rt.mu.Lock()
	rt.reqs = append(rt.reqs, r)
	rt.mu.Unlock()
	const m = `{"name":"x","content":null,"type":"file"}`
	return &http.Response{StatusCode: 200, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Request: r,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(strings.NewReader(m)),
		ContentLength: int64(len(m))}, nil
}

func (rt *recorder) take() []*http.Request {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	out := rt.reqs
	rt.reqs = nil
	return out
}

// pipeListener hands the guard's server one in-memory connection per
// fuzz input.
type pipeListener struct{ conns chan net.Conn }

func (l *pipeListener) Accept() (net.Conn, error) {
	c, ok := <-l.conns
	if !ok {
		return nil, errors.New("closed")
	}
	return c, nil
}
func (l *pipeListener) Close() error   { return nil }
func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9281} }

// FuzzServer feeds any bytes to the guard's HTTP server as one client
// connection (pipelined requests, smuggling attempts, garbage) and checks
// the property the guard exists for: every request the server behind it
// gets is one the policy allows, forwarded as decided, and the guard
// neither panics nor hangs.
func FuzzServer(f *testing.F) {
	b := tableBase
	for _, s := range []string{
		"GET " + b + "lab HTTP/1.1\r\nHost: pod\r\n\r\n",
		"GET " + b + "api/status HTTP/1.1\r\nHost: pod\r\n\r\nGET " + b + "files/x HTTP/1.1\r\nHost: pod\r\n\r\nGET " + b + "api/me HTTP/1.1\r\nHost: pod\r\n\r\n",
		"POST " + b + "api/contents HTTP/1.1\r\nHost: pod\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET " + b + "files/x HTTP/1.1\r\nHost: pod\r\n\r\n",
		"POST " + b + "api/contents HTTP/1.1\r\nHost: pod\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhelloGET " + b + "files/x HTTP/1.1\r\n\r\n",
		"GET " + b + "files/x HTTP/1.1\r\nHost: pod\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"GET http://pod" + b + "files/x HTTP/1.1\r\nHost: pod\r\n\r\n",
		"GET " + b + "api/contents/a?type=file HTTP/1.0\r\nHost: pod\r\n\r\n",
		"PUT " + b + "api/contents/a HTTP/1.1\r\nHost: pod\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
		"GET " + b + "api/contents/a HTTP/1.1\r\nHost: pod\r\n folded: x\r\n\r\n",
		"GET " + b + "api/contents/a HTTP/1.1\nHost: pod\n\n",
		"\r\n\r\nGET " + b + "%66iles/x HTTP/1.1\r\nHost: pod\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: pod\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	rt := &recorder{}
	cfg := Config{Mode: Enforce, ServerPort: 8888, GuardPort: DefaultGuardPort, BaseURL: tableBase, MaxNotebook: DefaultMaxNotebook,
		Terminals: true, ProgressInterval: time.Minute}
	g, err := New(cfg, zerolog.Nop(), nil, Options{Upstream: "127.0.0.1:1", ReadHeaderTimeout: time.Second})
	if err != nil {
		f.Fatal(err)
	}
	g.proxy.Transport = rt
	ln := &pipeListener{conns: make(chan net.Conn)}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx, ln) }()
	f.Cleanup(func() { cancel(); close(ln.conns); <-served })
	f.Fuzz(func(t *testing.T, raw []byte) {
		client, server := net.Pipe()
		ln.conns <- server
		_ = client.SetDeadline(time.Now().Add(5 * time.Second))
		go func() {
			// A last request that closes the connection ends the exchange
			// early when the input leaves the server between requests.
			_, _ = client.Write(raw)
			_, _ = io.WriteString(client, "GET / HTTP/1.1\r\nHost: end\r\nConnection: close\r\n\r\n")
		}()
		var out bytes.Buffer
		buf := make([]byte, 32<<10)
		for {
			_ = client.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			n, err := client.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				break
			}
		}
		client.Close()
		for _, r := range rt.take() {
			target := r.URL.RequestURI()
			d := g.policy.Decide(Request{Method: r.Method, Target: target, Proto: "HTTP/1.1", Host: r.Host,
				Upgrade: r.Header.Get("Upgrade"), ConnectionUpgrade: hasToken(r.Header["Connection"], "upgrade"), Range: len(r.Header["Range"]) > 0})
			if !d.Allow {
				t.Fatalf("input %q: the server got %s %s (Host %q), which the policy denies (%s)", raw, r.Method, target, r.Host, d.Rule)
			}
			if r.Header.Get("X-Real-Ip") != "" || r.Header.Get("Expect") != "" {
				t.Fatalf("input %q: forwarded %v", raw, r.Header)
			}
		}
	})
}
