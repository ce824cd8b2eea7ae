// Package login is the fleet's browser login: the login page (user,
// password and, for users who enrolled an authenticator, a one-time code,
// checked by the users service, whose lock-outs apply, after the HTTPS
// port's per-source login limit), the fleet
// session it starts, and logout. Everything the fleet serves to browsers
// (the dashboard, web-app access, the web terminal) builds on it: Session
// says who is logged in, RedirectToLogin sends a browser through the login
// and back, CheckPost guards state-changing requests, and Page renders a
// message with the same safe defaults. Single sign-on (fleet/sso) is the
// other way in: the login page shows a button per connector, which starts
// a login at the provider for this browser; the provider's user, verified
// and mapped by fleet/sso, gets a Session as a password login does.
//
// Safe defaults, for every page it serves:
//
//   - the session is a random token in a host-only cookie named
//     "__Host-fleet_session" (Secure, HttpOnly, Path=/, SameSite=Lax: a
//     link from elsewhere still finds the user logged in; no cross-site
//     request carries it in a POST). The "__Host-" prefix means no other
//     host, not even an app one label below the fleet's domain, can set
//     or shadow it. Only a hash of the token is kept in memory;
//   - every state-changing request (POST) carries a CSRF token tied to the
//     session (for the login form, to a "__Host-fleet_csrf" cookie), and
//     must come from the fleet's own origin (Origin, Sec-Fetch-Site): apps
//     on sibling hosts are same-site, so SameSite alone would not stop
//     them;
//   - a strict Content-Security-Policy (no inline script or style, no
//     framing, forms post to the fleet and to the hosts the fleet names),
//     nosniff, no referrer to other sites, no caching of pages;
//   - output through html/template; the "next" address a login returns to
//     is a path on the fleet, never another site.
//
// Sessions live in the fleet's store (fleet/store), under
// "websessions/HASH" where HASH is the SHA-256 of the cookie's token, so a
// browser stays logged in across fleetd restarts and on every replica.
// Each fleetd follows them into memory (Run): a logout on one replica ends
// the session, and what was started for it (OnEnd), on all of them within
// the store's watch latency. Expired sessions are pruned by Prune, which
// the fleet's leader runs.
//
// Only fleet/... server packages import login.
package login

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/sso"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/fleet/web/page"
	"remoteler.dev/edge/fleet/web/static"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Paths on the fleet's host.
const (
	PathLogin  = "/web/login"
	PathLogout = "/web/logout"
	PathStatic = "/web/static/"
)

// Cookie names.
const (
	SessionCookie = "__Host-fleet_session"
	csrfCookie    = "__Host-fleet_csrf"
)

// Users checks credentials and looks users up (*users.Service).
type Users interface {
	Authenticate(ctx context.Context, name, password, totpCode string) (api.User, error)
	Get(ctx context.Context, name string) (api.User, error)
}

// Recorder records an audit event (*audit.Recorder).
type Recorder interface {
	Record(ctx context.Context, e *proto.AuditEvent) error
}

// SSO is the fleet's single sign-on (*sso.Service): the connectors the
// login page offers, where their providers are (for the page's
// form-action), and the browser login.
type SSO interface {
	Public(ctx context.Context) ([]api.SSOConnector, error)
	Origins(ctx context.Context) []string
	StartBrowser(w http.ResponseWriter, r *http.Request, req sso.StartRequest) error
	HandleSession(kind string, f sso.Finisher)
}

// SSOKind names the single sign-on logins of the browser login
// (sso.StartRequest.Kind).
const SSOKind = "web"

// PathSSO is where the login page's connector buttons post.
const PathSSO = PathLogin + "/sso"

