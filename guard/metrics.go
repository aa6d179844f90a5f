package guard

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Decision labels of the metrics.
const (
	LabelAllow     = "allow"
	LabelDeny      = "deny"
	LabelWouldDeny = "would-deny" // audit mode: denied by the policy, passed on
)

// Error kinds of hubwarden_guard_errors_total.
const (
	ErrUpstream = "upstream" // the server could not be reached or broke off its answer
	ErrAborted  = "aborted"  // an answer cut off by the guard mid-way (a check failed after the headers went out)
	ErrPanic    = "panic"    // a handler panicked (a bug), answered 500
)

// Metrics are the guard's Prometheus collectors.
type Metrics struct {
	requests      *prometheus.CounterVec
	responseBytes *prometheus.CounterVec
	requestBytes  *prometheus.CounterVec
	wsOpen        *prometheus.GaugeVec
	wsBytes       *prometheus.CounterVec
	errors        *prometheus.CounterVec
}

// NewMetrics creates the guard's collectors and registers them with reg
// (the sidecar's registry, so they are served on /metrics with the rest).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "hubwarden", "guard"
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "HTTP requests the guard decided, by decision (allow, deny, would-deny in audit mode) and route family.",
		}, []string{"decision", "family"}),
		responseBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "response_bytes_total",
			Help: "Response body bytes the guard sent to clients, by decision and route family (websockets not included).",
		}, []string{"decision", "family"}),
		requestBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "request_bytes_total",
			Help: "Request body bytes the guard passed to the server (uploads, saves), by route family.",
		}, []string{"family"}),
		wsOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "websockets_open",
			Help: "Websockets open through the guard, by route family.",
		}, []string{"family"}),
		wsBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "websocket_bytes_total",
			Help: "Websocket bytes through the guard, by route family and direction (to_client, to_server), framing included.",
		}, []string{"family", "direction"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "errors_total",
			Help: "Guard errors: upstream (the server unreachable or failing mid-answer), aborted (an answer cut off after a failed check), panic.",
		}, []string{"kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.responseBytes, m.requestBytes, m.wsOpen, m.wsBytes, m.errors)
	}
	return m
}
