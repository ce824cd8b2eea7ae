// Package appsrv serves web apps on devices to browsers and to tsh proxy
// app: each app at its own public address, https://APP--DEVICE.DOMAIN
// (fleet/apps has the scheme), by reverse proxy down the device's tunnel.
//
// A browser without an app session on the app's host is sent to the
// fleet's host (Launch), through the fleet's login (fleet/web/login) if it
// has no fleet session, where the user's roles are checked (app_labels,
// through the broker); a refusal is a page that says why, never a loop.
// When allowed, the browser comes back to the app's host with a one-time
// code that lives a minute (PathAuth); the code is exchanged for an app
// session in a host-only cookie on that host ("__Host-fleet_app", Secure,
// HttpOnly, SameSite=Lax), so no app can read another's. The redirect goes
// only to the address of an app the fleet knows, built from its name: no
// open redirect. tsh proxy app presents an app certificate instead
// (tsh apps login), valid for that app only.
//
// An app session is a brokered session (fleet/broker): recorded at its
// start and end, registered live, and ended when access ends (the user's
// fleet session or certificate expires, the user is removed, a role change
// takes the app away, the user logs out); its requests and websockets are
// cut then. Every request is recorded (method, path, status, bytes, once
// it is answered), and refusals too.
//
// The proxy streams: websockets and other upgrades, server-sent events and
// chunked answers pass as they come (no buffering), Range requests pass
// through, uploads stream up to a cap (default 1 GiB; 413 beyond). Towards
// the app it speaks HTTP/1.1 with the app's own Host; X-Forwarded-Host,
// -Proto and -For name the public side. It strips what the client may not
// pass on (the fleet's identity header, the fleet's cookies, forwarding
// headers) and adds the user's identity as a signed JWT (fleet/appjwt) in
// apps.JWTHeader. Answers that name the app's internal origin (Location,
// cookie Domain) are rewritten to its public address, and the app cannot
// set the fleet's cookies.
//
// Only fleet/... server packages import appsrv.
package appsrv

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/appjwt"
	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/web/login"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Paths of the fleet on an app's host: the app never sees them.
const (
	PathAuth   = "/_fleet/auth"
	PathLogout = "/_fleet/logout"
	pathStatic = "/_fleet/static/"
)

// Paths on the fleet's own host.
const (
	PathApps   = "/web/apps"
	PathLaunch = "/web/apps/launch"
)

// AppCookie holds a browser's app session on an app's host.
const AppCookie = "__Host-fleet_app"

// Users looks users up (*users.Service).
type Users interface {
	Get(ctx context.Context, name string) (api.User, error)
}

// Config configures a Server. Broker, Login, Users, Roles, CA, Keys,
// Catalog and Addr are required.
type Config struct {
	Broker  *broker.Broker
	Login   *login.Server
	Users   Users
	Roles   *rbac.Roles
	CA      *ca.Authority
	Keys    *appjwt.Keys
	Catalog apps.Catalog
	Addr    apps.Addr
	// UploadLimit caps a request body, in bytes; default 1 GiB.
	UploadLimit int64
	// SessionTTL caps a browser's app session; default 8h, and never
	// longer than the fleet session it came from.
	SessionTTL time.Duration
	// JWTLifetime is how long an app's JWT is valid; default 1m.
	JWTLifetime time.Duration
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server serves apps. Create it with New, stop it with Close.
type Server struct {
	cfg   Config
	log   *slog.Logger
	proxy *httputil.ReverseProxy
	// records are the requests' audit events being recorded; Close waits
	// for them.
	records sync.WaitGroup

	mu       sync.Mutex          // guards the fields below
	sessions map[string]*session // by cookie token hash, or "cert:" + serial
	codes    map[string]*code
	launches map[string][]time.Time // recent launches, by web session and app
	closed   bool
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.UploadLimit <= 0 {
		cfg.UploadLimit = 1 << 30
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 8 * time.Hour
	}
	if cfg.JWTLifetime <= 0 {
		cfg.JWTLifetime = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "apps"),
		sessions: map[string]*session{}, codes: map[string]*code{}, launches: map[string][]time.Time{}}
	s.proxy = &httputil.ReverseProxy{
		Rewrite:        s.rewrite,
		Transport:      sessionTransport{},
		FlushInterval:  -1,
		ModifyResponse: s.modifyResponse,
		ErrorHandler:   s.proxyError,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return s
}

// Close ends every app session (fleetd is stopping).
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	list := make([]*session, 0, len(s.sessions))
	for _, as := range s.sessions {
		list = append(list, as)
	}
	s.mu.Unlock()
	for _, as := range list {
		as.finish(context.Background(), "the fleet is shutting down")
	}
	s.records.Wait()
}

// Register adds the fleet-host routes: the apps page and launch.
func (s *Server) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET "+PathApps, s.appsPage)
	mux.HandleFunc("GET "+PathLaunch, s.launch)
	s.cfg.Login.OnEnd(func(ws login.Session) { s.endWebSession(ws.ID, "you logged out of the fleet") })
}

