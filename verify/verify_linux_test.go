//go:build linux

package verify

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hubwarden/hubwarden/health"
	"github.com/hubwarden/hubwarden/internal/nstest"
)

// TestVerifyHelperProcess is not a test: the integration test re-executes
// the test binary as another user inside the pod namespace, and this runs
// verify there with options from the environment.
func TestVerifyHelperProcess(t *testing.T) {
	if os.Getenv("HWTEST_VERIFY_HELPER") != "1" {
		t.Skip("helper process for TestIntegrationVerify")
	}
	opts := Options{
		Target:   os.Getenv("HWTEST_TARGET"),
		Metadata: strings.Split(os.Getenv("HWTEST_METADATA"), ","),
		ReadyURL: os.Getenv("HWTEST_READY"),
		Jupyter:  os.Getenv("HWTEST_JUPYTER"),
		Timeout:  3 * time.Second,
	}
	if Run(context.Background(), opts, os.Stdout) {
		os.Exit(0)
	}
	os.Exit(1)
}

// fakeJupyter writes a jupyter script (run by /usr/bin/python3, like a real
// one) that prints system paths that nobody may write.
func fakeJupyter(t *testing.T, dir string) string {
	t.Helper()
	script := `#!/usr/bin/python3
import json, sys
if sys.argv[1:] == ["--paths", "--json"]:
    print(json.dumps({"config": ["/nonexistent/.jupyter", "/etc/jupyter", "/usr/local/etc/jupyter"],
                      "data": ["/usr/share/jupyter", "/usr/local/share/jupyter"], "runtime": []}))
`
	p := filepath.Join(dir, "jupyter")
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// worldDir is a directory every user can read and execute, removed at cleanup.
func worldDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hwverify-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func copyExe(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "verify.test")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestIntegrationVerify(t *testing.T) {
	nstest.SkipUnlessRoot(t, "iptables", "ip6tables", "setpriv", "/usr/bin/python3")
	p := nstest.NewPair(t, 64)
	dir := worldDir(t)
	exe, jupyter := copyExe(t, dir), fakeJupyter(t, dir)

	// The peer answers on every port verify dials: without rules, verify
	// would connect.
	for _, addr := range []string{p.PeerIP4 + ":443", p.PeerIP4 + ":80", "[" + p.PeerIP6 + "]:80"} {
		p.Peer.Serve(addr, func(net.Conn) {})
	}
	// hubwarden's health server, ready, on the pod's loopback.
	st := health.NewStatus(time.Now)
	st.SetApplied(nil)
	st.SetSelftest([]health.Check{{Name: "x", Passed: true}})
	mux := http.NewServeMux()
	health.Register(mux, st, nil)
	// The notebook server's /api/hubwarden, as the extension answers it.
	mux.HandleFunc("GET /user/x/api/hubwarden", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "token tok" {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		_, _ = io.WriteString(w, notebookOK)
	})
	srv := health.NewServer("127.0.0.1:0", mux)
	ln := p.Pod.Listen("tcp", "127.0.0.1:0")
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.HTTP.Close() })

	p.Pod.MustRun("iptables", "-A", "OUTPUT", "-d", p.PeerIP4, "-p", "tcp", "--dport", "443", "-j", "REJECT", "--reject-with", "tcp-reset")
	p.Pod.MustRun("iptables", "-A", "OUTPUT", "-d", p.PeerIP4, "-p", "tcp", "--dport", "80", "-j", "REJECT")
	p.Pod.MustRun("ip6tables", "-A", "OUTPUT", "-d", p.PeerIP6, "-j", "REJECT")

	// run runs verify as nobody with no_new_privs (what Kubernetes sets for
	// allowPrivilegeEscalation: false), as nobody without it, or as root.
	const (
		nobody = iota
		nobodyEscalation
		root
	)
	run := func(as int) (string, bool) {
		args := []string{exe, "-test.run=^TestVerifyHelperProcess$"}
		switch as {
		case nobody:
			args = append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs", "--"}, args...)
		case nobodyEscalation:
			args = append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"}, args...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		c := p.Pod.Cmd(ctx, args[0], args[1:]...)
		c.Env = []string{
			"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/nonexistent",
			"HWTEST_VERIFY_HELPER=1",
			"HWTEST_TARGET=" + p.PeerIP4 + ":443",
			"HWTEST_METADATA=" + p.PeerIP4 + ":80,[" + p.PeerIP6 + "]:80",
			"HWTEST_READY=http://" + ln.Addr().String() + "/readyz",
			"HWTEST_JUPYTER=" + jupyter,
			"JUPYTERHUB_SERVICE_URL=http://" + ln.Addr().String() + "/user/x/", "JUPYTERHUB_API_TOKEN=tok",
		}
		out, err := c.CombinedOutput()
		if err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("running verify: %v\n%s", err, out)
			}
		}
		return string(out), err == nil
	}

	out, ok := run(nobody)
	t.Logf("as nobody, rules in place:\n%s", out)
	if !ok || !strings.Contains(out, "verify: all 13 checks passed") {
		t.Fatalf("verify as nobody failed:\n%s", out)
	}

	out, ok = run(nobodyEscalation)
	t.Logf("as nobody without no_new_privs:\n%s", out)
	if ok || !strings.Contains(out, "FAIL no-privilege-gain: NoNewPrivs is 0") || strings.Count(out, "FAIL") != 1 {
		t.Errorf("verify as nobody without no_new_privs: want exactly no-privilege-gain to fail:\n%s", out)
	}

	out, ok = run(root)
	t.Logf("as root:\n%s", out)
	for _, want := range []string{"FAIL not-root", "FAIL no-cap-net-admin", "FAIL no-cap-net-raw", "FAIL tc-change-denied", "FAIL netfilter-change-denied"} {
		if ok || !strings.Contains(out, want) {
			t.Errorf("verify as root: want %q and failure:\n%s", want, out)
		}
	}

	p.Pod.MustRun("iptables", "-D", "OUTPUT", "-d", p.PeerIP4, "-p", "tcp", "--dport", "443", "-j", "REJECT", "--reject-with", "tcp-reset")
	out, ok = run(nobody)
	t.Logf("as nobody, egress rule missing:\n%s", out)
	if ok || !strings.Contains(out, "FAIL egress-blocked: connecting to "+p.PeerIP4+":443: connected: not blocked") ||
		strings.Count(out, "FAIL") != 1 {
		t.Fatalf("verify without the egress rule: want exactly egress-blocked to fail:\n%s", out)
	}
}
