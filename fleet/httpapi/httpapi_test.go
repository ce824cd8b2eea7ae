package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/sourcelimit"
	"remoteler.dev/edge/fleet/sso"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/fleet/ticket"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/proto/api"
)

// newTestServer builds a Server on an in-memory store (memstore, the test
// double of the store contract) with one user, alice, and one join token.
func newTestServer(t testing.TB) (*Server, string) {
	t.Helper()
	ctx := context.Background()
	st := memstore.New()
	auth, err := ca.LoadOrCreate(ctx, st, "fleet", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	roles := &rbac.Roles{Store: st}
	if err := roles.EnsurePresets(ctx); err != nil {
		t.Fatal(err)
	}
	us := &users.Service{Store: st, HashParams: users.HashParams{Time: 1, MemoryKiB: 64, Threads: 1}}
	if _, err := us.Add(ctx, api.AddUserRequest{Name: "alice", Password: "correct horse", Roles: []string{"access"}, Logins: []string{"root"}}); err != nil {
		t.Fatal(err)
	}
	toks := &tokens.Service{Store: st}
	tok, err := toks.Add(ctx, api.AddTokenRequest{Uses: 1000})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		CA: auth, Users: us, Roles: roles, Tokens: toks,
		Devices: &devices.Registry{Store: st}, Tunnels: tunnelsrv.New(tunnelsrv.Config{}),
		Cluster: "fleet",
		SSO:     sso.New(sso.Config{Store: st, Users: us, Roles: roles, RedirectURL: "https://fleet.test" + api.PathSSOCallback}),
		Tickets: &ticket.Service{Store: st},
	}
	return s, tok.Token
}

func post(h http.Handler, path string, body []byte) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
	return w
}

// challenge is a well-formed code challenge.
var challenge = ticket.Challenge("verifier")

// ssoLogin is the body of an SSO login request.
func ssoLogin(connector, redirect, challenge string) string {
	return `{"connector":"` + connector + `","ssh_public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl","csr":"AAAA","redirect_url":"` + redirect + `","code_challenge":"` + challenge + `"}`
}

func TestOpenEndpointsRefuseBadInput(t *testing.T) {
	s, tok := newTestServer(t)
	s.LoginLimit = &sourcelimit.Limiter{} // more cases than a burst: TestLoginRateLimitPerSource tests the limit
	h := s.Handler()
	tests := []struct {
		name, path, body string
		want             int
		wantCode         string
	}{
		{"login: not json", api.PathLogin, "{", http.StatusBadRequest, api.CodeBadRequest},
		{"login: unknown field", api.PathLogin, `{"user":"alice","pasword":"x"}`, http.StatusBadRequest, api.CodeBadRequest},
		{"login: trailing data", api.PathLogin, `{"user":"alice"} {}`, http.StatusBadRequest, api.CodeBadRequest},
		{"login: wrong password", api.PathLogin, `{"user":"alice","password":"nope"}`, http.StatusUnauthorized, api.CodeUnauthorized},
		{"login: unknown user", api.PathLogin, `{"user":"mallory","password":"nope"}`, http.StatusUnauthorized, api.CodeUnauthorized},
		{"login: right password, bad key", api.PathLogin, `{"user":"alice","password":"correct horse","ssh_public_key":"junk"}`, http.StatusBadRequest, api.CodeBadRequest},
		{"join: bad key", api.PathJoin, `{"token":"` + tok + `","name":"pi-1","ssh_public_key":"junk"}`, http.StatusBadRequest, api.CodeBadRequest},
		{"join: bad token", api.PathJoin, `{"token":"jt_nope","name":"pi-1","ssh_public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}`, http.StatusUnauthorized, api.CodeUnauthorized},
		{"join: bad name", api.PathJoin, `{"token":"` + tok + `","name":"Not A Name!","ssh_public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}`, http.StatusBadRequest, api.CodeBadRequest},
		{"join: escape sequence in the version", api.PathJoin, `{"token":"` + tok + `","name":"pi-1","agent_version":"v1\u001b]52;c;AA\u0007","ssh_public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}`, http.StatusBadRequest, api.CodeBadRequest},
		{"join: bidi override in a label", api.PathJoin, `{"token":"` + tok + `","name":"pi-1","labels":{"site":"north\u202e"},"ssh_public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}`, http.StatusBadRequest, api.CodeBadRequest},
		{"sso login: another site as the way back", api.PathSSOLogin, ssoLogin("test", "https://evil.example/cb", challenge), http.StatusBadRequest, api.CodeBadRequest},
		{"sso login: a way back off loopback", api.PathSSOLogin, ssoLogin("test", "http://192.0.2.1:9/cb", challenge), http.StatusBadRequest, api.CodeBadRequest},
		{"sso login: no port", api.PathSSOLogin, ssoLogin("test", "http://127.0.0.1/cb", challenge), http.StatusBadRequest, api.CodeBadRequest},
		{"sso login: bad challenge", api.PathSSOLogin, ssoLogin("test", "http://127.0.0.1:9/cb", "plain"), http.StatusBadRequest, api.CodeBadRequest},
		{"sso login: bad key", api.PathSSOLogin, `{"connector":"test","ssh_public_key":"junk","csr":"AAAA","redirect_url":"http://127.0.0.1:9/cb","code_challenge":"` + challenge + `"}`, http.StatusBadRequest, api.CodeBadRequest},
		{"sso login: unknown connector", api.PathSSOLogin, ssoLogin("nope", "http://127.0.0.1:9/cb", challenge), http.StatusNotFound, api.CodeNotFound},
		{"redeem: unknown ticket", api.PathSSORedeem, `{"ticket":"tk_nope","code_verifier":"v"}`, http.StatusUnauthorized, api.CodeUnauthorized},
		{"redeem: unknown field", api.PathSSORedeem, `{"tiket":"x"}`, http.StatusBadRequest, api.CodeBadRequest},
		{"oversized body", api.PathLogin, `{"user":"` + strings.Repeat("a", 2<<20) + `"}`, http.StatusBadRequest, api.CodeBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := post(h, tt.path, []byte(tt.body))
			var e api.Error
			json.Unmarshal(w.Body.Bytes(), &e)
			if w.Code != tt.want || e.Code != tt.wantCode || e.Message == "" {
				t.Errorf("got %d %+v, want %d with code %q and a message", w.Code, e, tt.want, tt.wantCode)
			}
		})
	}
}

