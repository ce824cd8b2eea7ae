package fleetd

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/appsrv"
)

// TestRoute: apps by their host; the browser pages fleetd mounts; every
// other path, other pages of the API's own (the headless login's
// /web/device) included, to the API.
func TestRoute(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /web/login", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("web")) })
	mux.HandleFunc("GET /.well-known/jwks.json", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("web")) })
	wb := &web{mux: mux, apps: appsrv.New(appsrv.Config{Addr: apps.Addr{Domain: "fleet.test", Port: 443}})}
	h := wb.route(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("api")) }))
	tests := []struct{ host, path, want string }{
		{"fleet.test", "/web/login", "web"},
		{"fleet.test", "/.well-known/jwks.json", "web"},
		{"fleet.test", "/web/device", "api"},
		{"fleet.test", "/v1/ping", "api"},
		{"127.0.0.1:3080", "/v1/connect", "api"},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "https://"+tt.host+tt.path, nil)
		h.ServeHTTP(rec, req)
		if got := rec.Body.String(); got != tt.want {
			t.Errorf("%s%s went to %q, want %q", tt.host, tt.path, got, tt.want)
		}
	}
	// An app's host goes to the apps, whatever the path: without a
	// session, a page load is sent to the fleet's launch.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "https://nodered--pi-1.fleet.test/web/login", nil)
	req.Header.Set("Sec-Fetch-Mode", "navigate")
	h.ServeHTTP(rec, req)
	if loc := rec.Header().Get("Location"); rec.Code != http.StatusFound || loc != "https://fleet.test/web/apps/launch?app=nodered--pi-1&path=%2Fweb%2Flogin" {
		t.Errorf("an app's host: %d to %q", rec.Code, loc)
	}
}
