// Package dashboard is the fleet's dashboard in the browser, served by
// fleetd under /web/: the devices (summary counts that are filters, a paged
// table kept live by server-sent events), a device's page (labels,
// versions, apps, Kubernetes, link history charts, recent audit events,
// sessions live and recorded, a terminal), the audit search, recordings
// and their player, and for admins users, roles and join tokens.
//
// Pages are rendered on the server with html/template (embed) and made
// live with a little vendored JavaScript (fleet/web/static: htmx and its
// server-sent events extension, uPlot for charts, xterm.js for the
// terminal and the player), without a build step.
//
// Who is logged in comes from the fleet's browser login through a small
// seam (Login): the request's session and the check of state-changing
// requests. From the session's user the dashboard builds, on every
// request, the checker of the user's current roles (fleet/rbac): a device
// the roles do not let the user see is not listed, and its page, its
// terminal and its charts answer as for a device that does not exist;
// admin pages are refused to users who are not admins.
//
// Safe defaults on every page: a strict Content-Security-Policy (scripts
// only from the fleet, no inline script, no eval; styles from the fleet
// and, for the terminal's and charts' libraries, style elements carrying
// the page's nonce), CSRF tokens checked on every state-changing request
// (Login.CheckPost), output through html/template, every form and query
// parameter validated (params.go), no caching, no framing, no referrer.
//
// Only fleet/... server packages import dashboard.
package dashboard

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/admin"
	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/fleetview"
	"remoteler.dev/edge/fleet/linkhist"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/recordings"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/fleet/web/page"
	"remoteler.dev/edge/fleet/web/static"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Paths.
const (
	// Prefix is where the dashboard lives on the fleet's host.
	Prefix = "/web/"
	// StaticPrefix is where fleet/web/static's files are served (by
	// whoever registers them: fleetd).
	StaticPrefix = "/web/static/"
)

// Session is a browser's fleet session, as the login tells it.
type Session struct {
	// User is the fleet user logged in.
	User string
	// ID names the session in audit events (not its cookie).
	ID string
	// CSRF is the token the session's forms post back (field "csrf").
	CSRF string
	// Expires is when the session ends; a terminal opened in it ends
	// then too.
	Expires time.Time
}

// Login is the fleet's browser login, as the dashboard needs it (fleet/web
// login's Server, through a small adapter in fleetd).
type Login interface {
	// Session returns the request's live session.
	Session(r *http.Request) (Session, bool)
	// RedirectToLogin sends the browser to log in and come back to next
	// (a path on the fleet).
	RedirectToLogin(w http.ResponseWriter, r *http.Request, next string)
	// CheckPost checks that a state-changing request comes from the
	// fleet's own page of sess: its origin and its CSRF token. It reads
	// the request's form.
	CheckPost(r *http.Request, sess Session) error
}

// Recorder records an audit event (*audit.Recorder).
type Recorder interface {
	Record(ctx context.Context, e *proto.AuditEvent) error
}

// Rollouts are the fleet's agent update rollouts (*rollouts.Engine).
type Rollouts interface {
	// List returns every rollout with its progress, newest first.
	List(ctx context.Context) []api.Rollout
	// DeviceUpdate says where a device's update stands; nil if the fleet
	// never heard.
	DeviceUpdate(deviceID string) *api.DeviceUpdate
}

// TerminalRequest is a terminal the dashboard allowed to be asked for:
// the user and their roles' checker, the device and login, and when the
// user's web session ends. The terminal decides again, through the
// broker, when it connects.
type TerminalRequest struct {
	User       api.User
	Checker    *rbac.Checker
	Device     string
	Login      string
	Expires    time.Time
	ClientAddr string
	Cols, Rows int
}

