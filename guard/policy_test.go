package guard

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
)

// The base URL of the tables: JupyterHub's for a user named "jane doe".
const tableBase = "/user/jane%20doe/"

func tablePolicy(t *testing.T, terminals bool, proxyAllow ...string) *Policy {
	t.Helper()
	return NewPolicy(PolicyConfig{BaseURL: tableBase, MaxNotebook: DefaultMaxNotebook, Terminals: terminals, ProxyAllow: proxyAllow})
}

// TestPolicyCapturedTraffic decides every request JupyterLab 4.5.8 and
// nbclassic 1.3.3 sent while a user worked (testdata/capture: open lab, open
// and run a notebook with plots, save, create, rename, upload, copy,
// checkpoints, a terminal, the settings editor, open a CSV, a script,
// Markdown and an image, File > Download of a CSV and a notebook, Export as
// HTML, a CSV renamed to .ipynb, delete, restart, shut down, nbclassic's
// tree and notebook pages, doc mode). What the guard must refuse in it,
// written down from the issue, not from the policy: /files/ (downloads),
// /nbconvert/ (export), and file contents of anything but notebooks
// (type=file with content). Everything else must pass, and every contents
// read must have its answer checked.
func TestPolicyCapturedTraffic(t *testing.T) {
	f, err := os.Open("testdata/jupyterlab-4.5.8-traffic.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := tablePolicy(t, true)
	contentsFile := regexp.MustCompile(`^` + regexp.QuoteMeta(tableBase) + `api/contents/[^?]*\?(.*&)?type=file&`)
	counts := map[string]int{}
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		var r struct {
			Step, Method, Target string
			Websocket, Range     bool
			Status               *int
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		n++
		req := Request{Method: r.Method, Target: r.Target, Proto: "HTTP/1.1", Host: "127.0.0.1:8888", Range: r.Range}
		if r.Websocket {
			req.Upgrade, req.ConnectionUpgrade = "websocket", true
		}
		d := p.Decide(req)
		counts[d.Rule]++
		var want string
		switch {
		case strings.HasPrefix(r.Target, tableBase+"files/"):
			want = "deny-files"
		case strings.HasPrefix(r.Target, tableBase+"nbconvert/"):
			want = "deny-nbconvert"
		case contentsFile.MatchString(r.Target):
			want = "deny-contents-file"
		}
		switch {
		case want != "" && d.Rule != want:
			t.Errorf("%s: %s %s: rule %s, want %s", r.Step, r.Method, r.Target, d.Rule, want)
		case want == "" && !d.Allow:
			t.Errorf("%s: %s %s: denied by %s (%s), want allowed", r.Step, r.Method, r.Target, d.Rule, d.Reason)
		case d.Family == FamilyContents && strings.Contains(d.Rule, "contents-read") && d.Check != CheckContents:
			t.Errorf("%s: %s %s: contents read without the answer check", r.Step, r.Method, r.Target)
		}
	}
	if n < 500 {
		t.Fatalf("only %d captured requests", n)
	}
	t.Logf("%d captured requests by rule: %v", n, counts)
}

// policyTable is the adversarial table: one request per line,
//
//	METHOD TARGET [flags] => rule
//
// flags: ws (a websocket upgrade: Upgrade: websocket, Connection: upgrade),
// up=VALUE (an Upgrade header alone), conn (Connection: upgrade alone),
// range, nohost, host=VALUE, proto=VALUE, noterm (terminals off),
// allow=PREFIX (HUBWARDEN_GUARD_PROXY_ALLOW). The base URL is "~/" for
// /user/jane%20doe/. Lines starting with # are comments.
const policyTable = `
# --- downloads: /files/, /view/, /nbconvert/ in every method and form
GET ~/files/data.csv => deny-files
GET ~/files/data.csv?download=1 => deny-files
GET ~/files/data.csv?_xsrf=x&download=1 => deny-files
GET ~/files/sub/deep/data.csv => deny-files
GET ~/files/plots.ipynb => deny-files
GET ~/files/ => deny-files
GET ~/files/data%2ecsv => deny-files
GET ~/files/d%61ta.csv => deny-files
GET ~/files/data.csv%20 => deny-files
GET ~/files/%E2%82%AC.csv => deny-files
HEAD ~/files/data.csv => deny-files
POST ~/files/data.csv => deny-files
PUT ~/files/data.csv => deny-files
DELETE ~/files/data.csv => deny-files
PATCH ~/files/data.csv => deny-files
OPTIONS ~/files/data.csv => deny-files
GET ~/files/data.csv range => deny-files
GET ~/files/data.csv host=evil.example => deny-files
GET ~/files/data.csv proto=HTTP/1.0 => deny-files
GET ~/files/data.csv ws => deny-upgrade
GET ~/files/data.csv up=websocket => deny-upgrade
GET ~/files/data.csv up=h2c => deny-upgrade
GET ~/view/data.csv => deny-view
GET ~/view/sub/report.html => deny-view
GET ~/view => deny-view
GET ~/view/ => deny-view
HEAD ~/view/data.csv => deny-view
GET ~/nbconvert/html/plots.ipynb => deny-nbconvert
GET ~/nbconvert/html/plots.ipynb?download=true => deny-nbconvert
GET ~/nbconvert/pdf/plots.ipynb?download=true => deny-nbconvert
GET ~/nbconvert/script/sub/plots.ipynb => deny-nbconvert
GET ~/nbconvert/markdown/data.csv => deny-nbconvert
POST ~/nbconvert/html => deny-nbconvert
POST ~/nbconvert/latex => deny-nbconvert
GET ~/nbconvert/html => deny-nbconvert
GET ~/nbconvert/html/ => deny-nbconvert
HEAD ~/nbconvert/html/plots.ipynb => deny-nbconvert
GET ~/nbclassic/view/data.csv => deny-view
# --- the same routes percent-encoded, cased, dotted, doubled, parametrised
GET ~/%66iles/data.csv => deny-unknown-route
GET ~/fil%65s/data.csv => deny-unknown-route
GET ~/%2566iles/data.csv => deny-path-double-encoding
GET ~/files%2Fdata.csv => deny-path-encoded-separator
GET ~/files%2fdata.csv => deny-path-encoded-separator
GET ~/files%252Fdata.csv => deny-path-double-encoding
GET ~/files/sub%2Fdata.csv => deny-path-encoded-separator
GET ~/files/sub%5Cdata.csv => deny-path-encoded-separator
GET ~/FILES/data.csv => deny-unknown-route
GET ~/Files/data.csv => deny-unknown-route
GET ~/files//data.csv => deny-path-empty-segment
GET ~//files/data.csv => deny-path-empty-segment
GET /user//jane%20doe/files/data.csv => deny-path-empty-segment
GET ~/./files/data.csv => deny-path-dot-segment
GET ~/files/./data.csv => deny-path-dot-segment
GET ~/lab/../files/data.csv => deny-path-dot-segment
GET ~/lab/%2e%2e/files/data.csv => deny-path-dot-segment
GET ~/lab/%2E%2E/files/data.csv => deny-path-dot-segment
GET ~/lab/.%2e/files/data.csv => deny-path-dot-segment
GET ~/lab/%252e%252e/files/data.csv => deny-path-double-encoding
GET ~/files/data.csv;type=notebook => deny-path-params
GET ~/files;/data.csv => deny-path-params
GET ~/api/contents/data.csv;x => deny-path-params
GET ~/files/data.csv%3Bx => deny-files
GET ~/files/data.csv%00 => deny-path-encoded-separator
GET ~/files/data.csv%0a => deny-path-encoded-separator
GET ~/files/data.csv%7f => deny-path-encoded-separator
GET ~/files/data.csv%zz => deny-path-escape
GET ~/files/data.csv% => deny-path-escape
GET ~/files/data.csv%4 => deny-path-escape
GET ~/files/data.csv#frag => deny-target-bytes
GET ~/files\data.csv => deny-target-bytes
GET ~/files/d\u00e9.csv => deny-target-bytes
GET http://127.0.0.1:8888/user/jane%20doe/files/data.csv => deny-target-form
GET http://127.0.0.1:8888/user/jane%20doe/lab => deny-target-form
GET //127.0.0.1:8888/user/jane%20doe/files/data.csv => deny-path-empty-segment
OPTIONS * => deny-target-form
CONNECT 127.0.0.1:8888 => deny-target-form
GET ~/lab?next=/files/data.csv => allow-lab-ui
GET ~/lab?x=%2e%2e%2ffiles => allow-lab-ui
# --- outside the base URL
GET / => deny-outside-base-url
GET /hub/api => deny-outside-base-url
GET /robots.txt => deny-outside-base-url
GET /favicon.ico => deny-outside-base-url
GET /user/ => deny-outside-base-url
GET /user/jane%20doeX/files/data.csv => deny-outside-base-url
GET /user/jane%20Doe/files/data.csv => deny-outside-base-url
GET /user/JANE%20DOE/lab => deny-outside-base-url
GET /user/jane+doe/lab => deny-outside-base-url
GET /user/jane%2520doe/lab => deny-path-double-encoding
GET /user/jane%20doe.files/x => deny-outside-base-url
GET /user/other/files/data.csv => deny-outside-base-url
GET /USER/jane%20doe/lab => deny-outside-base-url
GET /user/jane%20doe => allow-redirect
GET ~ => allow-redirect
GET ~?token=x => allow-redirect
# --- contents: metadata and notebooks pass (their answers are checked); file contents are refused
GET ~/api/contents => allow-contents-read
GET ~/api/contents/ => allow-contents-read
GET ~/api/contents?content=1&hash=0&1796519036249 => allow-contents-read
GET ~/api/contents/sub?content=1&hash=0 => allow-contents-read
GET ~/api/contents/plots.ipynb => allow-contents-read
GET ~/api/contents/plots.ipynb?type=notebook&content=1&hash=1&contentProviderId=undefined&1796519041654 => allow-contents-read
GET ~/api/contents/plots.ipynb?type=notebook&_=1796519036249 => allow-contents-read
GET ~/api/contents/data.csv => allow-contents-read
GET ~/api/contents/data.csv?format=base64 => allow-contents-read
GET ~/api/contents/data.csv?format=text => allow-contents-read
GET ~/api/contents/data.csv?type=directory => allow-contents-read
GET ~/api/contents/data.csv?type=notebook => allow-contents-read
GET ~/api/contents/data.csv?content=0 => allow-contents-metadata
GET ~/api/contents/data.csv?content=0&hash=1 => allow-contents-metadata
GET ~/api/contents/data.csv?type=file&content=0 => allow-contents-metadata
GET ~/api/contents/data.csv?type=file&content=%30 => allow-contents-metadata
GET ~/api/contents/data.csv?type=file&content=0%0B => allow-contents-metadata
GET ~/api/contents/data.csv?type=file&content=1&content=0 => allow-contents-metadata
GET ~/api/contents/data.csv?type=file => deny-contents-file
GET ~/api/contents/data.csv?type=file&content=1 => deny-contents-file
GET ~/api/contents/data.csv?type=file&format=base64&content=1 => deny-contents-file
GET ~/api/contents/data.csv?type=file&content=1&hash=1&format=text&contentProviderId=undefined&1796519427486 => deny-contents-file
GET ~/api/contents/image.png?type=file&content=1&hash=1&format=base64 => deny-contents-file
GET ~/api/contents/data.csv?type=file&content=0&content=1 => deny-contents-file
GET ~/api/contents/data.csv?type=file&content= => deny-contents-file
GET ~/api/contents/data.csv?type=FILE => deny-contents-file
GET ~/api/contents/data.csv?type=files => deny-contents-file
GET ~/api/contents/data.csv?type=fil%65 => deny-contents-file
GET ~/api/contents/data.csv?typ%65=file => deny-contents-file
GET ~/api/contents/data.csv?type=+file+ => deny-contents-file
GET ~/api/contents/data.csv?type=%20file%09 => deny-contents-file
GET ~/api/contents/data.csv?type=note%00book => deny-contents-file
GET ~/api/contents/data.csv?type=note+book => deny-contents-file
GET ~/api/contents/data.csv?type=notebook&type=file => deny-contents-file
GET ~/api/contents/data.csv?type=file&type=notebook => allow-contents-read
GET ~/api/contents/data.csv?type=+notebook+ => allow-contents-read
GET ~/api/contents/data.csv?type=%E2%80%83notebook => allow-contents-read
GET ~/api/contents/data.csv?type=%ff => deny-query-encoding
GET ~/api/contents/data.csv?content=%ff => deny-query-encoding
GET ~/api/contents/data.csv?type=file;content=0 => deny-contents-file
GET ~/api/contents/data.csv?type=file&&&content=0 => allow-contents-metadata
GET ~/api/contents/data.csv?=file&type => deny-contents-file
HEAD ~/api/contents/data.csv?type=file => deny-contents-file
HEAD ~/api/contents/plots.ipynb => allow-contents-read
GET ~/api/contents/plots.ipynb range => allow-contents-read
GET ~/api/contents/plots.ipynb ws => deny-upgrade
GET ~/api/contents/data.csv?type=file ws => deny-upgrade
GET ~/api/contents/%2e%2e/etc/passwd => deny-path-dot-segment
GET ~/api/contents/..%2fetc%2fpasswd => deny-path-encoded-separator
GET ~/api/contents/sub/../data.csv?type=notebook => deny-path-dot-segment
GET ~/api/contents//data.csv => deny-path-empty-segment
GET ~/api/contents/a%2Fb.ipynb => deny-path-encoded-separator
GET ~/api/contents/50%2525.ipynb => deny-path-double-encoding
GET ~/api/contents/My%20Notebook.ipynb => allow-contents-read
GET ~/api/contents/%C3%A9t%C3%A9.ipynb => allow-contents-read
GET ~/api/contents/100%25.ipynb => allow-contents-read
GET ~/API/contents/data.csv?type=file => deny-unknown-route
GET ~/api/Contents/data.csv?type=file => deny-unknown-route
GET ~/api/%63ontents/data.csv?type=file => deny-unknown-route
GET ~/api/contentsX/data.csv => deny-unknown-route
PUT ~/api/contents/plots.ipynb => allow-contents-write
PUT ~/api/contents/uploaded.txt => allow-contents-write
POST ~/api/contents => allow-contents-write
POST ~/api/contents/sub => allow-contents-write
PATCH ~/api/contents/Untitled.ipynb => allow-contents-write
DELETE ~/api/contents/renamed.ipynb => allow-contents-write
OPTIONS ~/api/contents/plots.ipynb => allow-contents-write
GET ~/api/contents/plots.ipynb/checkpoints => allow-checkpoints
POST ~/api/contents/plots.ipynb/checkpoints => allow-checkpoints
POST ~/api/contents/plots.ipynb/checkpoints/checkpoint => allow-checkpoints
DELETE ~/api/contents/plots.ipynb/checkpoints/checkpoint => allow-checkpoints
POST ~/api/contents/plots.ipynb/trust => allow-contents-trust
GET ~/api/notebooks/plots.ipynb => allow-redirect
GET ~/api/notebooks => allow-redirect
# --- kernelspec files: only the logos, kernel.js and kernel.css, whole
GET ~/kernelspecs/python3/logo-64x64.png => allow-kernelspec-logo
GET ~/kernelspecs/python3/logo-32x32.png => allow-kernelspec-logo
GET ~/kernelspecs/python3/logo-svg.svg => allow-kernelspec-logo
GET ~/kernelspecs/python3/kernel.js => allow-kernelspec-logo
GET ~/kernelspecs/python3/kernel.css => allow-kernelspec-logo
GET ~/kernelspecs/python%33/logo-64x64.png => allow-kernelspec-logo
GET ~/kernelspecs/my.kernel-1/logo-64x64.png => allow-kernelspec-logo
GET ~/kernelspecs/python3/kernel.json => deny-kernelspec-file
GET ~/kernelspecs/python3/data.csv => deny-kernelspec-file
GET ~/kernelspecs/python3/logo-64x64.csv => deny-kernelspec-file
GET ~/kernelspecs/python3/LOGO-64x64.png => deny-kernelspec-file
GET ~/kernelspecs/python3/sub/logo-64x64.png => deny-kernelspec-file
GET ~/kernelspecs/python3/ => deny-kernelspec-file
GET ~/kernelspecs/python3/logo-64x64.png range => deny-kernelspec-file
GET ~/kernelspecs/python3/logo-64x64.png%00.csv => deny-path-encoded-separator
GET ~/kernelspecs/python3/..%2Fkernel.json => deny-path-encoded-separator
GET ~/kernelspecs/../files/data.csv => deny-path-dot-segment
GET ~/api/kernelspecs => allow-kernelspecs
GET ~/api/kernelspecs?1796519035288 => allow-kernelspecs
GET ~/api/kernelspecs/python3 => allow-kernelspecs
# --- extension assets, themes, custom: asset types only, whole
GET ~/lab/extensions/jupyterlab_pygments/static/remoteEntry.5cbb9d2323598fbda535.js => allow-asset
GET ~/lab/extensions/jupyterlab_pygments/static/568.1e2faa2ba0bbe59c4780.js?v=1e2faa2ba0bbe59c4780 => allow-asset
GET ~/lab/extensions/x/static/style.css => allow-asset
GET ~/lab/extensions/x/static/font.woff2 => allow-asset
GET ~/lab/extensions/x/static/icon.SVG => allow-asset
GET ~/lab/extensions/x/package.json => allow-asset
GET ~/lab/extensions/x/static/data.csv => deny-asset-type
GET ~/lab/extensions/x/static/secret => deny-asset-type
GET ~/lab/extensions/x/static/ => deny-asset-type
GET ~/lab/extensions/x/static/a.js range => deny-asset-range
GET ~/lab/extensions/x/static/data.csv%3F.js => allow-asset
GET ~/lab/api/themes/@jupyterlab/theme-light-extension/index.css => allow-asset
GET ~/lab/api/themes/@jupyterlab/theme-light-extension/fonts/a.woff => allow-asset
GET ~/lab/api/themes/x/data.csv => deny-asset-type
GET ~/nbextensions/widgets/notebook/js/extension.js?v=20260101 => allow-asset
GET ~/nbextensions/x/data.parquet => deny-asset-type
GET ~/custom/custom.css => allow-asset
GET ~/custom/custom.js?v=1796519035288 => allow-asset
GET ~/custom/custom-preload.js?v=1 => allow-asset
GET ~/custom/notes.txt => deny-asset-type
# --- static files of the server's own packages
GET ~/static/lab/jlab_core.d51715b9a60d91a2e8b4.js?v=d51715b9a60d91a2e8b4 => allow-static
GET ~/static/lab/third-party-licenses.json => allow-static
GET ~/static/favicons/favicon.ico => allow-static
GET ~/static/nbclassic/notebook/js/main.min.js => allow-static
GET ~/static/notebook/main.js => allow-static
GET ~/static/base/images/favicon-notebook.ico => allow-static
GET ~/static/lab/main.js range => allow-static
GET ~/git-pull/static/dist/bundle.js => allow-static
GET ~/favicon.ico => allow-static
GET ~/robots.txt => allow-static
# --- the UI
GET ~/lab => allow-lab-ui
GET ~/lab?token=x => allow-lab-ui
GET ~/lab/ => deny-unknown-route
GET ~/lab/tree/plots.ipynb => allow-lab-ui
GET ~/lab/tree/sub/data.csv => allow-lab-ui
GET ~/lab/workspaces/auto-Q/tree/plots.ipynb => allow-lab-ui
GET ~/lab/workspaces/default => allow-lab-ui
GET ~/doc/tree/plots.ipynb => allow-lab-ui
GET ~/lab/nonexistent => deny-unknown-route
GET ~/lab/api/unknown-extension => deny-unknown-route
GET ~/tree => allow-classic-ui
GET ~/tree/ => allow-classic-ui
GET ~/tree/sub => allow-classic-ui
GET ~/tree/data.csv => allow-classic-ui
GET ~/notebooks/plots.ipynb => allow-classic-ui
GET ~/notebooks/data.csv => allow-classic-ui
GET ~/edit/script.py => allow-classic-ui
GET ~/consoles/console-1 => allow-classic-ui
GET ~/nbclassic => allow-redirect
GET ~/nbclassic/tree => allow-classic-ui
GET ~/nbclassic/notebooks/plots.ipynb => allow-classic-ui
POST ~/lab => allow-lab-ui
# --- kernels, sessions, events, LSP and their websockets
GET ~/api/kernels => allow-kernels
POST ~/api/kernels => allow-kernels
GET ~/api/kernels/7091b900-987a-47e2-9560-7a232c15a227 => allow-kernels
DELETE ~/api/kernels/7091b900-987a-47e2-9560-7a232c15a227 => allow-kernels
POST ~/api/kernels/7091b900-987a-47e2-9560-7a232c15a227/restart => allow-kernels
POST ~/api/kernels/7091b900-987a-47e2-9560-7a232c15a227/interrupt => allow-kernels
GET ~/api/kernels/7091b900-987a-47e2-9560-7a232c15a227/channels?session_id=ecf1d72a-ea0b-4235-8ccc-0a2cd5d7a6f7 ws => allow-kernel-websocket
GET ~/api/kernels/7091b900-987a-47e2-9560-7a232c15a227/channels?session_id=x&token=y ws => allow-kernel-websocket
GET ~/api/kernels/7091b900-987a-47e2-9560-7a232c15a227/channels => deny-websocket-form
GET ~/api/kernels/7091b900-987a-47e2-9560-7a232c15a227/channels up=websocket => deny-websocket-form
GET ~/api/kernels/7091b900-987a-47e2-9560-7a232c15a227/channels conn => deny-websocket-form
GET ~/api/kernels/7091b900-987a-47e2-9560-7a232c15a227/channels up=h2c conn => deny-websocket-form
POST ~/api/kernels/7091b900-987a-47e2-9560-7a232c15a227/channels ws => deny-websocket-form
GET ~/api/kernels/7091b900-987a-47e2-9560-7a232c15a227/channels ws proto=HTTP/1.0 => allow-kernel-websocket
GET ~/api/kernels/not-a-kernel/channels ws => deny-unknown-route
GET ~/api/sessions => allow-sessions
POST ~/api/sessions => allow-sessions
PATCH ~/api/sessions/46b54e28-cdef-4fd9-80e6-0e813296a4b0 => allow-sessions
DELETE ~/api/sessions/46b54e28-cdef-4fd9-80e6-0e813296a4b0 => allow-sessions
GET ~/api/events/subscribe ws => allow-events-websocket
GET ~/api/events/subscribe => deny-websocket-form
POST ~/api/events => allow-events
GET ~/lsp/status => allow-lsp
GET ~/lsp/ws/pylsp ws => allow-lsp-websocket
GET ~/lsp/ws/pylsp => deny-websocket-form
# --- terminals: on by default, off with HUBWARDEN_GUARD_TERMINALS=false
GET ~/api/terminals => allow-terminals
POST ~/api/terminals => allow-terminals
DELETE ~/api/terminals/1 => allow-terminals
GET ~/terminals/websocket/1 ws => allow-terminals
GET ~/terminals/1 => allow-terminals
GET ~/api/terminals noterm => deny-terminals
POST ~/api/terminals noterm => deny-terminals
GET ~/terminals/websocket/1 ws noterm => deny-terminals
GET ~/terminals/1 noterm => deny-terminals
GET ~/terminals/websocket/1 noterm => deny-websocket-form
GET ~/api/kernels noterm => allow-kernels
# --- JupyterLab's APIs
GET ~/lab/api/settings => allow-settings
GET ~/lab/api/settings?ids_only=true&1796519037550 => allow-settings
GET ~/lab/api/settings/@jupyterlab/notebook-extension:panel => allow-settings
PUT ~/lab/api/settings/@jupyterlab/notebook-extension:panel => allow-settings
GET ~/lab/api/workspaces => allow-workspaces
GET ~/lab/api/workspaces/default => allow-workspaces
PUT ~/lab/api/workspaces/default => allow-workspaces
DELETE ~/lab/api/workspaces/auto-Q => allow-workspaces
GET ~/lab/api/translations => allow-lab-api
GET ~/lab/api/translations/default => allow-lab-api
GET ~/lab/api/build => allow-lab-api
GET ~/lab/api/licenses/?format=json => allow-lab-api
GET ~/lab/api/listings/@jupyterlab/extensionmanager-extension/listings.json => allow-lab-api
GET ~/lab/api/extensions?query=x => allow-lab-api
GET ~/lab/api/plugins => allow-lab-api
GET ~/lab/api/news => allow-lab-api
GET ~/lab/api/update => allow-lab-api
GET ~/api/config/notebook => allow-config
PATCH ~/api/config/notebook => allow-config
GET ~/api/config/jupyterlabapputilsextensionannouncements?1796519035661 => allow-config
# --- the server's small APIs, the hub's pages, nbgitpuller
GET ~/api => allow-api
GET ~/api/status => allow-api
GET ~/api/me => allow-api
GET ~/api/spec.yaml => allow-api
GET ~/api/resolvePath?path=x => allow-api
GET ~/api/nbconvert => allow-api
POST ~/api/security/csp-report => allow-api
POST ~/api/shutdown => allow-api
GET ~/metrics => allow-api
GET ~/logout => allow-hub-auth
GET ~/oauth_callback?code=abc&state=def => allow-hub-auth
GET ~/git-pull?repo=https://example.org/r.git => allow-gitpuller
GET ~/git-pull/api?repo=https://example.org/r.git => allow-gitpuller
GET ~/git-sync => allow-redirect
GET ~/interact => allow-redirect
GET ~/whatever/ => deny-unknown-route
GET ~/rstudio/ => deny-unknown-route
GET ~/api/kernels/ => allow-redirect
GET ~/api/sessions/ => allow-redirect
GET ~/lab/api/plugins/ => deny-unknown-route
GET ~/api/metrics/v1 => deny-unknown-route
GET ~/api/collaboration/room/x ws => deny-unknown-route
# --- jupyter-server-proxy and unknown extensions: refused unless the admin allows a prefix
GET ~/proxy/8050/ => deny-server-proxy
GET ~/proxy/8050/data.csv => deny-server-proxy
GET ~/proxy/localhost:8050/x => deny-server-proxy
GET ~/proxy/absolute/8050/x => deny-server-proxy
GET ~/server-proxy/servers-info => deny-server-proxy
GET ~/rstudio => deny-unknown-route
GET ~/rstudio/x => deny-unknown-route
GET ~/vscode-proxy/x => deny-unknown-route
GET ~/proxy/8050/x allow=proxy/8050/ => allow-proxy-prefix
GET ~/proxy/8050 allow=proxy/8050/ => allow-proxy-prefix
GET ~/proxy/8050/ ws allow=proxy/8050/ => allow-proxy-prefix
GET ~/proxy/80500/x allow=proxy/8050/ => deny-server-proxy
GET ~/proxy/8051/x allow=proxy/8050/ => deny-server-proxy
GET ~/rstudio/p/x allow=rstudio/ => allow-proxy-prefix
GET ~/rstudio2/x allow=rstudio/ => deny-unknown-route
GET ~/rstudio/../files/data.csv allow=rstudio/ => deny-path-dot-segment
GET ~/rstudio/%2e%2e/files/data.csv allow=rstudio/ => deny-path-dot-segment
GET ~/rstudio%2F..%2Ffiles/data.csv allow=rstudio/ => deny-path-encoded-separator
# --- protocol, method and Host
GET ~/lab proto=HTTP/2.0 => deny-protocol
GET ~/lab proto=HTTP/0.9 => deny-protocol
GET ~/lab proto=HTTP/1.0 => allow-lab-ui
GET ~/lab nohost => deny-host
GET ~/lab nohost proto=HTTP/1.0 => deny-host
GET ~/lab host=a,b => deny-host
TRACE ~/lab => deny-method
CONNECT ~/lab => deny-method
PROPFIND ~/api/contents => deny-method
get ~/files/data.csv => deny-method
get ~/lab => deny-method
FOO ~/lab => deny-method
`

// tableRow parses one line of policyTable.
func tableRow(t *testing.T, line string) (req Request, terminals bool, allow []string, want string) {
	t.Helper()
	lhs, want, ok := strings.Cut(line, " => ")
	if !ok {
		t.Fatalf("bad table line %q", line)
	}
	f := strings.Fields(lhs)
	if len(f) < 2 {
		t.Fatalf("bad table line %q", line)
	}
	target := f[1]
	if strings.HasPrefix(target, "~") {
		target = tableBase[:len(tableBase)-1] + target[1:]
	}
	target = strings.ReplaceAll(target, `\u00e9`, "\u00e9")
	req = Request{Method: f[0], Target: target, Proto: "HTTP/1.1", Host: "pod:8888"}
	terminals = true
	for _, fl := range f[2:] {
		k, v, _ := strings.Cut(fl, "=")
		switch k {
		case "ws":
			req.Upgrade, req.ConnectionUpgrade = "websocket", true
		case "up":
			req.Upgrade = v
		case "conn":
			req.ConnectionUpgrade = true
		case "range":
			req.Range = true
		case "nohost":
			req.Host = ""
		case "host":
			req.Host = v
		case "proto":
			req.Proto = v
		case "noterm":
			terminals = false
		case "allow":
			allow = append(allow, v)
		default:
			t.Fatalf("bad flag %q in %q", fl, line)
		}
	}
	return req, terminals, allow, strings.TrimSpace(want)
}

// TestPolicyTable decides every row of policyTable.
func TestPolicyTable(t *testing.T) {
	rows := 0
	rules := map[string]int{}
	for _, line := range strings.Split(policyTable, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rows++
		req, terminals, allow, want := tableRow(t, line)
		p := tablePolicy(t, terminals, allow...)
		d := p.Decide(req)
		rules[want]++
		if d.Rule != want {
			t.Errorf("%s: rule %s (%s), want %s", line, d.Rule, d.Reason, want)
			continue
		}
		if d.Allow != strings.HasPrefix(want, "allow-") {
			t.Errorf("%s: allow=%v for rule %s", line, d.Allow, d.Rule)
		}
		if !d.Allow && d.Status != 400 && d.Status != 403 {
			t.Errorf("%s: denial status %d", line, d.Status)
		}
		if !d.Allow && d.Reason == "" {
			t.Errorf("%s: denial without a reason", line)
		}
	}
	t.Logf("%d rows, %d rules", rows, len(rules))
	if rows < 300 {
		t.Errorf("the table has %d rows; keep it covering", rows)
	}
}

// TestPolicyChecks: what the guard must verify in the answers it lets
// through.
func TestPolicyChecks(t *testing.T) {
	p := tablePolicy(t, true)
	for _, tc := range []struct {
		method, target string
		check          Check
		limit          int64
		identity       bool
	}{
		{"GET", tableBase + "api/contents/plots.ipynb", CheckContents, 0, true},
		{"GET", tableBase + "api/contents/sub?content=0", CheckContents, 0, true},
		{"PUT", tableBase + "api/contents/plots.ipynb", CheckContents, 0, true},
		{"POST", tableBase + "api/contents/sub", CheckContents, 0, true},
		{"GET", tableBase + "api/contents/plots.ipynb/checkpoints", CheckCapped, SmallCap, false},
		{"GET", tableBase + "lab/api/settings", CheckCapped, SettingsCap, false},
		{"GET", tableBase + "lab/api/workspaces/default", CheckCapped, WorkspaceCap, false},
		{"GET", tableBase + "api/config/notebook", CheckCapped, ConfigCap, false},
		{"GET", tableBase + "api/kernelspecs", CheckCapped, ConfigCap, false},
		{"GET", tableBase + "api/sessions", CheckCapped, ConfigCap, false},
		{"GET", tableBase + "kernelspecs/python3/logo-64x64.png", CheckCapped, LogoCap, false},
		{"GET", tableBase + "lab/extensions/x/static/a.js", CheckCapped, AssetCap, false},
		{"GET", tableBase + "custom/custom.css", CheckCapped, AssetCap, false},
		{"GET", tableBase + "static/lab/main.js", CheckNone, 0, false},
		{"GET", tableBase + "lab", CheckNone, 0, false},
	} {
		d := p.Decide(Request{Method: tc.method, Target: tc.target, Proto: "HTTP/1.1", Host: "pod"})
		if !d.Allow || d.Check != tc.check || d.Cap != tc.limit || d.Identity != tc.identity {
			t.Errorf("%s %s: %+v, want check %s cap %d identity %v", tc.method, tc.target, d, tc.check, tc.limit, tc.identity)
		}
	}
}

// TestPolicyAuditID: the audit learns what a request is about.
func TestPolicyAuditID(t *testing.T) {
	p := tablePolicy(t, true)
	for target, want := range map[string]string{
		tableBase + "api/kernels/7091b900-987a-47e2-9560-7a232c15a227/channels?session_id=x": "7091b900-987a-47e2-9560-7a232c15a227",
		tableBase + "terminals/websocket/12":                                                 "12",
		tableBase + "lsp/ws/pylsp":                                                           "pylsp",
		tableBase + "api/contents/My%20Notebook.ipynb":                                       "/My Notebook.ipynb",
	} {
		r := Request{Method: "GET", Target: target, Proto: "HTTP/1.1", Host: "pod"}
		if strings.Contains(target, "channels") || strings.Contains(target, "/ws") || strings.Contains(target, "websocket") {
			r.Upgrade, r.ConnectionUpgrade = "websocket", true
		}
		if d := p.Decide(r); d.ID != want {
			t.Errorf("%s: id %q, want %q", target, d.ID, want)
		}
	}
}

func ExamplePolicy_Decide() {
	p := NewPolicy(PolicyConfig{BaseURL: "/user/jane%20doe/", MaxNotebook: DefaultMaxNotebook, Terminals: true})
	for _, target := range []string{
		"/user/jane%20doe/files/data.csv",
		"/user/jane%20doe/%66iles/data.csv",
		"/user/jane%20doe/api/contents/data.csv?type=file",
		"/user/jane%20doe/api/contents/plots.ipynb?type=notebook",
	} {
		d := p.Decide(Request{Method: "GET", Target: target, Proto: "HTTP/1.1", Host: "pod:8888"})
		fmt.Println(d.Allow, d.Status, d.Rule)
	}
	// Output:
	// false 403 deny-files
	// false 403 deny-unknown-route
	// false 403 deny-contents-file
	// true 0 allow-contents-read
}

// BenchmarkDecide: the policy's cost per request for JupyterLab's regular
// requests (routing is a scan of the route table, as tornado's).
func BenchmarkDecide(b *testing.B) {
	p := NewPolicy(PolicyConfig{BaseURL: tableBase, MaxNotebook: DefaultMaxNotebook, Terminals: true})
	for _, target := range []string{
		"api/sessions?1796519035324",
		"api/contents/sub/inner.ipynb?type=notebook&content=1&hash=1&contentProviderId=undefined&1796519357729",
		"static/lab/jlab_core.d51715b9a60d91a2e8b4.js?v=d51715b9a60d91a2e8b4",
		"files/data.csv",
		"unknown/path",
	} {
		b.Run(strings.SplitN(target, "?", 2)[0], func(b *testing.B) {
			r := Request{Method: "GET", Target: tableBase + target, Proto: "HTTP/1.1", Host: "pod:8888"}
			b.ReportAllocs()
			for b.Loop() {
				_ = p.Decide(r)
			}
		})
	}
}
