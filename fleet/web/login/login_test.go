package login

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/logtest"
)

// fakeUsers stands in for the users service, whose real password hashing
// and TOTP have their own tests; the browser tests (tools/e2e) use the
// real one.
type fakeUsers struct {
	mu    sync.Mutex // guards users
	users map[string]string
}

func (f *fakeUsers) Authenticate(_ context.Context, name, password, totp string) (api.User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case name == "locked":
		return api.User{}, users.ErrLocked
	case f.users[name] == "" || f.users[name] != password:
		return api.User{}, users.ErrBadCredentials
	case name == "tina" && totp == "":
		return api.User{}, users.ErrTOTPRequired
	case name == "tina" && totp != "123456":
		return api.User{}, users.ErrBadCredentials
	}
	return api.User{Name: name, Roles: []string{"access"}}, nil
}

func (f *fakeUsers) Get(_ context.Context, name string) (api.User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.users[name] == "" {
		return api.User{}, users.ErrNotFound
	}
	return api.User{Name: name}, nil
}

type trail struct {
	mu  sync.Mutex
	evs []*proto.AuditEvent
}

func (tr *trail) Record(_ context.Context, e *proto.AuditEvent) error {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.evs = append(tr.evs, e)
	return nil
}

func (tr *trail) types() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out []string
	for _, e := range tr.evs {
		out = append(out, e.Type)
	}
	return strings.Join(out, " ")
}

type fixture struct {
	srv   *httptest.Server
	st    store.Store
	login *Server
	users *fakeUsers
	trail *trail
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	return newFixtureOn(t, st)
}

// newFixtureOn is a fleetd's login on st: several on one store are
// replicas.
func newFixtureOn(t *testing.T, st store.Store) *fixture {
	t.Helper()
	return newFixtureWith(t, st, true)
}

// newFixtureWith is newFixtureOn; without watch, the replica does not
// follow the store (its watch has brought nothing yet).
func newFixtureWith(t *testing.T, st store.Store, watch bool) *fixture {
	t.Helper()
	f := &fixture{st: st, users: &fakeUsers{users: map[string]string{"alice": "pw-alice", "tina": "pw-tina"}}, trail: &trail{}}
	mux := http.NewServeMux()
	f.srv = httptest.NewUnstartedServer(mux)
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	f.login = New(Config{Users: f.users, Store: st, Origin: f.srv.URL, Fleet: "fleet", Audit: f.trail, Logger: logtest.Logger(t),
		FormTargets: []string{"https://*.fleet.test:8443"}})
	if watch {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			f.login.Run(ctx)
		}()
		t.Cleanup(func() {
			cancel()
			<-done
		})
	}
	f.login.Register(mux)
	mux.HandleFunc("GET /web/", func(w http.ResponseWriter, r *http.Request) {
		sess, ok := f.login.Session(r)
		if !ok {
			f.login.RedirectToLogin(w, r, r.URL.RequestURI())
			return
		}
		f.login.Page(w, http.StatusOK, sess, Page{Title: "Home", Message: "hello " + sess.User})
	})
	return f
}

