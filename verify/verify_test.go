package verify

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const statusNoCaps = "Name:\tpython3\nUid:\t1000\t1000\t1000\t1000\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n"

// status makes /proc/self/status read as statusNoCaps with old replaced
// by repl.
func status(old, repl string) func(*Env) {
	return func(e *Env) {
		rf := e.ReadFile
		e.ReadFile = func(p string) ([]byte, error) {
			if p != "/proc/self/status" {
				return rf(p)
			}
			return []byte(strings.Replace(statusNoCaps, old, repl, 1)), nil
		}
	}
}

// goodEnv is a notebook container where the lockdown holds.
func goodEnv() *Env {
	writable := map[string]bool{"/home/jovyan": true, "/tmp": true}
	exists := map[string]bool{"/": true, "/opt/conda": true, "/opt/conda/bin": true, "/opt/conda/lib/python3.11/site-packages": true,
		"/opt/conda/lib/python3.11": true, "/opt/conda/etc/jupyter": true, "/usr/local/etc/jupyter": true, "/etc/jupyter": true,
		"/opt/conda/share/jupyter": true, "/usr/local/share/jupyter": true, "/usr/share/jupyter": true, "/home/jovyan": true}
	return &Env{
		Geteuid: func() int { return 1000 },
		ReadFile: func(p string) ([]byte, error) {
			switch p {
			case "/proc/self/status":
				return []byte(statusNoCaps), nil
			case "/opt/conda/bin/jupyter":
				return []byte("#!/opt/conda/bin/python3.11\nimport sys\n"), nil
			}
			return nil, fs.ErrNotExist
		},
		KernelProbes: func(context.Context) []KernelProbe {
			return []KernelProbe{{"tc-change-denied", syscall.EPERM}, {"netfilter-change-denied", fmt.Errorf("netlink receive: %w", syscall.EPERM)}}
		},
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
		},
		Output: func(ctx context.Context, name string, args ...string) ([]byte, error) {
			switch {
			case name == "/opt/conda/bin/python3.11" && strings.Join(args, " ") == "-m jupyter --paths --json":
				return nil, errors.New("exit status 1: No module named jupyter")
			case name == "/opt/conda/bin/python3.11" && strings.Join(args, " ") == "-I -c "+installedScript:
				return []byte("installed\n"), nil
			case name == "/opt/conda/bin/python3.11":
				return []byte("/opt/conda\n/opt/conda/bin\n/opt/conda/lib/python3.11/site-packages\n/opt/conda/lib/python3.11/site-packages\n/opt/conda/lib/python3.11\n"), nil
			case name == "/opt/conda/bin/jupyter" && strings.Join(args, " ") == "--paths --json":
				return []byte(`{"config": ["/home/jovyan/.jupyter", "/opt/conda/etc/jupyter", "/usr/local/etc/jupyter", "/etc/jupyter"],
					"data": ["/home/jovyan/.local/share/jupyter", "/opt/conda/share/jupyter", "/usr/local/share/jupyter", "/usr/share/jupyter"],
					"runtime": ["/home/jovyan/.local/share/jupyter/runtime"]}`), nil
			}
			return nil, fmt.Errorf("unexpected command %s %v", name, args)
		},
		LookPath: func(f string) (string, error) {
			if f == "jupyter" {
				return "/opt/conda/bin/jupyter", nil
			}
			if f == "python3" {
				return "/opt/conda/bin/python3", nil
			}
			return "", errors.New("not found")
		},
		TryWrite: func(dir string) error {
			if writable[dir] {
				return nil
			}
			if !exists[dir] {
				return &fs.PathError{Op: "stat", Path: dir, Err: fs.ErrNotExist}
			}
			return &fs.PathError{Op: "open", Path: dir, Err: fs.ErrPermission}
		},
		Get: func(ctx context.Context, url string) (int, error) { return 200, nil },
		GetBody: func(ctx context.Context, url, token string) (int, []byte, error) {
			if url != "http://127.0.0.1:8888/user/jovyan/api/hubwarden" || token != "tok" {
				return 0, nil, fmt.Errorf("unexpected request %s %q", url, token)
			}
			return 200, []byte(notebookOK), nil
		},
		Getenv: func(k string) string {
			return map[string]string{"JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/jovyan/", "JUPYTERHUB_API_TOKEN": "tok"}[k]
		},
		Home: "/home/jovyan",
	}
}

const notebookOK = `{"notebooks_only": true, "lockdown_check": true, "lockdown_problems": [], "preflight": true, "dumpable": false, "isolated": true}`

func notebookAnswer(status int, body string) func(*Env) {
	return func(e *Env) {
		e.GetBody = func(context.Context, string, string) (int, []byte, error) { return status, []byte(body), nil }
	}
}

