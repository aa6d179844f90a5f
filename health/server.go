package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/net/netutil"
)

// Register adds GET /healthz, /readyz and /metrics to mux. m may be nil (no
// /metrics).
func Register(mux *http.ServeMux, st *Status, m *Metrics) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		ok, reasons := st.Healthy()
		write(w, ok, "unhealthy", reasons)
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, failing := st.Ready()
		write(w, ok, "not ready", failing)
	})
	if m != nil {
		mux.Handle("GET /metrics", m.Handler())
	}
}

func write(w http.ResponseWriter, ok bool, bad string, reasons []string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if ok {
		w.WriteHeader(http.StatusOK)
		fmt.Fprintln(w, "ok")
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintf(w, "%s: %s\n", bad, strings.Join(reasons, "; "))
}

// Server limits, chosen for a handful of local scrapers and probes; every
// response is small, so a legitimate client never comes close.
const (
	DefaultMaxConns   = 64
	readHeaderTimeout = 2 * time.Second
	readTimeout       = 5 * time.Second
	writeTimeout      = 10 * time.Second
	idleTimeout       = 30 * time.Second
	maxHeaderBytes    = 4 << 10
	shutdownGrace     = 2 * time.Second
)

// Server is the hardened HTTP server for the health endpoints. Adjust the
// fields before Serve.
type Server struct {
	HTTP     *http.Server
	MaxConns int // concurrent connections; more wait in the listen backlog
}

// NewServer returns a server for addr whose handler answers GET and HEAD only
// (405 for any other method) and then passes to h. It sets read, write and
// idle timeouts and a small header limit (431 beyond it), so slow or greedy
// clients on localhost are cut off.
func NewServer(addr string, h http.Handler) *Server {
	hs := &http.Server{
		Addr:              addr,
		Handler:           readOnly(h),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// Go's server would log per-connection errors (TLS probes, bad
		// requests) to the global logger: noise an abusive client controls.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	// One request per connection: an idle keep-alive connection would hold
	// one of the MaxConns slots for IdleTimeout and starve the probes. The
	// responses are tiny, so reconnecting costs little.
	hs.SetKeepAlivesEnabled(false)
	return &Server{HTTP: hs, MaxConns: DefaultMaxConns}
}

// readOnly rejects every method but GET and HEAD and bounds the request body.
func readOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 0)
		h.ServeHTTP(w, r)
	})
}

// Serve serves on ln, wrapped in a limit of MaxConns concurrent connections,
// until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if s.MaxConns > 0 {
		ln = netutil.LimitListener(ln, s.MaxConns)
	}
	err := s.HTTP.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ServeProbe serves the probe listener (Listen): at most
// ProbeConnsPerSource connections from one source, ProbeMaxConns in all.
func (s *Server) ServeProbe(ln net.Listener) error {
	err := s.HTTP.Serve(netutil.LimitListener(LimitPerSource(ln, ProbeConnsPerSource), ProbeMaxConns))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ServeLocal serves the local listener (Listen): LocalMaxConns at once.
func (s *Server) ServeLocal(ln net.Listener) error {
	err := s.HTTP.Serve(netutil.LimitListener(ln, LocalMaxConns))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Run listens on the server's address and serves until ctx is done, then
// shuts down within a short grace period.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", s.HTTP.Addr, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving health on %s: %w", s.HTTP.Addr, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := s.HTTP.Shutdown(sctx); err != nil {
		_ = s.HTTP.Close()
	}
	return <-errc
}