// Config configures a Server. Login, Users, Roles and View are required;
// a nil History, Audit, Recordings, Sessions, Admin or Terminal turns its
// part of the dashboard off.
type Config struct {
	Login Login
	Users *users.Service
	Roles *rbac.Roles
	View  *fleetview.View
	// History holds the link history charts are drawn from.
	History *linkhist.History
	// Audit is searched for the audit page and devices' recent events.
	Audit *audit.Log
	// Recorder records what the dashboard refuses (admin pages to
	// non-admins) and does.
	Recorder Recorder
	// Recordings holds session recordings.
	Recordings *recordings.Store
	// Sessions lists the live sessions.
	Sessions *sessions.Registry
	// Admin takes admin actions; Tokens lists join tokens.
	Admin  *admin.Admin
	Tokens *tokens.Service
	// Rollouts tells the agent updates' progress (fleet/rollouts).
	Rollouts Rollouts
	// Terminal serves a terminal's websocket (fleet/webterm).
	Terminal func(w http.ResponseWriter, r *http.Request, req TerminalRequest)
	// Fleet is the fleet's name; Version fleetd's.
	Fleet, Version string
	// FleetAddr is the fleet's HOST:PORT as devices reach it, for the
	// join command.
	FleetAddr string
	// Origin is the fleet's web origin (https://HOST:PORT): a terminal's
	// websocket must come from it.
	Origin string
	// AppURL gives the address of a device's web app, through app
	// access; nil shows no links.
	AppURL func(app, device string) (string, error)
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server serves the dashboard. Create it with New; it is safe for
// concurrent use.
type Server struct {
	cfg  Config
	log  *slog.Logger
	tmpl *template.Template
}

//go:embed templates
var templates embed.FS

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "dashboard")}
	s.tmpl = template.Must(template.New("").Funcs(s.funcs()).ParseFS(templates, "templates/*.html"))
	return s
}

// Register adds the dashboard's routes to mux (not the static files: see
// StaticPrefix).
func (s *Server) Register(mux *http.ServeMux) {
	authed := func(pattern string, h func(http.ResponseWriter, *http.Request, *viewer)) {
		mux.Handle(pattern, s.authed(h))
	}
	adminPage := func(pattern string, h func(http.ResponseWriter, *http.Request, *viewer)) {
		mux.Handle(pattern, s.authed(s.adminOnly(h)))
	}
	authed("GET /web/{$}", s.devicesPage)
	authed("GET /web/devices", s.devicesPage)
	authed("GET /web/live/devices", s.devicesLive)
	authed("GET /web/devices/{name}", s.devicePage)
	authed("GET /web/devices/{name}/link", s.deviceLink)
	authed("GET /web/live/devices/{name}", s.deviceLive)
	authed("GET /web/devices/{name}/terminal", s.terminalPage)
	authed("GET /web/devices/{name}/terminal/ws", s.terminalSocket)
	authed("GET /web/sessions", s.sessionsPage)
	authed("GET /web/recordings/{id}", s.recordingPage)
	authed("GET /web/recordings/{id}/cast", s.recordingCast)
	adminPage("GET /web/audit", s.auditPage)
	adminPage("GET /web/rollouts", s.rolloutsPage)
	adminPage("GET /web/admin/users", s.usersPage)
	adminPage("POST /web/admin/users", s.addUser)
	adminPage("POST /web/admin/users/{name}/delete", s.deleteUser)
	adminPage("GET /web/admin/roles", s.rolesPage)
	adminPage("GET /web/admin/roles/{name}", s.rolePage)
	adminPage("POST /web/admin/roles/{name}", s.saveRole)
	adminPage("POST /web/admin/roles/{name}/delete", s.deleteRole)
	adminPage("GET /web/admin/tokens", s.tokensPage)
	adminPage("POST /web/admin/tokens", s.addToken)
	adminPage("POST /web/admin/tokens/{id}/delete", s.deleteToken)
}

// viewer is who a request comes from: the session, the user as stored
// now, and the checker of their current roles.
type viewer struct {
	sess    Session
	user    api.User
	checker *rbac.Checker
	nonce   string // the response's CSP nonce
}

func (v *viewer) isAdmin() bool { return v.checker.IsAdmin() }

// canSee reports whether the viewer's roles let them see a device with
// these labels.
func (v *viewer) canSee(labels map[string]string) bool { return v.checker.CanSeeDevice(labels) }

