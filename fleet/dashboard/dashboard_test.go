package dashboard

import (
	"bufio"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/linkhist"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

func TestLoginRequired(t *testing.T) {
	f := newFixture(t, false)
	c := f.client("")
	for _, path := range []string{"/web/", "/web/devices/pi-1", "/web/admin/users", "/web/audit", "/web/sessions"} {
		resp, _ := c.get(path)
		if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/web/login?next=") {
			t.Errorf("%s: %d to %q, want a redirect to the login", path, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	// Live streams and partials are told, not redirected.
	resp, _ := c.get("/web/live/devices")
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("HX-Redirect") == "" {
		t.Errorf("live stream: %d, HX-Redirect %q; want 401 and where to log in", resp.StatusCode, resp.Header.Get("HX-Redirect"))
	}
	// A removed user's session no longer opens the dashboard.
	bob := f.client("bob")
	if err := f.users.Delete(context.Background(), "bob"); err != nil {
		t.Fatal(err)
	}
	if resp, _ := bob.get("/web/"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("a removed user got %d, want the login", resp.StatusCode)
	}
}

func TestSecurityHeaders(t *testing.T) {
	f := newFixture(t, false)
	resp, body := f.client("alice").get("/web/")
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self';", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	for _, bad := range []string{"unsafe-inline", "unsafe-eval", "*"} {
		if strings.Contains(csp, bad) {
			t.Errorf("CSP %q allows %q", csp, bad)
		}
	}
	m := regexp.MustCompile(`'nonce-([^']+)'`).FindStringSubmatch(csp)
	if m == nil {
		t.Fatalf("CSP %q has no style nonce", csp)
	}
	if !strings.Contains(body, `dash.js?v=`) || !strings.Contains(body, `nonce="`+m[1]+`"`) {
		t.Error("the page's script does not carry the CSP's nonce")
	}
	if strings.Contains(body, "<script>") || regexp.MustCompile(`\son[a-z]+=`).MatchString(body) || strings.Contains(body, "style=") {
		t.Error("the page has inline script, an event handler attribute or a style attribute")
	}
	for h, want := range map[string]string{"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-store"} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	// Each page has a nonce of its own.
	resp2, _ := f.client("alice").get("/web/")
	if resp2.Header.Get("Content-Security-Policy") == csp {
		t.Error("two pages got the same nonce")
	}
}

func TestDevicesPage(t *testing.T) {
	f := newFixture(t, false)
	f.links.set(f.ids["pi-1"], true, 40*time.Millisecond)
	f.waitFor("pi-1 online", func() bool { d, _ := f.view.Get("pi-1"); return d.Online })
	tests := []struct {
		name, user, query string
		status            int
		want, notWant     []string
	}{
		{"admin sees all", "alice", "", 200, []string{">pi-1<", ">pi-2<", ">gw-1<", "Devices 1–3 of 3", "good", "40 ms"}, nil},
		{"roles hide a device", "bob", "", 200, []string{">pi-1<", ">pi-2<"}, []string{"gw-1"}},
		{"counts are filters", "alice", "", 200, []string{`href="/web/?status=online"`, `href="/web/?status=outdated"`}, nil},
		{"text", "alice", "?q=gw", 200, []string{">gw-1<"}, []string{">pi-1<"}},
		{"label", "alice", "?label=model%3Dpi4", 200, []string{">pi-1<"}, []string{">pi-2<", ">gw-1<"}},
		{"label key only", "alice", "?label=model", 200, []string{">pi-1<"}, []string{">pi-2<"}},
		{"online", "alice", "?status=online", 200, []string{">pi-1<"}, []string{">pi-2<"}},
		{"outdated", "alice", "?status=outdated", 200, []string{">pi-2<"}, []string{">pi-1<"}},
		{"paged", "alice", "?per=25&page=1", 200, []string{"Devices 1–3 of 3"}, []string{`rel="next"`}},
		{"bad status", "alice", "?status=%3Cscript%3E", 400, []string{"status must be online, offline, degraded or outdated"}, []string{"<script>"}},
		{"bad label", "alice", "?label=%3Cimg+src%3Dx%3E", 400, []string{"is not a label key", "&lt;img src"}, []string{"<img src"}},
		{"unknown parameter", "alice", "?sort=name", 400, []string{`unknown parameter &#34;sort&#34;`}, nil},
		{"repeated parameter", "alice", "?q=a&q=b", 400, []string{"given 2 times"}, nil},
		{"bad page", "alice", "?page=-1", 400, []string{"page must be a number"}, nil},
		{"bad per", "alice", "?per=7", 400, []string{"per must be 25, 50, 100 or 200"}, nil},
		{"text too long", "alice", "?q=" + strings.Repeat("a", 300), 400, []string{"longer than 200"}, nil},
		{"unprintable text", "alice", "?q=a%07b", 400, []string{"cannot be shown"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := f.client(tt.user).get("/web/" + tt.query)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			mustContain(t, body, tt.want...)
			mustNotContain(t, body, tt.notWant...)
		})
	}
	// The filter form asks for the live region alone.
	resp, body := f.client("alice").get("/web/?q=pi", "HX-Request", "true", "HX-Target", "fleet")
	if resp.StatusCode != 200 || !strings.HasPrefix(body, `<section id="fleet"`) || strings.Contains(body, "<html") {
		t.Errorf("htmx partial: %d %.80q", resp.StatusCode, body)
	}
	if !strings.Contains(body, `sse-connect="/web/live/devices?q=pi&amp;h=`) {
		t.Errorf("the partial's live stream does not keep the filter: %.300s", body)
	}
}

func TestDevicePage(t *testing.T) {
	f := newFixture(t, false)
	f.links.set(f.ids["pi-1"], true, 40*time.Millisecond)
	f.waitFor("pi-1 online", func() bool { d, _ := f.view.Get("pi-1"); return d.Online })
	_, body := f.client("bob").get("/web/devices/pi-1")
	mustContain(t, body, "<h1>pi-1</h1>", "site=north", "v1.2.0", "linux/arm64", `id="connect"`, "tsh ssh pi@pi-1",
		"https://nodered--pi-1.fleet.example.com/", `data-link="/web/devices/pi-1/link"`, `sse-connect="/web/live/devices/pi-1"`)
	// bob's roles map no Kubernetes user: no kube line for him; alice's
	// role has none either.
	mustNotContain(t, body, "tsh kube login")
	// Offline, no Connect.
	_, body = f.client("bob").get("/web/devices/pi-2")
	mustNotContain(t, body, `id="connect"`)

	// A device the roles hide answers as one that does not exist, by URL
	// too: the page, its charts, its stream, its terminal.
	bob := f.client("bob")
	for _, path := range []string{"/web/devices/gw-1", "/web/devices/nope", "/web/devices/gw-1/terminal", "/web/devices/gw-1/link",
		"/web/live/devices/gw-1", "/web/devices/gw-1/terminal/ws?login=pi&csrf=" + url.QueryEscape(bob.sess.CSRF)} {
		resp, body := bob.get(path, "Origin", f.http.URL)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("bob %s: %d, want 404", path, resp.StatusCode)
		}
		mustNotContain(t, body, "south")
	}
	select {
	case req := <-f.terminals:
		t.Fatalf("a terminal was let through for %+v", req)
	default:
	}
}

func TestTerminalSocketChecks(t *testing.T) {
	f := newFixture(t, false)
	f.links.set(f.ids["pi-1"], true, 40*time.Millisecond)
	bob := f.client("bob")
	good := "/web/devices/pi-1/terminal/ws?login=pi&cols=100&rows=30&csrf=" + url.QueryEscape(bob.sess.CSRF)
	tests := []struct {
		name, path, origin string
		status             int
	}{
		{"from the fleet's page", good, f.http.URL, http.StatusTeapot},
		{"no origin", good, "", http.StatusForbidden},
		{"another origin", good, "https://evil.example", http.StatusForbidden},
		{"no CSRF token", "/web/devices/pi-1/terminal/ws?login=pi", f.http.URL, http.StatusForbidden},
		{"another session's token", "/web/devices/pi-1/terminal/ws?login=pi&csrf=" + url.QueryEscape(f.client("alice").sess.CSRF), f.http.URL, http.StatusForbidden},
		{"bad login", strings.Replace(good, "login=pi", "login=%3Bsh", 1), f.http.URL, http.StatusBadRequest},
		{"bad size", strings.Replace(good, "cols=100", "cols=99999", 1), f.http.URL, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := bob.get(tt.path, "Origin", tt.origin)
			if resp.StatusCode != tt.status {
				t.Errorf("%d, want %d: %s", resp.StatusCode, tt.status, body)
			}
		})
	}
	req := <-f.terminals
	if req.User.Name != "bob" || req.Device != "pi-1" || req.Login != "pi" || req.Cols != 100 || req.Rows != 30 || req.Checker == nil || req.Expires.IsZero() {
		t.Errorf("terminal request %+v", req)
	}
	denied := 0
	for _, e := range f.auditEvents(proto.EventAccessDenied) {
		if e.User == "bob" && e.Fields["action"] == "terminal" {
			denied++
		}
	}
	if denied != 4 {
		t.Errorf("%d refused terminals recorded, want 4", denied)
	}
	// The terminal page offers only the viewer's logins.
	if resp, _ := bob.get("/web/devices/pi-1/terminal?login=root"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a login bob does not have: %d, want 403", resp.StatusCode)
	}
	_, body := bob.get("/web/devices/pi-1/terminal")
	mustContain(t, body, `data-socket="/web/devices/pi-1/terminal/ws?login=pi&amp;csrf=`)
}

