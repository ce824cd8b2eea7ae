package appsrv

import (
	"net/http"
	"strings"
	"testing"

	"remoteler.dev/edge/proto"
)

func testSession() *session {
	return &session{origin: "https://nodered--pi-1.fleet.test:8443", app: proto.App{Name: "nodered", URI: "http://127.0.0.1:1880",
		Rewrite: &proto.AppRewrite{Redirect: []string{"nodered.lan", "localhost:1880"}}}}
}

func TestPublicLocation(t *testing.T) {
	as := testSession()
	tests := []struct{ in, want string }{
		{"http://127.0.0.1:1880/x?y=1", "https://nodered--pi-1.fleet.test:8443/x?y=1"},
		{"http://nodered.lan/admin", "https://nodered--pi-1.fleet.test:8443/admin"},
		{"https://nodered.lan/admin", "https://nodered--pi-1.fleet.test:8443/admin"},
		{"http://localhost:1880/", "https://nodered--pi-1.fleet.test:8443/"},
		{"http://localhost:9999/", "http://localhost:9999/"},
		{"/relative", "/relative"},
		{"https://example.com/", "https://example.com/"},
		{"http://127.0.0.1:1881/", "http://127.0.0.1:1881/"},
	}
	for _, tt := range tests {
		if got := as.publicLocation(tt.in); got != tt.want {
			t.Errorf("publicLocation(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestPublicCookie(t *testing.T) {
	as := testSession()
	tests := []struct {
		in, want string
		keep     bool
	}{
		{"sid=1; Path=/; HttpOnly", "sid=1; Path=/; HttpOnly", true},
		{"sid=1; Domain=127.0.0.1; Path=/", "sid=1; Path=/", true},
		{"sid=1; Domain=.nodered.lan; Path=/; Secure", "sid=1; Path=/; Secure", true},
		{"sid=1; Domain=example.com", "sid=1; Domain=example.com", true},
		{"__Host-fleet_app=evil; Path=/; Secure", "", false},
		{"__Host-fleet_session=evil; Path=/; Secure", "", false},
		{"__HOST-FLEET_APP=a b; Path=/; Secure", "", false},
		{" __Host-fleet_app=\"x\"", "", false},
	}
	for _, tt := range tests {
		got, keep := as.publicCookie(tt.in)
		if keep != tt.keep || (keep && got != tt.want) {
			t.Errorf("publicCookie(%q) = %q, %v; want %q, %v", tt.in, got, keep, tt.want, tt.keep)
		}
	}
}

func TestStripFleetCookies(t *testing.T) {
	h := http.Header{"Cookie": {"a=1; __Host-fleet_app=x", "__Host-fleet_session=y; b=2"}}
	stripFleetCookies(h)
	if got := h.Values("Cookie"); len(got) != 1 || got[0] != "a=1; b=2" {
		t.Errorf("got %q", got)
	}
	h = http.Header{"Cookie": {"__Host-fleet_app=x"}}
	stripFleetCookies(h)
	if len(h.Values("Cookie")) != 0 {
		t.Errorf("got %q, want no Cookie header", h.Values("Cookie"))
	}
}

func TestLocalPath(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/a/b?c=d", "/a/b?c=d"},
		{"//evil.example/", "/"},
		{"https://evil.example/", "/"},
		{"/\\evil.example", "/"},
		{"/a\r\nb", "/"},
		{"", "/"},
	}
	for _, tt := range tests {
		if got := localPath(tt.in); got != tt.want {
			t.Errorf("localPath(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestBrowser(t *testing.T) {
	tests := []struct {
		name    string
		method  string
		headers map[string]string
		want    bool
	}{
		{"navigation", "GET", map[string]string{"Sec-Fetch-Mode": "navigate"}, true},
		{"fetch", "GET", map[string]string{"Sec-Fetch-Mode": "cors", "Accept": "text/html"}, false},
		{"old browser", "GET", map[string]string{"Accept": "text/html,application/xhtml+xml"}, true},
		{"curl", "GET", map[string]string{"Accept": "*/*"}, false},
		{"post", "POST", map[string]string{"Sec-Fetch-Mode": "navigate"}, false},
	}
	for _, tt := range tests {
		r, _ := http.NewRequest(tt.method, "https://x/", nil)
		for k, v := range tt.headers {
			r.Header.Set(k, v)
		}
		if got := browser(r); got != tt.want {
			t.Errorf("%s: browser = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// FuzzRewrite feeds the rewriters what an app may answer: they never
// panic, never let the app set the fleet's cookies, and never add a line
// break.
func FuzzRewrite(f *testing.F) {
	for _, s := range []string{"http://127.0.0.1:1880/x", "sid=1; Domain=127.0.0.1", "__Host-fleet_app=x", "a=b; Domain=.nodered.lan; Path=/", "http://[::1]:x/", "\x00"} {
		f.Add(s)
	}
	as := testSession()
	f.Fuzz(func(t *testing.T, v string) {
		loc := as.publicLocation(v)
		if strings.ContainsAny(loc, "\r\n") && !strings.ContainsAny(v, "\r\n") {
			t.Fatalf("publicLocation(%q) = %q adds a line break", v, loc)
		}
		c, keep := as.publicCookie(v)
		if name, _, _ := strings.Cut(c, "="); keep && isFleetCookie(strings.TrimSpace(name)) {
			t.Fatalf("publicCookie(%q) keeps the fleet's cookie: %q", v, c)
		}
	})
}
