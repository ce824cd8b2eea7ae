// Package metrics is fleetd's Prometheus metrics, with the Go client the
// ecosystem uses (prometheus/client_golang): devices by state, tunnels,
// connects (and so reconnects), sessions by service, brokered bytes, the
// audit trail's events (logins, failures, what devices send: the ingest
// rate) and the backlog devices hold, and the latency of HTTP requests,
// besides the Go runtime's and the process's own.
//
// Gauges are read when Prometheus scrapes (a Collector over the fleet's
// live picture, the tunnels, the sessions and the audit log); counters
// are fed by hooks: the audit log tells every event it stores
// (audit.Config.OnStored), the broker every byte it carries
// (broker.Config.Bytes), and Instrument wraps the HTTPS handler.
//
// Where metrics are served and who may read them is fleetd's (a listener
// of its own, loopback or a bearer token: Serve); docs/metrics.md has a
// scrape configuration and example alerts.
//
// Only fleet/... server packages import metrics.
package metrics

import (
	"bufio"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"remoteler.dev/edge/fleet/fleetview"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/kubewire"
)

// Sources are what the gauges read at each scrape; a nil one is left out.
type Sources struct {
	// View is the fleet's live picture: devices by state.
	View *fleetview.View
	// Tunnels counts the device tunnels this fleetd holds.
	Tunnels func() int
	// Sessions lists the live brokered sessions.
	Sessions *sessions.Registry
	// Backlog adds up the events devices hold in their audit queues.
	Backlog func() (uint64, error)
}

// Metrics holds fleetd's metrics. Create it with New.
type Metrics struct {
	reg      *prometheus.Registry
	events   *prometheus.CounterVec
	logins   *prometheus.CounterVec
	connects prometheus.Counter
	bytes    *prometheus.CounterVec
	requests *prometheus.HistogramVec
	gauges   gauges
}

// SetSources replaces what the gauges read (for a fleetd that builds
// them after the hooks are in place).
func (m *Metrics) SetSources(src Sources) { m.gauges.src.Store(&src) }

// countedTypes are the audit event types counted by name; others count as
// "other", so that what a device writes cannot grow the metrics without
// bound.
var countedTypes = map[string]bool{}

func init() {
	for _, t := range []string{
		proto.EventUserLogin, proto.EventUserLoginFailed, proto.EventAccessDenied, proto.EventSessionStart, proto.EventSessionEnd,
		proto.EventDeviceJoin, proto.EventDeviceOnline, proto.EventDeviceOffline, proto.EventDeviceDelete, proto.EventCertIssued,
		proto.EventExec, proto.EventExecEnd, proto.EventFileTransfer, proto.EventPortForward, kubewire.EventRequest, proto.EventAppRequest, proto.EventAuditDropped, proto.EventAuditDamaged,
		proto.EventUpdateOffered, proto.EventUpdateCommitted, proto.EventUpdateRolledBack, proto.EventUpdateFailed,
		proto.EventUpdateRefused, proto.EventRolloutChange,
	} {
		countedTypes[t] = true
	}
}

// New returns fleetd's metrics over src.
func New(src Sources) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_audit_events_total",
			Help: "Audit events stored, by source (fleet, or device: the ingest rate) and type (other types count as \"other\")."},
			[]string{"source", "type"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_logins_total",
			Help: "User logins, by outcome (success, failure) and way (api: tsh and fleetctl, web: the browser)."}, []string{"outcome", "method"}),
		connects: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleet_device_connects_total",
			Help: "Device tunnel connections accepted (every hello): their rate beyond the devices' count is reconnects."}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_brokered_bytes_total",
			Help: "Bytes carried by brokered sessions, by service and direction (up: to the device)."}, []string{"service", "direction"}),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "fleet_http_request_duration_seconds",
			Help:    "Time to the first byte of the answer of HTTPS requests, by route, method and status class.",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}},
			[]string{"route", "method", "code"}),
	}
	m.gauges.src.Store(&src)
	m.reg.MustRegister(m.events, m.logins, m.connects, m.bytes, m.requests, &m.gauges,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Stored counts an audit event stored (audit.Config.OnStored).
func (m *Metrics) Stored(source string, e *proto.AuditEvent) {
	kind := "device"
	if source == "fleet" {
		kind = "fleet"
	}
	typ := e.Type
	if !countedTypes[typ] {
		typ = "other"
	}
	m.events.WithLabelValues(kind, typ).Inc()
	if kind != "fleet" {
		return
	}
	switch e.Type {
	case proto.EventUserLogin, proto.EventUserLoginFailed:
		outcome := "success"
		if e.Type == proto.EventUserLoginFailed {
			outcome = "failure"
		}
		method := "api"
		if e.Fields["method"] == "web" {
			method = "web"
		}
		m.logins.WithLabelValues(outcome, method).Inc()
	case proto.EventDeviceOnline:
		m.connects.Inc()
	}
}

// Bytes counts bytes a brokered stream carried (broker.Config.Bytes).
func (m *Metrics) Bytes(service string, up, down int) {
	if up > 0 {
		m.bytes.WithLabelValues(service, "up").Add(float64(up))
	}
	if down > 0 {
		m.bytes.WithLabelValues(service, "down").Add(float64(down))
	}
}

// Instrument measures h's requests: the time to the first byte of the
// answer (so a long stream, a brokered session or a live page counts once,
// for its start), by the route the request matched (the ServeMux
// pattern, a bounded set; "other" when none did).
func (m *Metrics) Instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tw := &timedWriter{ResponseWriter: w, start: time.Now()}
		h.ServeHTTP(tw, r)
		if tw.code == 0 {
			tw.code, tw.first = http.StatusOK, time.Since(tw.start)
		}
		route := r.Pattern
		if route == "" {
			route = "other"
		} else if _, p, ok := strings.Cut(route, " "); ok {
			route = p
		}
		m.requests.WithLabelValues(route, r.Method, fmt.Sprintf("%dxx", tw.code/100)).Observe(tw.first.Seconds())
	})
}

