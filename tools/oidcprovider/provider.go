// Package oidcprovider is an OpenID provider for tests: a real one, built on
// the op library of github.com/zitadel/oidc (discovery, the authorization
// code flow with PKCE, the token and userinfo endpoints, signed ID tokens,
// JWKS), with what the fleet's single sign-on tests need around it: users
// with passwords, email and groups claims, and custom claims; clients the
// test registers once it knows the fleet's redirect address; a plain login
// form a browser (or an HTTP client) fills in; key rotation; and, on
// demand, the ways a provider can go wrong that a relying party must catch
// (an ID token for another audience, one already expired, a nonce that is
// not the one asked for, a signature by a key the provider no longer
// publishes).
//
// It serves plain HTTP on a loopback address: the fleet accepts http
// issuers only on loopback. tools/cmd/oidcprovider runs it as a program.
//
// It is imported by tests and by the commands under tools/; product code
// never imports it.
package oidcprovider

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// User is someone who can log in at the provider.
type User struct {
	// ID is the sub claim; default "sub-" + Username.
	ID string
	// Username and Password are what the login form takes.
	Username, Password string
	// Email and EmailVerified are the email scope's claims.
	Email         string
	EmailVerified bool
	// Name is the profile scope's name claim; PreferredUsername defaults
	// to Username.
	Name, PreferredUsername string
	// Groups is the groups claim, sent for the "groups" scope.
	Groups []string
	// Claims are more claims, sent for the "profile" scope.
	Claims map[string]any
}

// Client is a relying party registered at the provider: a confidential
// web client (client secret over HTTP Basic, as golang.org/x/oauth2
// sends it).
type Client struct {
	ID, Secret   string
	RedirectURIs []string
	// ClaimsInIDToken puts the scopes' claims in the ID token as well as
	// at the userinfo endpoint (as Okta's and Keycloak's defaults do).
	// False: the ID token carries only sub and the protocol claims, and
	// the relying party must ask the userinfo endpoint (as the OpenID
	// Connect spec has it when an access token is issued).
	ClaimsInIDToken bool
}

// Fault is a way the provider goes wrong, for the tokens it issues while
// it is set (SetFault).
type Fault int

// The faults.
const (
	// NoFault: tokens as they should be.
	NoFault Fault = iota
	// WrongAudience: ID tokens are for another client ("someone-else"
	// is their audience and authorized party), signed with the
	// provider's key.
	WrongAudience
	// Expired: ID tokens expired an hour before they were issued.
	Expired
	// WrongNonce: ID tokens carry another nonce than the one asked for.
	WrongNonce
	// RetiredKey: ID tokens are signed with the key the last RotateKey
	// retired, which the provider no longer publishes.
	RetiredKey
)

// Config configures Start. The zero value works: a provider with no users
// and no clients on a free loopback port.
type Config struct {
	Users   []User
	Clients []Client
	// Addr is where to listen; default "127.0.0.1:0".
	Addr string
	// Logger receives a line per login; nil discards.
	Logger *slog.Logger
}

// Provider is a running OpenID provider.
type Provider struct {
	// Issuer is its issuer URL, http://127.0.0.1:PORT.
	Issuer string

	log *slog.Logger
	srv *http.Server
	ln  net.Listener
	op  *op.Provider
	wg  sync.WaitGroup // the server goroutine

	mu      sync.Mutex         // guards everything below
	users   map[string]*User   // by username
	clients map[string]*Client // by ID
	reqs    map[string]*authRequest
	codes   map[string]string // code -> auth request ID
	tokens  map[string]*token // access token ID -> token
	key     *signingKey       // signs new tokens
	retired *signingKey       // the key before the last rotation, unpublished
	fault   Fault
	logins  int
}

// Start starts a provider. Close stops it.
func Start(cfg Config) (*Provider, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	key, err := newSigningKey()
	if err != nil {
		return nil, err
	}
	p := &Provider{
		log: cfg.Logger, users: map[string]*User{}, clients: map[string]*Client{}, reqs: map[string]*authRequest{},
		codes: map[string]string{}, tokens: map[string]*token{}, key: key,
	}
	for _, u := range cfg.Users {
		p.AddUser(u)
	}
	for _, c := range cfg.Clients {
		p.AddClient(c)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("oidcprovider: %w", err)
	}
	p.ln = ln
	p.Issuer = "http://" + ln.Addr().String()
	var cryptoKey [32]byte
	rand.Read(cryptoKey[:])
	p.op, err = op.NewProvider(&op.Config{
		CryptoKey:       cryptoKey,
		CodeMethodS256:  true,
		AuthMethodPost:  true,
		SupportedScopes: []string{oidc.ScopeOpenID, oidc.ScopeProfile, oidc.ScopeEmail, "groups"},
		SupportedClaims: []string{"sub", "aud", "exp", "iat", "iss", "nonce", "email", "email_verified", "name", "preferred_username", "groups"},
	}, (*storage)(p), op.StaticIssuer(p.Issuer), op.WithAllowInsecure())
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("oidcprovider: %w", err)
	}
	mux := http.NewServeMux()
	login := op.NewIssuerInterceptor(p.op.IssuerFromRequest).Handler(http.HandlerFunc(p.login))
	mux.Handle(loginPath, login)
	mux.Handle(p.op.TokenEndpoint().Relative(), p.tokenFault(p.op))
	mux.Handle("/", p.op)
	p.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	p.wg.Go(func() { p.srv.Serve(ln) })
	return p, nil
}

