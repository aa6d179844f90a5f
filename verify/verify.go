// Package verify is the logic of `hubwarden verify`: run inside the notebook
// container as the notebook user, it checks from the user's side that the
// lockdown holds. Each check prints PASS or FAIL with its name; any FAIL
// makes Run report false (the command exits non-zero).
//
// Checks: the user is not root and has neither CAP_NET_ADMIN nor
// CAP_NET_RAW, and runs with no_new_privs (nothing in the container can
// become root); requests to change
// tc and netfilter state are refused by the kernel (EPERM); a connection to
// a non-allowed address is refused; the cloud metadata endpoints are blocked
// (refused or unreachable, fast, never connected); the Python environment
// that runs the Jupyter server is not writable; the Jupyter config and data
// paths the server reads, outside the user's home, are not writable;
// hubwarden's /readyz answers 200; the notebook server runs the
// hubwarden_notebook extension with the lockdown in effect (its
// /api/hubwarden answer: notebooks-only contents, the start-up check on and
// passed, also before the server read its config (started by
// hubwarden_notebook.singleuser), the server isolated from user
// site-packages and not dumpable). The last is skipped (SKIP, not a
// failure) in a pod whose server's Python does not have hubwarden_notebook
// installed: the extension is optional beside the sidecar. Installed but
// not running fails: that is what a config the user slipped in does.
//
// Everything external (uid, capabilities, kernel probes, dialling, commands,
// write tests, HTTP) is injectable through Env, so every check's pass and
// fail paths are unit-tested without root.
package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hubwarden/hubwarden/selftest"
)

// Defaults of Options.
const (
	DefaultTarget   = "192.0.2.1:443" // TEST-NET-1: never on an allow-list
	DefaultReadyURL = "http://127.0.0.1:9280/readyz"
	DefaultTimeout  = 3 * time.Second
)

// DefaultMetadata are the cloud metadata endpoints hubwarden always blocks.
var DefaultMetadata = []string{"169.254.169.254:80", "[fd00:ec2::254]:80"}

// CAP_NET_ADMIN's and CAP_NET_RAW's bits in the capability sets.
const (
	capNetAdmin = 12
	capNetRaw   = 13
)

// Options configure Run. Zero values mean the defaults.
type Options struct {
	Target   string   // host:port that must be refused (not on the allow-list)
	Metadata []string // metadata endpoints (host:port) that must be blocked
	ReadyURL string   // hubwarden's readiness URL
	Timeout  time.Duration
	// Python is the interpreter that runs the Jupyter server; empty: the one
	// in the shebang of Jupyter, else python3 on PATH.
	Python string
	// Jupyter is the jupyter command; empty: "jupyter" on PATH.
	Jupyter string
	// NotebookURL is the single-user server's URL; empty:
	// JUPYTERHUB_SERVICE_URL (0.0.0.0 read as 127.0.0.1). Its token is
	// JUPYTERHUB_API_TOKEN, which the server's kernels and terminals have.
	NotebookURL string
	Env         *Env // nil: SystemEnv()
}

// KernelProbe is one attempt to change kernel network state.
type KernelProbe struct {
	Name string // e.g. "tc-change-denied"
	Err  error  // the kernel's answer; the check passes only on EPERM
}

// Env is the outside world as verify sees it.
type Env struct {
	Geteuid  func() int
	ReadFile func(path string) ([]byte, error) // /proc/self/status
	// KernelProbes tries harmless changes (deleting objects that do not
	// exist) that the kernel refuses with EPERM without CAP_NET_ADMIN.
	KernelProbes func(ctx context.Context) []KernelProbe
	Dial         selftest.DialFunc
	// Output runs a command and returns its standard output.
	Output   func(ctx context.Context, name string, args ...string) ([]byte, error)
	LookPath func(file string) (string, error)
	// TryWrite creates and removes a file in dir; nil error means writable.
	TryWrite func(dir string) error
	Get      func(ctx context.Context, url string) (status int, err error)
	// GetBody fetches url with an Authorization token header.
	GetBody func(ctx context.Context, url, token string) (status int, body []byte, err error)
	Getenv  func(key string) string
	Home    string
}

// Status of a check.
type Status string

// Check outcomes.
const (
	Pass Status = "PASS"
	Fail Status = "FAIL"
	// Skip: the check does not apply to this pod; not a failure.
	Skip Status = "SKIP"
)

