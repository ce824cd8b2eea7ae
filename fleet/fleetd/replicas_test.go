package fleetd

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"remoteler.dev/edge/proto/api"
)

// TestReadyHandler: the readiness check fails while the replica has lost
// its lease and while fleetd stops; other requests are refused only
// without the lease (a stopping fleetd still serves what reaches it).
func TestReadyHandler(t *testing.T) {
	for _, tc := range []struct {
		name              string
		serving, stopping bool
		wantReady         int // status of the readiness check
		wantOther         int // status of another request
		wantBody          api.Ready
	}{
		{"serving", true, false, http.StatusOK, http.StatusTeapot, api.Ready{Ready: true, Replica: "r-a"}},
		{"stopping", true, true, http.StatusServiceUnavailable, http.StatusTeapot, api.Ready{Replica: "r-a", Stopping: true}},
		{"without its lease", false, false, http.StatusServiceUnavailable, http.StatusServiceUnavailable, api.Ready{Replica: "r-a"}},
		{"stopping without its lease", false, true, http.StatusServiceUnavailable, http.StatusServiceUnavailable, api.Ready{Replica: "r-a", Stopping: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
			h := readyHandler("r-a", func() bool { return tc.serving }, func() bool { return tc.stopping }, next)

			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, api.PathReady, nil))
			var got api.Ready
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatalf("readiness body %q: %v", rec.Body.String(), err)
			}
			if rec.Code != tc.wantReady || got != tc.wantBody {
				t.Errorf("readiness check: %d %+v; want %d %+v", rec.Code, got, tc.wantReady, tc.wantBody)
			}

			rec = httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/devices", nil))
			if rec.Code != tc.wantOther {
				t.Errorf("another request: %d; want %d", rec.Code, tc.wantOther)
			}
			rec = httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, api.PathPing, nil))
			if rec.Code != http.StatusTeapot {
				t.Errorf("the ping: %d; want it served", rec.Code)
			}
		})
	}
}
