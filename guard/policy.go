package guard

import (
	"path"
	"strings"
)

// Request is what the policy decides on: the parts of a parsed HTTP/1
// request that decide which handler the server runs and what it answers.
// The guard forwards exactly the method, target and headers it decided on.
type Request struct {
	Method string
	Target string // the request-target as received (Go's Request.RequestURI)
	Proto  string // "HTTP/1.1" or "HTTP/1.0"
	Host   string // the Host header; "" when there is none
	// Upgrade is the Upgrade header ("" when absent); ConnectionUpgrade says
	// the Connection header lists "upgrade". Both are needed for a
	// websocket.
	Upgrade           string
	ConnectionUpgrade bool
	Range             bool // a Range header is present
}

// Check is what the guard verifies in the server's answer to an allowed
// request before it passes it on.
type Check uint8

// Checks.
const (
	// CheckNone: the answer is passed on as it comes.
	CheckNone Check = iota
	// CheckContents: the answer must be a contents model that carries no
	// file bytes: content null (metadata), a directory listing, or a
	// notebook (type "notebook", format "json"), at most MaxNotebook bytes;
	// error messages other than "not found" and conflicts are withheld, as
	// the server's can quote the file ("Unreadable Notebook: ...").
	CheckContents
	// CheckCapped: the answer's body must be at most Decision.Cap bytes.
	CheckCapped
)

func (c Check) String() string {
	switch c {
	case CheckContents:
		return "contents"
	case CheckCapped:
		return "capped"
	}
	return "none"
}

// Decision is the policy's answer for one request.
type Decision struct {
	Allow  bool
	Status int    // for a denial: 400 (malformed or ambiguous) or 403
	Rule   string // the rule that decided, a stable name
	Family Family
	Reason string // for a denial: a short sentence for the user
	// For an allowed request: what to verify in the answer.
	Check     Check
	Cap       int64 // CheckCapped: the largest body allowed
	Websocket bool  // a websocket upgrade on a websocket route
	// Identity asks the server for an answer without a content coding
	// (the request's Accept-Encoding is dropped), so that it can be read.
	Identity bool
	// ID names what a websocket or a request is about, for the audit: the
	// kernel id, terminal name or language server, or the path of a
	// contents request, decoded.
	ID string
}

// Caps on answers that can carry bytes the user wrote. They bound each
// answer; they are not a budget (the shaping and the pod budget are).
const (
	// SettingsCap bounds JupyterLab's settings answers. The full list
	// (every plugin's schema and the user's raw JSON5 settings) of
	// JupyterLab 4.5.8 is 132 KB (measured); extensions add their schemas.
	SettingsCap = 4 << 20
	// WorkspaceCap bounds a workspace (the layout of open tabs, a few KB).
	WorkspaceCap = 4 << 20
	// ConfigCap bounds a frontend config section and the kernel and
	// session APIs (kernel.json metadata and session names are the user's).
	ConfigCap = 1 << 20
	// LogoCap bounds a kernelspec logo, kernel.js or kernel.css.
	LogoCap = 1 << 20
	// AssetCap bounds one labextension or nbextension asset, a theme file
	// or custom.css/custom.js: large bundle chunks are a few MB.
	AssetCap = 16 << 20
	// SmallCap bounds answers that are small by construction: checkpoint
	// lists, trust, contents errors passed on.
	SmallCap = 1 << 20
)

// DefaultMaxNotebook is the default of HUBWARDEN_GUARD_MAX_NOTEBOOK.
const DefaultMaxNotebook = 32 << 20

// PolicyConfig is what the policy depends on.
type PolicyConfig struct {
	BaseURL     string   // escaped, "/user/name/" (see EscapeBaseURL)
	MaxNotebook int64    // largest notebook (and directory listing) answer
	Terminals   bool     // allow terminals
	ProxyAllow  []string // path prefixes under BaseURL passed as they are, each ending in '/'
}

// Policy decides requests. It is pure and safe for concurrent use.
type Policy struct {
	cfg    PolicyConfig
	router *Router
}

// NewPolicy returns the policy for a validated configuration.
func NewPolicy(cfg PolicyConfig) *Policy {
	return &Policy{cfg: cfg, router: NewRouter(cfg.BaseURL)}
}

// Router returns the policy's router.
func (p *Policy) Router() *Router { return p.router }

// methods are the methods tornado's RequestHandler implements at all
// (SUPPORTED_METHODS); any other gets 405 from every handler.
var methods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true}

func deny(status int, rule string, f Family, reason string) Decision {
	return Decision{Status: status, Rule: rule, Family: f, Reason: reason}
}

func allow(rule string, f Family) Decision {
	return Decision{Allow: true, Rule: rule, Family: f}
}

func capped(rule string, f Family, n int64) Decision {
	return Decision{Allow: true, Rule: rule, Family: f, Check: CheckCapped, Cap: n}
}