// Result is one check's outcome.
type Result struct {
	Name   string
	Status Status
	Detail string
}

// Run runs every check, writes one line per check to w and a summary, and
// reports whether all passed.
func Run(ctx context.Context, opts Options, w io.Writer) bool {
	results := Checks(ctx, opts)
	failed, skipped := 0, 0
	for _, r := range results {
		fmt.Fprintf(w, "%s %s: %s\n", r.Status, r.Name, r.Detail)
		switch r.Status {
		case Fail:
			failed++
		case Skip:
			skipped++
		}
	}
	switch {
	case failed > 0:
		fmt.Fprintf(w, "verify: %d of %d checks failed\n", failed, len(results))
	case skipped > 0:
		fmt.Fprintf(w, "verify: all %d checks that apply passed (%d skipped)\n", len(results)-skipped, skipped)
	default:
		fmt.Fprintf(w, "verify: all %d checks passed\n", len(results))
	}
	return failed == 0
}

// Checks runs every check and returns their results in a fixed order.
func Checks(ctx context.Context, opts Options) []Result {
	opts = withDefaults(opts)
	e := opts.Env
	var out []Result
	add := func(name string, detail string, err error) {
		if err != nil {
			out = append(out, Result{Name: name, Status: Fail, Detail: err.Error()})
			return
		}
		out = append(out, Result{Name: name, Status: Pass, Detail: detail})
	}
	timed := func(name string, f func(ctx context.Context) (string, error)) {
		cctx, cancel := context.WithTimeout(ctx, opts.Timeout)
		defer cancel()
		detail, err := f(cctx)
		add(name, detail, err)
	}

	if uid := e.Geteuid(); uid == 0 {
		add("not-root", "", errors.New("running as root (uid 0): run verify as the notebook user"))
	} else {
		add("not-root", fmt.Sprintf("uid %d", uid), nil)
	}
	status, err := e.ReadFile("/proc/self/status")
	for _, c := range []struct {
		name  string
		check func(status string) (string, error)
	}{
		{"no-cap-net-admin", func(st string) (string, error) { return checkCaps(st, capNetAdmin, "CAP_NET_ADMIN") }},
		{"no-cap-net-raw", func(st string) (string, error) { return checkCaps(st, capNetRaw, "CAP_NET_RAW") }},
		{"no-privilege-gain", checkNoNewPrivs},
	} {
		if err != nil {
			add(c.name, "", fmt.Errorf("reading /proc/self/status: %w", err))
			continue
		}
		detail, cerr := c.check(string(status))
		add(c.name, detail, cerr)
	}
	for _, p := range e.KernelProbes(ctx) {
		if errors.Is(p.Err, errEPERM) {
			add(p.Name, "refused by the kernel (operation not permitted)", nil)
		} else if p.Err == nil {
			add(p.Name, "", errors.New("the kernel accepted the change: this user can change network state"))
		} else {
			add(p.Name, "", fmt.Errorf("want operation not permitted, got: %w (the request was allowed past the permission check)", p.Err))
		}
	}
	timed("egress-blocked", func(ctx context.Context) (string, error) {
		return selftest.DialBlocked(ctx, e.Dial, "tcp", opts.Target)
	})
	for _, m := range opts.Metadata {
		timed("metadata-blocked "+m, func(ctx context.Context) (string, error) {
			return selftest.DialBlocked(ctx, e.Dial, "tcp", m)
		})
	}
	timed("python-env-readonly", func(ctx context.Context) (string, error) {
		return pythonReadonly(ctx, opts)
	})
	timed("jupyter-paths-readonly", func(ctx context.Context) (string, error) {
		return jupyterReadonly(ctx, opts)
	})
	{
		cctx, cancel := context.WithTimeout(ctx, opts.Timeout)
		detail, err := notebookExtension(cctx, opts)
		cancel()
		if errors.Is(err, errNotInstalled) {
			out = append(out, Result{Name: "notebook-extension", Status: Skip, Detail: detail})
		} else {
			add("notebook-extension", detail, err)
		}
	}
	timed("hubwarden-ready", func(ctx context.Context) (string, error) {
		status, err := e.Get(ctx, opts.ReadyURL)
		if err != nil {
			return "", fmt.Errorf("getting %s: %w", opts.ReadyURL, err)
		}
		if status != http.StatusOK {
			return "", fmt.Errorf("%s answered %d, want 200", opts.ReadyURL, status)
		}
		return opts.ReadyURL + " answered 200", nil
	})
	return out
}