// IsAppHost reports whether a request's Host names an app: the fleet's
// router sends those to ServeHTTP.
func (s *Server) IsAppHost(host string) bool {
	_, _, ok := s.cfg.Addr.Parse(host)
	return ok
}

// session is one app session: a browser's (cookie) or an app
// certificate's.
type session struct {
	s      *Server
	key    string
	label  string
	app    proto.App
	device string
	user   api.User
	grant  *broker.Grant
	live   *broker.Session
	// webSession is the fleet session a browser's app session came from.
	webSession string
	expires    time.Time
	csrf       string
	origin     string // the app's public origin
	internal   string // the app's Host on the device side
	tr         *http.Transport
	ctx        context.Context // done when the session ends
	cancel     context.CancelFunc

	doneOnce sync.Once // records the end once

	mu     sync.Mutex // guards the fields below
	ended  string     // why it ended, once it did
	jwt    string
	jwtExp time.Time
}

type sessionKey struct{}

func sessionOf(ctx context.Context) *session {
	as, _ := ctx.Value(sessionKey{}).(*session)
	return as
}

// sessionTransport sends each request on the transport of its session,
// whose pooled connections are streams down the device's tunnel.
type sessionTransport struct{}

func (sessionTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	as := sessionOf(r.Context())
	if as == nil {
		return nil, errors.New("appsrv: a request without an app session")
	}
	return as.tr.RoundTrip(r)
}

// start authorises and starts an app session for user on the app.
func (s *Server) start(ctx context.Context, user api.User, app, device, clientAddr, key, webSession string, expires time.Time, action string) (*session, error) {
	checker, err := s.cfg.Roles.NewCheckerFor(ctx, user.Roles, user.Traits)
	if err != nil {
		return nil, &broker.Refusal{Status: broker.StatusUnavailable, Msg: "the fleet cannot read your roles right now; try again"}
	}
	b := s.cfg.Broker
	g, err := b.Authorize(ctx, broker.Ask{Service: proto.ServiceApp, Kind: "app", User: user, Checker: checker, Device: device, App: app,
		ClientAddr: clientAddr, Expires: expires, Action: action})
	if err != nil {
		return nil, err
	}
	origin, err := s.cfg.Addr.Origin(app, device)
	if err != nil {
		return nil, &broker.Refusal{Status: broker.StatusNotFound, Msg: err.Error()}
	}
	u, err := proto.ParseAppURI(g.App.URI)
	if err != nil {
		return nil, &broker.Refusal{Status: broker.StatusNotFound, Msg: err.Error()}
	}
	label, _ := apps.Label(app, device)
	as := &session{s: s, key: key, label: label, app: *g.App, device: device, user: user, grant: g, webSession: webSession,
		expires: expires, csrf: rand.Text(), origin: origin, internal: u.Host}
	as.ctx, as.cancel = context.WithCancel(context.Background())
	as.tr = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return b.OpenPooled(ctx, g, app)
		},
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		Proxy:               nil,
	}
	live, err := b.Start(ctx, g, broker.StartOptions{End: func(reason string) {
		as.end(reason)
		// Recorded now, off the registry's goroutine. An app
		// certificate's session stays in the map, ended, so that its
		// next request is told why.
		go as.done(context.Background(), reason)
	}})
	if err != nil {
		as.cancel()
		return nil, err
	}
	as.live = live
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		as.finish(ctx, "the fleet is shutting down")
		return nil, &broker.Refusal{Status: broker.StatusUnavailable, Msg: "the fleet is shutting down"}
	}
	s.sweepLocked()
	s.sessions[key] = as
	s.mu.Unlock()
	return as, nil
}

// end is called when the fleet ends the session (the registry: access
// ended): it stops serving it and cuts what is in flight.
func (as *session) end(reason string) {
	as.mu.Lock()
	if as.ended == "" {
		as.ended = reason
	}
	as.mu.Unlock()
	as.cancel()
	as.tr.CloseIdleConnections()
}

// endedWhy says why the session ended, or "".
func (as *session) endedWhy() string {
	as.mu.Lock()
	defer as.mu.Unlock()
	return as.ended
}

// done records the session's end, once.
func (as *session) done(ctx context.Context, reason string) {
	as.doneOnce.Do(func() { as.live.Done(ctx, reason, broker.Stats{}) })
}

// finish ends the session for good: logout, expiry, shutdown. It records
// the end once.
func (as *session) finish(ctx context.Context, reason string) {
	as.end(reason)
	s := as.s
	s.mu.Lock()
	if s.sessions[as.key] == as {
		delete(s.sessions, as.key)
	}
	s.mu.Unlock()
	as.done(ctx, reason)
}

// sweepLocked ends the sessions past their expiry (their registry timer
// ended them already; this drops them from the map and records their end).
func (s *Server) sweepLocked() {
	now := s.cfg.Now()
	for k, as := range s.sessions {
		expired := !now.Before(as.expires)
		if expired || (as.endedWhy() != "" && !strings.HasPrefix(k, "cert:")) {
			delete(s.sessions, k)
			reason := as.endedWhy()
			if reason == "" {
				reason = "the session expired"
			}
			go as.finish(context.Background(), reason)
		}
	}
	for k, c := range s.codes {
		if !now.Before(c.expires) {
			delete(s.codes, k)
		}
	}
}