// Close stops the provider.
func (p *Provider) Close() error {
	err := p.srv.Close()
	p.wg.Wait()
	return err
}

// AddUser adds or replaces a user.
func (p *Provider) AddUser(u User) {
	if u.ID == "" {
		u.ID = "sub-" + u.Username
	}
	if u.PreferredUsername == "" {
		u.PreferredUsername = u.Username
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.users[u.Username] = &u
}

// AddClient adds or replaces a client.
func (p *Provider) AddClient(c Client) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clients[c.ID] = &c
}

// SetFault makes the tokens issued from now on go wrong as f says
// (NoFault: right again).
func (p *Provider) SetFault(f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = f
}

// RotateKey makes a new signing key: the provider publishes only the new
// one from now on, and the old one is kept, unpublished, for RetiredKey.
func (p *Provider) RotateKey() error {
	k, err := newSigningKey()
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.retired, p.key = p.key, k
	return nil
}

// Logins counts the users who logged in with the form.
func (p *Provider) Logins() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logins
}

func (p *Provider) faultNow() Fault {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fault
}

// signingKey is an RSA key the provider signs with (RS256).
type signingKey struct {
	id  string
	key *rsa.PrivateKey
}

func newSigningKey() (*signingKey, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("oidcprovider: key: %w", err)
	}
	return &signingKey{id: rand.Text()[:16], key: k}, nil
}

func (k *signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k *signingKey) Key() any                                    { return k.key }
func (k *signingKey) ID() string                                  { return k.id }

// publicKey is a published key, for JWKS.
type publicKey struct{ *signingKey }

func (k publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k publicKey) Use() string                        { return "sig" }
func (k publicKey) Key() any                           { return &k.key.PublicKey }

