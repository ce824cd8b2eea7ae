// Package sso is the fleet's single sign-on: it is the OpenID Connect
// relying party of the connectors admins create (connectors.go), and maps
// the claims of the users it verifies to fleet users, roles and traits
// (claims.go).
//
// A login has two halves. Start begins one through a connector: it keeps
// what the login needs to finish (the state, the nonce, the PKCE verifier,
// and what the caller wants done afterwards) in the store, and returns the
// provider's authorization address. The provider sends the browser back to
// the fleet's one redirect address (api.PathSSOCallback), which Callback
// serves: it takes the state (once: a replayed state is refused), exchanges
// the code with the PKCE verifier, verifies the ID token (signature
// against the keys the provider publishes at that moment, issuer,
// audience, expiry, nonce),
// reads the userinfo endpoint, maps the claims, records the user
// (users.PutSSO) and the login in the audit log, and hands the result to
// the finisher registered for the login's kind (Handle): tsh's loopback
// redirect, a headless login's approval page, the browser login's session.
// The provider sees only the fleet's redirect address, never a client's.
//
// For browsers, StartBrowser also ties the login to the browser that
// started it (a cookie), so that nobody can finish their own login in
// someone else's browser.
//
// Only fleet/... server packages import sso.
package sso

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/fleet/web/page"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Defaults of Config.
const (
	DefaultPendingTTL  = 10 * time.Minute
	DefaultProviderTTL = time.Hour
	DefaultUserCertTTL = 8 * time.Hour
)

// BrowserCookie ties a login started by StartBrowser to its browser. It
// must be SameSite=Lax: the provider's redirect back is a cross-site
// navigation.
const BrowserCookie = "__Host-fleet_sso"

const pendingPrefix = "sso/pending/"

// Users records single sign-on users (*users.Service).
type Users interface {
	PutSSO(ctx context.Context, u users.SSOUser) (api.User, error)
}

// Recorder records an audit event; a login that cannot be recorded does
// not go ahead.
type Recorder interface {
	Record(ctx context.Context, e *proto.AuditEvent) error
}

// Config configures a Service. Store, Users, Roles and RedirectURL are
// required.
type Config struct {
	Store store.Store
	Users Users
	Roles *rbac.Roles
	// RedirectURL is the fleet's redirect address,
	// https://PUBLIC_ADDR/v1/sso/callback, used for connectors that name
	// none.
	RedirectURL string
	// HTTPClient talks to the providers; nil: one with a 30 s timeout
	// and the system's roots.
	HTTPClient *http.Client
	// PendingTTL is how long a started login may take; default 10m.
	PendingTTL time.Duration
	// ProviderTTL is how long a provider's discovery document is kept
	// before it is fetched again; default 1h. Its keys (JWKS) are
	// fetched at every login: a key the provider stopped publishing is
	// refused at once.
	ProviderTTL time.Duration
	// UserCertTTL is the fleet's default certificate lifetime, which roles'
	// max_session_ttl caps: the bound of a login's certificates recorded
	// with the user. Default 8h.
	UserCertTTL time.Duration
	// Refuse, when set, is asked once the provider vouched for a user:
	// an error (a lock, fleet/locks) refuses the login with its message.
	Refuse func(user string, roles []string) error
	// Audit records logins and refusals; nil records nothing.
	Audit Recorder
	// Cluster names the fleet in audit events.
	Cluster string
	// Logger receives operational logs; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Service is the relying party. Create it with New; it is safe for
// concurrent use.
type Service struct {
	cfg        Config
	log        *slog.Logger
	Connectors *Connectors

	mu        sync.Mutex // guards providers and finishers
	providers map[string]*cachedProvider
	finishers map[string]Finisher
	// recorded are the kinds whose finishers record the login themselves.
	recorded map[string]bool
}

// cachedProvider is a provider's discovery, for one connector spec.
type cachedProvider struct {
	issuer  string
	fetched time.Time
	p       *oidc.Provider
}

// New returns a Service for cfg.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PendingTTL <= 0 {
		cfg.PendingTTL = DefaultPendingTTL
	}
	if cfg.ProviderTTL <= 0 {
		cfg.ProviderTTL = DefaultProviderTTL
	}
	if cfg.UserCertTTL <= 0 {
		cfg.UserCertTTL = DefaultUserCertTTL
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	return &Service{
		cfg: cfg, log: cfg.Logger.With("component", "sso"), Connectors: &Connectors{Store: cfg.Store},
		providers: map[string]*cachedProvider{}, finishers: map[string]Finisher{}, recorded: map[string]bool{},
	}
}

