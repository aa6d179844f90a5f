package guard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Options are the guard's settings that are not variables: the upstream
// address and the server's limits. Zero values take the defaults.
type Options struct {
	// Upstream is the server's address; default 127.0.0.1:<ServerPort>.
	// The guard's connections to it come from the pod itself, so the nat
	// PREROUTING redirect does not apply to them.
	Upstream string
	// ReadHeaderTimeout bounds how long a client may take to send a
	// request's headers (default 30 s; the hub's proxy sends them at once).
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a kept-alive client connection idle this long
	// (default 1 h, tornado's idle_connection_timeout, so that the hub's
	// proxy sees the same lifetime as without the guard).
	IdleTimeout time.Duration
	// MaxRequestBody is the largest request body passed on (default 512
	// MiB, jupyter-server's max_body_size).
	MaxRequestBody int64
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Limits of the guard's HTTP server.
const (
	// MaxHeaderBytes is the request line and header block the guard reads,
	// tornado's max_header_size (64 KiB): Go's server allows 4 KiB on top
	// of http.Server.MaxHeaderBytes.
	MaxHeaderBytes       = 64 << 10
	defaultMaxBody       = 512 << 20
	defaultHeaderTimeout = 30 * time.Second
	defaultIdleTimeout   = time.Hour
	// maxModelHead bounds what the guard reads of a contents answer before
	// the "content" value starts (name, path, dates, size: well under 8 KiB).
	maxModelHead = 64 << 10
)

// Guard is the HTTP guard: an http.Handler that decides every request
// with the policy and proxies what it allows to the server.
type Guard struct {
	cfg    Config
	opts   Options
	policy *Policy
	proxy  *httputil.ReverseProxy
	log    zerolog.Logger
	m      *Metrics

	mu      sync.Mutex
	sockets map[*exchange]struct{} // open websockets
}

// New returns a guard for a validated configuration.
func New(cfg Config, logger zerolog.Logger, m *Metrics, opts Options) (*Guard, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Upstream == "" {
		opts.Upstream = net.JoinHostPort("127.0.0.1", strconv.Itoa(int(cfg.ServerPort)))
	}
	if opts.ReadHeaderTimeout == 0 {
		opts.ReadHeaderTimeout = defaultHeaderTimeout
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = defaultIdleTimeout
	}
	if opts.MaxRequestBody == 0 {
		opts.MaxRequestBody = defaultMaxBody
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	g := &Guard{
		cfg:  cfg,
		opts: opts,
		policy: NewPolicy(PolicyConfig{
			BaseURL: cfg.BaseURL, MaxNotebook: cfg.MaxNotebook, Terminals: cfg.Terminals, ProxyAllow: cfg.ProxyAllow,
		}),
		log:     logger.With().Str("component", "guard").Logger(),
		m:       m,
		sockets: map[*exchange]struct{}{},
	}
	g.proxy = &httputil.ReverseProxy{
		Rewrite:        g.rewrite,
		ModifyResponse: g.modifyResponse,
		ErrorHandler:   g.proxyError,
		ErrorLog:       log.New(debugWriter{g.log}, "", 0),
		BufferPool:     copyBuffers{},
		Transport: &http.Transport{
			Proxy: nil, // never an HTTP_PROXY from the environment
			// The server's connections ACK what they read at once
			// (dialServer): tornado's websockets keep Nagle's algorithm on.
			DialContext: dialServer(&net.Dialer{
				Timeout:   5 * time.Second,
				KeepAlive: 30 * time.Second,
			}),
			MaxIdleConns:        512,
			MaxIdleConnsPerHost: 512,
			// Close idle connections to the server well before tornado's
			// own idle timeout (1 h), so that a request never races the
			// server's close of a connection the guard picked.
			IdleConnTimeout: 90 * time.Second,
			// Pass Accept-Encoding through as the client sent it, and the
			// answer as the server sent it: never add gzip.
			DisableCompression: true,
			// The answer is copied with the proxy's own buffers
			// (copyBuffers), which bufio reads into directly: the
			// connection's own buffers stay at Go's 4 KiB, which every
			// idle kept-alive connection to the server holds.
			MaxResponseHeaderBytes: 1 << 20,
		},
	}
	return g, nil
}

// Policy returns the guard's policy.
func (g *Guard) Policy() *Policy { return g.policy }

// NewServer returns an http.Server for the guard: HTTP/1 only (what the
// hub's proxy speaks to the server), tornado's header limit, a header
// timeout against clients that never finish their headers, and no
// general OPTIONS handler (an "OPTIONS *" reaches the policy and is
// refused like any other target that is not origin-form).
func (g *Guard) NewServer() *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	return &http.Server{
		Handler:                      g,
		ReadHeaderTimeout:            g.opts.ReadHeaderTimeout,
		IdleTimeout:                  g.opts.IdleTimeout,
		MaxHeaderBytes:               MaxHeaderBytes - 4096,
		Protocols:                    &p,
		DisableGeneralOptionsHandler: true,
		// A client controls what Go's server would log about its
		// connection; keep it at debug level.
		ErrorLog: log.New(debugWriter{g.log}, "", 0),
	}
}

// Serve serves on ln until ctx ends, then shuts down (in-flight requests
// get 5 s; open websockets are closed) and returns nil. It writes the
// progress lines of long websockets every cfg.ProgressInterval.
func (g *Guard) Serve(ctx context.Context, ln net.Listener) error {
	srv := g.NewServer()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	t := time.NewTicker(g.cfg.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case err := <-errc:
			return fmt.Errorf("serving the guard: %w", err)
		case <-t.C:
			g.progress()
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := srv.Shutdown(sctx)
			g.closeSockets()
			<-errc
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("shutting the guard down: %w", err)
			}
			return nil
		}
	}
}