func (s *Server) endWebSession(id, reason string) {
	s.mu.Lock()
	var list []*session
	for _, as := range s.sessions {
		if as.webSession == id {
			list = append(list, as)
		}
	}
	s.mu.Unlock()
	for _, as := range list {
		as.finish(context.Background(), reason)
	}
}

func hashKey(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return fmt.Sprintf("cookie:%x", sum)
}

// lookup returns the session of a request on an app's host: its app
// certificate's, or its cookie's. A session whose access ended is
// returned too (ended says why).
func (s *Server) lookup(r *http.Request, label string) (as *session, ended string, certErr error) {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		return s.certSession(r, label)
	}
	c, err := r.Cookie(AppCookie)
	if err != nil || c.Value == "" || len(c.Value) > 256 {
		return nil, "", nil
	}
	s.mu.Lock()
	as = s.sessions[hashKey(c.Value)]
	s.mu.Unlock()
	if as == nil || as.label != label {
		return nil, "", nil
	}
	if !s.cfg.Now().Before(as.expires) {
		return as, "your app session expired", nil
	}
	return as, as.endedWhy(), nil
}

// certSession returns the session of an app certificate, started on its
// first request.
func (s *Server) certSession(r *http.Request, label string) (*session, string, error) {
	cert := r.TLS.PeerCertificates[0]
	id, err := s.cfg.CA.Identify(cert)
	if err != nil {
		return nil, "", fmt.Errorf("your certificate is not valid here (%v): run tsh apps login", err)
	}
	if id.Kind != ca.KindApp || id.App != label {
		return nil, "", fmt.Errorf("this is the address of app %s; your %s certificate is not for it: run tsh apps login %s", label, id.Kind, label)
	}
	key := "cert:" + cert.SerialNumber.String()
	s.mu.Lock()
	as := s.sessions[key]
	s.mu.Unlock()
	if as != nil {
		return as, as.endedWhy(), nil
	}
	u, err := s.cfg.Users.Get(r.Context(), id.Name)
	if err != nil {
		return nil, "", fmt.Errorf("the fleet user %q no longer exists", id.Name)
	}
	app, device, _ := apps.ParseLabel(label)
	as, err = s.start(r.Context(), u, app, device, r.RemoteAddr, key, "", id.Expires, r.Method+" "+r.URL.Path)
	if err != nil {
		return nil, "", err
	}
	return as, "", nil
}

// ServeHTTP serves a request on an app's host.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	app, device, ok := s.cfg.Addr.Parse(r.Host)
	if !ok {
		http.NotFound(w, r)
		return
	}
	label, _ := apps.Label(app, device)
	switch {
	case r.URL.Path == PathAuth:
		s.exchange(w, r, label)
		return
	case r.URL.Path == PathLogout:
		s.appLogout(w, r, label)
		return
	case strings.HasPrefix(r.URL.Path, pathStatic):
		login.StaticHandler(pathStatic).ServeHTTP(w, r)
		return
	}
	as, ended, certErr := s.lookup(r, label)
	switch {
	case certErr != nil:
		var ref *broker.Refusal
		if errors.As(certErr, &ref) {
			s.refuse(w, r, label, ref)
			return
		}
		plain(w, http.StatusUnauthorized, certErr.Error())
		return
	case as != nil && ended != "" && as.key[:5] == "cert:":
		plain(w, http.StatusUnauthorized, fmt.Sprintf("your access to %s ended: %s; run tsh apps login %s", label, ended, label))
		return
	case as == nil || ended != "":
		s.toLaunch(w, r, label, ended)
		return
	}
	s.serve(w, r, as)
}

// plain answers with a one-line text message (for clients that are no
// browser: tsh proxy app, curl, scripts).
func plain(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintln(w, msg)
}

// browser reports whether a request is a browser's page load, which may
// be redirected to the login; other requests (fetch, XHR, scripts) get
// 401.
func browser(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if m := r.Header.Get("Sec-Fetch-Mode"); m != "" {
		return m == "navigate"
	}
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

// toLaunch sends a browser without a session to the fleet's launch page,
// which comes back here with a code.
func (s *Server) toLaunch(w http.ResponseWriter, r *http.Request, label, ended string) {
	if !browser(r) {
		msg := "open " + s.origin(label) + " in a browser to log in, or use tsh proxy app " + label
		if ended != "" {
			msg = "your app session ended (" + ended + "): " + msg
		}
		plain(w, http.StatusUnauthorized, msg)
		return
	}
	q := url.Values{"app": {label}, "path": {r.URL.RequestURI()}}
	login.SecurityHeaders(w.Header())
	http.Redirect(w, r, s.cfg.Addr.FleetOrigin()+PathLaunch+"?"+q.Encode(), http.StatusFound)
}

func (s *Server) origin(label string) string {
	app, device, _ := apps.ParseLabel(label)
	o, _ := s.cfg.Addr.Origin(app, device)
	return o
}