// StartRequest starts a login.
type StartRequest struct {
	// Connector names the connector to log in with.
	Connector string
	// Kind names the Finisher that gets the result (Handle).
	Kind string
	// Data is the caller's, handed back in the Result (tsh's keys and
	// loopback address, the page to return to); at most 64 KiB.
	Data []byte
	// ClientAddr is the address of whoever started the login, for the
	// audit log.
	ClientAddr string
}

// Result is a finished login: the identity it found (nil when refused)
// and what the login was started with.
type Result struct {
	*Identity
	Kind       string
	Data       []byte
	ClientAddr string
}

// Finisher handles the end of logins of one kind, in the callback request:
// err is nil, or a *Refusal (res.Identity is nil then) or another error.
type Finisher func(w http.ResponseWriter, r *http.Request, res *Result, err error)

// Handle registers f for logins of kind. Register every kind before
// serving the callback.
func (s *Service) Handle(kind string, f Finisher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.finishers[kind] = f
}

// HandleSession is Handle for a kind whose finisher starts a session and
// records the login itself, with that session (the browser's login): the
// service then records only its refusals, so that one login is one event.
// The finisher's event should carry Identity's connector, subject and
// issuer (AuditFields).
func (s *Service) HandleSession(kind string, f Finisher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.finishers[kind] = f
	s.recorded[kind] = true
}

// pending is a started login, stored under pendingPrefix + the SHA-256 of
// its state.
type pending struct {
	Connector string    `json:"connector"`
	Kind      string    `json:"kind"`
	Data      []byte    `json:"data,omitempty"`
	Nonce     string    `json:"nonce"`
	Verifier  string    `json:"verifier"`
	Client    string    `json:"client,omitempty"`
	Browser   string    `json:"browser,omitempty"` // SHA-256 of the BrowserCookie value, hex
	Expires   time.Time `json:"expires"`
}

func hashHex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// Start begins a login through req.Connector and returns the provider's
// authorization address and when the login must be over. Errors: an
// unknown connector (matching ErrNotFound), a provider that cannot be
// reached (*Refusal), a store error.
func (s *Service) Start(ctx context.Context, req StartRequest) (authURL string, expires time.Time, err error) {
	authURL, expires, _, err = s.start(ctx, req, false)
	return authURL, expires, err
}

func (s *Service) start(ctx context.Context, req StartRequest, browser bool) (authURL string, expires time.Time, cookie string, err error) {
	if len(req.Data) > 64<<10 {
		return "", time.Time{}, "", errors.New("sso: start: data over 64 KiB")
	}
	conn, err := s.Connectors.Get(ctx, req.Connector)
	if err != nil {
		return "", time.Time{}, "", err
	}
	cfg, _, err := s.oauth2(ctx, conn)
	if err != nil {
		return "", time.Time{}, "", err
	}
	state, nonce := rand.Text()+rand.Text(), rand.Text()+rand.Text()
	p := pending{
		Connector: conn.Metadata.Name, Kind: req.Kind, Data: req.Data, Nonce: nonce,
		Verifier: oauth2.GenerateVerifier(), Client: req.ClientAddr,
		Expires: s.cfg.Now().Add(s.cfg.PendingTTL).UTC(),
	}
	if browser {
		cookie = rand.Text() + rand.Text()
		p.Browser = hashHex(cookie)
	}
	b, err := json.Marshal(p)
	if err != nil {
		return "", time.Time{}, "", fmt.Errorf("sso: start: %w", err)
	}
	if err := s.cfg.Store.Create(ctx, pendingPrefix+hashHex(state), b); err != nil {
		return "", time.Time{}, "", fmt.Errorf("sso: start: %w", err)
	}
	opts := []oauth2.AuthCodeOption{oidc.Nonce(nonce), oauth2.S256ChallengeOption(p.Verifier)}
	if conn.Spec.Prompt != "" {
		opts = append(opts, oauth2.SetAuthURLParam("prompt", conn.Spec.Prompt))
	}
	return cfg.AuthCodeURL(state, opts...), p.Expires, cookie, nil
}

