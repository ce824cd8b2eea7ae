package deviceauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/oauth2"

	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/sso"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/fleet/ticket"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/audittest"
	"remoteler.dev/edge/tools/logtest"
	"remoteler.dev/edge/tools/oidcprovider"
)

// The tests run the device flow over HTTPS (httptest) with
// golang.org/x/oauth2's RFC 8628 client as tsh uses it, approve in a
// "browser" (an HTTP client with a cookie jar that sends the Origin header
// a browser sends) that logs in through a real OpenID provider on loopback
// (tools/oidcprovider); tools/e2e does it with tsh and Chromium.

// fakeBrowserLogin stands in for the fleet's browser login (which another
// package brings): whoever sends the cookie "test_session=NAME" is NAME.
type fakeBrowserLogin struct{}

func (fakeBrowserLogin) User(r *http.Request) (string, string, bool) {
	c, err := r.Cookie("test_session")
	if err != nil {
		return "", "", false
	}
	return c.Value, "web", true
}

func (fakeBrowserLogin) LoginURL(next string) string {
	return "/web/login?next=" + url.QueryEscape(next)
}

type fixture struct {
	srv     *httptest.Server
	srvURL  string
	prov    *oidcprovider.Provider
	auth    *Server
	tickets *ticket.Service
	users   *users.Service
	events  *audittest.Recorder
	now     func() time.Time
}