// Config configures a Server. Users, Store and Origin are required.
type Config struct {
	Users Users
	// Store keeps the sessions (see the package comment).
	Store store.Store
	// Origin is the fleet's web origin, https://HOST[:PORT]: requests
	// that change state must come from it.
	Origin string
	// Fleet is the fleet's name, shown on pages.
	Fleet string
	// Home is where a login that names no page to return to lands;
	// default "/web/".
	Home string
	// TTL is how long a session lasts for a user (their roles'
	// max_session_ttl, say); nil: 8h.
	TTL func(ctx context.Context, u api.User) time.Duration
	// FormTargets are more sources the pages' forms (and the redirects
	// that follow them) may go to, in CSP source syntax
	// ("https://*.fleet.example.com:3080").
	FormTargets []string
	// Admit applies the HTTPS port's per-source login limit to a login
	// (httpapi.Server.AllowLogin): false refuses it, saying how long to
	// wait. Nil admits every login (the users service's per-user
	// lock-outs still apply).
	Admit func(r *http.Request) (wait time.Duration, ok bool)
	// SSO, when set, offers its connectors on the login page.
	SSO SSO
	// Refuse, when set, is asked after a user's credentials checked out:
	// an error refuses the login with its message (a lock, fleet/locks;
	// an error with AuditFields() names the rule in the audit event).
	Refuse func(u api.User) error
	// Audit records logins and logouts; nil records nothing.
	Audit Recorder
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Session is a browser's fleet session.
type Session struct {
	// ID names the session to other packages (it is not the cookie's
	// token, which only the browser holds).
	ID   string
	User string
	// Method is how the user logged in: "web" (password), "sso:NAME".
	Method  string
	Started time.Time
	Expires time.Time
	csrf    string
}

// record is a session as the store keeps it.
type record struct {
	ID      string    `json:"id"`
	User    string    `json:"user"`
	Method  string    `json:"method,omitempty"`
	Started time.Time `json:"started"`
	Expires time.Time `json:"expires"`
	CSRF    string    `json:"csrf"`
}

func (rec *record) session() *Session {
	return &Session{ID: rec.ID, User: rec.User, Method: rec.Method, Started: rec.Started, Expires: rec.Expires, csrf: rec.CSRF}
}

// sessionPrefix is where the store keeps the sessions.
const sessionPrefix = "websessions/"

// Server serves the login pages and keeps the sessions. Create it with
// New; its methods are safe for concurrent use.
type Server struct {
	cfg  Config
	log  *slog.Logger
	tmpl *template.Template

	mu       sync.Mutex          // guards the fields below
	sessions map[string]*Session // by store key, as followed from the store
	onEnd    []func(Session)
}

//go:embed templates
var templates embed.FS

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.Home == "" {
		cfg.Home = "/web/"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := template.Must(template.New("").ParseFS(templates, "templates/*.html"))
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "login"), tmpl: t, sessions: map[string]*Session{}}
	if cfg.SSO != nil {
		cfg.SSO.HandleSession(SSOKind, s.finishSSO)
	}
	return s
}

// Run follows the sessions in the store until ctx ends: sessions started
// on other replicas are known here, and those ended there end here too.
func (s *Server) Run(ctx context.Context) {
	store.Follow(ctx, s.cfg.Store, sessionPrefix, store.FollowHandler{
		Reset: func(items []store.Item, _ int64) {
			next := map[string]*Session{}
			for _, it := range items {
				if sess := s.decode(it.Key, it.Value); sess != nil {
					next[it.Key] = sess
				}
			}
			s.mu.Lock()
			var gone []*Session
			for k, sess := range s.sessions {
				if next[k] == nil {
					gone = append(gone, sess)
				}
			}
			s.sessions = next
			s.mu.Unlock()
			s.ended(gone...)
		},
		Apply: func(ev store.Event) {
			if ev.Kind == store.EventPut {
				if sess := s.decode(ev.Key, ev.Value); sess != nil {
					s.mu.Lock()
					s.sessions[ev.Key] = sess
					s.mu.Unlock()
				}
				return
			}
			s.mu.Lock()
			sess := s.sessions[ev.Key]
			delete(s.sessions, ev.Key)
			s.mu.Unlock()
			if sess != nil {
				s.ended(sess)
			}
		},
		Retry: func(err error, wait time.Duration) {
			s.log.Warn("follow the browser sessions", "err", err, "retry_in", wait.String())
		},
	})
}

func (s *Server) decode(key string, b []byte) *Session {
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil || rec.ID == "" {
		s.log.Warn("malformed browser session in the store; ignoring it", "key", key, "err", err)
		return nil
	}
	return rec.session()
}