// Decide returns the decision for a request.
func (p *Policy) Decide(r Request) Decision {
	if r.Proto != "HTTP/1.1" && r.Proto != "HTTP/1.0" {
		return deny(400, "deny-protocol", FamilyMalformed, "only HTTP/1.0 and HTTP/1.1 are served")
	}
	if r.Host == "" || strings.ContainsRune(r.Host, ',') {
		// tornado answers 400 to both (a comma is how a proxy joins two Host headers).
		return deny(400, "deny-host", FamilyMalformed, "the request needs exactly one Host header")
	}
	t, ref := ParseTarget(r.Target)
	if ref != nil {
		return deny(400, ref.Rule, FamilyMalformed, ref.Reason)
	}
	if !methods[r.Method] {
		return deny(403, "deny-method", FamilyMalformed, "the method "+r.Method+" is not served")
	}
	base := p.cfg.BaseURL
	var rest string
	switch {
	case strings.HasPrefix(t.Path, base):
		rest = t.Path[len(base):]
	case t.Path == base[:len(base)-1]:
		rest = "" // tornado's "<base>/?" route takes the base without its slash
	default:
		return deny(403, "deny-outside-base-url", FamilyOutside, "this server serves only "+base)
	}
	for _, pre := range p.cfg.ProxyAllow {
		if strings.HasPrefix(rest, pre) || rest == pre[:len(pre)-1] {
			return allow("allow-proxy-prefix", FamilyProxyAllow)
		}
	}
	// jupyter-server-proxy's routes come before the server's own when it
	// is installed (its "proxy/8050/" would otherwise look like the
	// server's redirect of a trailing slash).
	if proxyRoutes.MatchString(rest) {
		return deny(403, "deny-server-proxy", FamilyProxy, "proxied services are not allowed on this server")
	}
	m, ok := p.router.Route(rest)
	if !ok || !p.known(m, rest) {
		return deny(403, "deny-unknown-route", FamilyUnknown, "hubwarden does not know this address")
	}
	return p.decideRoute(r, t, m)
}

// known reports whether a match is a route the guard can vouch for. Two
// catch-all routes of the server are not: JupyterLab's 404 page under lab/
// and the redirect that strips a trailing slash. An extension the guard
// does not know (loaded before the server's own routes, as every extension
// is) can own a path they would match, like jupyter-server-proxy owns
// "rstudio/"; the guard then refuses it. A trailing slash is stripped only
// from a path the guard knows.
func (p *Policy) known(m Match, rest string) bool {
	switch m.Handler {
	case "jupyterlab_server.handlers.NotFoundHandler":
		return false
	case "jupyter_server.base.handlers.TrailingSlashHandler":
		stripped, ok := p.router.Route(strings.TrimSuffix(rest, "/"))
		return ok && stripped.Handler != m.Handler && p.known(stripped, strings.TrimSuffix(rest, "/"))
	}
	return true
}

// decideRoute decides a request routed to m.
func (p *Policy) decideRoute(r Request, t Target, m Match) Decision {
	if d, done := p.websocketRule(r, m); done {
		return d
	}
	return p.familyRule(r, t, m)
}

// websocketRule decides the upgrade part of a request: a websocket only on
// a websocket route, in the form browsers send it, and no other upgrade.
func (p *Policy) websocketRule(r Request, m Match) (Decision, bool) {
	ws := m.Family == FamilyKernelWS || m.Family == FamilyTerminalWS || m.Family == FamilyEventsWS || m.Family == FamilyLSPWS
	if r.Upgrade == "" && !ws {
		return Decision{}, false
	}
	if !ws {
		return deny(403, "deny-upgrade", m.Family, "no protocol upgrade on this address"), true
	}
	if r.Method != "GET" || !strings.EqualFold(r.Upgrade, "websocket") || !r.ConnectionUpgrade {
		return deny(400, "deny-websocket-form", m.Family, "this address takes only a websocket"), true
	}
	return Decision{}, false
}