// authed runs h for a logged-in user, looked up afresh (a removed user or
// a changed role takes effect at once); others go to the login.
func (s *Server) authed(h func(http.ResponseWriter, *http.Request, *viewer)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nonce := rand.Text()
		securityHeaders(w.Header(), nonce)
		sess, ok := s.cfg.Login.Session(r)
		if !ok {
			s.toLogin(w, r)
			return
		}
		u, err := s.cfg.Users.Get(r.Context(), sess.User)
		if err != nil {
			if errors.Is(err, users.ErrNotFound) {
				s.toLogin(w, r)
				return
			}
			s.fail(w, r, nil, err)
			return
		}
		checker, err := s.cfg.Roles.NewCheckerFor(r.Context(), u.Roles, u.Traits)
		if err != nil {
			s.fail(w, r, nil, err)
			return
		}
		h(w, r, &viewer{sess: sess, user: u, checker: checker, nonce: nonce})
	})
}

// toLogin sends a browser to log in; a live update or a partial gets 401,
// and htmx is told to load the login page.
func (s *Server) toLogin(w http.ResponseWriter, r *http.Request) {
	next := r.URL.RequestURI()
	if strings.HasPrefix(r.URL.Path, "/web/live/") || isHTMX(r) {
		w.Header().Set("HX-Redirect", "/web/login?next="+url.QueryEscape(Prefix))
		http.Error(w, "log in again", http.StatusUnauthorized)
		return
	}
	s.cfg.Login.RedirectToLogin(w, r, next)
}

// adminOnly refuses h to users without an admin role, and records the
// refusal.
func (s *Server) adminOnly(h func(http.ResponseWriter, *http.Request, *viewer)) func(http.ResponseWriter, *http.Request, *viewer) {
	return func(w http.ResponseWriter, r *http.Request, v *viewer) {
		if !v.isAdmin() {
			s.record(r, v, &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied,
				Message: "this page needs a fleet admin role", Fields: map[string]string{"action": r.Method + " " + r.URL.Path}})
			s.message(w, r, v, http.StatusForbidden, "Not for you", "This page needs a fleet admin role. Ask an admin of the fleet if you need it.")
			return
		}
		h(w, r, v)
	}
}

// record records an audit event of the viewer's.
func (s *Server) record(r *http.Request, v *viewer, e *proto.AuditEvent) error {
	if s.cfg.Recorder == nil {
		return nil
	}
	if v != nil {
		e.User = v.user.Name
		if e.Fields == nil {
			e.Fields = map[string]string{}
		}
		e.Fields["web_session"] = v.sess.ID
	}
	e.Addr = r.RemoteAddr
	return s.cfg.Recorder.Record(r.Context(), e)
}

// securityHeaders sets what every dashboard answer carries: the fleet
// pages' headers (fleet/web/page: no framing, no sniffing, no referrer to
// other origins, no caching), with a Content-Security-Policy that also
// lets in style elements with the page's nonce (the fleet's script gives
// it to those the terminal and chart libraries create) and the fleet's
// fonts; still no inline script or eval.
func securityHeaders(h http.Header, nonce string) {
	page.Headers(h)
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-"+nonce+"'; img-src 'self'; "+
		"font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
}

func isHTMX(r *http.Request) bool { return r.Header.Get("HX-Request") == "true" }

// layout is what every full page renders around its content.
type layout struct {
	Title   string
	Fleet   string
	Version string
	User    string
	Admin   bool
	CSRF    string
	Nonce   string
	Nav     string // the current section
	// Charts and Terminal load uPlot and xterm.js: only the pages that
	// draw charts or a terminal pay for them.
	Charts, Terminal bool
	Static           func(path string) string
	Content          any
}

func (s *Server) staticURL(p string) string { return static.URL(StaticPrefix, p) }