// exchange is the guard's state for one request.
type exchange struct {
	start   time.Time
	req     Request
	d       Decision
	target  Target
	peer    netip.Addr
	fwdFor  []string // X-Forwarded-For as received
	upgrade bool

	// Set by the answer's checks and the error handler, read after the
	// proxy returns (the proxy's goroutines have ended by then).
	respRule   string // a check on the answer denied it (or would have, in audit mode)
	respReason string
	withheld   bool // the server's error message was replaced
	aborted    atomic.Bool
	upErr      error
	reqBytes   atomic.Int64

	// Websocket counters, read by the progress loop while they grow.
	toClient, toServer atomic.Int64
	lastToClient       int64
	lastToServer       int64
	backend            io.Closer
}

type exchangeKey struct{}

func exchangeOf(ctx context.Context) *exchange {
	x, _ := ctx.Value(exchangeKey{}).(*exchange)
	return x
}

// requestOf extracts what the policy decides on. Go's server has parsed
// the request line and headers; Host is taken from the header (r.Host also
// holds an absolute-form target's host, which the policy refuses anyway).
func requestOf(r *http.Request) Request {
	return Request{
		Method:            r.Method,
		Target:            r.RequestURI,
		Proto:             r.Proto,
		Host:              r.Host,
		Upgrade:           r.Header.Get("Upgrade"),
		ConnectionUpgrade: hasToken(r.Header["Connection"], "upgrade"),
		Range:             len(r.Header["Range"]) > 0,
	}
}

// copyBuffers lends the proxy 64 KiB buffers for copying answers (its
// default is a new 32 KiB buffer per answer): half the read and write
// system calls for a notebook, and no garbage per request.
type copyBuffers struct{}

var copyPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

func (copyBuffers) Get() []byte  { return *copyPool.Get().(*[]byte) }
func (copyBuffers) Put(b []byte) { copyPool.Put(&b) }

// hasToken reports whether a comma-separated header lists token
// (case-insensitively), as tornado's websocket handler checks Connection.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

// ProbeTarget is the self-test's request (Probe): outside every base URL,
// answered by the guard itself with 204, in every mode.
const ProbeTarget = "/.hubwarden-guard-probe"

const ruleProbe = "guard-probe"