// notebookStatus is the part of hubwarden_notebook's /api/hubwarden answer
// that verify checks.
type notebookStatus struct {
	NotebooksOnly    bool     `json:"notebooks_only"`
	LockdownCheck    bool     `json:"lockdown_check"`
	LockdownProblems []string `json:"lockdown_problems"`
	Preflight        bool     `json:"preflight"`
	Dumpable         *bool    `json:"dumpable"`
	Isolated         bool     `json:"isolated"`
}

func notebookExtension(ctx context.Context, o Options) (string, error) {
	e := o.Env
	base := o.NotebookURL
	if base == "" {
		base = strings.Replace(e.Getenv("JUPYTERHUB_SERVICE_URL"), "://0.0.0.0:", "://127.0.0.1:", 1)
	}
	if base == "" {
		return "", errors.New("no JUPYTERHUB_SERVICE_URL: run verify in a terminal of the notebook server, or set -notebook-url")
	}
	url := strings.TrimSuffix(base, "/") + "/api/hubwarden"
	status, body, err := e.GetBody(ctx, url, e.Getenv("JUPYTERHUB_API_TOKEN"))
	if err != nil {
		return "", fmt.Errorf("getting %s: %w", url, err)
	}
	if status == http.StatusNotFound {
		return notebookAbsent(ctx, o, url)
	}
	if status != http.StatusOK {
		return "", fmt.Errorf("%s answered %d, want 200", url, status)
	}
	var st notebookStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return "", fmt.Errorf("parsing %s: %w", url, err)
	}
	var bad []string
	if !st.NotebooksOnly {
		bad = append(bad, "contents are not notebooks-only")
	}
	if !st.LockdownCheck {
		bad = append(bad, "the start-up lockdown check is off (HubwardenNotebook.lockdown_check)")
	}
	bad = append(bad, st.LockdownProblems...)
	if !st.Preflight {
		bad = append(bad, "the server was not started by python3 -I -m hubwarden_notebook.singleuser (no check ran before it read its config files, which can run code)")
	}
	if !st.Isolated {
		bad = append(bad, "the server does not run with python -I (user site-packages and PYTHON* variables reach it)")
	}
	if st.Dumpable != nil && *st.Dumpable {
		bad = append(bad, "the server process is dumpable (the user's processes can attach to it)")
	}
	if len(bad) > 0 {
		return "", fmt.Errorf("%s: %s", url, strings.Join(bad, "; "))
	}
	return url + ": notebooks-only, lockdown checked before and after the config, isolated, not dumpable", nil
}

// errNotInstalled: hubwarden_notebook is not installed for the server, so
// the notebook-extension check does not apply.
var errNotInstalled = errors.New("hubwarden_notebook is not installed")

// installedScript prints whether the server's Python (isolated, as the
// server runs) can import hubwarden_notebook.
const installedScript = `import importlib.util; print("installed" if importlib.util.find_spec("hubwarden_notebook") else "absent")`

// notebookAbsent decides a 404 from /api/hubwarden: a skip when the
// server's Python does not have the extension, a failure when it does (the
// extension is installed but the server does not run it).
func notebookAbsent(ctx context.Context, o Options, url string) (string, error) {
	py, err := python(ctx, o)
	if err != nil {
		return "", fmt.Errorf("%s answered 404 and the server's Python was not found to tell whether hubwarden_notebook is installed: %w", url, err)
	}
	out, err := o.Env.Output(ctx, py, "-I", "-c", installedScript)
	if err != nil {
		return "", fmt.Errorf("%s answered 404; asking %s whether hubwarden_notebook is installed: %w", url, py, err)
	}
	switch strings.TrimSpace(string(out)) {
	case "absent":
		return fmt.Sprintf("hubwarden_notebook is not installed for %s: the notebook side's protections are not in this pod (docs/notebook.md)", py), errNotInstalled
	case "installed":
		return "", fmt.Errorf("%s answered 404: hubwarden_notebook is installed for %s but the server does not run it (a config that turns it off, or a server not started with python3 -I -m hubwarden_notebook.singleuser)", url, py)
	}
	return "", fmt.Errorf("%s answered 404; %s printed %q asked whether hubwarden_notebook is installed", url, py, out)
}

