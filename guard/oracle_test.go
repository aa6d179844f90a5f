package guard

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// singleuserPython is the Python of the singleuser environment that make
// setup installs (scripts/python-env.sh); HUBWARDEN_VENV_ROOT moves it.
func singleuserPython(tb testing.TB) string {
	tb.Helper()
	root := os.Getenv("HUBWARDEN_VENV_ROOT")
	if root == "" {
		root = "/opt/hubwarden/venv"
	}
	py := filepath.Join(root, "singleuser", "bin", "python")
	if _, err := os.Stat(py); err != nil {
		tb.Skipf("skipping: %s not found (make setup installs the singleuser environment)", py)
	}
	return py
}

// readDump reads a routing table dumped by testdata/tornado_oracle.py --dump.
func readDump(t *testing.T, name string) (base string, routes []route) {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l struct {
			BaseURL string `json:"base_url"`
			Re      string `json:"re"`
			Handler string `json:"handler"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		if l.BaseURL != "" {
			base = l.BaseURL
			continue
		}
		routes = append(routes, route{pattern: l.Re, handler: l.Handler})
	}
	return base, routes
}

// TestRouteTableMatchesDump checks routeTable against the tables dumped
// from real servers (testdata/tornado_oracle.py --dump a.b) of both
// configurations: the same patterns, handlers and order, except the routes
// outside the base URL (refused before routing) and the copies of
// JupyterLab's routes Notebook 7 registers after JupyterLab's own (never
// reached).
//
// routes-jupyter-server-2.19.jsonl: the singleuser environment of make
// setup (requirements/singleuser.txt). routes-notebook-7.5.jsonl: the same
// lock plus notebook 7.5.7 (pip install -r requirements/singleuser.txt
// 'notebook>=7.5,<7.6' into a scratch venv).
func TestRouteTableMatchesDump(t *testing.T) {
	for _, tc := range []struct{ file, skip string }{
		{"testdata/routes-jupyter-server-2.19.jsonl", onlyNotebook7},
		{"testdata/routes-notebook-7.5.jsonl", onlyClassic},
	} {
		t.Run(tc.file, func(t *testing.T) {
			base, dumped := readDump(t, tc.file)
			if base != "/user/a.b/" {
				t.Fatalf("dump base URL %q", base)
			}
			var mine []route
			for _, r := range routeTable {
				if r.only != tc.skip {
					mine = append(mine, r)
				}
			}
			i := 0
			reached := map[string]bool{}
			for _, d := range dumped {
				var rel string
				switch {
				case d.pattern == base+"?$":
					rel = "" // "<base>/?": the guard routes the base without its slash to it
				case strings.HasPrefix(d.pattern, base):
					rel = strings.TrimSuffix(d.pattern[len(base):], "$")
				case strings.HasPrefix(d.pattern, pyEscape(base)):
					rel = strings.TrimSuffix(d.pattern[len(pyEscape(base)):], "$")
				default:
					t.Logf("outside the base URL, refused before routing: %s (%s)", d.pattern, d.handler)
					continue
				}
				if reached[rel+" "+d.handler] {
					t.Logf("shadowed by the same route before it: %s (%s)", rel, d.handler)
					continue
				}
				reached[rel+" "+d.handler] = true
				if i >= len(mine) {
					t.Fatalf("the dump has more routes than routeTable: %s", d.pattern)
				}
				if mine[i].pattern != rel || mine[i].handler != d.handler {
					t.Errorf("route %d: routeTable has %q %s, the server %q %s", i, mine[i].pattern, mine[i].handler, rel, d.handler)
				}
				i++
			}
			if i != len(mine) {
				t.Errorf("routeTable has %d routes under the base URL for this configuration, the server %d", len(mine), i)
			}
		})
	}
}

// oracleAnswer is one line of tornado_oracle.py's output.
type oracleAnswer struct {
	Target  string             `json:"target"`
	Error   string             `json:"error"`
	Handler *string            `json:"handler"`
	Re      *string            `json:"re"`
	Args    map[string]string  `json:"args"`
	Query   map[string]*string `json:"query"`
}

// askTornado routes targets through a real jupyterhub-singleuser server
// application (testdata/tornado_oracle.py) and returns its answers and the
// base URL JupyterHub gives the user's server.
func askTornado(t *testing.T, py, user, server string, targets []string) (string, []oracleAnswer) {
	t.Helper()
	var in bytes.Buffer
	enc := json.NewEncoder(&in)
	for _, tg := range targets {
		if err := enc.Encode(map[string]string{"target": tg}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := []string{"testdata/tornado_oracle.py", user}
	if server != "" {
		args = append(args, server)
	}
	cmd := exec.CommandContext(ctx, py, args...)
	cmd.Stdin = &in
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tornado_oracle.py: %v\n%s", err, tail(stderr.String(), 3000))
	}
	dec := json.NewDecoder(&out)
	var head struct {
		BaseURL string `json:"base_url"`
	}
	if err := dec.Decode(&head); err != nil {
		t.Fatal(err)
	}
	var answers []oracleAnswer
	for dec.More() {
		var a oracleAnswer
		if err := dec.Decode(&a); err != nil {
			t.Fatal(err)
		}
		answers = append(answers, a)
	}
	if len(answers) != len(targets) {
		t.Fatalf("%d answers for %d targets", len(answers), len(targets))
	}
	return head.BaseURL, answers
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// routingCorpus returns request targets for the differential test: every
// route's typical path, the adversarial forms of the policy table, and
// random paths over the characters that matter to routing (seeded: the
// same corpus every run).
func routingCorpus(base string) []string {
	rests := []string{
		"", "lab", "lab/", "lab/tree/a.ipynb", "lab/workspaces/auto-x/tree/a.ipynb", "doc/tree/a.ipynb", "lab/foo",
		"lab/api/settings", "lab/api/settings/", "lab/api/settings/@jupyterlab/notebook-extension:tracker",
		"lab/api/workspaces", "lab/api/workspaces/default", "lab/api/translations/en", "lab/api/themes/x/index.css",
		"lab/api/listings/@jupyterlab/extensionmanager-extension/listings.json", "lab/api/licenses/", "lab/api/build",
		"lab/api/extensions", "lab/api/plugins", "lab/api/news", "lab/api/update", "lab/extensions/a/static/remoteEntry.js",
		"static/lab/main.js", "static/nbclassic/x.js", "static/base/x.css", "static/notebook/x.js", "static/", "static",
		"tree", "tree/", "tree/a", "tree/a/b.ipynb", "treex", "notebooks/a.ipynb", "notebooks", "notebooksx", "edit/a.py",
		"view/a.html", "view", "views/a", "files/a.csv", "files/", "files", "filesx/a", "nbconvert/html/a.ipynb",
		"nbconvert/html", "nbconvert/", "nbconvert/h-t/a", "api/nbconvert", "consoles/a",
		"api", "api/", "api/status", "api/me", "api/spec.yaml", "api/resolvePath", "api/config/notebook", "api/config/a-b",
		"api/contents", "api/contents/", "api/contents/a.ipynb", "api/contents/dir/a.ipynb", "api/contents/a/checkpoints",
		"api/contents/a/checkpoints/abc-1", "api/contents/a/trust", "api/contents/checkpoints", "api/contentsx",
		"api/notebooks/a.ipynb", "api/notebooks", "api/kernels", "api/kernels/", "api/kernels/1234-a-b-c-d",
		"api/kernels/1234-a-b-c-d/channels", "api/kernels/1234-a-b-c-d/restart", "api/kernels/1234-a-b-c/channels",
		"api/kernelspecs", "api/kernelspecs/python3", "kernelspecs/python3/logo-64x64.png", "kernelspecs/python3/",
		"kernelspecs/py%41/a/b", "api/sessions", "api/sessions/1-2-3-4-5", "api/terminals", "api/terminals/1",
		"terminals/1", "terminals/websocket/1", "terminals/websocket/a-b", "api/events", "api/events/subscribe",
		"lsp/status", "lsp/ws/pylsp", "git-pull", "git-pull/api", "git-sync", "interact", "git-pull/static/x.js",
		"logout", "oauth_callback", "metrics", "robots.txt", "favicon.ico", "custom/custom.css", "nbextensions/a.js",
		"api/shutdown", "api/security/csp-report", "proxy/8050/", "server-proxy/servers-info", "rstudio/",
		"%66iles/a", "FILES/a", "Files/a", "api/contents/a%2Fb", "api/contents/a%252Fb", "files/a%20b.csv",
		"api/contents/%2e%2e/x", "lab/tree/a%23b", "kernelspecs/python%33/logo-64x64.png", "tree%2Fa",
	}
	queries := []string{"", "?", "?content=0", "?type=file&content=1", "?type=notebook&type=file", "?type=file&type=notebook",
		"?content=0&content=1", "?content=%30", "?typ%65=file", "?type=+notebook+", "?type=notebook%00", "?content=1;type=file",
		"?content=0&hash=1&1712345678901", "?format=base64&type=file", "?type=note%2Bbook", "?type=%e2%80%83notebook",
		"?content=%ff", "?type", "?=x&&type=directory"}
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for i, r := range rests {
		add(base + r)
		add(base + r + queries[i%len(queries)])
		add(base + r + "/")
	}
	for _, q := range queries {
		add(base + "api/contents/a.ipynb" + q)
		add(base + "api/contents/data.csv" + q)
	}
	for _, p := range []string{"/", "/user/", "/robots.txt", "/hub/api", base[:len(base)-1], base + "/", strings.ToUpper(base)} {
		add(p)
	}
	// Random paths: segments of route words and characters that matter to
	// tornado's patterns and to decoding.
	words := []string{"lab", "api", "contents", "files", "tree", "static", "kernels", "kernelspecs", "nbconvert", "view",
		"checkpoints", "trust", "channels", "settings", "workspaces", "terminals", "websocket", "extensions", "lsp", "ws",
		"events", "subscribe", "custom", "nbextensions", "1234-a-b-c-d", "logo-64x64.png", "a.ipynb", "x"}
	chars := "ab.-_%2F%2f%25%41%2e/~@:;=+!$*'()"
	rng := rand.New(rand.NewPCG(18, 2026))
	for range 3000 {
		var b strings.Builder
		b.WriteString(base)
		for n := rng.IntN(5); n >= 0; n-- {
			if rng.IntN(3) == 0 {
				for k := rng.IntN(4); k >= 0; k-- {
					j := rng.IntN(len(chars))
					b.WriteString(chars[j : j+1])
				}
			} else {
				b.WriteString(words[rng.IntN(len(words))])
			}
			if rng.IntN(4) != 0 {
				b.WriteByte('/')
			}
		}
		if rng.IntN(5) == 0 {
			b.WriteString(queries[rng.IntN(len(queries))])
		}
		add(b.String())
	}
	return out
}

// TestRoutingMatchesTornado is the differential test of the router: for
// every target of the corpus that the guard does not refuse before routing,
// the guard's router must pick the handler tornado picks, with the same
// decoded arguments, and read the contents query arguments as tornado
// does. Targets the guard refuses (malformed, ambiguous, outside the base
// URL) are checked to be refused. It runs a real jupyterhub-singleuser
// application (the singleuser environment of make setup) for user names
// that need escaping and for a named server.
func TestRoutingMatchesTornado(t *testing.T) {
	// HUBWARDEN_GUARD_ORACLE_PYTHON names another environment to ask (one
	// with Notebook 7: HUBWARDEN_GUARD_ORACLE_CONFIG=notebook7).
	py, config := singleuserPython(t), onlyClassic
	if p := os.Getenv("HUBWARDEN_GUARD_ORACLE_PYTHON"); p != "" {
		py, config = p, os.Getenv("HUBWARDEN_GUARD_ORACLE_CONFIG")
	}
	for _, u := range []struct{ user, server string }{
		{"a.b", ""}, {"jane doe@example.org", "gpu 1"}, {"50%off~ü", ""},
	} {
		t.Run(u.user, func(t *testing.T) {
			base, err := DeriveBaseURL(u.user, u.server)
			if err != nil {
				t.Fatal(err)
			}
			targets := routingCorpus(base)
			hubBase, answers := askTornado(t, py, u.user, u.server, targets)
			if hubBase != base {
				t.Fatalf("EscapeBaseURL gives %q, JupyterHub %q", base, hubBase)
			}
			p := NewPolicy(PolicyConfig{BaseURL: base, MaxNotebook: DefaultMaxNotebook, Terminals: true})
			var compared, refused, other int
			for _, a := range answers {
				d := p.Decide(Request{Method: "GET", Target: a.Target, Proto: "HTTP/1.1", Host: "pod:8888"})
				tg, ref := ParseTarget(a.Target)
				inside := ref == nil && (strings.HasPrefix(tg.Path, base) || tg.Path == base[:len(base)-1])
				if !inside {
					refused++
					if d.Allow {
						t.Errorf("%s: allowed (%s), want refused before routing", a.Target, d.Rule)
					}
					continue
				}
				if a.Error != "" {
					t.Errorf("%s: tornado refuses it (%s), the guard does not", a.Target, a.Error)
					continue
				}
				compared++
				rest := strings.TrimPrefix(tg.Path, base)
				if tg.Path == base[:len(base)-1] {
					rest = ""
				}
				m, ok := p.Router().Route(rest)
				want := "<404>"
				if a.Handler != nil && *a.Handler != "jupyter_server.base.handlers.Template404" {
					want = *a.Handler
				}
				got := m.Handler
				if !ok {
					got = "<404>"
				}
				if ok && m.only != "" && m.only != config {
					// The guard took a route of the other configuration.
					// Tornado either 404s the request (the guard lets the
					// 404 through as the page it would be) or takes a route
					// of this one, which must decide the request alike.
					other++
					if want != "<404>" {
						tm := realMatch(t, base, rest, a)
						req := Request{Method: "GET", Target: a.Target, Proto: "HTTP/1.1", Host: "pod:8888"}
						gd, rd := p.decideRoute(req, tg, m), p.decideRoute(req, tg, tm)
						if gd.Allow != rd.Allow || gd.Check != rd.Check || gd.Cap != rd.Cap {
							t.Errorf("%s: the guard's route (%s) decides %+v, tornado's (%s) would decide %+v", a.Target, m.Handler, gd, tm.Handler, rd)
						}
					}
					continue
				}
				if got != want {
					t.Errorf("%s: guard routes to %s, tornado to %s", a.Target, got, want)
					continue
				}
				if ok {
					wantArgs := map[string]string{}
					for k, v := range a.Args {
						b, err := hex.DecodeString(v)
						if err != nil {
							t.Fatal(err)
						}
						wantArgs[k] = string(b)
					}
					if len(wantArgs) != len(m.Args) || !mapsEqual(wantArgs, m.Args) {
						t.Errorf("%s: guard args %q, tornado %q", a.Target, m.Args, wantArgs)
					}
				}
				q := ParseQuery(tg.Query)
				for _, name := range []string{"type", "format", "content", "hash"} {
					v, present, valid := q.Argument(name)
					var got string
					switch {
					case !present:
						got = "<absent>"
					case !valid:
						got = "!400"
					default:
						got = v
					}
					want := "<absent>"
					if w := a.Query[name]; w != nil {
						want = *w
					}
					if got != want {
						t.Errorf("%s: query %s: guard %q, tornado %q", a.Target, name, got, want)
					}
				}
			}
			t.Logf("base %s: %d targets routed alike (%d of them to a route of the other configuration that tornado 404s or decides alike), %d refused before routing", base, compared, other, refused)
			if compared < 1000 {
				t.Errorf("only %d targets compared", compared)
			}
		})
	}
}

// realMatch is the Match of the route tornado picked (its pattern and
// handler, from the oracle), found in routeTable.
func realMatch(t *testing.T, base, rest string, a oracleAnswer) Match {
	t.Helper()
	if a.Re == nil || a.Handler == nil {
		t.Fatalf("%s: the oracle names no route", a.Target)
	}
	rel := strings.TrimSuffix(*a.Re, "$")
	rel = strings.TrimPrefix(strings.TrimPrefix(rel, base), pyEscape(base))
	for _, rt := range routeTable {
		if rt.pattern == rel && rt.handler == *a.Handler {
			r := &Router{base: base, routes: []compiledRoute{{route: rt, re: regexp.MustCompile(`^(?:` + rt.pattern + `)$`)}}}
			m, ok := r.Route(rest)
			if !ok {
				t.Fatalf("%s: tornado's route %s does not match it in Go", a.Target, rel)
			}
			return m
		}
	}
	t.Fatalf("%s: tornado's route %s (%s) is not in routeTable", a.Target, rel, *a.Handler)
	return Match{}
}

// pyEscape is Python 3.11's re.escape (jupyter-server escapes the base URL
// of its static route with it).
func pyEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune("()[]{}?*+-|^$\\.&~# \t\n\r\v\f", r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func mapsEqual(a, b map[string]string) bool {
	ka := make([]string, 0, len(a))
	for k := range a {
		ka = append(ka, k)
	}
	slices.Sort(ka)
	for _, k := range ka {
		if bv, ok := b[k]; !ok || bv != a[k] {
			return false
		}
	}
	return true
}
