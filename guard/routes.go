package guard

import (
	"regexp"
	"strconv"
)

// Family groups the routes the guard decides alike. It labels the metrics and
// is written on every audit line; docs/guard.md lists every family with its
// decision.
type Family string

// Route families. The handler each route reaches is named in routeTable.
const (
	FamilyMalformed   Family = "malformed"    // refused before routing: see ParseTarget
	FamilyOutside     Family = "outside-base" // not under the server's base URL
	FamilyUnknown     Family = "unknown"      // no route the guard knows (tornado: its 404 page, or an extension the guard does not know)
	FamilyLabUI       Family = "lab-ui"       // JupyterLab's pages
	FamilyClassicUI   Family = "classic-ui"   // nbclassic's and Notebook 7's pages
	FamilyStatic      Family = "static"       // static files from the server's own, root-owned packages
	FamilyLabAPI      Family = "lab-api"      // JupyterLab's server APIs that serve no user-written bytes
	FamilySettings    Family = "lab-settings" // JupyterLab settings (user-written JSON5)
	FamilyWorkspaces  Family = "lab-workspaces"
	FamilyExtensions  Family = "lab-extensions" // labextension assets and themes (a user-writable search path)
	FamilyNbext       Family = "nbextensions"   // nbclassic's extension assets (a user-writable search path)
	FamilyCustom      Family = "custom"         // custom.css and custom.js from the config dir
	FamilyAPI         Family = "api"            // small server APIs: version, status, identity, spec, ...
	FamilyConfig      Family = "config"         // frontend config sections (user-writable JSON)
	FamilyContents    Family = "contents"
	FamilyCheckpoints Family = "checkpoints"
	FamilyKernels     Family = "kernels"
	FamilyKernelWS    Family = "kernel-ws"
	FamilySessions    Family = "sessions"
	FamilyKernelspecs Family = "kernelspecs"
	FamilySpecFiles   Family = "kernelspec-files"
	FamilyTerminals   Family = "terminals"
	FamilyTerminalWS  Family = "terminal-ws"
	FamilyEvents      Family = "events"
	FamilyEventsWS    Family = "events-ws"
	FamilyLSP         Family = "lsp"
	FamilyLSPWS       Family = "lsp-ws"
	FamilyGitPuller   Family = "gitpuller"
	FamilyHubAuth     Family = "hub-auth"
	FamilyRedirect    Family = "redirect"
	FamilyFiles       Family = "files"
	FamilyView        Family = "view"
	FamilyNbconvert   Family = "nbconvert"
	FamilyProxy       Family = "server-proxy"  // jupyter-server-proxy
	FamilyProxyAllow  Family = "proxy-allowed" // a prefix the admin allowed (HUBWARDEN_GUARD_PROXY_ALLOW)
)

// route is one entry of the server's routing table: the regular expression
// jupyter-server or an extension registers, without the base URL it joins in
// front (url_path_join(base_url, pattern)), and the handler class.
type route struct {
	pattern string
	handler string
	family  Family
	// only names the configuration a route exists in: onlyClassic without
	// Notebook 7 (nbclassic serves /tree and /notebooks), onlyNotebook7
	// with it (nbclassic moves to /nbclassic/); "" in both.
	only string
}

// Configurations of the user image the table covers.
const (
	onlyClassic   = "nbclassic"
	onlyNotebook7 = "notebook7"
)