// browser is a client with a cookie jar that stops at redirects.
func (f *fixture) browser(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	c := f.srv.Client()
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func get(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func post(t *testing.T, c *http.Client, u string, form url.Values, origin string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// loginForm fetches the login page and returns its CSRF token.
func (f *fixture) loginForm(t *testing.T, c *http.Client, next string) string {
	t.Helper()
	resp, body := get(t, c, f.srv.URL+PathLogin+"?next="+url.QueryEscape(next))
	m := csrfRE.FindStringSubmatch(body)
	if resp.StatusCode != 200 || m == nil {
		t.Fatalf("login page: %s %q", resp.Status, body)
	}
	return m[1]
}

func TestLoginFlow(t *testing.T) {
	f := newFixture(t)
	c := f.browser(t)
	// Not logged in: the page sends the browser to the login and back.
	resp, _ := get(t, c, f.srv.URL+"/web/home?x=1")
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != PathLogin+"?next=%2Fweb%2Fhome%3Fx%3D1" {
		t.Fatalf("got %s to %q, want a redirect to the login with next", resp.Status, loc)
	}
	tok := f.loginForm(t, c, "/web/home?x=1")
	resp, _ = post(t, c, f.srv.URL+PathLogin, url.Values{"csrf": {tok}, "user": {"alice"}, "password": {"pw-alice"}, "next": {"/web/home?x=1"}}, f.srv.URL)
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/web/home?x=1" {
		t.Fatalf("login: %s to %q, want back to /web/home?x=1", resp.Status, loc)
	}
	var session *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == SessionCookie {
			session = ck
		}
	}
	if session == nil || !session.Secure || !session.HttpOnly || session.SameSite != http.SameSiteLaxMode || session.Domain != "" || session.Path != "/" {
		t.Fatalf("session cookie %+v: want __Host-, Secure, HttpOnly, Lax, host-only, Path=/", session)
	}
	resp, body := get(t, c, f.srv.URL+"/web/home")
	if resp.StatusCode != 200 || !strings.Contains(body, "hello alice") {
		t.Fatalf("home: %s %q", resp.Status, body)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'self' https://*.fleet.test:8443"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	// Logout needs the session's CSRF token and the fleet's origin.
	logoutTok := csrfRE.FindStringSubmatch(body)[1]
	if resp, _ := post(t, c, f.srv.URL+PathLogout, url.Values{"csrf": {"forged"}}, f.srv.URL); resp.StatusCode != http.StatusForbidden {
		t.Errorf("logout with a forged token: %s", resp.Status)
	}
	if resp, _ := post(t, c, f.srv.URL+PathLogout, url.Values{"csrf": {logoutTok}}, "https://nodered--pi-1.fleet.test:8443"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("logout posted from an app's origin: %s", resp.Status)
	}
	var ended []string
	f.login.OnEnd(func(s Session) { ended = append(ended, s.User) })
	if resp, _ := post(t, c, f.srv.URL+PathLogout, url.Values{"csrf": {logoutTok}}, f.srv.URL); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("logout: %s", resp.Status)
	}
	if len(ended) != 1 || ended[0] != "alice" {
		t.Errorf("OnEnd hooks saw %v", ended)
	}
	if resp, _ := get(t, c, f.srv.URL+"/web/home"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("after logout: %s, want the login again", resp.Status)
	}
	if got := f.trail.types(); got != "user.login user.logout" {
		t.Errorf("audit %q", got)
	}
}

func TestLoginRefusals(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name       string
		form       url.Values
		origin     string
		noCSRF     bool
		wantStatus int
		wantBody   string
	}{
		{"wrong password", url.Values{"user": {"alice"}, "password": {"nope"}}, "", false, 401, "Wrong user name, password or one-time code."},
		{"locked", url.Values{"user": {"locked"}, "password": {"x"}}, "", false, 401, "Too many failed logins"},
		{"code needed", url.Values{"user": {"tina"}, "password": {"pw-tina"}}, "", false, 401, "Enter the one-time code"},
		{"wrong code", url.Values{"user": {"tina"}, "password": {"pw-tina"}, "totp": {"000000"}}, "", false, 401, "Wrong user name"},
		{"no csrf", url.Values{"user": {"alice"}, "password": {"pw-alice"}}, "", true, 403, "did not come from this fleet"},
		{"other origin", url.Values{"user": {"alice"}, "password": {"pw-alice"}}, "https://evil.example", false, 403, "did not come from this fleet"},
		{"escaped output", url.Values{"user": {`<script>alert(1)</script>`}, "password": {"x"}}, "", false, 401, "&lt;script&gt;alert(1)&lt;/script&gt;"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := f.browser(t)
			tok := f.loginForm(t, c, "/web/")
			if !tt.noCSRF {
				tt.form.Set("csrf", tok)
			}
			origin := tt.origin
			if origin == "" {
				origin = f.srv.URL
			}
			resp, body := post(t, c, f.srv.URL+PathLogin, tt.form, origin)
			if resp.StatusCode != tt.wantStatus || !strings.Contains(body, tt.wantBody) {
				t.Errorf("got %s %q, want %d with %q", resp.Status, body, tt.wantStatus, tt.wantBody)
			}
			for _, ck := range resp.Cookies() {
				if ck.Name == SessionCookie && ck.Value != "" {
					t.Errorf("a refused login set a session cookie")
				}
			}
		})
	}
	// A code succeeds.
	c := f.browser(t)
	tok := f.loginForm(t, c, "/web/")
	resp, _ := post(t, c, f.srv.URL+PathLogin, url.Values{"csrf": {tok}, "user": {"tina"}, "password": {"pw-tina"}, "totp": {"123456"}}, f.srv.URL)
	if resp.StatusCode != http.StatusSeeOther {
		t.Errorf("login with the code: %s", resp.Status)
	}
}

