package page

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestMessageIsEscapedWithStrictHeaders(t *testing.T) {
	w := httptest.NewRecorder()
	Message(w, http.StatusForbidden, Text{Title: "Refused", Message: `<script>alert(1)</script>`, Link: "/web/device", LinkText: "Again"})
	if w.Code != http.StatusForbidden {
		t.Errorf("status %d", w.Code)
	}
	body := w.Body.String()
	if strings.Contains(body, "<script>") || !strings.Contains(body, "&lt;script&gt;") {
		t.Errorf("message not escaped: %s", body)
	}
	h := w.Header()
	for k, want := range map[string]string{
		"Content-Security-Policy": "default-src 'none'", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
		"Referrer-Policy": "same-origin", "Cache-Control": "no-store", "Content-Type": "text/html",
	} {
		if !strings.Contains(h.Get(k), want) {
			t.Errorf("%s = %q, want %q in it", k, h.Get(k), want)
		}
	}
	if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "unsafe-inline") {
		t.Errorf("CSP %q", csp)
	}
}

func TestHeadersFormTargets(t *testing.T) {
	h := http.Header{}
	Headers(h, "https://idp.example.com")
	if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "form-action 'self' https://idp.example.com;") {
		t.Errorf("CSP %q", csp)
	}
}

func TestSameOrigin(t *testing.T) {
	const origin = "https://fleet.example.com:3080"
	tests := []struct {
		name   string
		header map[string]string
		want   bool
	}{
		{"same origin", map[string]string{"Origin": origin, "Sec-Fetch-Site": "same-origin"}, true},
		{"typed", map[string]string{"Sec-Fetch-Site": "none"}, true},
		{"no headers", nil, true},
		{"other origin", map[string]string{"Origin": "https://evil.example"}, false},
		{"sibling app", map[string]string{"Origin": "https://app--pi.fleet.example.com:3080", "Sec-Fetch-Site": "same-site"}, false},
		{"cross site", map[string]string{"Sec-Fetch-Site": "cross-site"}, false},
		{"null origin", map[string]string{"Origin": "null"}, false},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodPost, origin+"/web/device", nil)
		for k, v := range tt.header {
			r.Header.Set(k, v)
		}
		if got := SameOrigin(r, origin); got != tt.want {
			t.Errorf("%s: SameOrigin = %v, want %v", tt.name, got, tt.want)
		}
	}
}