// ended runs the OnEnd hooks for sessions that ended.
func (s *Server) ended(list ...*Session) {
	if len(list) == 0 {
		return
	}
	s.mu.Lock()
	hooks := append([]func(Session){}, s.onEnd...)
	s.mu.Unlock()
	for _, sess := range list {
		for _, f := range hooks {
			f(*sess)
		}
	}
}

// Register adds the login routes to mux: the login page and form, logout,
// and the fleet's static files.
func (s *Server) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET "+PathLogin, s.loginPage)
	mux.HandleFunc("POST "+PathLogin, s.loginPost)
	if s.cfg.SSO != nil {
		mux.HandleFunc("POST "+PathSSO, s.ssoPost)
	}
	mux.HandleFunc("POST "+PathLogout, s.logout)
	mux.Handle("GET "+PathStatic, static.Handler(PathStatic))
}

// OnEnd registers f to run when a session ends by logout (another package
// ends what it started for the session: app sessions, say).
func (s *Server) OnEnd(f func(Session)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onEnd = append(s.onEnd, f)
}

func newToken() string { return rand.Text() + rand.Text() }

// tokenKey is the store key of the session whose cookie holds tok.
func tokenKey(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return sessionPrefix + hex.EncodeToString(sum[:])
}

// Session returns the request's live session: its cookie names one that
// has not expired, whose user still exists.
func (s *Server) Session(r *http.Request) (*Session, bool) {
	c, err := r.Cookie(SessionCookie)
	if err != nil || c.Value == "" || len(c.Value) > 256 {
		return nil, false
	}
	key := tokenKey(c.Value)
	s.mu.Lock()
	sess := s.sessions[key]
	s.mu.Unlock()
	if sess == nil {
		// Started on another replica moments ago, before the watch
		// brought it here: ask the store.
		b, err := s.cfg.Store.Get(r.Context(), key)
		if err != nil {
			return nil, false
		}
		if sess = s.decode(key, b); sess == nil {
			return nil, false
		}
	}
	if !s.cfg.Now().Before(sess.Expires) {
		return nil, false
	}
	u, err := s.cfg.Users.Get(r.Context(), sess.User)
	if err != nil {
		return nil, false
	}
	if s.cfg.Refuse != nil && s.cfg.Refuse(u) != nil {
		return nil, false // a lock: the login page says why
	}
	cp := *sess
	return &cp, true
}

// Live returns the live session whose ID is id (Session.ID): one this
// replica follows, not expired. Another package checks with it that the
// fleet session something was started for still stands (an app session
// taken up on another replica).
func (s *Server) Live(id string) (Session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sess := range s.sessions {
		if sess.ID == id && s.cfg.Now().Before(sess.Expires) {
			return *sess, true
		}
	}
	return Session{}, false
}

// RedirectToLogin sends the browser to the login page, to come back to
// next (a path on the fleet) afterwards.
func (s *Server) RedirectToLogin(w http.ResponseWriter, r *http.Request, next string) {
	SecurityHeaders(w.Header(), s.cfg.FormTargets...)
	http.Redirect(w, r, PathLogin+"?next="+url.QueryEscape(localPath(next, s.cfg.Home)), http.StatusSeeOther)
}