// ServeHTTP decides the request and answers it: a denial, or the server's
// answer through the checks of the decision.
func (g *Guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := &exchange{start: g.opts.Now(), req: requestOf(r)}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		x.peer = ap.Addr().Unmap()
	}
	x.fwdFor = r.Header["X-Forwarded-For"]
	x.d = g.policy.Decide(x.req)
	x.target, _ = ParseTarget(r.RequestURI)
	if x.target.Path == "" {
		// Refused by ParseTarget: in audit mode it is still forwarded as received.
		x.target.Path, x.target.Query, x.target.HasQuery = strings.Cut(r.RequestURI, "?")
	}
	cw := &countingWriter{ResponseWriter: w}
	if r.RequestURI == ProbeTarget && r.Method == http.MethodGet {
		x.d = Decision{Allow: true, Rule: ruleProbe, Family: FamilyOutside}
		cw.Header().Set("X-Hubwarden-Rule", ruleProbe)
		cw.WriteHeader(http.StatusNoContent)
		g.finish(x, cw)
		return
	}
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler { //nolint:errorlint // the sentinel is panicked, not wrapped
				x.aborted.Store(true)
			} else {
				g.m.errors.WithLabelValues(ErrPanic).Inc()
			}
			g.finish(x, cw)
			panic(v)
		}
		g.finish(x, cw)
	}()
	if !x.d.Allow && g.cfg.Mode == Enforce {
		g.writeRefusal(cw, r, x.d.Status, x.d.Rule, x.d.Reason)
		return
	}
	if r.ContentLength > g.opts.MaxRequestBody {
		x.respRule = "deny-request-too-large"
		g.writeRefusal(cw, r, http.StatusRequestEntityTooLarge, x.respRule, "the request body is larger than the server accepts")
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &countingBody{r: http.MaxBytesReader(cw, r.Body, g.opts.MaxRequestBody), n: &x.reqBytes, c: r.Body}
	}
	g.proxy.ServeHTTP(cw, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x)))
}

// rewrite builds the request the server gets: the request the policy
// decided on. The target is the one received, byte for byte (Opaque keeps
// Go from re-encoding the path, and the query is the raw one, never
// cleaned); Host is the client's. Forwarding headers are passed as they
// came (the guard does not add itself: tornado takes the last
// X-Forwarded-For hop as the client), and only when the client sent no
// X-Forwarded-For (the hub's own requests) is the peer's address added, so
// that the server logs the address it would log without the guard.
// X-Real-Ip, which tornado trusts over X-Forwarded-For and the hub's proxy
// does not set, is dropped: nobody can choose the address the server logs.
// Expect is dropped: Go's server has answered it.
func (g *Guard) rewrite(pr *httputil.ProxyRequest) {
	x := exchangeOf(pr.In.Context())
	u := &url.URL{Scheme: "http", Host: g.opts.Upstream, RawQuery: x.target.Query, ForceQuery: x.target.HasQuery && x.target.Query == ""}
	if strings.HasPrefix(x.target.Path, "//") {
		// Only in audit mode (enforce refuses empty segments): Opaque
		// would be sent as "http://...".
		u.Path, u.RawPath = Unquote(x.target.Path), x.target.Path
	} else {
		u.Opaque = x.target.Path
	}
	pr.Out.URL = u
	pr.Out.Host = pr.In.Host
	for _, h := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if v, ok := pr.In.Header[h]; ok {
			pr.Out.Header[h] = v
		}
	}
	if _, ok := pr.In.Header["X-Forwarded-For"]; !ok && x.peer.IsValid() {
		pr.Out.Header.Set("X-Forwarded-For", x.peer.String())
	}
	pr.Out.Header.Del("X-Real-Ip")
	pr.Out.Header.Del("Expect")
	if x.d.Identity {
		pr.Out.Header.Del("Accept-Encoding")
	}
}

// responseDenial is a check on the server's answer that refused it.
type responseDenial struct{ rule, reason string }

func (e *responseDenial) Error() string { return e.rule + ": " + e.reason }