func TestNextStaysOnTheFleet(t *testing.T) {
	tests := []struct{ next, want string }{
		{"/web/apps", "/web/apps"},
		{"/web/x?a=b#c", "/web/x?a=b#c"},
		{"https://evil.example/", "/web/"},
		{"//evil.example/", "/web/"},
		{"/\\evil.example/", "/web/"},
		{"/web/\r\nSet-Cookie: x", "/web/"},
		{"javascript:alert(1)", "/web/"},
		{"", "/web/"},
	}
	for _, tt := range tests {
		if got := localPath(tt.next, "/web/"); got != tt.want {
			t.Errorf("localPath(%q) = %q, want %q", tt.next, got, tt.want)
		}
	}
}

func TestSessionsExpireAndFollowTheUser(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	f.login.cfg.Now = func() time.Time { return now }
	f.login.cfg.TTL = func(context.Context, api.User) time.Duration { return time.Minute }
	c := f.browser(t)
	tok := f.loginForm(t, c, "/web/home")
	post(t, c, f.srv.URL+PathLogin, url.Values{"csrf": {tok}, "user": {"alice"}, "password": {"pw-alice"}}, f.srv.URL)
	if resp, _ := get(t, c, f.srv.URL+"/web/home"); resp.StatusCode != 200 {
		t.Fatalf("logged in: %s", resp.Status)
	}
	f.users.mu.Lock()
	delete(f.users.users, "alice")
	f.users.mu.Unlock()
	if resp, _ := get(t, c, f.srv.URL+"/web/home"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("a removed user's session still works: %s", resp.Status)
	}
	f.users.mu.Lock()
	f.users.users["alice"] = "pw-alice"
	f.users.mu.Unlock()
	now = now.Add(2 * time.Minute)
	if resp, _ := get(t, c, f.srv.URL+"/web/home"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("an expired session still works: %s", resp.Status)
	}
}

// TestPerSourceLimit: a login the HTTPS port's per-source limit refuses is
// answered 429 before any password is checked.
func TestPerSourceLimit(t *testing.T) {
	f := newFixture(t)
	f.login.cfg.Admit = func(*http.Request) (time.Duration, bool) { return 3 * time.Second, false }
	c := f.browser(t)
	tok := f.loginForm(t, c, "/web/")
	resp, body := post(t, c, f.srv.URL+PathLogin, url.Values{"csrf": {tok}, "user": {"alice"}, "password": {"pw-alice"}}, f.srv.URL)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, "Too many logins from your address") || resp.Header.Get("Retry-After") != "3" {
		t.Errorf("got %s (Retry-After %q) %q", resp.Status, resp.Header.Get("Retry-After"), body)
	}
}