// localPath returns p when it is a path on this host (one leading slash,
// no scheme, no host, no backslash tricks), else def.
func localPath(p, def string) string {
	if p == "" || p[0] != '/' || strings.HasPrefix(p, "//") || strings.ContainsAny(p, "\\\r\n\t\x00") || len(p) > 4096 {
		return def
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil {
		return def
	}
	return p
}

// CSRF is the token a form of the session's pages must post back.
func (s *Session) CSRF() string { return s.csrf }

// ErrForbidden is what CheckPost's errors wrap: the request does not come
// from the fleet's own pages.
var ErrForbidden = errors.New("login: this request does not come from the fleet's own pages")

func forbidden(why string) error { return fmt.Errorf("%w: %s", ErrForbidden, why) }

// CheckPost checks that a state-changing request comes from the fleet's
// own page: from its origin, with the CSRF token of sess (nil: of the
// login form's cookie). It reads the request's form.
func (s *Server) CheckPost(r *http.Request, sess *Session) error {
	if !page.SameOrigin(r, s.cfg.Origin) {
		return forbidden("from origin " + r.Header.Get("Origin") + ", site " + r.Header.Get("Sec-Fetch-Site"))
	}
	r.Body = http.MaxBytesReader(nil, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		return forbidden("form: " + err.Error())
	}
	want := ""
	if sess != nil {
		want = sess.csrf
	} else if c, err := r.Cookie(csrfCookie); err == nil {
		want = c.Value
	}
	got := r.PostForm.Get("csrf")
	switch {
	case want == "":
		return forbidden("no CSRF cookie")
	case subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1:
		return forbidden("wrong CSRF token")
	}
	return nil
}

// SecurityHeaders sets the headers every fleet page carries (fleet/web/page:
// a strict Content-Security-Policy, forms posting also to formTargets, no
// framing, no sniffing, no referrer to other sites, no caching).
func SecurityHeaders(h http.Header, formTargets ...string) { page.Headers(h, formTargets...) }

// view is what the templates render.
type view struct {
	Fleet, Title, CSS, LoginPath, LogoutPath string
	User, CSRF                               string
	// The login form.
	Next, Name, Error string
	AskTOTP           bool
	SSOPath           string
	Connectors        []api.SSOConnector
	// A message page.
	Message        string
	Details        []string
	Link, LinkText string
	Form           *Form
	static         string
	formTargets    []string // more than Config.FormTargets
	// Body is another package's page content (Body).
	Body template.HTML
}

func (s *Server) render(w http.ResponseWriter, status int, name string, v view) {
	base := v.static
	if base == "" {
		base = PathStatic
	}
	v.Fleet, v.CSS, v.LoginPath, v.LogoutPath = s.cfg.Fleet, static.URL(base, "fleet.css"), PathLogin, PathLogout
	SecurityHeaders(w.Header(), append(v.formTargets, s.cfg.FormTargets...)...)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := s.tmpl.ExecuteTemplate(w, name, v); err != nil {
		s.log.Warn("render page", "page", name, "err", err)
	}
}

// Page is a message page: a title, what happened, and what to do next.
type Page struct {
	Title, Message string
	// Details are more paragraphs.
	Details []string
	// Link and LinkText offer one way on.
	Link, LinkText string
	// Static is the path the page loads the fleet's styles from, for
	// pages served on other hosts than the fleet's (an app's: see
	// StaticHandler); default PathStatic.
	Static string
	// Form, when set, adds a form that posts to Form.Action with the
	// session's CSRF token (Form.CSRF) and one button.
	Form *Form
}

// Form is a one-button form on a message page.
type Form struct {
	Action, CSRF, Button string
}

// StaticHandler serves the fleet's static files under prefix, for pages
// of the fleet served on other hosts.
func StaticHandler(prefix string) http.Handler { return static.Handler(prefix) }

// Page renders p with status, for the session's user (nil: nobody
// logged in), with the fleet's safe defaults.
func (s *Server) Page(w http.ResponseWriter, status int, sess *Session, p Page) {
	v := view{Title: p.Title, Message: p.Message, Details: p.Details, Link: p.Link, LinkText: p.LinkText, Form: p.Form, static: p.Static}
	if sess != nil {
		v.User, v.CSRF = sess.User, sess.csrf
	}
	s.render(w, status, "message.html", v)
}

// Body renders a page of another package: body (already rendered by that
// package's html/template) in the fleet's layout, for the session's user.
func (s *Server) Body(w http.ResponseWriter, status int, sess *Session, title string, body template.HTML) {
	v := view{Title: title, Body: body}
	if sess != nil {
		v.User, v.CSRF = sess.User, sess.csrf
	}
	s.render(w, status, "body.html", v)
}

// loginPage answers GET /web/login: the form, with a fresh CSRF cookie.
// A browser already logged in goes on to next at once.
func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	next := localPath(r.URL.Query().Get("next"), s.cfg.Home)
	if _, ok := s.Session(r); ok {
		SecurityHeaders(w.Header(), s.cfg.FormTargets...)
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	s.form(w, r, http.StatusOK, view{Next: next})
}

// form renders the login form with a fresh CSRF cookie.
func (s *Server) form(w http.ResponseWriter, r *http.Request, status int, v view) {
	tok := rand.Text()
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: tok, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: 3600})
	v.Title, v.CSRF = "Log in", tok
	if s.cfg.SSO != nil {
		conns, err := s.cfg.SSO.Public(r.Context())
		if err != nil {
			s.log.Error("list single sign-on connectors", "err", err)
		}
		v.Connectors, v.SSOPath = conns, PathSSO
		// A connector's button is answered with a redirect to its
		// provider, which form-action must allow.
		v.formTargets = s.cfg.SSO.Origins(r.Context())
	}
	s.render(w, status, "login.html", v)
}

