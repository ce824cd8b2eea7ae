package sso

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/audittest"
	"remoteler.dev/edge/tools/logtest"
	"remoteler.dev/edge/tools/oidcprovider"
)

// The tests log in through a real OpenID provider on loopback
// (tools/oidcprovider, on zitadel/oidc's op library), filling in its login
// form with a plain HTTP client; tools/e2e does it with Chromium.

const redirect = "https://fleet.test" + api.PathSSOCallback

type fixture struct {
	prov   *oidcprovider.Provider
	svc    *Service
	users  *users.Service
	events *audittest.Recorder
}

var testUsers = []oidcprovider.User{
	{Username: "carol", Password: "carol-pw", Email: "Carol@Example.com", EmailVerified: true, Groups: []string{"fleet-admins", "ops"},
		Claims: map[string]any{"unix_login": "carol", "department": "Field Ops"}},
	{Username: "dave", Password: "dave-pw", Email: "dave@example.com", EmailVerified: true, Groups: []string{"visitors"}},
	{Username: "erin", Password: "erin-pw", Email: "erin@example.com", EmailVerified: false, Groups: []string{"ops"}},
	{Username: "frank", Password: "frank-pw", Email: "frank@example.com", EmailVerified: true, Groups: []string{"ghosts"}},
}

func connector(name, issuer, clientID string) api.OIDCConnector {
	return api.OIDCConnector{
		Kind: api.ConnectorKindOIDC, Version: Version, Metadata: api.Metadata{Name: name},
		Spec: api.OIDCConnectorSpec{
			IssuerURL: issuer, ClientID: clientID, ClientSecret: clientID + "-secret",
			Scopes:         []string{"email", "profile", "groups"},
			ClaimsToTraits: map[string]string{"logins": "unix_login", "department": "department"},
			ClaimsToRoles: []api.ClaimMapping{
				{Claim: "groups", Value: "fleet-admins", Roles: []string{"admin"}},
				{Claim: "groups", Value: "ops", Roles: []string{"access", "ops"}},
				{Claim: "groups", Value: "ghosts", Roles: []string{"no-such-role"}},
			},
		},
	}
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	log := logtest.Logger(t)
	prov, err := oidcprovider.Start(oidcprovider.Config{Users: testUsers, Clients: []oidcprovider.Client{
		{ID: "fleet", Secret: "fleet-secret", RedirectURIs: []string{redirect}},
		{ID: "fleet-idclaims", Secret: "fleet-idclaims-secret", RedirectURIs: []string{redirect}, ClaimsInIDToken: true},
	}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prov.Close() })
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	roles := &rbac.Roles{Store: st}
	ctx := context.Background()
	if err := roles.EnsurePresets(ctx); err != nil {
		t.Fatal(err)
	}
	ops := rbac.Presets()[1]
	ops.Metadata.Name = "ops"
	ops.Spec.Options.MaxSessionTTL = "2h"
	if err := roles.Put(ctx, ops); err != nil {
		t.Fatal(err)
	}
	us := &users.Service{Store: st, HashParams: users.HashParams{Time: 1, MemoryKiB: 64, Threads: 1}}
	ev := &audittest.Recorder{}
	svc := New(Config{Store: st, Users: us, Roles: roles, RedirectURL: redirect, Audit: ev, Logger: log})
	for _, c := range []api.OIDCConnector{connector("test", prov.Issuer, "fleet"), connector("idclaims", prov.Issuer, "fleet-idclaims")} {
		if _, err := svc.Connectors.Put(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	return &fixture{prov: prov, svc: svc, users: us, events: ev}
}

// noFollow is an HTTP client that stops at every redirect.
var noFollow = &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// providerLogin walks a browser's way from authURL through the provider's
// login form as user and returns the provider's redirect to the fleet.
func providerLogin(t *testing.T, authURL, user, password string) *url.URL {
	t.Helper()
	next := authURL
	for range 10 {
		u, err := url.Parse(next)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(next, redirect) {
			return u
		}
		var resp *http.Response
		if u.Path == "/login" {
			resp, err = noFollow.PostForm(u.Scheme+"://"+u.Host+"/login", url.Values{"id": {u.Query().Get("id")}, "username": {user}, "password": {password}})
		} else {
			resp, err = noFollow.Get(next)
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		loc, err := resp.Location()
		if err != nil {
			t.Fatalf("%s: %s, no redirect: %s", next, resp.Status, body)
		}
		next = loc.String()
	}
	t.Fatalf("no redirect to the fleet from %s", authURL)
	return nil
}

// callback is the provider's answer as the fleet's callback gets it.
func callback(u *url.URL) *http.Request {
	r := httptest.NewRequest(http.MethodGet, u.String(), nil)
	r.RemoteAddr = "192.0.2.7:4000"
	return r
}

func (f *fixture) login(t *testing.T, conn, user, password string) (*Result, error) {
	t.Helper()
	authURL, _, err := f.svc.Start(context.Background(), StartRequest{Connector: conn, Kind: "tsh", Data: []byte(`{"x":1}`), ClientAddr: "192.0.2.7:4000"})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	return f.svc.Finish(context.Background(), callback(providerLogin(t, authURL, user, password)))
}

func TestLogin(t *testing.T) {
	f := newFixture(t)
	for _, conn := range []string{"test", "idclaims"} {
		t.Run(conn, func(t *testing.T) {
			res, err := f.login(t, conn, "carol", "carol-pw")
			if err != nil {
				t.Fatal(err)
			}
			if res.User != "carol@example.com" || res.Connector != conn || res.Subject != "sub-carol" || res.Issuer != f.prov.Issuer {
				t.Errorf("identity %+v", res.Identity)
			}
			if !slices.Equal(res.Roles, []string{"admin", "access", "ops"}) {
				t.Errorf("roles %q", res.Roles)
			}
			want := map[string][]string{
				"external.email": {"Carol@Example.com"}, "external.groups": {"fleet-admins", "ops"}, "external.username": {"carol@example.com"},
				"external.logins": {"carol"}, "external.department": {"Field Ops"},
			}
			for k, v := range want {
				if !slices.Equal(res.Traits[k], v) {
					t.Errorf("trait %s = %q, want %q", k, res.Traits[k], v)
				}
			}
			if res.Kind != "tsh" || string(res.Data) != `{"x":1}` || res.ClientAddr != "192.0.2.7:4000" {
				t.Errorf("what the login started with: %q %q %q", res.Kind, res.Data, res.ClientAddr)
			}
			u, err := f.users.Get(context.Background(), "carol@example.com")
			if err != nil || u.SSO == nil || u.SSO.Connector != conn || !slices.Equal(u.Roles, res.Roles) {
				t.Fatalf("stored user %+v, %v", u, err)
			}
			// ops caps certificates at 2h.
			if d := time.Until(u.SSO.Expires); d > 2*time.Hour || d < time.Hour {
				t.Errorf("expires in %v, want the ops role's 2h", d)
			}
			ev := f.events.Last()
			if ev.Type != proto.EventUserLogin || ev.User != "carol@example.com" || ev.Fields["method"] != "sso" || ev.Fields["connector"] != conn || ev.Fields["roles"] != "admin,access,ops" {
				t.Errorf("audit event %+v", ev)
			}
		})
		// The second connector's login is refused over the first's user:
		// one name, one connector.
		if conn == "test" {
			f.users.Delete(context.Background(), "carol@example.com")
		}
	}
}

// TestSessionKindRecordsItself: for a kind registered with HandleSession
// (the browser's, whose finisher records the login with its session), a
// verified login leaves no user.login of the service's own, so that one
// login is one event; a refusal is still recorded here.
func TestSessionKindRecordsItself(t *testing.T) {
	f := newFixture(t)
	f.svc.HandleSession("browser", func(http.ResponseWriter, *http.Request, *Result, error) {})
	start := func(user string) (*Result, error) {
		authURL, _, err := f.svc.Start(context.Background(), StartRequest{Connector: "test", Kind: "browser", ClientAddr: "192.0.2.7:4000"})
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		return f.svc.Finish(context.Background(), callback(providerLogin(t, authURL, user, user+"-pw")))
	}
	before := len(f.events.Events())
	res, err := start("carol")
	if err != nil || res.User != "carol@example.com" {
		t.Fatalf("login: %+v, %v", res, err)
	}
	if n := len(f.events.Events()); n != before {
		t.Errorf("%d events for a login its finisher records, want none: last %+v", n-before, f.events.Last())
	}
	if _, err := start("dave"); err == nil {
		t.Fatal("dave, whose claims map to no role, was logged in")
	}
	if ev := f.events.Last(); len(f.events.Events()) != before+1 || ev.Type != proto.EventUserLoginFailed {
		t.Errorf("the refusal's event: %+v (%d events)", ev, len(f.events.Events())-before)
	}
}

func TestLoginAfterKeyRotation(t *testing.T) {
	f := newFixture(t)
	if _, err := f.login(t, "test", "carol", "carol-pw"); err != nil {
		t.Fatal(err)
	}
	if err := f.prov.RotateKey(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.login(t, "test", "carol", "carol-pw"); err != nil {
		t.Fatalf("login after the provider rotated its key: %v", err)
	}
}

func TestRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.users.Add(ctx, api.AddUserRequest{Name: "dave", Password: "local-password", Roles: []string{"access"}}); err != nil {
		t.Fatal(err)
	}
	byName := connector("byname", f.prov.Issuer, "fleet")
	byName.Spec.UsernameClaim = "preferred_username"
	byName.Spec.ClaimsToRoles = append(byName.Spec.ClaimsToRoles, api.ClaimMapping{Claim: "groups", Value: "vis*", Roles: []string{"access"}})
	if _, err := f.svc.Connectors.Put(ctx, byName); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		conn, user string
		fault      oidcprovider.Fault
		setup      func(t *testing.T)
		reason     string
		message    string
	}{
		{name: "wrong audience", user: "carol", fault: oidcprovider.WrongAudience, reason: ReasonAudience, message: "not for this fleet"},
		{name: "expired ID token", user: "carol", fault: oidcprovider.Expired, reason: ReasonExpired, message: "ID token expired at"},
		{name: "wrong nonce", user: "carol", fault: oidcprovider.WrongNonce, reason: ReasonNonce, message: "nonce is not this login's"},
		{name: "rotated-out key", user: "carol", fault: oidcprovider.RetiredKey, setup: func(t *testing.T) {
			if err := f.prov.RotateKey(); err != nil {
				t.Fatal(err)
			}
		}, reason: ReasonSignature, message: "signature does not verify"},
		{name: "claims map to no role", user: "dave", reason: ReasonNoRole, message: "give you no fleet role (groups: visitors)"},
		{name: "roles that do not exist", user: "frank", reason: ReasonNoRole, message: "no-such-role, which do not exist"},
		{name: "email not verified", user: "erin", reason: ReasonEmailUnverified, message: "has not verified your email address"},
		{name: "a local user's name", conn: "byname", user: "dave", reason: ReasonNameTaken, message: "belongs to a user who does not log in through connector"},
		{name: "connector removed meanwhile", user: "carol", setup: func(t *testing.T) {
			c := connector("gone", f.prov.Issuer, "fleet")
			f.svc.Connectors.Put(ctx, c)
		}, conn: "gone", reason: ReasonConnector, message: "was removed while you logged in"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := tt.conn
			if conn == "" {
				conn = "test"
			}
			if tt.setup != nil {
				tt.setup(t)
			}
			f.prov.SetFault(tt.fault)
			defer f.prov.SetFault(oidcprovider.NoFault)
			authURL, _, err := f.svc.Start(ctx, StartRequest{Connector: conn, Kind: "tsh"})
			if err != nil {
				t.Fatal(err)
			}
			answer := providerLogin(t, authURL, tt.user, tt.user+"-pw")
			if conn == "gone" {
				f.svc.Connectors.Delete(ctx, "gone")
			}
			res, err := f.svc.Finish(ctx, callback(answer))
			var ref *Refusal
			if !errors.As(err, &ref) {
				t.Fatalf("Finish = %+v, %v; want a refusal", res, err)
			}
			if ref.Reason != tt.reason || !strings.Contains(ref.Message, tt.message) {
				t.Errorf("refusal %q: %q; want %q containing %q", ref.Reason, ref.Message, tt.reason, tt.message)
			}
			if res == nil || res.Identity != nil || res.Kind != "tsh" {
				t.Errorf("result %+v: want the login's kind and no identity", res)
			}
			ev := f.events.Last()
			if ev.Type != proto.EventUserLoginFailed || ev.Outcome != proto.OutcomeDenied || ev.Fields["reason"] != tt.reason || ev.Fields["connector"] != conn || ev.Message != ref.Message {
				t.Errorf("audit event %+v", ev)
			}
		})
	}
	if u, err := f.users.Get(ctx, "dave"); err != nil || u.SSO != nil {
		t.Errorf("the local user dave after refused SSO logins: %+v, %v", u, err)
	}
	for _, name := range []string{"erin@example.com", "dave@example.com", "frank@example.com"} {
		if _, err := f.users.Get(ctx, name); err == nil {
			t.Errorf("refused user %s was recorded", name)
		}
	}
}

func TestStateIsUsedOnce(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	authURL, _, err := f.svc.Start(ctx, StartRequest{Connector: "test", Kind: "tsh"})
	if err != nil {
		t.Fatal(err)
	}
	answer := providerLogin(t, authURL, "carol", "carol-pw")
	if _, err := f.svc.Finish(ctx, callback(answer)); err != nil {
		t.Fatal(err)
	}
	res, err := f.svc.Finish(ctx, callback(answer))
	var ref *Refusal
	if !errors.As(err, &ref) || ref.Reason != ReasonState || !strings.Contains(ref.Message, "already used") {
		t.Fatalf("replayed state: %+v, %v", res, err)
	}
	if res != nil {
		t.Errorf("a replayed state gave a result: %+v", res)
	}
	if ev := f.events.Last(); ev.Type != proto.EventUserLoginFailed || ev.Fields["reason"] != ReasonState {
		t.Errorf("audit event %+v", ev)
	}
	for _, q := range []string{"", "?state=", "?state=made-up&code=x"} {
		if _, err := f.svc.Finish(ctx, httptest.NewRequest(http.MethodGet, redirect+q, nil)); !errors.As(err, &ref) || ref.Reason != ReasonState {
			t.Errorf("callback %q: %v, want a state refusal", q, err)
		}
	}
}

func TestStartRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, _, err := f.svc.Start(ctx, StartRequest{Connector: "nope", Kind: "tsh"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown connector: %v, want ErrNotFound", err)
	}
	down := connector("down", "http://127.0.0.1:1", "fleet")
	f.svc.Connectors.Put(ctx, down)
	var ref *Refusal
	if _, _, err := f.svc.Start(ctx, StartRequest{Connector: "down", Kind: "tsh"}); !errors.As(err, &ref) || ref.Reason != ReasonProvider {
		t.Errorf("unreachable provider: %v, want a provider refusal", err)
	}
}

func TestProviderErrorAndExpiry(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	now := time.Now()
	f.svc.cfg.Now = func() time.Time { return now }
	start := func() string {
		authURL, _, err := f.svc.Start(ctx, StartRequest{Connector: "test", Kind: "tsh"})
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(authURL)
		return u.Query().Get("state")
	}
	var ref *Refusal
	state := start()
	_, err := f.svc.Finish(ctx, httptest.NewRequest(http.MethodGet, redirect+"?state="+state+"&error=access_denied&error_description=user+said+no", nil))
	if !errors.As(err, &ref) || ref.Reason != ReasonProvider || !strings.Contains(ref.Message, "access_denied user said no") {
		t.Errorf("provider error: %v", err)
	}
	state = start()
	now = now.Add(DefaultPendingTTL + time.Second)
	if _, err := f.svc.Finish(ctx, httptest.NewRequest(http.MethodGet, redirect+"?state="+state+"&code=x", nil)); !errors.As(err, &ref) || !strings.Contains(ref.Message, "took too long") {
		t.Errorf("stale login: %v", err)
	}
	start()
	now = now.Add(DefaultPendingTTL + time.Second)
	if n, err := f.svc.Prune(ctx, f.svc.cfg.Store); err != nil || n != 1 {
		t.Errorf("Prune = %d, %v; want the one expired login", n, err)
	}
}

func TestBrowserBinding(t *testing.T) {
	f := newFixture(t)
	start := func() (*url.URL, *http.Cookie) {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "https://fleet.test/web/login/sso", nil)
		if err := f.svc.StartBrowser(w, r, StartRequest{Connector: "test", Kind: "web"}); err != nil {
			t.Fatal(err)
		}
		resp := w.Result()
		var cookie *http.Cookie
		for _, c := range resp.Cookies() {
			if c.Name == BrowserCookie {
				cookie = c
			}
		}
		if resp.StatusCode != http.StatusSeeOther || cookie == nil || !cookie.Secure || !cookie.HttpOnly || cookie.SameSite != http.SameSiteLaxMode {
			t.Fatalf("StartBrowser: %s, cookie %+v", resp.Status, cookie)
		}
		loc, _ := resp.Location()
		return providerLogin(t, loc.String(), "carol", "carol-pw"), cookie
	}
	answer, cookie := start()
	r := callback(answer)
	r.AddCookie(cookie)
	if _, err := f.svc.Finish(context.Background(), r); err != nil {
		t.Fatalf("in the browser that started: %v", err)
	}
	answer, _ = start()
	r = callback(answer)
	r.AddCookie(&http.Cookie{Name: BrowserCookie, Value: "another-browser"})
	var ref *Refusal
	if _, err := f.svc.Finish(context.Background(), r); !errors.As(err, &ref) || ref.Reason != ReasonBrowser {
		t.Errorf("in another browser: %v, want a browser refusal", err)
	}
}