func TestAdminPages(t *testing.T) {
	f := newFixture(t, false)
	bob, alice := f.client("bob"), f.client("alice")
	for _, path := range []string{"/web/audit", "/web/admin/users", "/web/admin/roles", "/web/admin/roles/north", "/web/admin/tokens"} {
		resp, body := bob.get(path)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "needs a fleet admin role") {
			t.Errorf("bob %s: %d, want 403", path, resp.StatusCode)
		}
		if resp, _ := alice.get(path); resp.StatusCode != 200 {
			t.Errorf("alice %s: %d, want 200", path, resp.StatusCode)
		}
	}
	if resp, _ := bob.post("/web/admin/tokens", url.Values{"ttl": {"1h"}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("bob made a token: %d", resp.StatusCode)
	}
	refused := 0
	for _, e := range f.auditEvents(proto.EventAccessDenied) {
		if e.User == "bob" {
			refused++
		}
	}
	if refused != 6 {
		t.Errorf("%d refusals recorded, want 6", refused)
	}
	// The nav shows admin pages to admins only.
	_, body := bob.get("/web/")
	mustNotContain(t, body, `href="/web/admin/users"`)
	_, body = alice.get("/web/")
	mustContain(t, body, `href="/web/admin/users"`, `href="/web/audit"`)
}