// StartBrowser begins a login for the browser of r and sends it to the
// provider (303), with a cookie that ties the login to this browser: the
// callback refuses it in any other. On failure it returns the error and
// writes nothing.
func (s *Service) StartBrowser(w http.ResponseWriter, r *http.Request, req StartRequest) error {
	authURL, expires, cookie, err := s.start(r.Context(), req, true)
	if err != nil {
		return err
	}
	http.SetCookie(w, &http.Cookie{Name: BrowserCookie, Value: cookie, Path: "/", Secure: true, HttpOnly: true,
		SameSite: http.SameSiteLaxMode, Expires: expires})
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, authURL, http.StatusSeeOther)
	return nil
}

// oauth2 returns the OAuth 2 configuration of conn and its provider,
// discovering the provider when it is not cached or the cache is stale.
func (s *Service) oauth2(ctx context.Context, conn api.OIDCConnector) (*oauth2.Config, *oidc.Provider, error) {
	p, err := s.provider(ctx, conn)
	if err != nil {
		return nil, nil, err
	}
	redirect := conn.Spec.RedirectURL
	if redirect == "" {
		redirect = s.cfg.RedirectURL
	}
	scopes := []string{oidc.ScopeOpenID}
	extra := conn.Spec.Scopes
	if len(extra) == 0 {
		extra = DefaultScopes
	}
	for _, sc := range extra {
		if !slices.Contains(scopes, sc) {
			scopes = append(scopes, sc)
		}
	}
	return &oauth2.Config{
		ClientID: conn.Spec.ClientID, ClientSecret: conn.Spec.ClientSecret,
		Endpoint: p.Endpoint(), RedirectURL: redirect, Scopes: scopes,
	}, p, nil
}

// provider returns the discovered provider of conn's issuer.
func (s *Service) provider(ctx context.Context, conn api.OIDCConnector) (*oidc.Provider, error) {
	name, issuer := conn.Metadata.Name, conn.Spec.IssuerURL
	s.mu.Lock()
	c := s.providers[name]
	s.mu.Unlock()
	if c != nil && c.issuer == issuer && s.cfg.Now().Sub(c.fetched) < s.cfg.ProviderTTL {
		return c.p, nil
	}
	p, err := oidc.NewProvider(s.clientContext(ctx), issuer)
	if err != nil {
		s.log.Warn("provider discovery failed", "connector", name, "issuer", issuer, "err", err)
		return nil, refuse(ReasonProvider, "the identity provider of connector %q (%s) cannot be reached or answered wrongly: %v; try again, or tell your fleet admin", name, issuer, err)
	}
	s.mu.Lock()
	s.providers[name] = &cachedProvider{issuer: issuer, fetched: s.cfg.Now(), p: p}
	s.mu.Unlock()
	return p, nil
}

// clientContext carries the HTTP client to go-oidc and x/oauth2.
func (s *Service) clientContext(ctx context.Context) context.Context {
	ctx = oidc.ClientContext(ctx, s.cfg.HTTPClient)
	return context.WithValue(ctx, oauth2.HTTPClient, s.cfg.HTTPClient)
}

// take removes the pending login of state from the store and returns it:
// whoever deletes it owns it, so a state is used once.
func (s *Service) take(ctx context.Context, state string) (*pending, error) {
	if state == "" || len(state) > 256 {
		return nil, refuse(ReasonState, "this login is unknown, over, or was already used (the provider's answer carried no usable state); start the login again")
	}
	k := pendingPrefix + hashHex(state)
	b, err := s.cfg.Store.Get(ctx, k)
	if err == nil {
		err = s.cfg.Store.Delete(ctx, k)
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, refuse(ReasonState, "this login is unknown, over, or was already used (a replayed or stale state); start the login again")
	}
	if err != nil {
		return nil, fmt.Errorf("sso: callback: %w", err)
	}
	var p pending
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("sso: callback: decode pending login: %w", err)
	}
	if !s.cfg.Now().Before(p.Expires) {
		return nil, refuse(ReasonState, "this login took too long (over %s) and expired; start it again", s.cfg.PendingTTL)
	}
	return &p, nil
}