// loginPath is the provider's login form.
const loginPath = "/login"

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Test provider: log in</title></head>
<body>
<h1>Test OpenID provider</h1>
{{if .Error}}<p id="error">{{.Error}}</p>{{end}}
<form method="post" action="/login">
<input type="hidden" name="id" value="{{.ID}}">
<label for="username">Username</label> <input id="username" name="username" autocomplete="username" autofocus>
<label for="password">Password</label> <input id="password" name="password" type="password" autocomplete="current-password">
<button id="submit" type="submit">Log in</button>
</form>
</body></html>
`))

// login serves the login form (GET) and checks it (POST): a right
// password marks the authorization request done and sends the browser on
// to the op library's callback, which redirects to the client.
func (p *Provider) login(w http.ResponseWriter, r *http.Request) {
	show := func(status int, id, msg string) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		loginPage.Execute(w, struct{ ID, Error string }{id, msg})
	}
	if r.Method == http.MethodGet {
		show(http.StatusOK, r.URL.Query().Get("id"), "")
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, "GET or POST", http.StatusMethodNotAllowed)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	id, name, pw := r.PostForm.Get("id"), r.PostForm.Get("username"), r.PostForm.Get("password")
	p.mu.Lock()
	req, u := p.reqs[id], p.users[name]
	ok := req != nil && u != nil && u.Password == pw
	if ok {
		req.subject, req.authTime, req.done = u.ID, time.Now(), true
		p.logins++
	}
	p.mu.Unlock()
	switch {
	case req == nil:
		show(http.StatusBadRequest, id, "This login request is unknown or over; start again from the application.")
		return
	case !ok:
		p.log.Info("oidcprovider: login failed", "user", name)
		show(http.StatusUnauthorized, id, "Wrong username or password.")
		return
	}
	p.log.Info("oidcprovider: logged in", "user", name, "client", req.ClientID)
	http.Redirect(w, r, op.AuthCallbackURL(p.op)(r.Context(), id), http.StatusFound)
}

// authRequest is an authorization request in progress.
type authRequest struct {
	*oidc.AuthRequest
	id       string
	subject  string
	authTime time.Time
	done     bool
	fault    Fault // the provider's fault when the request was made
}

func (a *authRequest) GetID() string    { return a.id }
func (a *authRequest) GetACR() string   { return "" }
func (a *authRequest) GetAMR() []string { return []string{"pwd"} }
func (a *authRequest) GetClientID() string {
	return a.ClientID
}
func (a *authRequest) GetAudience() []string  { return []string{a.ClientID} }
func (a *authRequest) GetAuthTime() time.Time { return a.authTime }
func (a *authRequest) GetCodeChallenge() *oidc.CodeChallenge {
	if a.CodeChallenge == "" {
		return nil
	}
	return &oidc.CodeChallenge{Challenge: a.CodeChallenge, Method: a.CodeChallengeMethod}
}
func (a *authRequest) GetNonce() string {
	if a.fault == WrongNonce {
		return "not-" + a.Nonce
	}
	return a.Nonce
}
func (a *authRequest) GetRedirectURI() string             { return a.RedirectURI }
func (a *authRequest) GetResponseType() oidc.ResponseType { return a.ResponseType }
func (a *authRequest) GetResponseMode() oidc.ResponseMode { return a.ResponseMode }
func (a *authRequest) GetScopes() []string                { return a.Scopes }
func (a *authRequest) GetState() string                   { return a.State }
func (a *authRequest) GetSubject() string                 { return a.subject }
func (a *authRequest) Done() bool                         { return a.done }
func (a *authRequest) copyLocked() *authRequest           { c := *a; return &c }

// token is an access token the provider issued.
type token struct {
	id, subject, clientID string
	scopes                []string
	expires               time.Time
}

// client is a Client as the op library sees it.
type client struct {
	*Client
	fault Fault
}

func (c client) GetID() string                    { return c.ID }
func (c client) RedirectURIs() []string           { return slices.Clone(c.Client.RedirectURIs) }
func (c client) PostLogoutRedirectURIs() []string { return nil }
func (c client) ApplicationType() op.ApplicationType {
	return op.ApplicationTypeWeb
}
func (c client) AuthMethod() oidc.AuthMethod { return oidc.AuthMethodBasic }
func (c client) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c client) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeCode}
}
func (c client) LoginURL(id string) string           { return loginPath + "?id=" + id }
func (c client) AccessTokenType() op.AccessTokenType { return op.AccessTokenTypeBearer }
func (c client) IDTokenLifetime() time.Duration {
	if c.fault == Expired {
		return -time.Hour
	}
	return 5 * time.Minute
}
func (c client) DevMode() bool                                            { return false }
func (c client) RestrictAdditionalIdTokenScopes() func([]string) []string { return keepScopes }
func (c client) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return keepScopes
}
func (c client) IsScopeAllowed(scope string) bool     { return scope == "groups" }
func (c client) IDTokenUserinfoClaimsAssertion() bool { return c.ClaimsInIDToken }
func (c client) ClockSkew() time.Duration             { return 0 }

func keepScopes(s []string) []string { return s }

// errNotFound is what the storage returns for what it does not have.
type errNotFound string

func (e errNotFound) Error() string { return string(e) }
func (e errNotFound) IsNotFound()   {}

var errUnsupported = errors.New("oidcprovider: not supported")

// storage is the Provider as the op library's Storage.
type storage Provider

func (s *storage) p() *Provider { return (*Provider)(s) }

func (s *storage) CreateAuthRequest(_ context.Context, req *oidc.AuthRequest, _ string) (op.AuthRequest, error) {
	a := &authRequest{AuthRequest: req, id: rand.Text(), authTime: time.Now(), fault: s.p().faultNow()}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs[a.id] = a
	return a.copyLocked(), nil
}

func (s *storage) AuthRequestByID(_ context.Context, id string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.reqs[id]
	if !ok {
		return nil, errNotFound("auth request not found")
	}
	return a.copyLocked(), nil
}

func (s *storage) AuthRequestByCode(_ context.Context, code string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.reqs[s.codes[code]]
	if !ok {
		return nil, errNotFound("code not found")
	}
	return a.copyLocked(), nil
}

func (s *storage) SaveAuthCode(_ context.Context, id, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[code] = id
	return nil
}

func (s *storage) DeleteAuthRequest(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.reqs, id)
	for c, rid := range s.codes {
		if rid == id {
			delete(s.codes, c)
		}
	}
	return nil
}

func (s *storage) CreateAccessToken(_ context.Context, req op.TokenRequest) (string, time.Time, error) {
	t := &token{id: rand.Text(), subject: req.GetSubject(), scopes: req.GetScopes(), expires: time.Now().Add(5 * time.Minute)}
	if a, ok := req.(*authRequest); ok {
		t.clientID = a.ClientID
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[t.id] = t
	return t.id, t.expires, nil
}

func (s *storage) CreateAccessAndRefreshTokens(context.Context, op.TokenRequest, string) (string, string, time.Time, error) {
	return "", "", time.Time{}, errUnsupported
}

func (s *storage) TokenRequestByRefreshToken(context.Context, string) (op.RefreshTokenRequest, error) {
	return nil, errUnsupported
}

func (s *storage) TerminateSession(context.Context, string, string) error { return nil }

func (s *storage) RevokeToken(_ context.Context, tokenID, _, _ string) *oidc.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, tokenID)
	return nil
}

func (s *storage) GetRefreshTokenInfo(context.Context, string, string) (string, string, error) {
	return "", "", op.ErrInvalidRefreshToken
}

func (s *storage) SigningKey(context.Context) (op.SigningKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fault == RetiredKey && s.retired != nil {
		return s.retired, nil
	}
	return s.key, nil
}

func (s *storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}

func (s *storage) KeySet(context.Context) ([]op.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return []op.Key{publicKey{s.key}}, nil
}

func (s *storage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[id]
	if !ok {
		return nil, errNotFound("client not found")
	}
	cp := *c
	return client{Client: &cp, fault: s.fault}, nil
}

func (s *storage) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[id]
	if !ok || c.Secret != secret {
		return errors.New("wrong client ID or secret")
	}
	return nil
}

// SetUserinfoFromScopes is deprecated in the op library; the claims are set
// by SetUserinfoFromRequest and SetUserinfoFromToken.
func (s *storage) SetUserinfoFromScopes(context.Context, *oidc.UserInfo, string, string, []string) error {
	return nil
}

func (s *storage) SetUserinfoFromRequest(_ context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	return s.fill(info, req.GetSubject(), scopes)
}

func (s *storage) SetUserinfoFromToken(_ context.Context, info *oidc.UserInfo, tokenID, subject, _ string) error {
	s.mu.Lock()
	t, ok := s.tokens[tokenID]
	s.mu.Unlock()
	if !ok || time.Now().After(t.expires) {
		return errors.New("access token unknown or expired")
	}
	return s.fill(info, t.subject, t.scopes)
}

// fill sets the claims of the user with ID sub for scopes.
func (s *storage) fill(info *oidc.UserInfo, sub string, scopes []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var u *User
	for _, c := range s.users {
		if c.ID == sub {
			u = c
		}
	}
	if u == nil {
		return errNotFound("user not found")
	}
	info.Subject = u.ID
	for _, sc := range scopes {
		switch sc {
		case oidc.ScopeEmail:
			// The claim, not the struct field, so that false is sent
			// (the field is omitted when false).
			info.Email = u.Email
			info.AppendClaims("email_verified", u.EmailVerified)
		case oidc.ScopeProfile:
			info.Name, info.PreferredUsername = u.Name, u.PreferredUsername
			for k, v := range u.Claims {
				info.AppendClaims(k, v)
			}
		case "groups":
			info.AppendClaims("groups", slices.Clone(u.Groups))
		}
	}
	return nil
}

func (s *storage) SetIntrospectionFromToken(context.Context, *oidc.IntrospectionResponse, string, string, string) error {
	return errUnsupported
}

func (s *storage) GetPrivateClaimsFromScopes(context.Context, string, string, []string) (map[string]any, error) {
	return nil, nil
}

func (s *storage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, errUnsupported
}

func (s *storage) ValidateJWTProfileScopes(context.Context, string, []string) ([]string, error) {
	return nil, errUnsupported
}

func (s *storage) Health(context.Context) error { return nil }

// tokenFault wraps the token endpoint: with WrongAudience set, the ID token
// of its answer is signed again, with the provider's key, for another
// client. The op library always puts the requesting client in the
// audience, so this is where the fault is made.
func (p *Provider) tokenFault(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.faultNow() != WrongAudience {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		var answer map[string]any
		if rec.Code == http.StatusOK && json.Unmarshal(body, &answer) == nil {
			if raw, ok := answer["id_token"].(string); ok {
				if re, err := p.resign(raw, func(c map[string]any) { c["aud"], c["azp"] = []string{"someone-else"}, "someone-else" }); err == nil {
					answer["id_token"] = re
					body, _ = json.Marshal(answer)
				}
			}
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.Code)
		w.Write(body)
	})
}

// resign verifies raw with the current key, changes its claims with edit
// and signs it again with the same key.
func (p *Provider) resign(raw string, edit func(map[string]any)) (string, error) {
	p.mu.Lock()
	key := p.key
	p.mu.Unlock()
	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return "", err
	}
	payload, err := jws.Verify(&key.key.PublicKey)
	if err != nil {
		return "", err
	}
	claims := map[string]any{}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return "", err
	}
	edit(claims)
	b, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", key.id))
	if err != nil {
		return "", err
	}
	obj, err := signer.Sign(b)
	if err != nil {
		return "", err
	}
	return obj.CompactSerialize()
}