func withDefaults(o Options) Options {
	if o.Target == "" {
		o.Target = DefaultTarget
	}
	if o.Metadata == nil {
		o.Metadata = DefaultMetadata
	}
	if o.ReadyURL == "" {
		o.ReadyURL = DefaultReadyURL
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Env == nil {
		e := SystemEnv()
		o.Env = &e
	}
	return o
}

// checkCaps fails when the capability (bit, name) is in the process's
// effective, permitted or ambient set. CAP_NET_RAW matters as much as
// CAP_NET_ADMIN: a packet socket's frames go to the device without passing
// any netfilter hook, past the egress filter and the tripwire
// (docs/adversary.md).
func checkCaps(status string, bit uint, name string) (string, error) {
	for _, set := range []string{"CapEff", "CapPrm", "CapAmb"} {
		v, ok := statusField(status, set)
		if !ok {
			if set == "CapAmb" { // older kernels
				continue
			}
			return "", fmt.Errorf("no %s in /proc/self/status", set)
		}
		caps, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			return "", fmt.Errorf("parsing %s %q: %w", set, v, err)
		}
		if caps&(1<<bit) != 0 {
			return "", fmt.Errorf("%s is in %s (%s)", name, set, v)
		}
	}
	return name + " in none of CapEff, CapPrm, CapAmb", nil
}

// checkNoNewPrivs passes when the process runs with no_new_privs, which its
// children inherit and cannot drop: then no setuid program (sudo) and no
// file capability can make a process of this container root, or give it
// the CAP_NET_RAW that Kubernetes grants root by default. Kubernetes sets
// it for allowPrivilegeEscalation: false (z2jh's
// singleuser.allowPrivilegeEscalation, false by default).
func checkNoNewPrivs(status string) (string, error) {
	v, ok := statusField(status, "NoNewPrivs")
	switch {
	case !ok:
		return "", errors.New("no NoNewPrivs in /proc/self/status (Linux 4.10 shows it)")
	case v != "1":
		return "", fmt.Errorf("NoNewPrivs is %s: a setuid program (sudo) or a file capability can make a process of this container root, "+
			"with CAP_NET_RAW, whose packet sockets pass no netfilter hook; run the notebook container with allowPrivilegeEscalation: false "+
			"(z2jh: singleuser.allowPrivilegeEscalation, false by default)", v)
	}
	return "NoNewPrivs 1: no setuid program or file capability raises a process of this container", nil
}