// loginPost answers the login form: on success a new session and a
// redirect to next.
func (s *Server) loginPost(w http.ResponseWriter, r *http.Request) {
	if err := s.CheckPost(r, nil); err != nil {
		s.log.Info("login form refused", "remote", r.RemoteAddr, "err", err)
		s.Page(w, http.StatusForbidden, nil, Page{Title: "Log in again", Message: "The login form expired or did not come from this fleet's page.", Link: PathLogin, LinkText: "Log in"})
		return
	}
	f := r.PostForm
	name, next := strings.TrimSpace(f.Get("user")), localPath(f.Get("next"), s.cfg.Home)
	fail := func(status int, msg string, askTOTP bool) {
		s.form(w, r, status, view{Next: next, Name: name, Error: msg, AskTOTP: askTOTP})
	}
	if msg, ok := s.admit(w, r); !ok {
		fail(http.StatusTooManyRequests, msg, false)
		return
	}
	u, err := s.cfg.Users.Authenticate(r.Context(), name, f.Get("password"), f.Get("totp"))
	switch {
	case err == nil:
	case errors.Is(err, users.ErrTOTPRequired):
		fail(http.StatusUnauthorized, "Enter the one-time code from your authenticator app.", true)
		return
	case errors.Is(err, users.ErrBadCredentials), errors.Is(err, users.ErrLocked):
		msg := "Wrong user name, password or one-time code."
		if errors.Is(err, users.ErrLocked) {
			msg = "Too many failed logins for this user: wait a minute and try again."
		}
		s.record(r, &proto.AuditEvent{Type: proto.EventUserLoginFailed, Outcome: proto.OutcomeFailure, User: name, Addr: r.RemoteAddr,
			Message: err.Error(), Fields: map[string]string{"method": "web"}})
		fail(http.StatusUnauthorized, msg, f.Get("totp") != "")
		return
	default:
		s.log.Error("login", "user", name, "err", err)
		fail(http.StatusInternalServerError, "The fleet could not check your login (see fleetd's log); try again.", false)
		return
	}
	if ref := s.begin(w, r, u, "web", nil, next); ref != nil {
		fail(ref.status, ref.msg, false)
	}
}

// admit applies the per-source login limit (Config.Admit) to r: when it
// refuses, admit sets Retry-After and returns what to tell the user.
func (s *Server) admit(w http.ResponseWriter, r *http.Request) (string, bool) {
	if s.cfg.Admit == nil {
		return "", true
	}
	wait, ok := s.cfg.Admit(r)
	if !ok {
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int(wait.Seconds()+0.5))))
		return fmt.Sprintf("Too many logins from your address: try again in %s.", wait.Round(time.Second)), false
	}
	return "", true
}

// refusal is why begin started no session: the status to answer and
// what to tell the user.
type refusal struct {
	status int
	msg    string
}

func (e *refusal) Error() string { return e.msg }