// modifyResponse applies the decision's check to the server's answer.
func (g *Guard) modifyResponse(res *http.Response) error {
	x := exchangeOf(res.Request.Context())
	if res.StatusCode == http.StatusSwitchingProtocols {
		return g.upgraded(x, res)
	}
	var err error
	switch x.d.Check {
	case CheckContents:
		err = g.checkContents(x, res)
	case CheckCapped:
		err = g.checkCapped(x, res, x.d.Cap)
	}
	var rd *responseDenial
	if errors.As(err, &rd) {
		x.respRule, x.respReason = rd.rule, rd.reason
		if g.cfg.Mode != Enforce {
			return nil // audit: logged, passed on
		}
	}
	return err
}

// checkCapped refuses an answer whose body is longer than limit: at once
// when its Content-Length says so, else by cutting it off at the limit.
func (g *Guard) checkCapped(x *exchange, res *http.Response, limit int64) error {
	if res.ContentLength > limit {
		return &responseDenial{"deny-over-cap", fmt.Sprintf("the answer (%d bytes) is larger than hubwarden allows here (%d)", res.ContentLength, limit)}
	}
	res.Body = &checkedBody{g: g, x: x, r: res.Body, c: res.Body, limit: limit}
	return nil
}

// checkContents applies CheckContents (see its comment).
func (g *Guard) checkContents(x *exchange, res *http.Response) error {
	switch code := res.StatusCode; {
	case code == http.StatusNotFound || code == http.StatusConflict || code == http.StatusMethodNotAllowed ||
		code == http.StatusRequestEntityTooLarge || code < 200 || (code >= 300 && code < 400):
		// Not found, conflicts, redirects: messages with the path only.
		return g.checkCapped(x, res, SmallCap)
	case code >= 400:
		g.withhold(x, res)
		return nil
	case code == http.StatusNoContent || res.Request.Method == http.MethodHead:
		return g.checkCapped(x, res, SmallCap)
	}
	if enc := res.Header.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "identity") {
		return &responseDenial{"deny-contents-encoded", "the server compressed a contents answer, which hubwarden cannot check"}
	}
	if res.ContentLength > g.cfg.MaxNotebook {
		return &responseDenial{"deny-notebook-over-cap", fmt.Sprintf("the answer (%d bytes) is larger than HUBWARDEN_GUARD_MAX_NOTEBOOK (%d)", res.ContentLength, g.cfg.MaxNotebook)}
	}
	sc := newModelScanner()
	var head bytes.Buffer
	buf := make([]byte, 8<<10)
	var rerr error
	for !sc.ContentSet && !sc.Complete() && sc.Err() == nil && head.Len() < maxModelHead {
		n, err := res.Body.Read(buf)
		head.Write(buf[:n])
		_, _ = sc.Write(buf[:n])
		if err != nil {
			if !errors.Is(err, io.EOF) {
				rerr = fmt.Errorf("reading the server's answer: %w", err)
			}
			break
		}
	}
	// What was read goes back in front of the rest, whatever is decided
	// (audit mode passes a denied answer on).
	orig := res.Body
	res.Body = readCloser{io.MultiReader(bytes.NewReader(head.Bytes()), orig), orig}
	if rerr != nil {
		return rerr
	}
	unreadable := &responseDenial{"deny-contents-unreadable", "the server's answer is not a contents model"}
	if sc.Err() != nil || (!sc.ContentSet && !sc.Complete()) {
		return unreadable
	}
	limit := int64(SmallCap)
	switch sc.Content {
	case KindString, KindNumber, KindBool:
		return &responseDenial{"deny-contents-not-notebook", "only notebooks can be opened on this server"}
	case KindObject, KindArray:
		limit = g.cfg.MaxNotebook
	}
	if res.ContentLength > limit {
		return &responseDenial{"deny-over-cap", fmt.Sprintf("the answer (%d bytes) is larger than hubwarden allows here (%d)", res.ContentLength, limit)}
	}
	res.Body = &checkedBody{g: g, x: x, r: res.Body, c: orig, limit: limit, model: sc, scanned: int64(head.Len())}
	return nil
}

