package main

import (
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
		})
	}
}