// begin starts a session for u, a user whose login (method: "web" for a
// password, "sso:NAME") was just verified, and sends the browser on to
// next; the login's audit event (the only one: fleet/sso leaves it to
// begin) carries fields too. A user Config.Refuse refuses (a lock) gets no session, whatever
// the method, and the refusal is audited. begin writes nothing to w when
// it returns a refusal: a login it cannot audit, or a session the store
// cannot keep, starts nothing.
func (s *Server) begin(w http.ResponseWriter, r *http.Request, u api.User, method string, fields map[string]string, next string) *refusal {
	if s.cfg.Refuse != nil {
		if err := s.cfg.Refuse(u); err != nil {
			f := map[string]string{"method": method}
			if af, ok := err.(interface{ AuditFields() map[string]string }); ok {
				maps.Copy(f, af.AuditFields())
			}
			s.record(r, &proto.AuditEvent{Type: proto.EventUserLoginFailed, Outcome: proto.OutcomeDenied, User: u.Name, Addr: r.RemoteAddr,
				Message: err.Error(), Fields: f})
			return &refusal{http.StatusForbidden, err.Error()}
		}
	}
	ttl := 8 * time.Hour
	if s.cfg.TTL != nil {
		ttl = s.cfg.TTL(r.Context(), u)
	}
	now := s.cfg.Now()
	sess := &Session{ID: rand.Text(), User: u.Name, Method: method, Started: now, Expires: now.Add(ttl), csrf: rand.Text()}
	f := map[string]string{"method": method, "roles": strings.Join(u.Roles, ","), "ttl": ttl.String(), "web_session": sess.ID}
	maps.Copy(f, fields)
	if err := s.record(r, &proto.AuditEvent{Type: proto.EventUserLogin, User: u.Name, Addr: r.RemoteAddr, Fields: f}); err != nil {
		return &refusal{http.StatusServiceUnavailable, "The fleet cannot write its audit log right now, so it logs nobody in; try again later."}
	}
	tok := newToken()
	key := tokenKey(tok)
	b, _ := json.Marshal(&record{ID: sess.ID, User: sess.User, Method: sess.Method, Started: sess.Started, Expires: sess.Expires, CSRF: sess.csrf})
	if err := s.cfg.Store.Create(r.Context(), key, b); err != nil {
		s.log.Error("store a browser session", "user", u.Name, "err", err)
		return &refusal{http.StatusServiceUnavailable, "The fleet could not keep your session (see fleetd's log); try again."}
	}
	s.mu.Lock()
	s.sessions[key] = sess
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: tok, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode,
		Expires: sess.Expires})
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: "", Path: "/", Secure: true, HttpOnly: true, MaxAge: -1})
	SecurityHeaders(w.Header(), s.cfg.FormTargets...)
	http.Redirect(w, r, next, http.StatusSeeOther)
	return nil
}

// ssoData is what a browser's single sign-on login carries to its end.
type ssoData struct {
	Next string `json:"next"`
}

// ssoPost answers a connector's button on the login page: the browser
// goes to the provider, to come back to finishSSO.
func (s *Server) ssoPost(w http.ResponseWriter, r *http.Request) {
	if err := s.CheckPost(r, nil); err != nil {
		s.log.Info("single sign-on form refused", "remote", r.RemoteAddr, "err", err)
		s.Page(w, http.StatusForbidden, nil, Page{Title: "Log in again", Message: "The login form expired or did not come from this fleet's page.", Link: PathLogin, LinkText: "Log in"})
		return
	}
	next := localPath(r.PostForm.Get("next"), s.cfg.Home)
	if msg, ok := s.admit(w, r); !ok {
		s.form(w, r, http.StatusTooManyRequests, view{Next: next, Error: msg})
		return
	}
	data, _ := json.Marshal(ssoData{Next: next})
	err := s.cfg.SSO.StartBrowser(w, r, sso.StartRequest{Connector: r.PostForm.Get("connector"), Kind: SSOKind, Data: data, ClientAddr: r.RemoteAddr})
	if err != nil {
		msg := "The fleet could not start the login: " + err.Error()
		if errors.Is(err, sso.ErrNotFound) {
			msg = "There is no such single sign-on connector; pick one of the buttons."
		}
		s.form(w, r, http.StatusBadRequest, view{Next: next, Error: msg})
	}
}

