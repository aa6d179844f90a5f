package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/internal/hwtest"
	"github.com/hubwarden/hubwarden/internal/nstest"
)

// TestIntegrationRunGuards: `hubwarden run` puts the HTTP guard in front of
// the notebook server's port: a proxy's request for a notebook's page or
// the API reaches the server, a download route is refused by the guard and
// never reaches it, and /readyz lists the guard's self-test. Control: the
// same requests with HUBWARDEN_GUARD=off all reach the server.
func TestIntegrationRunGuards(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-restore", "tc", "nft")
	for i, mode := range []string{"enforce", "off"} {
		t.Run(mode, func(t *testing.T) {
			p := nstest.NewPair(t, 19+i)
			// The stand-in for the single-user server: it answers every
			// request and remembers what it was asked.
			seen := make(chan string, 16)
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen <- r.URL.Path
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, `{"version": "2.19.0"}`)
			})}
			ln := p.Pod.Listen("tcp", ":8888")
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })

			s := hwtest.Start(t, p, hwtest.Env(t, p, map[string]string{"HUBWARDEN_USER": "jovyan", "HUBWARDEN_GUARD": mode}))
			checked := strings.Contains(s.Logs(), `"check":"guard-redirect","passed":true`)
			if (mode == "enforce") != checked {
				t.Errorf("the guard's self-test passed: %v; log:\n%s", checked, s.Logs())
			}
			c := hwtest.PeerHTTP(p.Peer, 5*time.Second)
			get := func(path string) (int, bool) {
				r, err := c.Get("http://" + p.PodIP4 + ":8888" + path)
				if err != nil {
					t.Fatalf("GET %s: %v", path, err)
				}
				io.Copy(io.Discard, r.Body)
				r.Body.Close()
				select {
				case got := <-seen:
					if got != path {
						t.Errorf("the server saw %s for %s", got, path)
					}
					return r.StatusCode, true
				case <-time.After(200 * time.Millisecond):
					return r.StatusCode, false
				}
			}
			for _, tt := range []struct {
				path    string
				guarded bool // refused by the guard in enforce mode
			}{
				{"/user/jovyan/api/status", false},
				{"/user/jovyan/files/data.csv", true},
				{"/user/jovyan/nbconvert/script/data.ipynb", true},
			} {
				code, reached := get(tt.path)
				t.Logf("%s: %s %d, reached the server %v", mode, tt.path, code, reached)
				refused := mode == "enforce" && tt.guarded
				if refused && (code != http.StatusForbidden || reached) {
					t.Errorf("%s: %d, reached the server %v; want 403 from the guard", tt.path, code, reached)
				}
				if !refused && (code != http.StatusOK || !reached) {
					t.Errorf("%s: %d, reached the server %v; want the server's 200", tt.path, code, reached)
				}
			}
			// The guard's audit lines name their component once (the guard
			// adds it; the sidecar's logger gives user and server).
			if mode == "enforce" {
				var line string
				for try := 0; try < 50 && line == ""; try++ {
					for _, l := range strings.Split(s.Logs(), "\n") {
						if strings.Contains(l, `"component":"guard"`) && strings.Contains(l, "/files/data.csv") {
							line = l
						}
					}
					time.Sleep(100 * time.Millisecond)
				}
				if line == "" || strings.Count(line, `"component"`) != 1 || strings.Count(line, `"user"`) != 1 {
					t.Errorf("the guard's audit line for /files/data.csv, want component and user once each: %q", line)
				}
			}
		})
	}
}