// TestPKCEVerifierIsChecked: the code is exchanged with the verifier the
// fleet kept; with another one the provider refuses the code, so a code
// intercepted on its way back is worth nothing without the fleet's store.
func TestPKCEVerifierIsChecked(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	authURL, _, err := f.svc.Start(ctx, StartRequest{Connector: "test", Kind: "tsh"})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(authURL)
	if u.Query().Get("code_challenge_method") != "S256" || u.Query().Get("code_challenge") == "" || u.Query().Get("nonce") == "" {
		t.Fatalf("the authorization request has no S256 challenge or nonce: %s", authURL)
	}
	key := pendingPrefix + hashHex(u.Query().Get("state"))
	b, err := f.svc.cfg.Store.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	var p pending
	json.Unmarshal(b, &p)
	p.Verifier = "another-verifier-another-verifier-another-verifier"
	b, _ = json.Marshal(p)
	f.svc.cfg.Store.Put(ctx, key, b)
	_, err = f.svc.Finish(ctx, callback(providerLogin(t, authURL, "carol", "carol-pw")))
	var ref *Refusal
	if !errors.As(err, &ref) || ref.Reason != ReasonExchange {
		t.Fatalf("Finish with another verifier: %v, want a code exchange refusal", err)
	}
}

// TestNoLoginUnrecorded: when the audit trail cannot be written, the
// login does not go ahead.
func TestNoLoginUnrecorded(t *testing.T) {
	f := newFixture(t)
	f.events.Err = errors.New("disk full")
	res, err := f.login(t, "test", "carol", "carol-pw")
	if err == nil || !strings.Contains(err.Error(), "cannot write its audit log") {
		t.Fatalf("Finish with the trail down: %+v, %v", res, err)
	}
}