func newFixture(t *testing.T, browser Browser) *fixture {
	t.Helper()
	log := logtest.Logger(t)
	ctx := context.Background()
	prov, err := oidcprovider.Start(oidcprovider.Config{Logger: log, Users: []oidcprovider.User{
		{Username: "carol", Password: "carol-pw", Email: "carol@example.com", EmailVerified: true, Groups: []string{"ops"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prov.Close() })
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	roles := &rbac.Roles{Store: st}
	roles.EnsurePresets(ctx)
	us := &users.Service{Store: st, HashParams: users.HashParams{Time: 1, MemoryKiB: 64, Threads: 1}}
	us.Add(ctx, api.AddUserRequest{Name: "alice", Password: "alice-password", Roles: []string{"access"}})
	ev := &audittest.Recorder{}
	mux := http.NewServeMux()
	srv := httptest.NewUnstartedServer(mux)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	callback := srv.URL + api.PathSSOCallback
	prov.AddClient(oidcprovider.Client{ID: "fleet", Secret: "fleet-secret", RedirectURIs: []string{callback}})
	single := sso.New(sso.Config{Store: st, Users: us, Roles: roles, RedirectURL: callback, Audit: ev, Logger: log})
	_, err = single.Connectors.Put(ctx, api.OIDCConnector{Kind: api.ConnectorKindOIDC, Version: sso.Version, Metadata: api.Metadata{Name: "test", Description: ""},
		Spec: api.OIDCConnectorSpec{IssuerURL: prov.Issuer, ClientID: "fleet", ClientSecret: "fleet-secret", Display: "Test IdP",
			ClaimsToRoles: []api.ClaimMapping{{Claim: "email", Value: "*@example.com", Roles: []string{"access"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	tickets := &ticket.Service{Store: st}
	f := &fixture{srv: srv, srvURL: srv.URL, prov: prov, tickets: tickets, users: us, events: ev, now: time.Now}
	f.auth = New(Config{Store: st, Tickets: tickets, Users: us, PublicURL: srv.URL, Browser: browser, SSO: single, Interval: time.Second,
		Audit: ev, Cluster: "test", Logger: log, Now: func() time.Time { return f.now() }})
	f.auth.Register(mux)
	mux.Handle("GET "+api.PathSSOCallback, single.Callback())
	return f
}

// tshKeys are a request's keys, as tsh makes them.
type tshKeys struct {
	sshPub   string
	csr      []byte
	verifier string
}

func newKeys(t testing.TB) tshKeys {
	t.Helper()
	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	pub, _ := ssh.NewPublicKey(sk.Public())
	tk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, tk)
	if err != nil {
		t.Fatal(err)
	}
	return tshKeys{sshPub: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))), csr: csr, verifier: oauth2.GenerateVerifier()}
}

func (k tshKeys) params() []oauth2.AuthCodeOption {
	return []oauth2.AuthCodeOption{
		oauth2.SetAuthURLParam(api.DeviceFieldSSHKey, k.sshPub),
		oauth2.SetAuthURLParam(api.DeviceFieldCSR, base64.RawURLEncoding.EncodeToString(k.csr)),
		oauth2.SetAuthURLParam(api.DeviceFieldTTL, "3600"),
		oauth2.SetAuthURLParam(api.DeviceFieldChallenge, ticket.Challenge(k.verifier)),
		oauth2.SetAuthURLParam(api.DeviceFieldHost, "build-box"),
	}
}

// tsh is golang.org/x/oauth2's device flow client against the fixture.
func (f *fixture) tsh() (*oauth2.Config, context.Context) {
	conf := &oauth2.Config{ClientID: api.DeviceClientID, Endpoint: oauth2.Endpoint{
		DeviceAuthURL: f.srvURL + api.PathDeviceAuthorize, TokenURL: f.srvURL + api.PathDeviceToken, AuthStyle: oauth2.AuthStyleInParams}}
	return conf, context.WithValue(context.Background(), oauth2.HTTPClient, f.srv.Client())
}

func (f *fixture) start(t *testing.T, k tshKeys) *oauth2.DeviceAuthResponse {
	t.Helper()
	conf, ctx := f.tsh()
	da, err := conf.DeviceAuth(ctx, k.params()...)
	if err != nil {
		t.Fatalf("DeviceAuth: %v", err)
	}
	return da
}

// poll asks the token endpoint once and returns the RFC error code ("" on
// success) and the token.
func (f *fixture) poll(t *testing.T, da *oauth2.DeviceAuthResponse) (string, string) {
	t.Helper()
	resp, err := f.srv.Client().PostForm(f.srvURL+api.PathDeviceToken, url.Values{
		"grant_type": {api.DeviceCodeGrant}, "client_id": {api.DeviceClientID}, "device_code": {da.DeviceCode}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Error, AccessToken string }
	var raw map[string]any
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &raw)
	body.Error, _ = raw["error"].(string)
	body.AccessToken, _ = raw["access_token"].(string)
	return body.Error, body.AccessToken
}

// browser is a browser's cookies and the headers it sends.
type browser struct {
	t      *testing.T
	c      *http.Client
	origin string
}

func (f *fixture) browser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Transport: f.srv.Client().Transport, Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &browser{t: t, c: c, origin: f.srvURL}
}

// do sends a request as a browser would (Origin on POSTs) and follows
// redirects, filling in the provider's login form as user on the way; it
// returns the last page's status and body.
func (b *browser) do(method, target string, form url.Values, user string) (int, string) {
	b.t.Helper()
	for range 12 {
		var req *http.Request
		if method == http.MethodPost {
			req, _ = http.NewRequest(method, target, strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if u, _ := url.Parse(target); u != nil {
				req.Header.Set("Origin", u.Scheme+"://"+u.Host)
			}
		} else {
			req, _ = http.NewRequest(method, target, nil)
		}
		resp, err := b.c.Do(req)
		if err != nil {
			b.t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		loc, err := resp.Location()
		if err != nil {
			return resp.StatusCode, string(body)
		}
		method, target, form = http.MethodGet, loc.String(), nil
		if loc.Path == "/login" && !strings.HasPrefix(target, b.origin) { // the provider's form
			method, target = http.MethodPost, loc.Scheme+"://"+loc.Host+"/login"
			form = url.Values{"id": {loc.Query().Get("id")}, "username": {user}, "password": {user + "-pw"}}
		}
	}
	b.t.Fatalf("too many redirects from %s", target)
	return 0, ""
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no csrf token in the page:\n%s", page)
	}
	return m[1]
}

// approveWithSSO opens the verification address, logs in as user through
// the provider, and presses decision; it returns the last page.
func (f *fixture) approveWithSSO(t *testing.T, b *browser, da *oauth2.DeviceAuthResponse, user, decision string) (int, string) {
	t.Helper()
	status, page := b.do(http.MethodGet, da.VerificationURIComplete, nil, "")
	if status != http.StatusOK || !strings.Contains(page, "Log in with Test IdP") {
		t.Fatalf("verification page: %d\n%s", status, page)
	}
	status, page = b.do(http.MethodPost, f.srvURL+api.PathDeviceVerify+"/login",
		url.Values{"csrf": {csrfOf(t, page)}, "user_code": {strings.ToLower(da.UserCode)}, "connector": {"test"}}, user)
	if status != http.StatusOK || !strings.Contains(page, "Approve this login?") {
		return status, page
	}
	return b.do(http.MethodPost, f.srvURL+api.PathDeviceVerify+"/decide", url.Values{"csrf": {csrfOf(t, page)}, "decision": {decision}}, "")
}

func TestHeadlessLoginApprovedWithSSO(t *testing.T) {
	f := newFixture(t, nil)
	k := newKeys(t)
	da := f.start(t, k)
	if !strings.HasPrefix(da.VerificationURI, f.srvURL+api.PathDeviceVerify) || da.Interval != 1 || da.Expiry.IsZero() {
		t.Errorf("device authorization answer %+v", da)
	}
	if code, _ := f.poll(t, da); code != "authorization_pending" {
		t.Errorf("poll before approval: %q, want authorization_pending", code)
	}
	type result struct {
		tok *oauth2.Token
		err error
	}
	done := make(chan result, 1)
	go func() {
		conf, ctx := f.tsh()
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		tok, err := conf.DeviceAccessToken(ctx, da)
		done <- result{tok, err}
	}()

	status, page := f.approveWithSSO(t, f.browser(t), da, "carol", "approve")
	if status != http.StatusOK || !strings.Contains(page, "Approved") {
		t.Fatalf("approval: %d\n%s", status, page)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("DeviceAccessToken: %v", r.err)
	}
	tk, err := f.tickets.Redeem(context.Background(), r.tok.AccessToken, k.verifier)
	if err != nil {
		t.Fatalf("redeem: %v", err)
	}
	if tk.User != "carol@example.com" || tk.Method != "headless" || tk.Connector != "test" || tk.SSHPublicKey != k.sshPub || tk.TTL != time.Hour || string(tk.CSR) != string(k.csr) {
		t.Errorf("ticket %+v", tk)
	}
	ev, ok := f.events.Find(proto.EventHeadlessApproved)
	if !ok || ev.User != "carol@example.com" || ev.Fields["user_code"] != da.UserCode || ev.Fields["method"] != "sso:test" || ev.Fields["host"] != "build-box" {
		t.Errorf("approval event %+v (events %q)", ev, f.events.Types())
	}
	if _, ok := f.events.Find(proto.EventUserLogin); !ok {
		t.Errorf("no SSO login event: %q", f.events.Types())
	}
	if code, _ := f.poll(t, da); code != "expired_token" {
		t.Errorf("poll after the token was taken: %q, want expired_token", code)
	}
}

func TestHeadlessLoginDenied(t *testing.T) {
	f := newFixture(t, nil)
	da := f.start(t, newKeys(t))
	status, page := f.approveWithSSO(t, f.browser(t), da, "carol", "deny")
	if status != http.StatusOK || !strings.Contains(page, "Denied") {
		t.Fatalf("denial: %d\n%s", status, page)
	}
	if code, _ := f.poll(t, da); code != "access_denied" {
		t.Errorf("poll after denial: %q, want access_denied", code)
	}
	if ev, ok := f.events.Find(proto.EventHeadlessDenied); !ok || ev.User != "carol@example.com" || ev.Outcome != proto.OutcomeDenied {
		t.Errorf("denial event %+v", ev)
	}
}

func TestHeadlessLoginRefusedSSO(t *testing.T) {
	f := newFixture(t, nil)
	da := f.start(t, newKeys(t))
	f.prov.SetFault(oidcprovider.WrongNonce)
	status, page := f.approveWithSSO(t, f.browser(t), da, "carol", "approve")
	if status != http.StatusForbidden || !strings.Contains(page, "nonce is not this login") {
		t.Fatalf("a refused SSO login: %d\n%s", status, page)
	}
	if code, _ := f.poll(t, da); code != "authorization_pending" {
		t.Errorf("poll: %q, want the login still pending", code)
	}
}

func TestHeadlessLoginWithBrowserSession(t *testing.T) {
	f := newFixture(t, fakeBrowserLogin{})
	k := newKeys(t)
	da := f.start(t, k)
	b := f.browser(t)
	u, _ := url.Parse(f.srvURL)
	b.c.Jar.SetCookies(u, []*http.Cookie{{Name: "test_session", Value: "alice"}})
	status, page := b.do(http.MethodGet, da.VerificationURIComplete, nil, "")
	if status != http.StatusOK || !strings.Contains(page, "Approve this login?") || !strings.Contains(page, "alice (roles: access)") || !strings.Contains(page, "build-box") {
		t.Fatalf("approval page for a logged-in browser: %d\n%s", status, page)
	}
	status, page = b.do(http.MethodPost, f.srvURL+api.PathDeviceVerify+"/decide", url.Values{"csrf": {csrfOf(t, page)}, "decision": {"approve"}}, "")
	if status != http.StatusOK || !strings.Contains(page, "Approved") {
		t.Fatalf("approve: %d\n%s", status, page)
	}
	code, tok := f.poll(t, da)
	if code != "" {
		t.Fatalf("poll: %q", code)
	}
	tk, err := f.tickets.Redeem(context.Background(), tok, k.verifier)
	if err != nil || tk.User != "alice" || tk.Method != "headless" {
		t.Errorf("ticket %+v, %v", tk, err)
	}
	// Not logged in: the page offers the browser login too.
	b2 := f.browser(t)
	if _, page := b2.do(http.MethodGet, f.srvURL+api.PathDeviceVerify, nil, ""); !strings.Contains(page, `href="/web/login?next=`) {
		t.Errorf("the page does not offer the browser login:\n%s", page)
	}
}

func TestDecisionMustComeFromTheFleetsPage(t *testing.T) {
	f := newFixture(t, fakeBrowserLogin{})
	da := f.start(t, newKeys(t))
	b := f.browser(t)
	u, _ := url.Parse(f.srvURL)
	b.c.Jar.SetCookies(u, []*http.Cookie{{Name: "test_session", Value: "alice"}})
	_, page := b.do(http.MethodGet, da.VerificationURIComplete, nil, "")
	csrf := csrfOf(t, page)
	post := func(form url.Values, origin string, withCookie bool) int {
		req, _ := http.NewRequest(http.MethodPost, f.srvURL+api.PathDeviceVerify+"/decide", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", origin)
		c := b.c
		if !withCookie {
			c = &http.Client{Transport: b.c.Transport}
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := post(url.Values{"csrf": {csrf}, "decision": {"approve"}}, "https://evil.example", true); got != http.StatusForbidden {
		t.Errorf("from another origin: %d", got)
	}
	if got := post(url.Values{"csrf": {csrf}, "decision": {"approve"}}, f.srvURL, false); got != http.StatusForbidden {
		t.Errorf("without the browser's cookie: %d", got)
	}
	if code, _ := f.poll(t, da); code != "authorization_pending" {
		t.Errorf("after forged decisions: %q, want authorization_pending", code)
	}
	// A wrong token spends the page's approval (it is used once); a
	// fresh page approves.
	if got := post(url.Values{"csrf": {"wrong"}, "decision": {"approve"}}, f.srvURL, true); got != http.StatusForbidden {
		t.Errorf("with a wrong token: %d", got)
	}
	_, page = b.do(http.MethodGet, da.VerificationURIComplete, nil, "")
	if got := post(url.Values{"csrf": {csrfOf(t, page)}, "decision": {"approve"}}, f.srvURL, true); got != http.StatusOK {
		t.Errorf("from the page: %d", got)
	}
}

func TestUnknownCodeAndExpiry(t *testing.T) {
	f := newFixture(t, fakeBrowserLogin{})
	now := time.Now()
	f.now = func() time.Time { return now }
	b := f.browser(t)
	u, _ := url.Parse(f.srvURL)
	b.c.Jar.SetCookies(u, []*http.Cookie{{Name: "test_session", Value: "alice"}})
	if status, page := b.do(http.MethodGet, f.srvURL+api.PathDeviceVerify+"?user_code=BCDF-GHJK", nil, ""); status != http.StatusNotFound || !strings.Contains(page, "unknown") {
		t.Errorf("unknown code: %d\n%s", status, page)
	}
	if _, page := b.do(http.MethodGet, f.srvURL+api.PathDeviceVerify+"?user_code=hello", nil, ""); !strings.Contains(page, "not a code tsh shows") {
		t.Errorf("malformed code:\n%s", page)
	}
	da := f.start(t, newKeys(t))
	now = now.Add(DefaultCodeTTL)
	if status, _ := b.do(http.MethodGet, da.VerificationURIComplete, nil, ""); status != http.StatusNotFound {
		t.Errorf("expired code: %d", status)
	}
	if code, _ := f.poll(t, da); code != "expired_token" {
		t.Errorf("poll of an expired login: %q", code)
	}
	f.start(t, newKeys(t))
	now = now.Add(DefaultCodeTTL)
	if n, err := f.auth.Prune(context.Background(), f.auth.cfg.Store); err != nil || n < 2 {
		t.Errorf("Prune = %d, %v; want the grant and its code", n, err)
	}
}

func TestPollingTooFast(t *testing.T) {
	f := newFixture(t, nil)
	da := f.start(t, newKeys(t))
	codes := []string{}
	for range 2 {
		c, _ := f.poll(t, da)
		codes = append(codes, c)
	}
	if codes[0] != "authorization_pending" || codes[1] != "slow_down" {
		t.Errorf("two quick polls: %q, want authorization_pending then slow_down", codes)
	}
}

func TestAuthorizeRefusals(t *testing.T) {
	f := newFixture(t, nil)
	k := newKeys(t)
	good := url.Values{"client_id": {api.DeviceClientID}, api.DeviceFieldSSHKey: {k.sshPub}, api.DeviceFieldCSR: {base64.RawURLEncoding.EncodeToString(k.csr)},
		api.DeviceFieldChallenge: {ticket.Challenge("v")}, api.DeviceFieldTTL: {"60"}}
	edit := func(k, v string) url.Values {
		out := url.Values{}
		for key, vals := range good {
			out[key] = vals
		}
		out.Set(k, v)
		return out
	}
	tests := []struct {
		name string
		form url.Values
		code string
	}{
		{"another client", edit("client_id", "evil"), "invalid_client"},
		{"bad ssh key", edit(api.DeviceFieldSSHKey, "ssh-ed25519 AAAA"), "invalid_request"},
		{"bad csr", edit(api.DeviceFieldCSR, "AAAA"), "invalid_request"},
		{"bad challenge", edit(api.DeviceFieldChallenge, "short"), "invalid_request"},
		{"bad ttl", edit(api.DeviceFieldTTL, "-1"), "invalid_request"},
		{"escape in host", edit(api.DeviceFieldHost, "box\x1b]0;x\x07"), "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := f.srv.Client().PostForm(f.srvURL+api.PathDeviceAuthorize, tt.form)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]string
			json.NewDecoder(resp.Body).Decode(&body)
			if resp.StatusCode != http.StatusBadRequest || body["error"] != tt.code || body["error_description"] == "" {
				t.Errorf("%d %v, want 400 %s", resp.StatusCode, body, tt.code)
			}
		})
	}
	if _, err := ParseRequest(good); err != nil {
		t.Errorf("the good form: %v", err)
	}
}

func TestNormalizeUserCode(t *testing.T) {
	for in, want := range map[string]string{"BCDF-GHJK": "BCDF-GHJK", "bcdfghjk": "BCDF-GHJK", " bcd f-gh jk ": "BCDF-GHJK"} {
		if got, ok := NormalizeUserCode(in); !ok || got != want {
			t.Errorf("NormalizeUserCode(%q) = %q, %v", in, got, ok)
		}
	}
	for _, bad := range []string{"", "BCDF-GHJ", "BCDF-GHJKL", "ABCD-EFGH", "BCDF-GHJ1", "ＢCDF-GHJK"} {
		if got, ok := NormalizeUserCode(bad); ok {
			t.Errorf("NormalizeUserCode(%q) = %q", bad, got)
		}
	}
	for range 100 {
		c := newUserCode()
		if got, ok := NormalizeUserCode(c); !ok || got != c {
			t.Fatalf("a new code %q does not normalise to itself", c)
		}
	}
}

// TestNoApprovalUnrecorded: an approval that cannot be recorded approves
// nothing.
func TestNoApprovalUnrecorded(t *testing.T) {
	f := newFixture(t, fakeBrowserLogin{})
	da := f.start(t, newKeys(t))
	b := f.browser(t)
	u, _ := url.Parse(f.srvURL)
	b.c.Jar.SetCookies(u, []*http.Cookie{{Name: "test_session", Value: "alice"}})
	_, page := b.do(http.MethodGet, da.VerificationURIComplete, nil, "")
	f.events.Err = errors.New("disk full")
	status, page := b.do(http.MethodPost, f.srvURL+api.PathDeviceVerify+"/decide", url.Values{"csrf": {csrfOf(t, page)}, "decision": {"approve"}}, "")
	if status != http.StatusServiceUnavailable || !strings.Contains(page, "approved nothing") {
		t.Fatalf("approval with the trail down: %d\n%s", status, page)
	}
	if code, _ := f.poll(t, da); code != "authorization_pending" {
		t.Errorf("poll: %q, want the login pending again", code)
	}
}