var allChecks = []string{"not-root", "no-cap-net-admin", "no-cap-net-raw", "no-privilege-gain", "tc-change-denied", "netfilter-change-denied", "egress-blocked",
	"metadata-blocked 169.254.169.254:80", "metadata-blocked [fd00:ec2::254]:80", "python-env-readonly", "jupyter-paths-readonly", "notebook-extension", "hubwarden-ready"}

func TestChecks(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(e *Env)
		fail   map[string]string // check name -> substring of its detail
	}{
		{"all pass", func(*Env) {}, nil},
		{"notebook extension installed, not running", notebookAnswer(404, "Not Found"),
			map[string]string{"notebook-extension": "hubwarden_notebook is installed for /opt/conda/bin/python3.11 but the server does not run it"}},
		{"notebook lockdown off", notebookAnswer(200, `{"notebooks_only": true, "lockdown_check": false, "lockdown_problems": [], "preflight": true, "dumpable": true, "isolated": false}`),
			map[string]string{"notebook-extension": "lockdown check is off (HubwardenNotebook.lockdown_check); the server does not run with python -I"}},
		{"notebook started without the entry point", notebookAnswer(200, `{"notebooks_only": true, "lockdown_check": true, "lockdown_problems": [], "preflight": false, "dumpable": false, "isolated": true}`),
			map[string]string{"notebook-extension": "not started by python3 -I -m hubwarden_notebook.singleuser"}},
		{"notebook lockdown problems", notebookAnswer(200, `{"notebooks_only": false, "lockdown_check": true, "lockdown_problems": ["a server config path is in the home directory: /home/jovyan/.jupyter"], "preflight": true, "dumpable": false, "isolated": true}`),
			map[string]string{"notebook-extension": "contents are not notebooks-only; a server config path is in the home directory"}},
		{"not in a notebook server", func(e *Env) { e.Getenv = func(string) string { return "" } },
			map[string]string{"notebook-extension": "no JUPYTERHUB_SERVICE_URL"}},
		{"root", func(e *Env) { e.Geteuid = func() int { return 0 } }, map[string]string{"not-root": "running as root"}},
		{"net admin", status("CapEff:\t0000000000000000", "CapEff:\t0000000000001000"), map[string]string{"no-cap-net-admin": "CAP_NET_ADMIN is in CapEff"}},
		{"ambient net admin", status("CapAmb:\t0000000000000000", "CapAmb:\t0000000000001000"), map[string]string{"no-cap-net-admin": "CAP_NET_ADMIN is in CapAmb"}},
		{"net raw", status("CapPrm:\t0000000000000000", "CapPrm:\t0000000000002000"), map[string]string{"no-cap-net-raw": "CAP_NET_RAW is in CapPrm"}},
		{"privilege escalation allowed", status("NoNewPrivs:\t1", "NoNewPrivs:\t0"), map[string]string{"no-privilege-gain": "NoNewPrivs is 0: a setuid program (sudo)"}},
		{"no NoNewPrivs line", status("NoNewPrivs:\t1\n", ""), map[string]string{"no-privilege-gain": "no NoNewPrivs in /proc/self/status"}},
		{"kernel accepts tc change", func(e *Env) {
			e.KernelProbes = func(context.Context) []KernelProbe {
				return []KernelProbe{{"tc-change-denied", nil}, {"netfilter-change-denied", syscall.ENODEV}}
			}
		}, map[string]string{"tc-change-denied": "the kernel accepted the change", "netfilter-change-denied": "want operation not permitted, got: no such device"}},
		{"egress open", func(e *Env) {
			e.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
				if addr == DefaultTarget {
					c, s := net.Pipe()
					s.Close()
					return c, nil
				}
				return nil, syscall.ECONNREFUSED
			}
		}, map[string]string{"egress-blocked": "connected: not blocked"}},
		{"metadata dropped not rejected", func(e *Env) {
			e.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
				if addr == "169.254.169.254:80" {
					<-ctx.Done()
					return nil, ctx.Err()
				}
				return nil, syscall.EHOSTUNREACH
			}
		}, map[string]string{"metadata-blocked 169.254.169.254:80": "no answer in"}},
		{"conda writable", func(e *Env) {
			tw := e.TryWrite
			e.TryWrite = func(d string) error {
				if strings.HasPrefix(d, "/opt/conda/lib") {
					return nil
				}
				return tw(d)
			}
		}, map[string]string{"python-env-readonly": "writable: /opt/conda/lib/python3.11/site-packages, /opt/conda/lib/python3.11"}},
		{"missing jupyter dir under a writable parent", func(e *Env) {
			tw := e.TryWrite
			e.TryWrite = func(d string) error {
				if d == "/usr/local/etc/jupyter" {
					return fs.ErrNotExist
				}
				if d == "/usr/local/etc" {
					return nil
				}
				return tw(d)
			}
		}, map[string]string{"jupyter-paths-readonly": "writable: /usr/local/etc/jupyter (missing; /usr/local/etc is writable)"}},
		{"no jupyter", func(e *Env) {
			e.LookPath = func(f string) (string, error) {
				if f == "python3" {
					return "/opt/conda/bin/python3.11", nil
				}
				return "", errors.New("executable file not found in $PATH")
			}
		}, map[string]string{"jupyter-paths-readonly": "-m jupyter --paths --json: exit status 1: No module named jupyter"}},
		{"jupyter library only", func(e *Env) {
			e.LookPath = func(f string) (string, error) {
				if f == "python3" {
					return "/opt/conda/bin/python3.11", nil
				}
				return "", errors.New("executable file not found in $PATH")
			}
			out := e.Output
			e.Output = func(ctx context.Context, name string, args ...string) ([]byte, error) {
				if strings.Join(args, " ") == "-m jupyter --paths --json" {
					return out(ctx, "/opt/conda/bin/jupyter", "--paths", "--json")
				}
				return out(ctx, name, args...)
			}
		}, nil},
		{"not ready", func(e *Env) { e.Get = func(context.Context, string) (int, error) { return 503, nil } },
			map[string]string{"hubwarden-ready": "answered 503, want 200"}},
		{"health down", func(e *Env) {
			e.Get = func(context.Context, string) (int, error) { return 0, syscall.ECONNREFUSED }
		}, map[string]string{"hubwarden-ready": "getting http://127.0.0.1:9280/readyz: connection refused"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := goodEnv()
			tt.mutate(e)
			res := Checks(context.Background(), Options{Env: e, Timeout: 100_000_000})
			for _, r := range res {
				if r.Status == Skip {
					t.Errorf("%s: skipped (%s)", r.Name, r.Detail)
				}
			}
			var names []string
			for _, r := range res {
				names = append(names, r.Name)
				want, shouldFail := tt.fail[r.Name]
				if shouldFail != (r.Status == Fail) {
					t.Errorf("%s: %s %q, want fail=%v", r.Name, r.Status, r.Detail, shouldFail)
				}
				if shouldFail && !strings.Contains(r.Detail, want) {
					t.Errorf("%s: detail %q, want it to contain %q", r.Name, r.Detail, want)
				}
			}
			if diff := cmp.Diff(allChecks, names); diff != "" {
				t.Errorf("check names (-want +got):\n%s", diff)
			}
		})
	}
}