// routeTable is the order in which tornado 6.5 tries the routes of a
// jupyterhub-singleuser 5.5 server with jupyter-server 2.19 and the
// extensions of the z2jh 4.4 user image (jupyter-lsp 2.3, jupyter-server-
// terminals 0.5, JupyterLab 4.5 with jupyterlab_server 2.28, nbclassic 1.3,
// nbgitpuller 1.3), and with Notebook 7.5 added: each extension's routes in
// the order of its web_app.add_handlers call (extensions load by name), all
// before the server's own. The first route whose pattern matches the whole
// raw path wins; its groups are then percent-decoded.
//
// The two configurations differ only in nbclassic's prefix and Notebook
// 7's pages; the table holds both, and where a route of one does not exist
// in the other (tagged only), tornado answers a request for it with its
// 404 page, which the guard lets through as the page it would be. Every
// route a configuration has is in its place for it.
//
// testdata/routes-*.jsonl are the tables dumped from such servers
// (testdata/tornado_oracle.py --dump); TestRouteTableMatchesDump checks this
// list against them, and TestRoutingMatchesTornado compares the routing of
// thousands of paths with tornado's own.
var routeTable = []route{
	// jupyter_lsp
	{`lsp/status`, "jupyter_lsp.handlers.LanguageServersHandler", FamilyLSP, ""},
	{`lsp/ws/(?P<language_server>.*)`, "jupyter_lsp.handlers.LanguageServerWebSocketHandler", FamilyLSPWS, ""},
	// jupyter_server_terminals
	{`terminals/websocket/(\w+)`, "jupyter_server_terminals.handlers.TermSocket", FamilyTerminalWS, ""},
	{`api/terminals`, "jupyter_server_terminals.api_handlers.TerminalRootHandler", FamilyTerminals, ""},
	{`api/terminals/(\w+)`, "jupyter_server_terminals.api_handlers.TerminalHandler", FamilyTerminals, ""},
	// jupyterlab
	{`lab/api/build`, "jupyterlab.handlers.build_handler.BuildHandler", FamilyLabAPI, ""},
	{`lab/api/extensions`, "jupyterlab.handlers.extension_manager_handler.ExtensionHandler", FamilyLabAPI, ""},
	{`lab/api/plugins`, "jupyterlab.handlers.plugin_manager_handler.PluginHandler", FamilyLabAPI, ""},
	{`lab/api/update`, "jupyterlab.handlers.announcements.CheckForUpdateHandler", FamilyLabAPI, ""},
	{`lab/api/news`, "jupyterlab.handlers.announcements.NewsHandler", FamilyLabAPI, ""},
	{`(?P<mode>lab|doc)(?P<workspace>/workspaces/[a-zA-Z0-9\-\_]+)?(?P<tree>/tree/.*)?`, "jupyterlab_server.handlers.LabHandler", FamilyLabUI, ""},
	{`lab/extensions/(.*)`, "jupyter_server.base.handlers.FileFindHandler", FamilyExtensions, ""},
	{`lab/api/settings/?`, "jupyterlab_server.settings_handler.SettingsHandler", FamilySettings, ""},
	{`lab/api/settings/(?P<schema_name>.+)`, "jupyterlab_server.settings_handler.SettingsHandler", FamilySettings, ""},
	{`lab/api/translations/?`, "jupyterlab_server.translations_handler.TranslationsHandler", FamilyLabAPI, ""},
	{`lab/api/translations/(?P<locale>.*)`, "jupyterlab_server.translations_handler.TranslationsHandler", FamilyLabAPI, ""},
	{`lab/api/workspaces/?`, "jupyterlab_server.workspaces_handler.WorkspacesHandler", FamilyWorkspaces, ""},
	{`lab/api/workspaces/(?P<space_name>.+)`, "jupyterlab_server.workspaces_handler.WorkspacesHandler", FamilyWorkspaces, ""},
	{`lab/api/listings/(.*)`, "jupyterlab_server.listings_handler.ListingsHandler", FamilyLabAPI, ""},
	{`lab/api/themes/(.*)`, "jupyterlab_server.themes_handler.ThemesHandler", FamilyExtensions, ""},
	{`lab/api/licenses/(.*)`, "jupyterlab_server.licenses_handler.LicensesHandler", FamilyLabAPI, ""},
	{`lab/.*`, "jupyterlab_server.handlers.NotFoundHandler", FamilyLabUI, ""},
	{`static/lab/(.*)`, "jupyter_server.base.handlers.FileFindHandler", FamilyStatic, ""},
	// nbclassic, under /nbclassic/ when Notebook 7 is installed
	{`nbclassic`, "tornado.web.RedirectHandler", FamilyRedirect, onlyNotebook7},
	{`nbclassic/tree(?P<path>(?:(?:/[^/]+)+|/?))`, "nbclassic.tree.handlers.TreeHandler", FamilyClassicUI, onlyNotebook7},
	{`nbclassic/tree`, "nbclassic.tree.handlers.TreeHandler", FamilyClassicUI, onlyNotebook7},
	{`nbclassic/notebooks(?P<path>(?:(?:/[^/]+)+|/?))`, "nbclassic.notebook.handlers.NotebookHandler", FamilyClassicUI, onlyNotebook7},
	{`nbclassic/edit(?P<path>(?:(?:/[^/]+)+|/?))`, "nbclassic.edit.handlers.EditorHandler", FamilyClassicUI, onlyNotebook7},
	{`nbclassic/view(?P<path>(?:(?:/[^/]+)+|/?))`, "nbclassic.view.handlers.CustomViewHandler", FamilyView, onlyNotebook7},
	// nbclassic without Notebook 7
	{`tree(?P<path>(?:(?:/[^/]+)+|/?))`, "nbclassic.tree.handlers.TreeHandler", FamilyClassicUI, onlyClassic},
	{`tree`, "nbclassic.tree.handlers.TreeHandler", FamilyClassicUI, onlyClassic},
	{`notebooks(?P<path>(?:(?:/[^/]+)+|/?))`, "nbclassic.notebook.handlers.NotebookHandler", FamilyClassicUI, onlyClassic},
	{`edit(?P<path>(?:(?:/[^/]+)+|/?))`, "nbclassic.edit.handlers.EditorHandler", FamilyClassicUI, onlyClassic},
	{`view(?P<path>(?:(?:/[^/]+)+|/?))`, "nbclassic.view.handlers.CustomViewHandler", FamilyView, onlyClassic},
	{`static/nbclassic/(.*)`, "jupyter_server.base.handlers.FileFindHandler", FamilyStatic, ""},
	// nbgitpuller
	{`git-pull/api`, "nbgitpuller.handlers.SyncHandler", FamilyGitPuller, ""},
	{`git-pull`, "nbgitpuller.handlers.UIHandler", FamilyGitPuller, ""},
	{`git-sync`, "nbgitpuller.handlers.LegacyGitSyncRedirectHandler", FamilyRedirect, ""},
	{`interact`, "nbgitpuller.handlers.LegacyInteractRedirectHandler", FamilyRedirect, ""},
	{`git-pull/static/(.*)`, "tornado.web.StaticFileHandler", FamilyStatic, ""},
	// notebook 7 (its copies of JupyterLab's routes come after those above and are never reached)
	{`tree(.*)`, "notebook.app.TreeHandler", FamilyClassicUI, onlyNotebook7},
	{`notebooks(.*)`, "notebook.app.NotebookHandler", FamilyClassicUI, onlyNotebook7},
	{`edit(.*)`, "notebook.app.FileHandler", FamilyClassicUI, onlyNotebook7},
	{`consoles/(.*)`, "notebook.app.ConsoleHandler", FamilyClassicUI, onlyNotebook7},
	{`terminals/(.*)`, "notebook.app.TerminalHandler", FamilyTerminals, onlyNotebook7},
	{`custom/custom.css`, "notebook.app.CustomCssHandler", FamilyCustom, onlyNotebook7},
	{`static/notebook/(.*)`, "jupyter_server.base.handlers.FileFindHandler", FamilyStatic, onlyNotebook7},
	// jupyter_server (its robots.txt and favicon.ico routes outside the base URL come first)
	{`static/(.*)`, "jupyter_server.base.handlers.FileFindHandler", FamilyStatic, ""},
	{`api/spec.yaml`, "jupyter_server.services.api.handlers.APISpecHandler", FamilyAPI, ""},
	{`api/status`, "jupyter_server.services.api.handlers.APIStatusHandler", FamilyAPI, ""},
	{`api/me`, "jupyter_server.services.api.handlers.IdentityHandler", FamilyAPI, ""},
	{`api/resolvePath`, "jupyter_server.services.api.handlers.PathResolverHandler", FamilyAPI, ""},
	{`api/config/(?P<section_name>\w+)`, "jupyter_server.services.config.handlers.ConfigHandler", FamilyConfig, ""},
	{`api/contents(?P<path>(?:(?:/[^/]+)+|/?))/checkpoints`, "jupyter_server.services.contents.handlers.CheckpointsHandler", FamilyCheckpoints, ""},
	{`api/contents(?P<path>(?:(?:/[^/]+)+|/?))/checkpoints/(?P<checkpoint_id>[\w-]+)`, "jupyter_server.services.contents.handlers.ModifyCheckpointsHandler", FamilyCheckpoints, ""},
	{`api/contents(?P<path>(?:(?:/[^/]+)+|/?))/trust`, "jupyter_server.services.contents.handlers.TrustNotebooksHandler", FamilyContents, ""},
	{`api/contents(?P<path>(?:(?:/[^/]+)+|/?))`, "jupyter_server.services.contents.handlers.ContentsHandler", FamilyContents, ""},
	{`api/notebooks/?(.*)`, "jupyter_server.services.contents.handlers.NotebooksRedirectHandler", FamilyRedirect, ""},
	{`api/kernels`, "jupyter_server.services.kernels.handlers.MainKernelHandler", FamilyKernels, ""},
	{`api/kernels/(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)`, "jupyter_server.services.kernels.handlers.KernelHandler", FamilyKernels, ""},
	{`api/kernels/(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)/(?P<action>restart|interrupt)`, "jupyter_server.services.kernels.handlers.KernelActionHandler", FamilyKernels, ""},
	{`api/kernels/(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)/channels`, "jupyter_server.services.kernels.websocket.KernelWebsocketHandler", FamilyKernelWS, ""},
	{`kernelspecs/(?P<kernel_name>[\w\.\-%]+)/(?P<path>.*)`, "jupyter_server.kernelspecs.handlers.KernelSpecResourceHandler", FamilySpecFiles, ""},
	{`api/kernelspecs`, "jupyter_server.services.kernelspecs.handlers.MainKernelSpecHandler", FamilyKernelspecs, ""},
	{`api/kernelspecs/(?P<kernel_name>[\w\.\-%]+)`, "jupyter_server.services.kernelspecs.handlers.KernelSpecHandler", FamilyKernelspecs, ""},
	{`nbconvert/(?P<format>\w+)`, "jupyter_server.nbconvert.handlers.NbconvertPostHandler", FamilyNbconvert, ""},
	{`nbconvert/(?P<format>\w+)(?P<path>(?:(?:/[^/]+)+|/?))`, "jupyter_server.nbconvert.handlers.NbconvertFileHandler", FamilyNbconvert, ""},
	{`api/nbconvert`, "jupyter_server.services.nbconvert.handlers.NbconvertRootHandler", FamilyAPI, ""},
	{`api/security/csp-report`, "jupyter_server.services.security.handlers.CSPReportHandler", FamilyAPI, ""},
	{`api/sessions/(?P<session_id>\w+-\w+-\w+-\w+-\w+)`, "jupyter_server.services.sessions.handlers.SessionHandler", FamilySessions, ""},
	{`api/sessions`, "jupyter_server.services.sessions.handlers.SessionRootHandler", FamilySessions, ""},
	{`api/shutdown`, "jupyter_server.services.shutdown.ShutdownHandler", FamilyAPI, ""},
	{`view(?P<path>(?:(?:/[^/]+)+|/?))`, "jupyter_server.view.handlers.ViewHandler", FamilyView, ""},
	{`api/events`, "jupyter_server.services.events.handlers.EventHandler", FamilyEvents, ""},
	{`api/events/subscribe`, "jupyter_server.services.events.handlers.SubscribeWebsocket", FamilyEventsWS, ""},
	{`files/(.*)`, "jupyter_server.base.handlers.AuthenticatedFileHandler", FamilyFiles, ""},
	{`logout`, "jupyterhub.singleuser.extension.JupyterHubLogoutHandler", FamilyHubAuth, ""},
	{`oauth_callback`, "jupyterhub.singleuser.extension.JupyterHubOAuthCallbackHandler", FamilyHubAuth, ""},
	{`terminals/(\w+)`, "nbclassic.terminal.handlers.TerminalHandler", FamilyTerminals, ""},
	{`nbextensions/(.*)`, "jupyter_server.base.handlers.FileFindHandler", FamilyNbext, ""},
	{`custom/(.*)`, "jupyter_server.base.handlers.FileFindHandler", FamilyCustom, ""},
	{`.*/`, "jupyter_server.base.handlers.TrailingSlashHandler", FamilyRedirect, ""},
	{`api`, "jupyter_server.base.handlers.APIVersionHandler", FamilyAPI, ""},
	{`(robots\.txt|favicon\.ico)`, "jupyter_server.base.handlers.PublicStaticFileHandler", FamilyStatic, ""},
	{`metrics`, "jupyter_server.base.handlers.PrometheusMetricsHandler", FamilyAPI, ""},
	{``, "jupyter_server.base.handlers.RedirectWithParams", FamilyRedirect, ""}, // "<base>/?": also the base without its slash
}