// readCloser reads from r and closes c.
type readCloser struct {
	io.Reader
	c io.Closer
}

func (r readCloser) Close() error { return r.c.Close() }

// withhold replaces the body of a contents error answer by a message of
// the guard's own: the server's can quote the file it failed to read
// ("Unreadable Notebook: ... NotJSONError('Notebook does not appear to be
// JSON: \"a,b,c...'").
func (g *Guard) withhold(x *exchange, res *http.Response) {
	x.withheld = true
	if g.cfg.Mode != Enforce {
		return
	}
	res.Body.Close()
	body, _ := json.Marshal(map[string]any{
		"message": fmt.Sprintf("%d %s (hubwarden withheld the server's message: it can quote the file)", res.StatusCode, http.StatusText(res.StatusCode)),
		"reason":  nil,
	})
	res.Body = io.NopCloser(bytes.NewReader(body))
	res.ContentLength = int64(len(body))
	res.Header.Set("Content-Length", strconv.Itoa(len(body)))
	res.Header.Set("Content-Type", "application/json")
	res.Header.Del("Content-Encoding")
	res.Header.Del("Etag")
}

// checkedBody passes an answer's body on while checking it: at most limit
// bytes, and, for a contents model, a model that keeps to what its first
// bytes promised (a notebook has type "notebook", a listing "directory").
// The model's closing brace is held back until the end is checked, so a
// model that fails the check never reaches the client whole. A failure
// ends the body with an error: the proxy then aborts the answer.
type checkedBody struct {
	g       *Guard
	x       *exchange
	r       io.Reader
	c       io.Closer
	limit   int64
	n       int64
	model   *modelScanner
	scanned int64  // bytes already fed to model
	held    []byte // from the model's closing brace on, until EOF
	eof     bool
	failed  error
}

func (b *checkedBody) Read(p []byte) (int, error) {
	if b.failed != nil {
		return 0, b.failed
	}
	if b.eof {
		if len(b.held) > 0 {
			n := copy(p, b.held)
			b.held = b.held[n:]
			return n, nil
		}
		return 0, io.EOF
	}
	n, err := b.r.Read(p)
	off := b.n // the stream offset of p[0]
	b.n += int64(n)
	if b.n > b.limit {
		return 0, b.fail("deny-over-cap", fmt.Sprintf("the answer is larger than hubwarden allows here (%d bytes)", b.limit))
	}
	out := n
	if b.model != nil {
		if from := b.scanned - off; from < int64(n) {
			_, _ = b.model.Write(p[max(from, 0):n])
			b.scanned = b.n
		}
		if b.model.Err() != nil {
			return 0, b.fail("deny-contents-unreadable", "the server's answer is not a contents model")
		}
		if d := b.model.DoneAt; d >= 0 && d < b.n {
			// Hold back everything from the closing brace on.
			out = int(max(d-off, 0))
			b.held = append(b.held, p[out:n]...)
		}
	}
	if errors.Is(err, io.EOF) {
		b.eof = true
		if b.model != nil {
			if f := b.modelEnd(); f != nil {
				if out > 0 {
					b.failed = f
					return out, nil
				}
				return 0, f
			}
		}
		return out, nil
	}
	if err != nil {
		b.x.upErr = err
	}
	return out, err
}

// modelEnd checks the whole model at its end.
func (b *checkedBody) modelEnd() error {
	m := b.model
	switch {
	case !m.Complete():
		return b.fail("deny-contents-unreadable", "the server's answer ended before the model did")
	case m.Content == KindObject && (m.Type != "notebook" || m.Format != "json"):
		return b.fail("deny-contents-not-notebook", "only notebooks can be opened on this server")
	case m.Content == KindArray && m.Type != "directory":
		return b.fail("deny-contents-not-notebook", "the server's answer is not a directory listing")
	}
	return nil
}