func TestCSRF(t *testing.T) {
	f := newFixture(t, false)
	alice := f.client("alice")
	tests := []struct {
		name   string
		form   url.Values
		origin string
		status int
	}{
		{"no token", url.Values{"csrf": {""}, "ttl": {"1h"}}, "", http.StatusForbidden},
		{"wrong token", url.Values{"csrf": {"nope"}, "ttl": {"1h"}}, "", http.StatusForbidden},
		{"another origin", url.Values{"ttl": {"1h"}}, "https://evil.example", http.StatusForbidden},
		{"from the page", url.Values{"ttl": {"1h"}, "uses": {"2"}, "labels": {"site=north"}}, "", http.StatusCreated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr []string
			if tt.origin != "" {
				hdr = []string{"Origin", tt.origin}
			}
			resp, body := alice.post("/web/admin/tokens", tt.form, hdr...)
			if resp.StatusCode != tt.status {
				t.Fatalf("%d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			if tt.status == http.StatusCreated {
				mustContain(t, body, "edge-agent start --fleet=fleet.example.com:3080 --token=jt_", "@sha256:abcd", "site=north", `data-copy="#join-command"`)
			}
		})
	}
	if n := len(f.auditEvents(proto.EventTokenCreate)); n != 1 {
		t.Errorf("%d tokens made, want 1", n)
	}
}