// page renders a full page: content's template in the layout.
func (s *Server) page(w http.ResponseWriter, r *http.Request, v *viewer, status int, title, nav, tmpl string, content any) {
	l := layout{Title: title, Fleet: s.cfg.Fleet, Version: s.cfg.Version, Nav: nav, Static: s.staticURL, Content: content,
		Charts: tmpl == "device", Terminal: tmpl == "terminal" || tmpl == "recording"}
	if v != nil {
		l.User, l.Admin, l.CSRF, l.Nonce = v.user.Name, v.isAdmin(), v.sess.CSRF, v.nonce
	}
	var body bytes.Buffer
	if err := s.tmpl.ExecuteTemplate(&body, tmpl, content); err != nil {
		s.fail(w, r, v, fmt.Errorf("render %s: %w", tmpl, err))
		return
	}
	var out bytes.Buffer
	if err := s.tmpl.ExecuteTemplate(&out, "layout", struct {
		layout
		Body template.HTML
	}{l, template.HTML(body.String())}); err != nil {
		s.fail(w, r, v, fmt.Errorf("render layout: %w", err))
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	writeBody(w, r, status, out.Bytes())
}

// writeBody writes a rendered answer, gzipped when the client takes it and
// it is worth it (a page of 100 devices shrinks by four fifths).
func writeBody(w http.ResponseWriter, r *http.Request, status int, body []byte) {
	w.Header().Add("Vary", "Accept-Encoding")
	if len(body) < 1400 || !static.AcceptsGzip(r) {
		w.WriteHeader(status)
		w.Write(body)
		return
	}
	w.Header().Set("Content-Encoding", "gzip")
	w.WriteHeader(status)
	zw := gzipWriters.Get().(*gzip.Writer)
	zw.Reset(w)
	zw.Write(body)
	zw.Close()
	gzipWriters.Put(zw)
}

// gzipWriters are reused: a gzip.Writer takes some hundred kilobytes.
var gzipWriters = sync.Pool{New: func() any {
	zw, _ := gzip.NewWriterLevel(io.Discard, gzip.DefaultCompression)
	return zw
}}

// partial renders one template alone, for htmx.
func (s *Server) partial(w http.ResponseWriter, r *http.Request, v *viewer, tmpl string, data any) {
	var out bytes.Buffer
	if err := s.tmpl.ExecuteTemplate(&out, tmpl, data); err != nil {
		s.fail(w, r, v, fmt.Errorf("render %s: %w", tmpl, err))
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Vary", "HX-Request")
	writeBody(w, r, http.StatusOK, out.Bytes())
}

// render renders a template to a string (for server-sent events).
func (s *Server) render(tmpl string, data any) (string, error) {
	var out bytes.Buffer
	if err := s.tmpl.ExecuteTemplate(&out, tmpl, data); err != nil {
		return "", fmt.Errorf("dashboard: render %s: %w", tmpl, err)
	}
	return out.String(), nil
}

// messageView is a message page's content.
type messageView struct {
	Title, Message string
	Link, LinkText string
}

// message renders a message page: what happened and what to do next.
func (s *Server) message(w http.ResponseWriter, r *http.Request, v *viewer, status int, title, msg string) {
	s.page(w, r, v, status, title, "", "message", messageView{Title: title, Message: msg, Link: Prefix, LinkText: "Back to the devices"})
}

// badRequest answers a request whose parameters are wrong, saying which.
func (s *Server) badRequest(w http.ResponseWriter, r *http.Request, v *viewer, err error) {
	if isHTMX(r) {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.message(w, r, v, http.StatusBadRequest, "Bad request", err.Error())
}

// notFound answers for what does not exist or the viewer may not see,
// alike.
func (s *Server) notFound(w http.ResponseWriter, r *http.Request, v *viewer, what string) {
	s.message(w, r, v, http.StatusNotFound, "Not found", "There is no "+what+" that you can see.")
}

// fail answers an internal error: logged, and the user told where to look.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, v *viewer, err error) {
	s.log.Error("dashboard", "path", r.URL.Path, "err", err)
	if v == nil || isHTMX(r) {
		http.Error(w, "the fleet failed to answer (see fleetd's log); try again", http.StatusInternalServerError)
		return
	}
	s.message(w, r, v, http.StatusInternalServerError, "Something went wrong", "The fleet failed to answer (see fleetd's log). Try again.")
}