// Finish completes the login whose answer r carries (the provider's
// redirect to the callback): see the package doc. The Result holds what
// the login was started with whenever its state was good, refused or not.
// Refusals are *Refusal and are recorded in the audit log; a login that
// cannot be recorded is refused.
func (s *Service) Finish(ctx context.Context, r *http.Request) (*Result, error) {
	q := r.URL.Query()
	p, err := s.take(ctx, q.Get("state"))
	if err != nil {
		s.recordRefusal(ctx, r, nil, err)
		return nil, err
	}
	res := &Result{Kind: p.Kind, Data: p.Data, ClientAddr: p.Client}
	id, err := s.verify(ctx, r, p)
	if err != nil {
		s.recordRefusal(ctx, r, p, err)
		return res, err
	}
	if s.cfg.Refuse != nil {
		if err := s.cfg.Refuse(id.User, id.Roles); err != nil {
			ref := refuse(ReasonLocked, "%s", err.Error())
			ref.User = id.User
			if af, ok := err.(interface{ AuditFields() map[string]string }); ok {
				ref.Fields = af.AuditFields()
			}
			s.recordRefusal(ctx, r, p, ref)
			return res, ref
		}
	}
	res.Identity = id
	s.mu.Lock()
	recorded := s.recorded[p.Kind]
	s.mu.Unlock()
	if !recorded {
		f := id.AuditFields()
		f["method"], f["roles"], f["for"], f["client"] = "sso", strings.Join(id.Roles, ","), p.Kind, p.Client
		if err := s.record(ctx, &proto.AuditEvent{Type: proto.EventUserLogin, User: id.User, Addr: r.RemoteAddr, Fields: f}); err != nil {
			return res, fmt.Errorf("sso: the fleet cannot write its audit log right now, so it logs nobody in; try again later: %w", err)
		}
	}
	s.log.Info("single sign-on login", "user", id.User, "connector", id.Connector, "roles", id.Roles, "for", p.Kind)
	return res, nil
}

// verify checks the provider's answer for the pending login p.
func (s *Service) verify(ctx context.Context, r *http.Request, p *pending) (*Identity, error) {
	q := r.URL.Query()
	if p.Browser != "" {
		c, err := r.Cookie(BrowserCookie)
		if err != nil || subtle.ConstantTimeCompare([]byte(hashHex(c.Value)), []byte(p.Browser)) != 1 {
			return nil, refuse(ReasonBrowser, "this login was started in another browser; start it again here")
		}
	}
	if e := q.Get("error"); e != "" {
		desc := q.Get("error_description")
		if len(desc) > 256 {
			desc = desc[:256]
		}
		return nil, refuse(ReasonProvider, "the identity provider refused the login: %s %s", clean(e), clean(desc))
	}
	conn, err := s.Connectors.Get(ctx, p.Connector)
	if errors.Is(err, ErrNotFound) {
		return nil, refuse(ReasonConnector, "the single sign-on connector %q was removed while you logged in; ask your fleet admin", p.Connector)
	}
	if err != nil {
		return nil, err
	}
	cfg, prov, err := s.oauth2(ctx, conn)
	if err != nil {
		return nil, err
	}
	ctx = s.clientContext(ctx)
	tok, err := cfg.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(p.Verifier))
	if err != nil {
		return nil, refuse(ReasonExchange, "the identity provider did not accept the login's code: %v; start the login again", err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return nil, refuse(ReasonNoIDToken, "the identity provider's answer has no ID token: is the connector's provider an OpenID Connect one (scope openid)?")
	}
	idt, err := prov.VerifierContext(ctx, &oidc.Config{ClientID: conn.Spec.ClientID, Now: s.cfg.Now}).Verify(ctx, raw)
	if err != nil {
		return nil, classify(err, conn)
	}
	if len(idt.Audience) > 1 {
		// OpenID Connect Core 3.1.3.7: several audiences need an
		// authorized party, and it must be us.
		var extra struct {
			AZP string `json:"azp"`
		}
		if idt.Claims(&extra); extra.AZP != conn.Spec.ClientID {
			return nil, refuse(ReasonAudience, "the ID token names several audiences and its authorized party is %q, not this fleet's client %q; check the connector's client_id", extra.AZP, conn.Spec.ClientID)
		}
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(p.Nonce)) != 1 {
		return nil, refuse(ReasonNonce, "the ID token's nonce is not this login's (a token from another login was replayed?); start the login again")
	}
	claims := map[string]any{}
	if err := idt.Claims(&claims); err != nil {
		return nil, refuse(ReasonIDToken, "the ID token's claims do not decode: %v", err)
	}
	ui, err := s.userinfo(ctx, prov, tok, idt.Subject)
	if err != nil {
		return nil, err
	}
	for k, v := range ui {
		if _, ok := claims[k]; !ok {
			claims[k] = v // the signed ID token wins
		}
	}
	id, err := MapClaims(conn, claims)
	if err != nil {
		return nil, err
	}
	id.Connector, id.Issuer, id.Subject = conn.Metadata.Name, idt.Issuer, idt.Subject
	if err := s.checkRoles(ctx, id); err != nil {
		return nil, err
	}
	expires, err := s.expiry(ctx, id)
	if err != nil {
		return nil, err
	}
	_, err = s.cfg.Users.PutSSO(ctx, users.SSOUser{Name: id.User, Connector: id.Connector, Subject: id.Subject,
		Roles: id.Roles, Traits: id.Traits, Expires: expires})
	if errors.Is(err, users.ErrNameTaken) {
		r := refuse(ReasonNameTaken, "the fleet user name %s belongs to a user who does not log in through connector %q; ask your fleet admin", id.User, id.Connector)
		r.User = id.User
		return nil, r
	}
	if err != nil {
		return nil, err
	}
	return id, nil
}