func TestAdminActions(t *testing.T) {
	f := newFixture(t, false)
	alice := f.client("alice")
	ctx := context.Background()

	// Users.
	resp, body := alice.post("/web/admin/users", url.Values{"name": {"carol"}, "password": {"carol's password"}, "roles": {"north"}, "logins": {"pi, ubuntu"}, "totp": {"on"}})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("add user: %d %s", resp.StatusCode, body)
	}
	mustContain(t, body, "User <strong>carol</strong> added", "otpauth://")
	u, err := f.users.Get(ctx, "carol")
	if err != nil || !u.TOTP || len(u.Traits["logins"]) != 2 {
		t.Errorf("carol: %+v, %v", u, err)
	}
	resp, body = alice.post("/web/admin/users", url.Values{"name": {"dave"}, "password": {"short"}, "roles": {"north"}})
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "password must have at least") {
		t.Errorf("short password: %d %s", resp.StatusCode, body)
	}
	resp, body = alice.post("/web/admin/users", url.Values{"name": {"dave"}, "password": {"a long password"}, "roles": {"<b>x</b>"}})
	if resp.StatusCode != http.StatusBadRequest || strings.Contains(body, "<b>x</b>") {
		t.Errorf("unknown role: %d, escaped: %v", resp.StatusCode, !strings.Contains(body, "<b>x</b>"))
	}
	if resp, _ := alice.post("/web/admin/users/carol/delete", nil); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("remove user: %d", resp.StatusCode)
	}
	if _, err := f.users.Get(ctx, "carol"); err == nil {
		t.Error("carol is still there")
	}

	// Roles: view, edit, refuse a bad document, create, remove.
	_, body = alice.get("/web/admin/roles/north")
	mustContain(t, body, "name: north", "site:", `<textarea id="yaml" name="yaml"`)
	edited := strings.Replace(roleNorth, "logins: [pi]", "logins: [pi, ubuntu]", 1)
	resp, _ = alice.post("/web/admin/roles/north", url.Values{"yaml": {edited}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/web/admin/roles/north?saved=1" {
		t.Errorf("save role: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if role, _ := f.roles.Get(ctx, "north"); len(role.Spec.Allow.Logins) != 2 {
		t.Errorf("the role was not saved: %+v", role.Spec.Allow)
	}
	resp, body = alice.post("/web/admin/roles/north", url.Values{"yaml": {"kind: role\nversion: v1\nmetadata: {name: other}\n"}})
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `this page edits role &#34;north&#34;`) {
		t.Errorf("renamed role: %d %s", resp.StatusCode, body)
	}
	resp, body = alice.post("/web/admin/roles/_new", url.Values{"yaml": {"kind: role\nversion: v1\nmetadata: {name: \"<script>alert(1)</script>\"}\n"}})
	if resp.StatusCode != http.StatusBadRequest || strings.Contains(body, "<script>alert") || !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("a role named with a script: %d, the script not escaped in %s", resp.StatusCode, body)
	}
	resp, _ = alice.post("/web/admin/roles/_new", url.Values{"yaml": {strings.Replace(roleNorth, "name: north", "name: west", 1)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Errorf("new role: %d", resp.StatusCode)
	}
	if resp, _ := alice.post("/web/admin/roles/west/delete", nil); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("remove role: %d", resp.StatusCode)
	}
	if _, err := f.roles.Get(ctx, "west"); err == nil {
		t.Error("role west is still there")
	}
	// Every action is in the audit trail, by alice.
	for _, typ := range []string{proto.EventUserCreate, proto.EventUserDelete, proto.EventRoleCreate, proto.EventRoleDelete} {
		evs := f.auditEvents(typ)
		if len(evs) == 0 || evs[len(evs)-1].User != "alice" {
			t.Errorf("%s: %+v", typ, evs)
		}
	}
	// Token form bounds.
	for name, form := range map[string]url.Values{
		"ttl": {"ttl": {"forever"}}, "long ttl": {"ttl": {"9999h"}}, "uses": {"uses": {"0"}}, "labels": {"labels": {"site"}},
	} {
		if resp, _ := alice.post("/web/admin/tokens", form); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("token %s: %d, want 400", name, resp.StatusCode)
		}
	}
}

