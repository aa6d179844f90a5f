package health

import (
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// namespace prefixes every hubwarden metric.
const namespace = "hubwarden"

// WatcherStats is a snapshot of the conntrack watcher's counters, read at
// scrape time. The sidecar adapts the watcher's own snapshot type to it, so
// this package does not depend on the watcher.
type WatcherStats struct {
	FlowsTracked   int     // flows the watcher currently holds a bucket for
	Demotions      uint64  // flows demoted to the slow class, since start
	Promotions     uint64  // flows promoted back to the fast class, since start
	BytesFast      uint64  // bytes the pod sent in the fast class, since start
	BytesSlow      uint64  // bytes the pod sent in the slow class, since start
	PodBucketBytes float64 // tokens left in the per-pod bucket
	PodGate        bool    // the pod gate is closed (every sending flow is demoted in the kernel)
	PodGateSets    uint64  // times the pod gate closed, since start
	Rearms         uint64  // flows re-armed (counters zeroed, tier set), since start
	Parked         uint64  // flows left to the kernel because the watcher tracks its maximum
	Events         uint64  // conntrack events taken
	EventsLost     uint64  // times the kernel dropped conntrack events
	Errors         uint64  // failed reads and mark or quota updates
	RefillAge      float64 // seconds since the pod bucket was last kept
	RefillLate     float64 // seconds the latest pod bucket tick came late (decaying maximum)
	DumpSeconds    float64 // duration of the last dump
	Dumps          uint64  // conntrack dumps read, since start
	Reads          uint64  // flows read one by one, since start
}

// Metrics is hubwarden's Prometheus registry and the collectors the sidecar
// feeds. It is safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	denials           *prometheus.CounterVec
	denialsDropped    prometheus.Counter
	reconcileDrifts   prometheus.Counter
	applyErrors       prometheus.Counter
	lastApplyDuration prometheus.Gauge

	mu      sync.Mutex
	watcher func() WatcherStats
}

// NewMetrics returns a registry with hubwarden's metrics, a build-info gauge
// carrying version, and the Go and process collectors.
func NewMetrics(version string) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "denials_total",
			Help: "Egress packets denied and logged, by address family (ipv4, ipv6) and protocol (tcp, udp, icmp, icmpv6, other).",
		}, []string{"family", "proto"}),
		denialsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "denial_log_dropped_total",
			Help: "Denial log messages the kernel dropped because the reader lagged (ENOBUFS), or that did not decode.",
		}),
		reconcileDrifts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "reconcile_drifts_total",
			Help: "Reconcile passes that found hubwarden's rules or qdiscs drifted from the plan and re-applied them.",
		}),
		applyErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "apply_errors_total",
			Help: "Applies (at start or on reconcile) that failed.",
		}),
		lastApplyDuration: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "last_apply_duration_seconds",
			Help: "Duration of the last apply, successful or not.",
		}),
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "Build information; the value is always 1.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	build.Set(1)
	m.reg.MustRegister(
		m.denials, m.denialsDropped, m.reconcileDrifts, m.applyErrors, m.lastApplyDuration, build,
		watcherCollector{m},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Registry returns the registry, for tests and for extra collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		// A scrape that fails half-way says so instead of serving partial data.
		ErrorHandling: promhttp.HTTPErrorOnError,
		// At most a few scrapes at once: the notebook user can reach /metrics.
		MaxRequestsInFlight: 4,
		Timeout:             5 * time.Second,
	})
}

// AddDenials counts n denied packets of one family and protocol.
func (m *Metrics) AddDenials(family, proto string, n int) {
	m.denials.WithLabelValues(family, proto).Add(float64(n))
}

// AddDenialsDropped counts denial log messages lost or undecodable.
func (m *Metrics) AddDenialsDropped(n int) { m.denialsDropped.Add(float64(n)) }

// AddDrift counts one reconcile pass that found drift.
func (m *Metrics) AddDrift() { m.reconcileDrifts.Inc() }

// ObserveApply records an apply's duration, and counts it when it failed.
func (m *Metrics) ObserveApply(d time.Duration, err error) {
	m.lastApplyDuration.Set(d.Seconds())
	if err != nil {
		m.applyErrors.Inc()
	}
}

// SetWatcher sets the function that returns the watcher's snapshot at scrape
// time; nil (the default) exports no watcher metrics. The function must be
// fast and safe for concurrent use.
func (m *Metrics) SetWatcher(f func() WatcherStats) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.watcher = f
}

func (m *Metrics) watcherFunc() func() WatcherStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.watcher
}