// userinfo reads the provider's userinfo endpoint, when it has one: many
// providers put the profile, email and groups claims there rather than in
// the ID token. Its subject must be the ID token's.
func (s *Service) userinfo(ctx context.Context, prov *oidc.Provider, tok *oauth2.Token, sub string) (map[string]any, error) {
	if prov.UserInfoEndpoint() == "" {
		return nil, nil
	}
	ui, err := prov.UserInfo(ctx, oauth2.StaticTokenSource(tok))
	if err != nil {
		return nil, refuse(ReasonUserinfo, "the identity provider's userinfo endpoint failed: %v; try again", err)
	}
	if ui.Subject != sub {
		return nil, refuse(ReasonUserinfo, "the identity provider's userinfo answer is for another user (sub %q, the ID token's is %q)", ui.Subject, sub)
	}
	claims := map[string]any{}
	if err := ui.Claims(&claims); err != nil {
		return nil, refuse(ReasonUserinfo, "the identity provider's userinfo claims do not decode: %v", err)
	}
	return claims, nil
}

// checkRoles drops the roles that do not exist (with a log line); when
// none is left the login is refused.
func (s *Service) checkRoles(ctx context.Context, id *Identity) error {
	var kept, missing []string
	for _, name := range id.Roles {
		_, err := s.cfg.Roles.Get(ctx, name)
		switch {
		case err == nil:
			kept = append(kept, name)
		case errors.Is(err, rbac.ErrNotFound):
			missing = append(missing, name)
		default:
			return err
		}
	}
	if len(missing) > 0 {
		s.log.Warn("connector maps claims to roles that do not exist", "connector", id.Connector, "user", id.User, "roles", missing)
	}
	if len(kept) == 0 {
		r := refuse(ReasonNoRole, "your claims map to the fleet roles %s, which do not exist; ask your fleet admin to create them or fix connector %q",
			strings.Join(missing, ", "), id.Connector)
		r.User = id.User
		return r
	}
	id.Roles = kept
	return nil
}

// expiry is when certificates of id's login expire at the latest: the
// fleet's default lifetime capped by the roles' max_session_ttl.
func (s *Service) expiry(ctx context.Context, id *Identity) (time.Time, error) {
	c, err := s.cfg.Roles.NewCheckerFor(ctx, id.Roles, id.Traits)
	if err != nil {
		return time.Time{}, err
	}
	return s.cfg.Now().Add(c.MaxTTL(s.cfg.UserCertTTL)), nil
}

// classify turns go-oidc's verification errors into refusals that say what
// went wrong.
func classify(err error, conn api.OIDCConnector) *Refusal {
	msg := err.Error()
	var exp *oidc.TokenExpiredError
	switch {
	case errors.As(err, &exp):
		return refuse(ReasonExpired, "the identity provider's ID token expired at %s (is the fleet's or the provider's clock wrong?); log in again",
			exp.Expiry.UTC().Format(time.RFC3339))
	case strings.Contains(msg, "expected audience"):
		return refuse(ReasonAudience, "the ID token is not for this fleet (%s): check the connector's client_id (%q)", strings.TrimPrefix(msg, "oidc: "), conn.Spec.ClientID)
	case strings.Contains(msg, "issued by a different provider"):
		return refuse(ReasonIssuer, "the ID token comes from another issuer than %s (%s)", conn.Spec.IssuerURL, strings.TrimPrefix(msg, "oidc: "))
	case strings.Contains(msg, "signature"):
		return refuse(ReasonSignature, "the ID token's signature does not verify with any key the identity provider publishes (signed with a retired key?): %s", msg)
	}
	return refuse(ReasonIDToken, "the identity provider's ID token is not valid: %s", msg)
}

// clean keeps an error code from the provider printable and short.
func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if len(s) > 256 {
		s = s[:256]
	}
	return s
}