func TestAuditPage(t *testing.T) {
	f := newFixture(t, false)
	ctx := context.Background()
	xss := `<script>window.pwned=1</script><img src=x onerror="window.pwned=2">`
	base := time.Date(2026, 11, 21, 8, 0, 0, 0, time.UTC)
	for i := range 60 {
		e := &proto.AuditEvent{Time: base.Add(time.Duration(i) * time.Minute).UnixMilli(), Type: proto.EventAccessDenied,
			Outcome: proto.OutcomeDenied, User: "bob", Device: f.ids["pi-1"], Message: xss, Fields: map[string]string{"n": strings.Repeat("x", i%3)}}
		if i%2 == 0 {
			e.Type, e.Outcome, e.User, e.Device = proto.EventUserLogin, proto.OutcomeSuccess, "alice", ""
		}
		if err := f.events.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	alice := f.client("alice")
	_, body := alice.get("/web/audit")
	mustNotContain(t, body, "<script>window.pwned", "<img src=x")
	mustContain(t, body, "&lt;script&gt;window.pwned=1&lt;/script&gt;", `rel="next"`)
	if n := strings.Count(body, "<tr class="); n != auditPageSize {
		t.Errorf("%d rows, want a page of %d", n, auditPageSize)
	}
	next := regexp.MustCompile(`href="(/web/audit\?cursor=[0-9a-f]+)" rel="next"|rel="next" href="([^"]+)"`).FindStringSubmatch(body)
	if next == nil {
		t.Fatal("no link to older events")
	}
	link := next[1] + next[2]
	_, body = alice.get(strings.ReplaceAll(link, "&amp;", "&"))
	if n := strings.Count(body, "<tr class="); n != 10 {
		t.Errorf("second page: %d rows, want 10", n)
	}
	tests := []struct {
		name, query string
		status      int
		rows        int
		want        string
	}{
		{"by user", "?user=bob", 200, 30, ""},
		{"by device name", "?device=pi-1", 200, 30, ""},
		{"by type prefix", "?type=user.*", 200, 30, ""},
		{"by time", "?since=2026-11-21T08:10&until=2026-11-21T08:20", 200, 10, ""},
		{"bad user", "?user=%3Cb%3E", 400, 0, "is not a user name"},
		{"bad type", "?type=a*b", 400, 0, "is not an event type"},
		{"bad time", "?since=yesterday", 400, 0, "since must be a time like"},
		{"since after until", "?since=2026-11-21T09:00&until=2026-11-21T08:00", 400, 0, "since must come before until"},
		{"bad cursor", "?cursor=zz", 400, 0, "not one of this page"},
		{"foreign cursor", "?cursor=00", 400, 0, "start from the newest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := alice.get("/web/audit" + tt.query)
			if resp.StatusCode != tt.status {
				t.Fatalf("%d, want %d: %.300s", resp.StatusCode, tt.status, body)
			}
			if tt.status == 200 {
				if n := strings.Count(body, "<tr class="); n != tt.rows {
					t.Errorf("%d rows, want %d", n, tt.rows)
				}
			}
			mustContain(t, body, tt.want)
		})
	}
	// On the device's page a user sees their own events there only.
	_, body = f.client("bob").get("/web/devices/pi-1")
	if n := strings.Count(body, `<tr class="denied">`); n != recentEvents {
		t.Errorf("bob sees %d of his events on pi-1, want %d", n, recentEvents)
	}
	mustNotContain(t, body, "user.login")
}