// fail records a failed check; in audit mode it only records it.
func (b *checkedBody) fail(rule, reason string) error {
	b.x.respRule, b.x.respReason = rule, reason
	if b.g.cfg.Mode != Enforce {
		b.model = nil
		return nil
	}
	b.x.aborted.Store(true)
	b.failed = &responseDenial{rule, reason}
	return b.failed
}

func (b *checkedBody) Close() error { return b.c.Close() }

// upgraded counts the bytes of a websocket the server accepted and
// registers it for progress lines.
func (g *Guard) upgraded(x *exchange, res *http.Response) error {
	rwc, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		return errors.New("the server switched protocols without a connection to hand over")
	}
	x.upgrade = true
	x.backend = rwc
	res.Body = &wsConn{rwc: rwc, x: x}
	g.mu.Lock()
	g.sockets[x] = struct{}{}
	g.mu.Unlock()
	g.m.wsOpen.WithLabelValues(string(x.d.Family)).Inc()
	return nil
}

// wsConn is the server's side of a websocket: what is read from it goes
// to the client, what is written to it came from the client.
type wsConn struct {
	rwc io.ReadWriteCloser
	x   *exchange
}

func (c *wsConn) Read(p []byte) (int, error) {
	n, err := c.rwc.Read(p)
	c.x.toClient.Add(int64(n))
	return n, err
}

func (c *wsConn) Write(p []byte) (int, error) {
	n, err := c.rwc.Write(p)
	c.x.toServer.Add(int64(n))
	return n, err
}

func (c *wsConn) Close() error { return c.rwc.Close() }

// proxyError answers when the proxy could not get an answer through.
func (g *Guard) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	x := exchangeOf(r.Context())
	var rd *responseDenial
	if errors.As(err, &rd) {
		g.writeRefusal(w, r, http.StatusForbidden, rd.rule, rd.reason)
		return
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		x.respRule = "deny-request-too-large"
		g.writeRefusal(w, r, http.StatusRequestEntityTooLarge, x.respRule, "the request body is larger than the server accepts")
		return
	}
	x.upErr = err
	if errors.Is(err, context.Canceled) {
		// The client went away before the answer came.
		w.WriteHeader(499)
		return
	}
	g.m.errors.WithLabelValues(ErrUpstream).Inc()
	g.writeRefusal(w, r, http.StatusBadGateway, "upstream-error", "the notebook server did not answer")
}

// writeRefusal answers with status and a short message: JSON with a
// "message" (JupyterLab shows it in its error dialog), or a small HTML
// page when a browser navigates to the address. X-Hubwarden-Rule names the
// rule.
func (g *Guard) writeRefusal(w http.ResponseWriter, r *http.Request, status int, rule, reason string) {
	h := w.Header()
	h.Set("X-Hubwarden-Rule", rule)
	h.Set("Cache-Control", "no-store")
	msg := "hubwarden: " + reason
	if navigation(r) {
		h.Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		fmt.Fprintf(w, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>%d %s</title></head>"+
			"<body><h1>%d %s</h1><p>%s</p><p><small>rule: %s</small></p></body></html>\n",
			status, http.StatusText(status), status, http.StatusText(status), html.EscapeString(msg), html.EscapeString(rule))
		return
	}
	body, _ := json.Marshal(map[string]string{"message": msg, "reason": rule})
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// navigation reports whether a browser is loading the address as a page
// (or a frame), rather than fetching it for a script.
func navigation(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Dest") {
	case "document", "iframe", "frame":
		return true
	case "":
		return r.Method == http.MethodGet && strings.Contains(r.Header.Get("Accept"), "text/html")
	}
	return false
}

// countingWriter records the status and counts the body bytes of an answer.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 || code == http.StatusSwitchingProtocols {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// Unwrap gives http.ResponseController (flushes, the websocket hijack)
// the server's writer.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts the request body bytes read.
type countingBody struct {
	r io.Reader
	c io.Closer
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (b *countingBody) Close() error { return b.c.Close() }

// debugWriter logs what the standard library's loggers write, at debug level.
type debugWriter struct{ log zerolog.Logger }

func (d debugWriter) Write(p []byte) (int, error) {
	d.log.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