// TestIntegrationRunGuardShaped: what the guard sends to the proxy is the
// pod's inbound connection to the server's port, shaped and audited as
// before the guard: an allowed route that streams past FLOW_BUDGET is
// demoted by the kernel's tripwire (by the bytes on that connection, so a
// client gets at most the budget, the slow rate's share and what was in
// flight), and the audit has one flow for it, on port 8888, and none for
// the guard's loopback leg to the server. Control: with shaping off the same
// download runs at the veth's speed.
func TestIntegrationRunGuardShaped(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables-nft-restore", "tc", "nft")
	const (
		budget    = 4 << 20
		slow      = 8e6 / 8 // HUBWARDEN_SLOW_RATE 8mbit in bytes/s
		window    = 3 * time.Second
		path      = "/user/jovyan/static/lab/big.js"
		serveSize = 256 << 20
	)
	// What the client may read in the window when the connection is
	// demoted at the budget: the budget, the slow rate for the window, the
	// socket buffers and the slow leaf's queue between the tripwire and the
	// client (generously 4 MiB: the bound is about the budget, not buffers).
	bound := float64(budget) + slow*window.Seconds() + 4<<20
	for i, shape := range []string{"true", "false"} {
		t.Run("shape="+shape, func(t *testing.T) {
			p := nstest.NewPair(t, 22+i)
			chunk := make([]byte, 64<<10)
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != path {
					http.NotFound(w, r)
					return
				}
				w.Header().Set("Content-Type", "text/javascript")
				for n := 0; n < serveSize; n += len(chunk) {
					if _, err := w.Write(chunk); err != nil {
						return
					}
				}
			})}
			ln := p.Pod.Listen("tcp", ":8888")
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })

			s := hwtest.Start(t, p, hwtest.Env(t, p, map[string]string{
				"HUBWARDEN_USER": "jovyan", "HUBWARDEN_GUARD": "enforce", "HUBWARDEN_SHAPE": shape, "HUBWARDEN_WATCH": shape,
				"HUBWARDEN_FLOW_BUDGET": "4MiB", "HUBWARDEN_FLOW_REFILL": "1KiB/s",
				"HUBWARDEN_POD_BUDGET": "1GiB", "HUBWARDEN_SLOW_RATE": "8mbit",
			}))
			c := hwtest.PeerHTTP(p.Peer, 30*time.Second)
			r, err := c.Get("http://" + p.PodIP4 + ":8888" + path)
			if err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
			if r.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %d, want the server's 200 through the guard", path, r.StatusCode)
			}
			got := 0
			deadline := time.Now().Add(window)
			buf := make([]byte, 256<<10)
			for time.Now().Before(deadline) && got < serveSize {
				n, err := r.Body.Read(buf)
				got += n
				if err != nil {
					break
				}
			}
			r.Body.Close()
			t.Logf("shape=%s: the client read %.1f MiB in %v through the guard (bound when shaped %.1f MiB)", shape, float64(got)/(1<<20), window, bound/(1<<20))
			if shape == "false" {
				if float64(got) < 4*bound {
					t.Fatalf("control: %.1f MiB without shaping, want over %.1f MiB: the download does not show what shaping stops", float64(got)/(1<<20), 4*bound/(1<<20))
				}
				return
			}
			if float64(got) > bound {
				t.Errorf("%.1f MiB through the guard, bound %.1f MiB: the guard's bytes escaped the tripwire", float64(got)/(1<<20), bound/(1<<20))
			}
			// The flow's audit: a demotion of the inbound connection on the
			// server's port, by the kernel's tripwire, and no flow of the
			// guard's loopback leg.
			var demoted bool
			var lines []string
			for try := 0; try < 100 && !demoted; try++ {
				time.Sleep(100 * time.Millisecond)
				lines = lines[:0]
				for _, l := range strings.Split(s.Logs(), "\n") {
					var m map[string]any
					if json.Unmarshal([]byte(l), &m) != nil || m["component"] != "ctwatch" || m["audit"] == nil || m["local_port"] == nil {
						continue
					}
					lines = append(lines, l)
					if m["audit"] == "demote" && m["local_port"] == float64(8888) && m["peer_addr"] == p.PeerIP4 && m["reason"] == "flow_budget" {
						demoted = true
					}
				}
			}
			if !demoted {
				t.Errorf("no demote line (reason flow_budget) for the connection to port 8888; flow lines:\n%s", strings.Join(lines, "\n"))
			}
			for _, l := range lines {
				if strings.Contains(l, `"127.0.0.1"`) || strings.Contains(l, `"::1"`) || strings.Contains(l, `"local_port":9281`) || strings.Contains(l, `"peer_port":8888`) {
					t.Errorf("the guard's loopback leg is audited as a flow: %s", l)
				}
			}
		})
	}
}
