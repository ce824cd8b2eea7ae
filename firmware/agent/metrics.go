package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/internal/buildinfo"
)

// The agent's optional local metrics endpoint (--metrics-listen, off by
// default): a handful of gauges and counters in Prometheus's text format,
// written by hand. The Go client (prometheus/client_golang, which fleetd
// uses) would add 2.4 MB to the linux/arm64 agent, past its 12 MB budget
// (docs/benchmarks.md, "Metrics"); these few lines cost next to nothing.

// metric is one sample of the text format.
type metric struct {
	name, help, kind string // kind: gauge or counter
	value            float64
	labels           [][2]string
}

// metrics reads the agent's figures now.
func (a *Agent) metrics() []metric {
	up := 0.0
	var reconnects, sessions float64
	if a.tunnel != nil {
		if a.tunnel.Up() {
			up = 1
		}
		reconnects = float64(a.tunnel.Reconnects())
		sessions = float64(a.tunnel.Sessions())
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	out := []metric{
		{"edge_agent_info", "The agent's version and build target.", "gauge", 1,
			[][2]string{{"version", buildinfo.Version}, {"goarch", runtime.GOARCH}}},
		{"edge_agent_tunnel_up", "1 while the tunnel to the fleet is up.", "gauge", up, nil},
		{"edge_agent_tunnel_reconnects_total", "Tunnel connections made after the first.", "counter", reconnects, nil},
		{"edge_agent_sessions", "Brokered sessions the agent is serving.", "gauge", sessions, nil},
		{"edge_agent_goroutines", "Goroutines.", "gauge", float64(runtime.NumGoroutine()), nil},
		{"edge_agent_heap_bytes", "Bytes of the Go heap in use.", "gauge", float64(ms.HeapInuse), nil},
		{"edge_agent_start_time_seconds", "When the agent started, Unix seconds.", "gauge", float64(a.started.Unix()), nil},
	}
	if au := a.audit; au != nil && au.q != nil {
		st := au.q.Status()
		out = append(out,
			metric{"edge_agent_audit_queue_events", "Audit events waiting on the device for the fleet.", "gauge", float64(st.Pending), nil},
			metric{"edge_agent_audit_queue_bytes", "Bytes of the audit events waiting.", "gauge", float64(st.Bytes), nil},
			metric{"edge_agent_audit_queue_cap_bytes", "The audit queue's cap.", "gauge", float64(st.Cap), nil},
			metric{"edge_agent_audit_dropped_total", "Audit events the queue could not keep.", "counter", float64(st.Dropped), nil},
		)
	}
	return out
}

// writeMetrics writes ms in Prometheus's text format (version 0.0.4).
func writeMetrics(w io.Writer, ms []metric) error {
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s", m.name, m.help, m.name, m.kind, m.name)
		if len(m.labels) > 0 {
			b.WriteByte('{')
			for i, l := range m.labels {
				if i > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, "%s=\"%s\"", l[0], escapeLabel(l[1]))
			}
			b.WriteByte('}')
		}
		fmt.Fprintf(&b, " %g\n", m.value)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// escapeLabel escapes a label value: backslash, double quote, newline.
func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// serveMetrics serves /metrics on cfg.MetricsListen until ctx ends.
func (a *Agent) serveMetrics(ctx context.Context, wg *sync.WaitGroup) {
	if a.cfg.MetricsListen == "" {
		return
	}
	ln, err := net.Listen("tcp", a.cfg.MetricsListen)
	if err != nil {
		a.log.Warn("metrics not served", "err", err)
		return
	}
	a.log.Info("metrics served", "addr", "http://"+ln.Addr().String()+"/metrics")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		writeMetrics(w, a.metrics())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			a.log.Warn("metrics endpoint stopped", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
}
