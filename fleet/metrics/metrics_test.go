package metrics

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/proto"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d", rec.Code)
	}
	return rec.Body.String()
}

func TestCounters(t *testing.T) {
	reg := sessions.New(sessions.Config{})
	defer reg.Close()
	live, err := reg.Register(sessions.Session{ID: "s1", Service: proto.ServiceSSH, User: "alice", DeviceID: "d1", Started: time.Now()}, func(string) {})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Done("")
	m := New(Sources{Tunnels: func() int { return 3 }, Sessions: reg, Backlog: func() (uint64, error) { return 42, nil }})
	m.Stored("fleet", &proto.AuditEvent{Type: proto.EventUserLoginFailed})
	m.Stored("fleet", &proto.AuditEvent{Type: proto.EventUserLoginFailed, Fields: map[string]string{"method": "web"}})
	m.Stored("fleet", &proto.AuditEvent{Type: proto.EventUserLogin})
	m.Stored("fleet", &proto.AuditEvent{Type: proto.EventDeviceOnline})
	m.Stored("d1", &proto.AuditEvent{Type: proto.EventExec})
	// What a device calls an event cannot grow the metrics.
	m.Stored("d1", &proto.AuditEvent{Type: "made.up.by.the.device"})
	m.Stored("d1", &proto.AuditEvent{Type: proto.EventUserLoginFailed}) // a device's claim is no login
	m.Bytes(proto.ServiceSSH, 100, 0)
	m.Bytes(proto.ServiceSSH, 0, 250)
	checks := []struct {
		name string
		got  float64
		want float64
	}{
		{"failed api logins", testutil.ToFloat64(m.logins.WithLabelValues("failure", "api")), 1},
		{"failed web logins", testutil.ToFloat64(m.logins.WithLabelValues("failure", "web")), 1},
		{"logins", testutil.ToFloat64(m.logins.WithLabelValues("success", "api")), 1},
		{"connects", testutil.ToFloat64(m.connects), 1},
		{"device events", testutil.ToFloat64(m.events.WithLabelValues("device", proto.EventExec)), 1},
		{"other device events", testutil.ToFloat64(m.events.WithLabelValues("device", "other")), 1},
		{"bytes up", testutil.ToFloat64(m.bytes.WithLabelValues(proto.ServiceSSH, "up")), 100},
		{"bytes down", testutil.ToFloat64(m.bytes.WithLabelValues(proto.ServiceSSH, "down")), 250},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}
	body := scrape(t, m)
	for _, want := range []string{"fleet_tunnels 3", `fleet_sessions{service="ssh"} 1`, `fleet_sessions{service="kube"} 0`,
		"fleet_audit_backlog_events 42", "go_goroutines", "process_cpu_seconds_total", `fleet_audit_events_total{source="device",type="other"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("the scrape lacks %q", want)
		}
	}
	if strings.Contains(body, "made.up") {
		t.Error("a device's made-up type reached the metrics")
	}
}

func TestInstrument(t *testing.T) {
	m := New(Sources{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /web/devices/{name}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(404) })
	mux.HandleFunc("GET /web/live/devices", func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush()
		io.WriteString(w, "event: x\n\n")
	})
	h := m.Instrument(mux)
	for _, path := range []string{"/web/devices/pi-1", "/web/devices/pi-2", "/web/live/devices", "/nope"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", path, nil))
	}
	body := scrape(t, m)
	for _, want := range []string{
		`fleet_http_request_duration_seconds_count{code="4xx",method="GET",route="/web/devices/{name}"} 2`,
		`fleet_http_request_duration_seconds_count{code="2xx",method="GET",route="/web/live/devices"} 1`,
		`fleet_http_request_duration_seconds_count{code="4xx",method="GET",route="other"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the scrape lacks %q", want)
		}
	}
	if strings.Contains(body, "pi-1") {
		t.Error("a device name became a label")
	}
}

func TestServe(t *testing.T) {
	m := New(Sources{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.Serve(ctx, ServeConfig{Listen: "0.0.0.0:0"}, nil); err == nil || !strings.Contains(err.Error(), "not a loopback address") {
		t.Errorf("a wildcard address without a token: %v", err)
	}
	for _, tc := range []struct {
		name, token, send string
		want              int
	}{
		{"loopback, no token", "", "", 200},
		{"token sent", "s3cret", "Bearer s3cret", 200},
		{"token missing", "s3cret", "", 401},
		{"token wrong", "s3cret", "Bearer nope", 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			addrc := make(chan net.Addr, 1)
			done := make(chan error, 1)
			go func() {
				done <- m.Serve(ctx, ServeConfig{Listen: "127.0.0.1:0", Token: tc.token}, func(a net.Addr) { addrc <- a })
			}()
			addr := <-addrc
			req, _ := http.NewRequest("GET", "http://"+addr.String()+"/metrics", nil)
			if tc.send != "" {
				req.Header.Set("Authorization", tc.send)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%d, want %d", resp.StatusCode, tc.want)
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		})
	}
}