func TestAuthenticatedEndpointsNeedACertificate(t *testing.T) {
	s, _ := newTestServer(t)
	h := s.Handler()
	for _, path := range []string{api.PathDevices, api.PathWhoami, api.PathUsers, api.PathStatus, api.PathConnect} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		if w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), "tsh login") {
			t.Errorf("GET %s without a certificate: %d %s, want 401 telling to tsh login", path, w.Code, w.Body)
		}
	}
}

// FuzzOpenEndpoints posts arbitrary bodies to the endpoints anyone can
// reach: each answer is a 4xx with an error body, never a panic or a 5xx.
func FuzzOpenEndpoints(f *testing.F) {
	f.Add([]byte(`{"user":"alice","password":"correct horse"}`), uint8(0))
	f.Add([]byte(`{"token":"jt_x","name":"pi-1","csr":"AAAA","ssh_public_key":"ssh-ed25519 AAAA"}`), uint8(1))
	f.Add([]byte(`{"ttl":-5}`), uint8(0))
	f.Add([]byte(ssoLogin("test", "http://127.0.0.1:9/cb", challenge)), uint8(2))
	f.Add([]byte(`{"ticket":"tk_x","code_verifier":"v"}`), uint8(3))
	s, _ := newTestServer(f)
	s.LoginLimit = &sourcelimit.Limiter{} // every input from one address: no rate limit, or it answers them all 429
	h := s.Handler()
	paths := []string{api.PathLogin, api.PathJoin, api.PathSSOLogin, api.PathSSORedeem}
	f.Fuzz(func(t *testing.T, body []byte, which uint8) {
		path := paths[int(which)%len(paths)]
		w := post(h, path, body)
		if w.Code < 400 || w.Code >= 500 {
			t.Fatalf("POST %s %q: status %d: %s", path, body, w.Code, w.Body)
		}
		var e api.Error
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Message == "" {
			t.Fatalf("POST %s %q: body %q is not an error", path, body, w.Body)
		}
	})
}

// TestLoginRateLimitPerSource: past its burst, a source address is told
// to wait (429, Retry-After) before any password is checked; another
// address is not affected.
func TestLoginRateLimitPerSource(t *testing.T) {
	s, _ := newTestServer(t)
	s.LoginLimit = &sourcelimit.Limiter{Rate: rate.Every(time.Hour), Burst: 3}
	h := s.Handler()
	login := func(addr string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, api.PathLogin, strings.NewReader(`{"user":"alice","password":"wrong horse"}`))
		r.RemoteAddr = addr
		h.ServeHTTP(w, r)
		return w
	}
	for i := range 3 {
		if w := login("192.0.2.1:1000"); w.Code != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d %s, want 401", i+1, w.Code, w.Body)
		}
	}
	w := login("192.0.2.1:1001")
	var e api.Error
	json.Unmarshal(w.Body.Bytes(), &e)
	if w.Code != http.StatusTooManyRequests || e.Code != api.CodeRateLimited || w.Header().Get("Retry-After") == "" {
		t.Errorf("past the burst: %d %+v (Retry-After %q), want 429 rate_limited with Retry-After", w.Code, e, w.Header().Get("Retry-After"))
	}
	if w := login("192.0.2.2:1000"); w.Code != http.StatusUnauthorized {
		t.Errorf("another address: %d, want 401", w.Code)
	}
	// Starting single sign-on logins stores state: the same limit holds.
	r := httptest.NewRequest(http.MethodPost, api.PathSSOLogin, strings.NewReader(ssoLogin("nope", "http://127.0.0.1:9/cb", challenge)))
	r.RemoteAddr = "192.0.2.1:1002"
	w = httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusTooManyRequests {
		t.Errorf("an SSO login past the burst: %d, want 429", w.Code)
	}
}

func TestCheckLoopback(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:4000/callback", "http://[::1]:4000/callback", "http://localhost:4000/cb", "http://127.0.0.2:1/"} {
		if err := checkLoopback(ok); err != nil {
			t.Errorf("checkLoopback(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"https://127.0.0.1:4000/callback", "http://127.0.0.1/callback", "http://evil.example:80/", "http://127.0.0.1.evil.example:80/",
		"http://user@127.0.0.1:4000/", "http://127.0.0.1:4000/cb?next=https://evil.example", "http://127.0.0.1:4000/#x", "//127.0.0.1:4000/", "javascript:alert(1)"} {
		if checkLoopback(bad) == nil {
			t.Errorf("checkLoopback(%q) accepted", bad)
		}
	}
}