// finishSSO ends a browser's single sign-on login: fleet/sso verified the
// user at the provider (and audited it); a session starts for them.
func (s *Server) finishSSO(w http.ResponseWriter, r *http.Request, res *sso.Result, err error) {
	var d ssoData
	if res != nil {
		json.Unmarshal(res.Data, &d) // written by ssoPost; a bad one leaves Next empty: Home
	}
	next := localPath(d.Next, s.cfg.Home)
	retry := PathLogin + "?next=" + url.QueryEscape(next)
	if err != nil {
		s.Page(w, http.StatusForbidden, nil, Page{Title: "Login refused", Message: err.Error(), Link: retry, LinkText: "Log in again"})
		return
	}
	u, err := s.cfg.Users.Get(r.Context(), res.User)
	if err != nil {
		s.log.Error("single sign-on session", "user", res.User, "err", err)
		s.Page(w, http.StatusServiceUnavailable, nil, Page{Title: "Login failed", Message: "The fleet could not start your session (see fleetd's log); try again.", Link: retry, LinkText: "Log in again"})
		return
	}
	if ref := s.begin(w, r, u, "sso:"+res.Connector, res.AuditFields(), next); ref != nil {
		title := "Login failed"
		if ref.status == http.StatusForbidden {
			title = "Login refused"
		}
		s.Page(w, ref.status, nil, Page{Title: title, Message: ref.msg, Link: retry, LinkText: "Log in again"})
	}
}

// Prune removes the expired sessions from the store (every replica then
// runs the OnEnd hooks for them) and returns how many it removed. One
// replica, the leader, runs it now and then.
func (s *Server) Prune(ctx context.Context) (int, error) {
	now := s.cfg.Now()
	n, err := store.Prune(ctx, s.cfg.Store, sessionPrefix, func(b []byte) bool {
		var rec record
		return json.Unmarshal(b, &rec) != nil || !now.Before(rec.Expires)
	})
	if err != nil {
		return n, fmt.Errorf("login: prune sessions: %w", err)
	}
	return n, nil
}

// logout answers POST /web/logout: the session ends, and with it what
// other packages started for it (OnEnd).
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	sess, ok := s.Session(r)
	if !ok {
		SecurityHeaders(w.Header(), s.cfg.FormTargets...)
		http.Redirect(w, r, PathLogin, http.StatusSeeOther)
		return
	}
	if err := s.CheckPost(r, sess); err != nil {
		s.Page(w, http.StatusForbidden, sess, Page{Title: "Not logged out", Message: "The logout did not come from this fleet's page.", Link: s.cfg.Home, LinkText: "Back"})
		return
	}
	c, _ := r.Cookie(SessionCookie) // Session found it
	if err := s.End(r.Context(), tokenKey(c.Value), *sess); err != nil {
		s.log.Error("log out", "user", sess.User, "err", err)
		s.Page(w, http.StatusServiceUnavailable, sess, Page{Title: "Not logged out", Message: "The fleet could not end your session (see fleetd's log); try again.", Link: s.cfg.Home, LinkText: "Back"})
		return
	}
	s.record(r, &proto.AuditEvent{Type: proto.EventUserLogout, User: sess.User, Addr: r.RemoteAddr, Fields: map[string]string{"method": "web", "web_session": sess.ID}})
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", Secure: true, HttpOnly: true, MaxAge: -1})
	SecurityHeaders(w.Header(), s.cfg.FormTargets...)
	http.Redirect(w, r, PathLogin, http.StatusSeeOther)
}

// End ends sess, whose key in the store is key (a logout: the request's
// cookie names it). It is removed from the store whether or not this
// replica's watch has brought it yet (a logout on a replica moments after
// the login on another), and the OnEnd hooks run on every replica: here at
// once, on the others when their watch sees the removal.
func (s *Server) End(ctx context.Context, key string, sess Session) error {
	s.mu.Lock()
	delete(s.sessions, key)
	s.mu.Unlock()
	if err := s.cfg.Store.Delete(ctx, key); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("login: end session: %w", err)
	}
	s.ended(&sess)
	return nil
}

func (s *Server) record(r *http.Request, e *proto.AuditEvent) error {
	if s.cfg.Audit == nil {
		return nil
	}
	if err := s.cfg.Audit.Record(r.Context(), e); err != nil {
		return fmt.Errorf("login: audit: %w", err)
	}
	return nil
}