// proxyRoutes are jupyter-server-proxy's routes (its setup_handlers and API
// handlers), used only to name the family of a request the guard denies
// because it knows no route for it; a server process it proxies under its
// own name ("/rstudio/") stays FamilyUnknown.
var proxyRoutes = regexp.MustCompile(`^(?:proxy/.*|server-proxy/.*)$`)

// compiledRoute is a route ready to match.
type compiledRoute struct {
	route
	re *regexp.Regexp
}

// Match is where tornado sends a request: the handler and its family, and
// the route's groups percent-decoded as tornado passes them to the handler
// (named groups by name; unnamed ones as "1", "2", ...). A group that did
// not participate is absent.
type Match struct {
	Handler string
	Family  Family
	Args    map[string]string
	only    string // the configuration the route exists in ("" both)
}

// Router routes raw paths under one base URL as tornado routes them.
type Router struct {
	base   string
	routes []compiledRoute
}

// NewRouter compiles the route table for an escaped base URL ("/user/x/").
func NewRouter(base string) *Router {
	r := &Router{base: base, routes: make([]compiledRoute, len(routeTable))}
	for i, rt := range routeTable {
		// Python's re.match with a pattern ending in '$' matches the whole
		// string (the path never holds the '\n' its '$' would also allow
		// before). RE2 and Python agree on the syntax the table uses, and
		// on \w, because the path is printable ASCII (ParseTarget).
		r.routes[i] = compiledRoute{route: rt, re: regexp.MustCompile(`^(?:` + rt.pattern + `)$`)}
	}
	return r
}

// Base returns the escaped base URL the router serves.
func (r *Router) Base() string { return r.base }

// Route returns where tornado sends the raw path rest, the part of a path
// after the base URL. ok is false when no route matches (tornado's 404 page).
func (r *Router) Route(rest string) (m Match, ok bool) {
	for i := range r.routes {
		cr := &r.routes[i]
		sub := cr.re.FindStringSubmatchIndex(rest)
		if sub == nil {
			continue
		}
		m = Match{Handler: cr.handler, Family: cr.family, only: cr.only}
		names := cr.re.SubexpNames()
		for g := 1; g < len(names); g++ {
			if sub[2*g] < 0 {
				continue
			}
			if m.Args == nil {
				m.Args = map[string]string{}
			}
			key := names[g]
			if key == "" {
				key = strconv.Itoa(g)
			}
			m.Args[key] = Unquote(rest[sub[2*g]:sub[2*g+1]])
		}
		return m, true
	}
	return Match{Family: FamilyUnknown}, false
}