func TestSessionsAndRecordings(t *testing.T) {
	f := newFixture(t, false)
	cast := `{"version": 2, "width": 80, "height": 24}` + "\n" + `[0.1, "o", "hello from the device\r\n"]` + "\n"
	f.recording("r-bob", "bob", "pi-1", cast)
	f.recording("r-alice", "alice", "gw-1", cast)
	live, err := f.sessions.Register(sessions.Session{ID: "live-1", Service: proto.ServiceSSH, Kind: "ssh", User: "bob", Login: "pi",
		DeviceID: f.ids["pi-1"], DeviceName: "pi-1", ClientAddr: "192.0.2.7:1234", Started: time.Now()}, func(string) {})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Done("")
	// A session the device holds for bob while he is away (his client's
	// connection broke) is listed as such.
	away, err := f.sessions.Register(sessions.Session{ID: "away-1", Service: proto.ServiceSSH, Kind: "ssh", User: "bob", Login: "pi",
		DeviceID: f.ids["pi-1"], DeviceName: "pi-1", Started: time.Now(), Away: true}, func(string) {})
	if err != nil {
		t.Fatal(err)
	}
	defer away.Withdraw()
	bob, alice := f.client("bob"), f.client("alice")
	_, body := bob.get("/web/sessions")
	mustContain(t, body, `href="/web/recordings/r-bob"`, "192.0.2.7:1234", "held on the device; its user is away")
	mustNotContain(t, body, "r-alice")
	_, body = alice.get("/web/sessions")
	mustContain(t, body, `href="/web/recordings/r-bob"`, `href="/web/recordings/r-alice"`)
	// Another's recording answers as one that does not exist.
	for _, path := range []string{"/web/recordings/r-alice", "/web/recordings/r-alice/cast", "/web/recordings/..%2Fetc", "/web/recordings/nope/cast"} {
		if resp, _ := bob.get(path); resp.StatusCode != http.StatusNotFound {
			t.Errorf("bob %s: %d, want 404", path, resp.StatusCode)
		}
	}
	resp, body := bob.get("/web/recordings/r-bob/cast")
	if resp.StatusCode != 200 || body != cast || !strings.HasPrefix(resp.Header.Get("Content-Disposition"), "attachment") {
		t.Errorf("cast: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Disposition"), body)
	}
	_, body = bob.get("/web/recordings/r-bob")
	mustContain(t, body, `data-cast="/web/recordings/r-bob/cast"`, `id="play"`, `id="speed"`)
	// The device page lists the live session and the recording.
	f.view.Refresh()
	_, body = bob.get("/web/devices/pi-1")
	mustContain(t, body, "192.0.2.7:1234", `href="/web/recordings/r-bob"`, "2 open sessions")
}

// readEvent reads the next server-sent event of a stream.
func readEvent(t *testing.T, r *bufio.Reader) (string, string) {
	t.Helper()
	var name string
	var data []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended: %v", err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "" && name != "":
			return name, strings.Join(data, "\n")
		case strings.HasPrefix(line, "event: "):
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = append(data, strings.TrimPrefix(line, "data: "))
		}
	}
}