func statusField(status, key string) (string, bool) {
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && k == key {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// python finds the interpreter that runs the Jupyter server.
func python(ctx context.Context, o Options) (string, error) {
	if o.Python != "" {
		return o.Python, nil
	}
	e := o.Env
	if j, err := jupyterPath(o); err == nil {
		if b, err := e.ReadFile(j); err == nil {
			first, _, _ := strings.Cut(string(b), "\n")
			if interp, ok := strings.CutPrefix(first, "#!"); ok {
				fs := strings.Fields(interp)
				if len(fs) == 1 && filepath.IsAbs(fs[0]) {
					return fs[0], nil
				}
				if len(fs) == 2 && filepath.Base(fs[0]) == "env" {
					return e.LookPath(fs[1])
				}
			}
		}
	}
	p, err := e.LookPath("python3")
	if err != nil {
		return "", fmt.Errorf("finding the server's python (no jupyter script, no python3 on PATH; set the python option): %w", err)
	}
	return p, nil
}

func jupyterPath(o Options) (string, error) {
	if o.Jupyter != "" {
		return o.Jupyter, nil
	}
	return o.Env.LookPath("jupyter")
}

// pythonPathsScript prints the interpreter's prefix, its scripts directory
// and its library directories, one per line.
const pythonPathsScript = `import sys, sysconfig
p = sysconfig.get_paths()
print(sys.prefix)
for k in ("scripts", "purelib", "platlib", "stdlib"):
    print(p.get(k, ""))`

func pythonReadonly(ctx context.Context, o Options) (string, error) {
	py, err := python(ctx, o)
	if err != nil {
		return "", err
	}
	out, err := o.Env.Output(ctx, py, "-I", "-c", pythonPathsScript)
	if err != nil {
		return "", fmt.Errorf("asking %s for its paths: %w", py, err)
	}
	var dirs []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !slices.Contains(dirs, l) {
			dirs = append(dirs, l)
		}
	}
	if len(dirs) == 0 {
		return "", fmt.Errorf("%s printed no paths", py)
	}
	if err := notWritable(o.Env, dirs); err != nil {
		return "", fmt.Errorf("python %s: %w", py, err)
	}
	return fmt.Sprintf("%s: %s not writable", py, strings.Join(dirs, ", ")), nil
}

func jupyterReadonly(ctx context.Context, o Options) (string, error) {
	// The jupyter command, or, where only the library is installed (Debian's
	// python3-jupyter-core has no command), the server's Python with -m.
	argv := []string{"", "--paths", "--json"}
	j, err := jupyterPath(o)
	if err != nil {
		py, perr := python(ctx, o)
		if perr != nil {
			return "", fmt.Errorf("finding jupyter on PATH (set the jupyter option): %w; and no python: %w", err, perr)
		}
		j, argv = py, []string{"", "-m", "jupyter", "--paths", "--json"}
	}
	out, err := o.Env.Output(ctx, j, argv[1:]...)
	if err != nil {
		return "", fmt.Errorf("running %s %s: %w", j, strings.Join(argv[1:], " "), err)
	}
	var paths struct {
		Config []string `json:"config"`
		Data   []string `json:"data"`
	}
	if err := json.Unmarshal(out, &paths); err != nil {
		return "", fmt.Errorf("parsing %s --paths --json: %w", j, err)
	}
	var dirs []string
	for _, d := range append(paths.Config, paths.Data...) {
		if !inHome(d, o.Env.Home) && !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	if len(dirs) == 0 {
		return "", errors.New("jupyter listed no config or data path outside the home directory")
	}
	if err := notWritable(o.Env, dirs); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d paths outside %s not writable", len(dirs), o.Env.Home), nil
}

func inHome(path, home string) bool {
	if home == "" || home == "/" {
		return false
	}
	rel, err := filepath.Rel(home, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// notWritable returns an error naming every directory the user can write.
// A directory that does not exist counts by its nearest existing ancestor:
// if the user could create it, they could plant files in it.
func notWritable(e *Env, dirs []string) error {
	var writable []string
	for _, d := range dirs {
		target := d
		for {
			err := e.TryWrite(target)
			if err == nil {
				if target == d {
					writable = append(writable, d)
				} else {
					writable = append(writable, fmt.Sprintf("%s (missing; %s is writable)", d, target))
				}
				break
			}
			if !errors.Is(err, os.ErrNotExist) {
				break // permission denied, read-only file system: good
			}
			parent := filepath.Dir(target)
			if parent == target {
				break
			}
			target = parent
		}
	}
	if len(writable) > 0 {
		return fmt.Errorf("writable: %s", strings.Join(writable, ", "))
	}
	return nil
}

// SystemEnv returns the real world: the process's uid and /proc, real
// sockets, commands, files and HTTP.
func SystemEnv() Env {
	home, _ := os.UserHomeDir()
	var d net.Dialer
	client := &http.Client{
		// The health endpoint is local; never follow a redirect elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     &http.Transport{Proxy: nil},
	}
	return Env{
		Geteuid:      os.Geteuid,
		ReadFile:     os.ReadFile,
		KernelProbes: kernelProbes,
		Dial:         d.DialContext,
		Output: func(ctx context.Context, name string, args ...string) ([]byte, error) {
			return exec.CommandContext(ctx, name, args...).Output()
		},
		LookPath: exec.LookPath,
		TryWrite: tryWrite,
		GetBody: func(ctx context.Context, url, token string) (int, []byte, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return 0, nil, err
			}
			if token != "" {
				req.Header.Set("Authorization", "token "+token)
			}
			resp, err := client.Do(req)
			if err != nil {
				return 0, nil, err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			return resp.StatusCode, body, err
		},
		Getenv: os.Getenv,
		Get: func(ctx context.Context, url string) (int, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return 0, err
			}
			resp, err := client.Do(req)
			if err != nil {
				return 0, err
			}
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			return resp.StatusCode, nil
		},
		Home: home,
	}
}

// tryWrite creates and removes a temporary file in dir.
func tryWrite(dir string) error {
	if fi, err := os.Stat(dir); err != nil {
		return err
	} else if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory: %w", dir, os.ErrNotExist)
	}
	f, err := os.CreateTemp(dir, ".hubwarden-verify-*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}