func (p *Policy) familyRule(r Request, t Target, m Match) Decision {
	f := m.Family
	switch f {
	case FamilyFiles:
		return deny(403, "deny-files", f, "downloading files is not allowed on this server")
	case FamilyView:
		return deny(403, "deny-view", f, "viewing files in the browser is not allowed on this server")
	case FamilyNbconvert:
		return deny(403, "deny-nbconvert", f, "exporting notebooks (nbconvert) is not allowed on this server")
	case FamilyTerminals, FamilyTerminalWS:
		if !p.cfg.Terminals {
			return deny(403, "deny-terminals", f, "terminals are not allowed on this server")
		}
		d := allow("allow-terminals", f)
		if f == FamilyTerminalWS {
			d.Websocket, d.ID = true, m.Args["1"]
		}
		return d
	case FamilyKernelWS:
		return Decision{Allow: true, Rule: "allow-kernel-websocket", Family: f, Websocket: true, ID: m.Args["kernel_id"]}
	case FamilyEventsWS:
		return Decision{Allow: true, Rule: "allow-events-websocket", Family: f, Websocket: true}
	case FamilyLSPWS:
		return Decision{Allow: true, Rule: "allow-lsp-websocket", Family: f, Websocket: true, ID: m.Args["language_server"]}
	case FamilyContents:
		return p.contentsRule(r, t, m)
	case FamilyCheckpoints:
		d := capped("allow-checkpoints", f, SmallCap)
		d.ID = m.Args["path"]
		return d
	case FamilySettings:
		return capped("allow-settings", f, SettingsCap)
	case FamilyWorkspaces:
		return capped("allow-workspaces", f, WorkspaceCap)
	case FamilyConfig:
		return capped("allow-config", f, ConfigCap)
	case FamilyKernels, FamilySessions, FamilyKernelspecs:
		d := capped("allow-"+string(f), f, ConfigCap)
		d.ID = m.Args["kernel_id"]
		return d
	case FamilyExtensions, FamilyNbext, FamilyCustom:
		name, ok := m.Args["1"]
		if !ok {
			// custom/custom.css (Notebook 7's route) captures nothing.
			name = Unquote(t.Path[strings.LastIndexByte(t.Path, '/')+1:])
		}
		return assetRule(r, f, name)
	case FamilySpecFiles:
		return specFileRule(r, m.Args["path"])
	case FamilyLabUI, FamilyClassicUI, FamilyStatic, FamilyLabAPI, FamilyAPI, FamilyEvents,
		FamilyLSP, FamilyGitPuller, FamilyHubAuth, FamilyRedirect:
		return allow("allow-"+string(f), f)
	}
	// Every family of routeTable is decided above; a new one is denied
	// until it is.
	return deny(403, "deny-unknown-route", f, "hubwarden does not know this address")
}

// contentsRule decides /api/contents/<path>. A read that asks for a file
// model with content (type=file, or a type the handler takes for "file") is
// refused at once; every other request goes to the server and its answer is
// checked (CheckContents), which also covers what the query cannot tell: a
// .ipynb that is not a notebook, a directory, a file read with type unset.
func (p *Policy) contentsRule(r Request, t Target, m Match) Decision {
	f := m.Family
	path := m.Args["path"]
	if m.Handler == "jupyter_server.services.contents.handlers.TrustNotebooksHandler" {
		d := capped("allow-contents-trust", f, SmallCap)
		d.ID = path
		return d
	}
	d := Decision{Allow: true, Family: f, Check: CheckContents, Identity: true, ID: path, Rule: "allow-contents-write"}
	if r.Method != "GET" && r.Method != "HEAD" {
		return d
	}
	q := ParseQuery(t.Query)
	content, present, valid := q.Argument("content")
	typ, typed, typeValid := q.Argument("type")
	if !valid || !typeValid {
		return deny(400, "deny-query-encoding", f, "a query argument is not UTF-8")
	}
	if present && content == "0" {
		d.Rule = "allow-contents-metadata"
		return d
	}
	// The handler falls back to type "file" for any type it does not know.
	if typed && typ != "directory" && typ != "notebook" {
		return deny(403, "deny-contents-file", f, "only notebooks can be opened on this server")
	}
	d.Rule = "allow-contents-read"
	return d
}

// assetExts are the file types an extension asset, a theme or custom.css
// and custom.js may have.
var assetExts = map[string]bool{
	".js": true, ".mjs": true, ".css": true, ".map": true, ".json": true,
	".woff": true, ".woff2": true, ".ttf": true, ".eot": true, ".otf": true,
	".svg": true, ".png": true, ".gif": true, ".jpg": true, ".jpeg": true, ".webp": true, ".ico": true,
	".wasm": true,
}

// assetRule decides a file from a labextension, nbextension, theme or
// custom directory: these search paths include directories in the user's
// home, so only asset types are served, each up to AssetCap, and whole.
func assetRule(r Request, f Family, name string) Decision {
	if r.Range {
		return deny(403, "deny-asset-range", f, "partial requests for extension files are not allowed on this server")
	}
	if !assetExts[strings.ToLower(path.Ext(name))] {
		return deny(403, "deny-asset-type", f, "only script, style, font and image files are served from extension directories")
	}
	return capped("allow-asset", f, AssetCap)
}

// specFileRule decides /kernelspecs/<name>/<file>, which serves any file
// of a kernelspec directory (the user's own kernelspecs live in their home):
// only the logos (logo-*) and kernel.js/kernel.css the kernelspec API lists,
// each up to LogoCap, and whole.
func specFileRule(r Request, name string) Decision {
	f := FamilySpecFiles
	if r.Range {
		return deny(403, "deny-kernelspec-file", f, "partial requests for kernelspec files are not allowed on this server")
	}
	ext := strings.ToLower(path.Ext(name))
	listed := strings.HasPrefix(name, "logo-") && (ext == ".png" || ext == ".svg") || name == "kernel.js" || name == "kernel.css"
	if strings.ContainsRune(name, '/') || !listed {
		return deny(403, "deny-kernelspec-file", f, "only kernel logos are served from kernelspec directories")
	}
	return capped("allow-kernelspec-logo", f, LogoCap)
}