func (s *Service) record(ctx context.Context, e *proto.AuditEvent) error {
	if s.cfg.Audit == nil {
		return nil
	}
	if e.Cluster == "" {
		e.Cluster = s.cfg.Cluster
	}
	return s.cfg.Audit.Record(ctx, e)
}

// recordRefusal records a refused login (p is nil when its state was
// bad).
func (s *Service) recordRefusal(ctx context.Context, r *http.Request, p *pending, err error) {
	f := map[string]string{"method": "sso"}
	e := &proto.AuditEvent{Type: proto.EventUserLoginFailed, Outcome: proto.OutcomeDenied, Addr: r.RemoteAddr, Message: err.Error(), Fields: f}
	var ref *Refusal
	if errors.As(err, &ref) {
		f["reason"], e.User = ref.Reason, ref.User
		for k, v := range ref.Fields {
			if _, ok := f[k]; !ok {
				f[k] = v
			}
		}
	} else {
		e.Outcome = proto.OutcomeFailure
	}
	if p != nil {
		f["connector"], f["for"], f["client"] = p.Connector, p.Kind, p.Client
	}
	s.log.Warn("single sign-on login refused", "reason", f["reason"], "connector", f["connector"], "user", e.User, "err", err)
	if rerr := s.record(ctx, e); rerr != nil {
		s.log.Error("audit event not recorded", "type", e.Type, "err", rerr)
	}
}

// Callback serves the fleet's redirect address: it finishes the login and
// hands the result to the finisher of its kind. A login whose state is bad
// (so whose kind is unknown) gets a plain error page.
func (s *Service) Callback() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The browser's tie to the login is spent either way.
		http.SetCookie(w, &http.Cookie{Name: BrowserCookie, Value: "", Path: "/", Secure: true, HttpOnly: true, MaxAge: -1})
		res, err := s.Finish(r.Context(), r)
		if res == nil {
			page.Message(w, http.StatusBadRequest, page.Text{Title: "Login refused", Message: err.Error()})
			return
		}
		s.mu.Lock()
		f := s.finishers[res.Kind]
		s.mu.Unlock()
		if f == nil {
			s.log.Error("no finisher for a login's kind", "kind", res.Kind)
			page.Message(w, http.StatusInternalServerError, page.Text{Title: "Login failed", Message: "The fleet does not know what this login was for; start it again."})
			return
		}
		f(w, r, res, err)
	})
}

// Prune deletes started logins that expired, writing through st (the
// elected leader's fenced store, fleet/leader); it returns how many.
func (s *Service) Prune(ctx context.Context, st store.Store) (int, error) {
	items, err := st.List(ctx, pendingPrefix)
	if err != nil {
		return 0, fmt.Errorf("sso: prune: %w", err)
	}
	n, now := 0, s.cfg.Now()
	for _, it := range items {
		var p pending
		if json.Unmarshal(it.Value, &p) == nil && now.Before(p.Expires) {
			continue
		}
		if err := st.Delete(ctx, it.Key); err == nil {
			n++
		} else if !errors.Is(err, store.ErrNotFound) {
			return n, fmt.Errorf("sso: prune: %w", err)
		}
	}
	return n, nil
}

// Public lists the connectors users may log in with, for login pages and
// tsh.
func (s *Service) Public(ctx context.Context) ([]api.SSOConnector, error) {
	all, err := s.Connectors.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.SSOConnector, 0, len(all))
	for _, c := range all {
		out = append(out, api.SSOConnector{Name: c.Metadata.Name, Display: Display(c)})
	}
	return out, nil
}

// Origins lists the origins (scheme://host[:port]) of the connectors'
// issuers and of the authorization endpoints discovered so far: the
// places a login page's form may send the browser on to, for its
// Content-Security-Policy's form-action.
func (s *Service) Origins(ctx context.Context) []string {
	all, err := s.Connectors.List(ctx)
	if err != nil {
		s.log.Warn("list connectors", "err", err)
	}
	var out []string
	add := func(raw string) {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return
		}
		if o := u.Scheme + "://" + u.Host; !slices.Contains(out, o) {
			out = append(out, o)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range all {
		add(c.Spec.IssuerURL)
		if p := s.providers[c.Metadata.Name]; p != nil {
			add(p.p.Endpoint().AuthURL)
		}
	}
	return out
}

// Forget drops the cached discovery of connector name (it changed or was
// removed).
func (s *Service) Forget(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.providers, name)
}