// A pod whose server's Python lacks hubwarden_notebook (the sidecar alone):
// the notebook-extension check is skipped and verify passes.
func TestNotebookExtensionNotInstalled(t *testing.T) {
	e := goodEnv()
	notebookAnswer(404, "Not Found")(e)
	out := e.Output
	e.Output = func(ctx context.Context, name string, args ...string) ([]byte, error) {
		if strings.Join(args, " ") == "-I -c "+installedScript {
			return []byte("absent\n"), nil
		}
		return out(ctx, name, args...)
	}
	var b strings.Builder
	if !Run(context.Background(), Options{Env: e}, &b) {
		t.Fatalf("Run failed:\n%s", b.String())
	}
	for _, want := range []string{
		"SKIP notebook-extension: hubwarden_notebook is not installed for /opt/conda/bin/python3.11",
		"verify: all 12 checks that apply passed (1 skipped)\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, b.String())
		}
	}
}

func TestRunOutput(t *testing.T) {
	var b strings.Builder
	if !Run(context.Background(), Options{Env: goodEnv()}, &b) {
		t.Fatalf("Run failed:\n%s", b.String())
	}
	out := b.String()
	for _, want := range []string{
		"PASS not-root: uid 1000\n",
		"PASS python-env-readonly: /opt/conda/bin/python3.11: /opt/conda, /opt/conda/bin, /opt/conda/lib/python3.11/site-packages, /opt/conda/lib/python3.11 not writable\n",
		"PASS jupyter-paths-readonly: 6 paths outside /home/jovyan not writable\n",
		"verify: all 13 checks passed\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	e := goodEnv()
	e.Geteuid = func() int { return 0 }
	b.Reset()
	if Run(context.Background(), Options{Env: e}, &b) || !strings.Contains(b.String(), "FAIL not-root: running as root") ||
		!strings.Contains(b.String(), "verify: 1 of 13 checks failed") {
		t.Errorf("Run as root:\n%s", b.String())
	}
}

func TestTryWrite(t *testing.T) {
	dir := t.TempDir()
	if err := tryWrite(dir); err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("tryWrite left %d files", len(ents))
	}
	if err := tryWrite(dir + "/missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing dir: %v, want ErrNotExist", err)
	}
}

func TestInHome(t *testing.T) {
	for path, want := range map[string]bool{
		"/home/jovyan/.jupyter": true, "/home/jovyan": true, "/home/jovyanx/a": false, "/etc/jupyter": false, "/home": false,
	} {
		if got := inHome(path, "/home/jovyan"); got != want {
			t.Errorf("inHome(%q) = %v, want %v", path, got, want)
		}
	}
}
