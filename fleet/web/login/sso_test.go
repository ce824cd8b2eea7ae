package login

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"remoteler.dev/edge/fleet/sso"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/logtest"
)

// standInSSO stands in for fleet/sso, whose logins at a real provider
// have their own tests (fleet/sso, and tools/e2e's TestDashboardSSO in
// Chromium): it offers one connector, "test", and its "provider" is the
// fixture's /callback, which finishes the login as the test says.
type standInSSO struct {
	finish  sso.Finisher
	started []sso.StartRequest
}

func (s *standInSSO) Public(context.Context) ([]api.SSOConnector, error) {
	return []api.SSOConnector{{Name: "test", Display: "Test IdP"}}, nil
}

func (s *standInSSO) Origins(context.Context) []string { return []string{"https://idp.example"} }

func (s *standInSSO) StartBrowser(w http.ResponseWriter, r *http.Request, req sso.StartRequest) error {
	if req.Connector != "test" {
		return sso.ErrNotFound
	}
	s.started = append(s.started, req)
	http.Redirect(w, r, "https://idp.example/auth", http.StatusSeeOther)
	return nil
}

func (s *standInSSO) HandleSession(kind string, f sso.Finisher) {
	if kind == SSOKind {
		s.finish = f
	}
}

func TestSSOLogin(t *testing.T) {
	f := newFixture(t)
	single := &standInSSO{}
	mux := http.NewServeMux()
	f.srv.Config.Handler = mux
	f.login = New(Config{Users: f.users, Store: f.st, Origin: f.srv.URL, Fleet: "fleet", Audit: f.trail, Logger: logtest.Logger(t), SSO: single,
		Refuse: func(u api.User) error {
			if u.Name == "tina" {
				return lockedErr{}
			}
			return nil
		}})
	f.login.Register(mux)
	// The provider's answer: user "alice" of connector "test", or the
	// refusal the query names.
	mux.HandleFunc("GET /callback", func(w http.ResponseWriter, r *http.Request) {
		res := &sso.Result{Kind: SSOKind, Data: single.started[len(single.started)-1].Data}
		var err error
		switch r.URL.Query().Get("as") {
		case "refused":
			err = &sso.Refusal{Reason: "no_role", Message: "your claims give you no fleet role (groups: visitors)"}
		case "gone":
			res.Identity = &sso.Identity{Connector: "test", User: "nobody"}
		case "locked":
			res.Identity = &sso.Identity{Connector: "test", User: "tina"}
		default:
			res.Identity = &sso.Identity{Connector: "test", User: "alice", Issuer: "https://idp.example", Subject: "sub-alice"}
		}
		single.finish(w, r, res, err)
	})
	c := f.browser(t)

	resp, body := get(t, c, f.srv.URL+PathLogin+"?next=/web/devices/pi-1")
	if !strings.Contains(body, `action="/web/login/sso"`) || !strings.Contains(body, `id="sso-test">Log in with Test IdP</button>`) {
		t.Fatalf("the login page has no button for the connector:\n%s", body)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "https://idp.example") {
		t.Errorf("form-action does not allow the provider: %q", csp)
	}
	token := csrfRE.FindStringSubmatch(body)[1]

	tests := []struct {
		name   string
		form   url.Values
		origin string
		status int
		want   string
	}{
		{"no CSRF token", url.Values{"connector": {"test"}}, "", http.StatusForbidden, "did not come from this fleet"},
		{"another origin", url.Values{"connector": {"test"}, "csrf": {token}}, "https://evil.example", http.StatusForbidden, "did not come from this fleet"},
		{"to the provider", url.Values{"connector": {"test"}, "csrf": {token}, "next": {"/web/devices/pi-1"}}, "", http.StatusSeeOther, ""},
		// Last: the form it shows again has a new CSRF token.
		{"no such connector", url.Values{"connector": {"nope"}, "csrf": {token}}, "", http.StatusBadRequest, "no such single sign-on connector"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			origin := tt.origin
			if origin == "" {
				origin = f.srv.URL
			}
			resp, body := post(t, c, f.srv.URL+PathSSO, tt.form, origin)
			if resp.StatusCode != tt.status || !strings.Contains(body, tt.want) {
				t.Fatalf("%s: %q, want %d with %q", resp.Status, body, tt.status, tt.want)
			}
			if tt.status == http.StatusSeeOther && resp.Header.Get("Location") != "https://idp.example/auth" {
				t.Errorf("sent to %q, want the provider", resp.Header.Get("Location"))
			}
		})
	}
	if len(single.started) != 1 {
		t.Fatalf("%d logins started, want 1", len(single.started))
	}

	// Refused at the provider (or by the claims): a page that says why,
	// and no session.
	resp, body = get(t, c, f.srv.URL+"/callback?as=refused")
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "no fleet role") || strings.Contains(strings.Join(resp.Header.Values("Set-Cookie"), ";"), SessionCookie) {
		t.Errorf("a refused login: %s %q", resp.Status, body)
	}
	// A user who is gone by the end gets no session either.
	if resp, _ := get(t, c, f.srv.URL+"/callback?as=gone"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a login of a user who does not exist: %s", resp.Status)
	}
	// A locked user (Config.Refuse) is refused at the end as at a password
	// login: no session, the lock's message, the refusal audited.
	resp, body = get(t, c, f.srv.URL+"/callback?as=locked")
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "locked for a test") || strings.Contains(strings.Join(resp.Header.Values("Set-Cookie"), ";"), SessionCookie) {
		t.Errorf("a locked user's login: %s %q", resp.Status, body)
	}
	var refused bool
	for _, e := range f.trail.evs {
		if e.Type == "user.login.failed" && e.User == "tina" && e.Outcome == proto.OutcomeDenied && e.Fields["method"] == "sso:test" && e.Fields["lock"] == "L1" {
			refused = true
		}
	}
	if !refused {
		t.Errorf("the locked user's refusal is not audited: %s", f.trail.types())
	}
	// Verified: a session, back to the page asked for, audited.
	resp, _ = get(t, c, f.srv.URL+"/callback")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/web/devices/pi-1" {
		t.Fatalf("the login's end: %s to %q, want the page asked for", resp.Status, resp.Header.Get("Location"))
	}
	req, _ := http.NewRequest("GET", f.srv.URL+"/web/", nil)
	for _, ck := range c.Jar.Cookies(req.URL) {
		req.AddCookie(ck)
	}
	sess, ok := f.login.Session(req)
	if !ok || sess.User != "alice" || sess.Method != "sso:test" {
		t.Fatalf("session %+v, %v: want alice's, by sso:test", sess, ok)
	}
	// One event for the login, naming the session and whom the provider
	// vouched for (fleet/sso records none of its own for this kind).
	var logins int
	for _, e := range f.trail.evs {
		if e.Type != "user.login" {
			continue
		}
		logins++
		if e.User != "alice" || e.Fields["method"] != "sso:test" || e.Fields["web_session"] != sess.ID ||
			e.Fields["connector"] != "test" || e.Fields["issuer"] != "https://idp.example" || e.Fields["subject"] != "sub-alice" {
			t.Errorf("the login's event: %+v", e)
		}
	}
	if logins != 1 {
		t.Errorf("%d user.login events for alice's session, want 1: %s", logins, f.trail.types())
	}
	// The store keeps the method, for the other replicas.
	items, err := f.st.List(context.Background(), sessionPrefix)
	if err != nil || len(items) != 1 || !strings.Contains(string(items[0].Value), `"method":"sso:test"`) {
		t.Errorf("the stored sessions: %v %+v, want one with its method", err, items)
	}
}

// lockedErr stands in for a lock's refusal (fleet/locks).
type lockedErr struct{}

func (lockedErr) Error() string                  { return "user tina is locked for a test" }
func (lockedErr) AuditFields() map[string]string { return map[string]string{"lock": "L1"} }
