package kubestatus

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestWrite(t *testing.T) {
	tests := []struct {
		code   int
		reason string
	}{
		{http.StatusForbidden, "Forbidden"},
		{http.StatusUnauthorized, "Unauthorized"},
		{http.StatusServiceUnavailable, "ServiceUnavailable"},
		{http.StatusTeapot, "InternalError"},
	}
	for _, tt := range tests {
		w := httptest.NewRecorder()
		Write(w, tt.code, "no")
		var st struct {
			Kind, Status, Message, Reason string
			Code                          int
		}
		if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil {
			t.Fatal(err)
		}
		if w.Code != tt.code || st.Kind != "Status" || st.Status != "Failure" || st.Reason != tt.reason || st.Code != tt.code || st.Message != "no" {
			t.Errorf("Write(%d): %d %+v, want reason %s", tt.code, w.Code, st, tt.reason)
		}
	}
}