var (
	descFlows = prometheus.NewDesc(namespace+"_flows_tracked",
		"Flows the conntrack watcher currently tracks.", nil, nil)
	descDemotions = prometheus.NewDesc(namespace+"_demotions_total",
		"Flows demoted to the slow class.", nil, nil)
	descPromotions = prometheus.NewDesc(namespace+"_promotions_total",
		"Demoted flows promoted back to the fast class after being idle.", nil, nil)
	descBytes = prometheus.NewDesc(namespace+"_sent_bytes_total",
		"Bytes the pod sent, by class (fast, slow).", []string{"class"}, nil)
	descPodBucket = prometheus.NewDesc(namespace+"_pod_bucket_bytes",
		"Tokens (bytes) left in the per-pod budget bucket.", nil, nil)
	descPodGate = prometheus.NewDesc(namespace+"_pod_gate",
		"1 while the pod gate is closed: the pod budget is spent and the kernel demotes every flow that sends.", nil, nil)
	descPodGateSets = prometheus.NewDesc(namespace+"_pod_gate_sets_total",
		"Times the pod gate closed (the pod budget was spent).", nil, nil)
	descRearms = prometheus.NewDesc(namespace+"_rearms_total",
		"Flows the watcher re-armed: counters zeroed and the tripwire tier of their bucket set.", nil, nil)
	descParked = prometheus.NewDesc(namespace+"_flows_parked_total",
		"Flows left to the kernel (demoted, never promoted) because the watcher tracked its maximum.", nil, nil)
	descEvents = prometheus.NewDesc(namespace+"_conntrack_events_total",
		"Conntrack events the watcher took.", nil, nil)
	descEventsLost = prometheus.NewDesc(namespace+"_conntrack_events_lost_total",
		"Times the kernel dropped conntrack events because the watcher fell behind (it then dumps the table).", nil, nil)
	descWatcherErrors = prometheus.NewDesc(namespace+"_watcher_errors_total",
		"Failed conntrack reads, mark updates and pod bucket updates.", nil, nil)
	descRefillAge = prometheus.NewDesc(namespace+"_pod_bucket_age_seconds",
		"Seconds since the watcher last kept the pod bucket (refilled the kernel quota, or read the transmit counter).", nil, nil)
	descRefillLate = prometheus.NewDesc(namespace+"_watcher_late_seconds",
		"How late the watcher's latest pod bucket tick came: a starved watcher refills late (the kernel's bound holds regardless).", nil, nil)
	descDump = prometheus.NewDesc(namespace+"_dump_seconds",
		"Duration of the watcher's last conntrack dump.", nil, nil)
	descDumps = prometheus.NewDesc(namespace+"_conntrack_dumps_total",
		"Conntrack dumps the watcher read (each walks the node's whole conntrack hash): one every DUMP_INTERVAL while flows are busy or events do not come, else one every 10 s.", nil, nil)
	descReads = prometheus.NewDesc(namespace+"_conntrack_reads_total",
		"Flows the watcher read (and zeroed) one by one.", nil, nil)
)

// watcherCollector exports a WatcherStats snapshot as const metrics, so the
// numbers are read once per scrape and never go stale in between.
type watcherCollector struct{ m *Metrics }

func (c watcherCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFlows, descDemotions, descPromotions, descBytes, descPodBucket, descPodGate, descPodGateSets,
		descRearms, descParked, descEvents, descEventsLost, descWatcherErrors, descRefillAge, descRefillLate, descDump, descDumps, descReads} {
		ch <- d
	}
}

func (c watcherCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.m.watcherFunc()
	if f == nil {
		return
	}
	s := f()
	ch <- prometheus.MustNewConstMetric(descFlows, prometheus.GaugeValue, float64(s.FlowsTracked))
	ch <- prometheus.MustNewConstMetric(descDemotions, prometheus.CounterValue, float64(s.Demotions))
	ch <- prometheus.MustNewConstMetric(descPromotions, prometheus.CounterValue, float64(s.Promotions))
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.BytesFast), "fast")
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.BytesSlow), "slow")
	ch <- prometheus.MustNewConstMetric(descPodBucket, prometheus.GaugeValue, s.PodBucketBytes)
	gate := 0.0
	if s.PodGate {
		gate = 1
	}
	ch <- prometheus.MustNewConstMetric(descPodGate, prometheus.GaugeValue, gate)
	ch <- prometheus.MustNewConstMetric(descPodGateSets, prometheus.CounterValue, float64(s.PodGateSets))
	ch <- prometheus.MustNewConstMetric(descRearms, prometheus.CounterValue, float64(s.Rearms))
	ch <- prometheus.MustNewConstMetric(descParked, prometheus.CounterValue, float64(s.Parked))
	ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(s.Events))
	ch <- prometheus.MustNewConstMetric(descEventsLost, prometheus.CounterValue, float64(s.EventsLost))
	ch <- prometheus.MustNewConstMetric(descWatcherErrors, prometheus.CounterValue, float64(s.Errors))
	ch <- prometheus.MustNewConstMetric(descRefillAge, prometheus.GaugeValue, s.RefillAge)
	ch <- prometheus.MustNewConstMetric(descRefillLate, prometheus.GaugeValue, s.RefillLate)
	ch <- prometheus.MustNewConstMetric(descDump, prometheus.GaugeValue, s.DumpSeconds)
	ch <- prometheus.MustNewConstMetric(descDumps, prometheus.CounterValue, float64(s.Dumps))
	ch <- prometheus.MustNewConstMetric(descReads, prometheus.CounterValue, float64(s.Reads))
}