func TestLiveDevices(t *testing.T) {
	f := newFixture(t, false)
	bob := f.client("bob")
	_, page := bob.get("/web/?label=site%3Dnorth")
	m := regexp.MustCompile(`sse-connect="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no live stream on the page")
	}
	req, _ := http.NewRequest("GET", f.http.URL+strings.ReplaceAll(m[1], "&amp;", "&"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := bob.hc.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("Content-Type %q", resp.Header.Get("Content-Type"))
	}
	r := bufio.NewReader(resp.Body)
	// A device joins: the stream sends the region with it.
	if _, err := f.reg.Register(context.Background(), devices.Device{Name: "pi-3", Labels: map[string]string{"site": "north"}}); err != nil {
		t.Fatal(err)
	}
	name, data := readEvent(t, r)
	if name != "devices" || !strings.Contains(data, ">pi-3<") || !strings.Contains(data, "Devices 1–3 of 3") {
		t.Fatalf("event %q: %.400s", name, data)
	}
	// It comes online.
	id, _ := f.reg.ByName(context.Background(), "pi-3")
	f.links.set(id.ID, true, 10*time.Millisecond)
	for {
		_, data = readEvent(t, r)
		if strings.Contains(data, `id="d-`+id.ID+`" class="is-online"`) {
			break
		}
	}
	// A device bob may not see changes: nothing is sent for it (the next
	// event, once pi-3 goes offline, still lacks gw-1).
	f.links.set(f.ids["gw-1"], true, 10*time.Millisecond)
	f.links.set(id.ID, false, 0)
	_, data = readEvent(t, r)
	if strings.Contains(data, "gw-1") || !strings.Contains(data, `id="d-`+id.ID+`" class="is-offline"`) {
		t.Errorf("event after pi-3 went: %.600s", data)
	}
	// Logging out ends the stream.
	f.login.logOut("bob")
	f.links.set(id.ID, true, 10*time.Millisecond)
	done := make(chan error, 1)
	go func() {
		_, err := r.ReadString(0)
		done <- err
	}()
	select {
	case <-done:
	case <-time.After(45 * time.Second):
		t.Error("the stream outlived the session")
	}
}

func TestDeviceLinkSeries(t *testing.T) {
	f := newFixture(t, false)
	now := time.Now()
	id := f.ids["pi-1"]
	f.history.Record(now.Add(-2*time.Hour), []linkhist.Sample{{DeviceID: id, Online: true, Since: now.Add(-3 * time.Hour), RTT: 30 * time.Millisecond, Sent: 100, Lost: 1, BytesUp: 1000}})
	f.history.Record(now, []linkhist.Sample{{DeviceID: id, Online: true, Since: now.Add(-3 * time.Hour), RTT: 50 * time.Millisecond, Sent: 300, Lost: 3, BytesUp: 3000}})
	resp, body := f.client("bob").get("/web/devices/pi-1/link?range=hours")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	mustContain(t, body, `"range":"hours"`, `"rtt_ms":[null`, "30", "50")
	if resp, _ := f.client("bob").get("/web/devices/pi-1/link?range=weeks"); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("bad range: %d", resp.StatusCode)
	}
	_, body = f.client("bob").get("/web/devices/pi-1/link?range=days")
	mustContain(t, body, `"range":"days"`)
}

func TestRollouts(t *testing.T) {
	f := newFixture(t, false)
	f.rollouts.list = []api.Rollout{{ID: "r1", Release: "v1.3.0", Selector: map[string]string{"site": "north"}, Stages: []float64{10, 50, 100},
		Stage: 1, Soak: "1h", MaxFailure: 5, State: api.RolloutHalted, Reason: "3 of 40 devices failed (7.5%), past 5%",
		Devices: 40, Committed: 17, Failed: 3, InProgress: 4, Pending: 16, Failures: []api.RolloutFailure{{Device: "pi-2", State: "rolled_back", Reason: "not healthy in 2m"}}}}
	f.rollouts.updates = map[string]*api.DeviceUpdate{f.ids["pi-1"]: {Target: "v1.3.0", Rollout: "r1", State: proto.StateDownloading, Done: 45, Total: 100}}
	alice := f.client("alice")
	_, body := alice.get("/web/rollouts")
	mustContain(t, body, "v1.3.0", `<progress max="40" value="17">`, "3 failed", "2 of 3 (50%)", "past 5%", "not healthy in 2m", `class="stage done"`, `hx-trigger="every 5s"`)
	resp, body := alice.get("/web/rollouts", "HX-Request", "true", "HX-Target", "rollouts")
	if resp.StatusCode != 200 || !strings.HasPrefix(body, `<section id="rollouts"`) {
		t.Errorf("partial: %d %.60q", resp.StatusCode, body)
	}
	if resp, _ := f.client("bob").get("/web/rollouts"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("bob: %d, want 403", resp.StatusCode)
	}
	// The device's update shows in the table and on its page.
	_, body = alice.get("/web/")
	mustContain(t, body, "→ v1.3.0 downloading 45%")
	_, body = alice.get("/web/devices/pi-1")
	mustContain(t, body, "→ v1.3.0: downloading (45%)", "rollout <code>r1</code>")
}

// TestPagesAreGzipped: a browser that takes gzip gets pages gzipped.
func TestPagesAreGzipped(t *testing.T) {
	f := newFixture(t, false)
	resp, body := f.client("alice").get("/web/", "Accept-Encoding", "gzip")
	if resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("Content-Encoding %q", resp.Header.Get("Content-Encoding"))
	}
	zr, err := gzip.NewReader(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	page, err := io.ReadAll(zr)
	if err != nil || !strings.Contains(string(page), ">pi-1<") {
		t.Errorf("gunzipped page: %v %.200s", err, page)
	}
}