// TestSessionsOnEveryReplica: two fleetds on one store are one fleet to a
// browser: logged in on one, logged in on the other; logged out on the
// other, logged out everywhere, and what the first started for the session
// ends there.
func TestSessionsOnEveryReplica(t *testing.T) {
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	a, b := newFixtureOn(t, st), newFixtureOn(t, st)
	var mu sync.Mutex
	var endedOnA []string
	a.login.OnEnd(func(s Session) {
		mu.Lock()
		endedOnA = append(endedOnA, s.User)
		mu.Unlock()
	})
	c := a.browser(t) // one jar: cookies are per host, not per port
	tok := a.loginForm(t, c, "/web/home")
	if resp, _ := post(t, c, a.srv.URL+PathLogin, url.Values{"csrf": {tok}, "user": {"alice"}, "password": {"pw-alice"}}, a.srv.URL); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login on a: %s", resp.Status)
	}
	// At once on b: before its watch has the session, it asks the store.
	resp, body := get(t, c, b.srv.URL+"/web/home")
	if resp.StatusCode != 200 || !strings.Contains(body, "hello alice") {
		t.Fatalf("b right after the login on a: %s %q", resp.Status, body)
	}
	logoutTok := csrfRE.FindStringSubmatch(body)[1]
	if resp, _ := post(t, c, b.srv.URL+PathLogout, url.Values{"csrf": {logoutTok}}, b.srv.URL); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout on b: %s", resp.Status)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(endedOnA)
		mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a's OnEnd hooks saw %d ends, want 1", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if resp, _ := get(t, c, a.srv.URL+"/web/home"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("a after the logout on b: %s, want the login again", resp.Status)
	}
	if items, _ := st.List(context.Background(), sessionPrefix); len(items) != 0 {
		t.Errorf("%d sessions left in the store after the logout", len(items))
	}
}

// TestPrune: expired sessions leave the store, and their ends reach every
// replica's hooks; live ones stay.
func TestPrune(t *testing.T) {
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	f := newFixtureOn(t, st)
	now := time.Now()
	var mu sync.Mutex
	f.login.cfg.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	f.login.cfg.TTL = func(_ context.Context, u api.User) time.Duration {
		if u.Name == "tina" {
			return time.Hour
		}
		return time.Minute
	}
	ended := make(chan string, 4)
	f.login.OnEnd(func(s Session) { ended <- s.User })
	for _, u := range []url.Values{
		{"user": {"alice"}, "password": {"pw-alice"}},
		{"user": {"tina"}, "password": {"pw-tina"}, "totp": {"123456"}},
	} {
		c := f.browser(t)
		u.Set("csrf", f.loginForm(t, c, "/web/"))
		if resp, _ := post(t, c, f.srv.URL+PathLogin, u, f.srv.URL); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("login %s: %s", u.Get("user"), resp.Status)
		}
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	n, err := f.login.Prune(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want alice's one expired session", n, err)
	}
	select {
	case u := <-ended:
		if u != "alice" {
			t.Errorf("ended %s, want alice", u)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the pruned session's end reached no hook")
	}
	if items, _ := st.List(context.Background(), sessionPrefix); len(items) != 1 {
		t.Errorf("%d sessions in the store after the prune, want tina's", len(items))
	}
}

// TestLogoutBeforeTheWatch: a logout on a replica whose watch has not
// brought the session yet (moments after the login on another) still ends
// it: it is gone from the store, and the replica that started it runs its
// OnEnd hooks. (It stayed in the store, alive on every replica.)
func TestLogoutBeforeTheWatch(t *testing.T) {
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	a, b := newFixtureOn(t, st), newFixtureWith(t, st, false)
	ended := make(chan string, 2)
	a.login.OnEnd(func(s Session) { ended <- s.User })
	c := a.browser(t)
	tok := a.loginForm(t, c, "/web/home")
	if resp, _ := post(t, c, a.srv.URL+PathLogin, url.Values{"csrf": {tok}, "user": {"alice"}, "password": {"pw-alice"}}, a.srv.URL); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login on a: %s", resp.Status)
	}
	resp, body := get(t, c, b.srv.URL+"/web/home")
	if resp.StatusCode != 200 {
		t.Fatalf("b right after the login on a: %s", resp.Status)
	}
	logoutTok := csrfRE.FindStringSubmatch(body)[1]
	if resp, _ := post(t, c, b.srv.URL+PathLogout, url.Values{"csrf": {logoutTok}}, b.srv.URL); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout on b: %s", resp.Status)
	}
	if items, _ := st.List(context.Background(), sessionPrefix); len(items) != 0 {
		t.Fatalf("%d sessions left in the store after the logout on b", len(items))
	}
	select {
	case u := <-ended:
		if u != "alice" {
			t.Errorf("a's OnEnd hooks ended %q's session, want alice's", u)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a's OnEnd hooks did not run within 30 s of the logout on b")
	}
	if resp, _ := get(t, c, a.srv.URL+"/web/home"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("a after the logout on b: %s, want the login again", resp.Status)
	}
}