// timedWriter notes when the answer's head is written.
type timedWriter struct {
	http.ResponseWriter
	start time.Time
	first time.Duration
	code  int
}

func (w *timedWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code, w.first = code, time.Since(w.start)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *timedWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code, w.first = http.StatusOK, time.Since(w.start)
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the writer's own methods
// (Flush, Hijack: live pages, brokered connections).
func (w *timedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush passes a flush on (server-sent events).
func (w *timedWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		if w.code == 0 {
			w.code, w.first = http.StatusOK, time.Since(w.start)
		}
		f.Flush()
	}
}

// Hijack passes a hijack on (brokered connections, websockets).
func (w *timedWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("metrics: the connection cannot be taken over")
	}
	if w.code == 0 {
		w.code, w.first = http.StatusSwitchingProtocols, time.Since(w.start)
	}
	return h.Hijack()
}

// Handler serves the metrics in Prometheus's text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// gauges reads the fleet's state at each scrape.
type gauges struct{ src atomic.Pointer[Sources] }

var (
	devicesDesc  = prometheus.NewDesc("fleet_devices", "Devices in the fleet, by state (online: a tunnel to this fleetd).", []string{"state"}, nil)
	degradedDesc = prometheus.NewDesc("fleet_devices_degraded", "Online devices whose link is degraded (loss or round-trip time past the dashboard's thresholds).", nil, nil)
	outdatedDesc = prometheus.NewDesc("fleet_devices_outdated", "Devices whose agent is older than the newest release.", nil, nil)
	tunnelsDesc  = prometheus.NewDesc("fleet_tunnels", "Device tunnels this fleetd holds.", nil, nil)
	sessionsDesc = prometheus.NewDesc("fleet_sessions", "Live brokered sessions, by service.", []string{"service"}, nil)
	backlogDesc  = prometheus.NewDesc("fleet_audit_backlog_events", "Audit events devices last reported waiting in their queues, not yet delivered.", nil, nil)
)

func (g *gauges) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{devicesDesc, degradedDesc, outdatedDesc, tunnelsDesc, sessionsDesc, backlogDesc} {
		ch <- d
	}
}

func (g *gauges) Collect(ch chan<- prometheus.Metric) {
	src := *g.src.Load()
	if v := src.View; v != nil {
		c := v.Counts()
		ch <- prometheus.MustNewConstMetric(devicesDesc, prometheus.GaugeValue, float64(c.Online), "online")
		ch <- prometheus.MustNewConstMetric(devicesDesc, prometheus.GaugeValue, float64(c.Offline), "offline")
		ch <- prometheus.MustNewConstMetric(degradedDesc, prometheus.GaugeValue, float64(c.Degraded))
		ch <- prometheus.MustNewConstMetric(outdatedDesc, prometheus.GaugeValue, float64(c.Outdated))
	}
	if src.Tunnels != nil {
		ch <- prometheus.MustNewConstMetric(tunnelsDesc, prometheus.GaugeValue, float64(src.Tunnels()))
	}
	if src.Sessions != nil {
		by := map[string]int{proto.ServiceSSH: 0, proto.ServiceKube: 0, proto.ServiceApp: 0}
		for _, s := range src.Sessions.List(sessions.Filter{}) {
			by[s.Service]++
		}
		for service, n := range by {
			ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(n), service)
		}
	}
	if src.Backlog != nil {
		if n, err := src.Backlog(); err == nil {
			ch <- prometheus.MustNewConstMetric(backlogDesc, prometheus.GaugeValue, float64(n))
		}
	}
}

// Server serves the metrics on a listener of their own: loopback, or any
// address with a bearer token (ServeConfig).
type ServeConfig struct {
	// Listen is the HOST:PORT to serve on.
	Listen string
	// Token, when set, must be sent as "Authorization: Bearer TOKEN".
	// Without one, Listen must be a loopback address.
	Token string
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Serve serves /metrics on cfg.Listen until ctx ends. It refuses an
// address that is not loopback when there is no token: metrics say how
// big the fleet is, who logs in and when, and are not for everyone.
func (m *Metrics) Serve(ctx context.Context, cfg ServeConfig, ready func(addr net.Addr)) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Token == "" && !loopback(cfg.Listen) {
		return fmt.Errorf("metrics: %s is not a loopback address: give a bearer token (metrics_token_file) or listen on 127.0.0.1", cfg.Listen)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	if ready != nil {
		ready(ln.Addr())
	}
	mux := http.NewServeMux()
	h := m.Handler()
	mux.Handle("GET /metrics", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if cfg.Token != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(cfg.Token)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="fleetd metrics"`)
				http.Error(w, "metrics need the bearer token (metrics_token_file)", http.StatusUnauthorized)
				return
			}
		}
		h.ServeHTTP(w, r)
	}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(log.With("component", "metrics").Handler(), slog.LevelDebug)}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

// loopback reports whether a HOST:PORT names a loopback address only.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
