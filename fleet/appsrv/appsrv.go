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
// (tsh apps login), valid for that app only. A browser's app session is
// kept in the fleet's store, so that another replica, or this fleetd after
// a restart, takes it up on its next request (shared.go).
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
	"cmp"
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

	"golang.org/x/sync/singleflight"

	"remoteler.dev/edge/fleet/appjwt"
	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/store"
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
	// Store, when set, keeps browsers' app sessions, so that they outlive
	// the fleetd that started them (shared.go); nil: each lives in the
	// memory of its fleetd only.
	Store store.Store
	// Remote identifies the user behind a request a trusted root fleet
	// relayed to one of this fleet's apps (ServeRelayed): who they are
	// here, with this fleet's roles (fleet/trust). Nil: this fleet serves
	// no root's users.
	Remote func(r *http.Request) (Remote, error)
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Remote is a root fleet's user at one of this fleet's apps (trusted
// clusters). On a refusal, User.Name and Root still say who was refused.
type Remote struct {
	// User is the user as this fleet knows them (ROOT/USER), with the
	// roles the trust's role_map gives.
	User api.User
	// Root is the root fleet; RootRoles the roles it vouched for.
	Root      string
	RootRoles []string
	// Expires is when the user's certificate at the root expires; zero:
	// the app session's own TTL.
	Expires time.Time
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
	sessions map[string]*session // by cookie token hash, "cert:" + serial, or remoteKey
	codes    map[string]*code
	launches map[string][]time.Time // recent launches, by web session and app
	kept     map[string]appRecord   // the store's app sessions, by store key (Run)
	closed   bool

	takingUp singleflight.Group // app sessions being taken up from the store, by store key
	// refusedAt is when the take-up of an app session was last refused,
	// by store key: for refusedFor, it is not asked again.
	refusedAt map[string]time.Time
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
		sessions: map[string]*session{}, codes: map[string]*code{}, launches: map[string][]time.Time{}, kept: map[string]appRecord{}, refusedAt: map[string]time.Time{}}
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
	_, ok := s.cfg.Addr.ParseRef(host)
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
	// leaf is the leaf cluster whose app this is (this fleet is the
	// root): the leaf decides, proxies and records; this fleet relays.
	leaf string
	// root is the root fleet of a root's user at this fleet's app (this
	// fleet is the leaf).
	root  string
	user  api.User
	grant *broker.Grant
	live  *broker.Session
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

// opening is what an app session starts from.
type opening struct {
	user       api.User
	ref        apps.Ref
	clientAddr string
	key        string
	webSession string
	expires    time.Time
	action     string
	// csrf is the session's CSRF token; empty: a new one.
	csrf string
	// resumed: an app session started by another fleetd, taken up here
	// (shared.go); its session.start says so.
	resumed bool
	// remote is set for a root's user at this fleet's app; origin is then
	// the app's public origin at the root.
	remote *Remote
	via    string
	origin string
}

// ask is the broker's ask for an app session: of a service app on this
// fleet's device, or of a leaf's app (a stream of service cluster to the
// leaf, which decides the rest).
func ask(user api.User, checker *rbac.Checker, ref apps.Ref, clientAddr string, expires time.Time, action string) broker.Ask {
	a := broker.Ask{Service: proto.ServiceApp, Kind: "app", User: user, Checker: checker, Device: ref.Device, App: ref.App,
		ClientAddr: clientAddr, Expires: expires, Action: action}
	if ref.Cluster != "" {
		a.Service, a.Cluster = proto.ServiceCluster, ref.Cluster
	}
	return a
}

// start authorises and starts an app session for user on the app.
func (s *Server) start(ctx context.Context, o opening) (*session, error) {
	checker, err := s.cfg.Roles.NewCheckerFor(ctx, o.user.Roles, o.user.Traits)
	if err != nil {
		return nil, &broker.Refusal{Status: broker.StatusUnavailable, Msg: "the fleet cannot read your roles right now; try again"}
	}
	b := s.cfg.Broker
	a := ask(o.user, checker, o.ref, o.clientAddr, o.expires, o.action)
	if rm := o.remote; rm != nil {
		a.Origin, a.OriginRoles, a.Via = rm.Root, rm.RootRoles, o.via
		a.Fields = map[string]string{"user_cluster": rm.Root}
	}
	if o.resumed {
		a.Fields = map[string]string{"resumed": "true"}
	}
	g, err := b.Authorize(ctx, a)
	if err != nil {
		return nil, err
	}
	label, err := o.ref.Label()
	if err != nil {
		return nil, &broker.Refusal{Status: broker.StatusNotFound, Msg: err.Error()}
	}
	as := &session{s: s, key: o.key, label: label, device: o.ref.Device, user: o.user, grant: g, webSession: o.webSession,
		expires: o.expires, csrf: cmp.Or(o.csrf, rand.Text()), leaf: o.ref.Cluster}
	target := o.ref.App
	if o.ref.Cluster != "" {
		// The leaf's app, by the leaf's own label for it.
		as.app = proto.App{Name: o.ref.App}
		as.internal, _ = apps.Label(o.ref.App, o.ref.Device)
		as.origin, _ = s.cfg.Addr.OriginOf(o.ref)
		target = proto.ServiceApp
	} else {
		u, err := proto.ParseAppURI(g.App.URI)
		if err != nil {
			return nil, &broker.Refusal{Status: broker.StatusNotFound, Msg: err.Error()}
		}
		as.app, as.internal, as.origin = *g.App, u.Host, o.origin
		if as.origin == "" {
			as.origin, _ = s.cfg.Addr.OriginOf(o.ref)
		}
		if o.remote != nil {
			as.root = o.remote.Root
		}
	}
	as.ctx, as.cancel = context.WithCancel(context.Background())
	as.tr = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return b.OpenPooled(ctx, g, target)
		},
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		Proxy:               nil,
	}
	live, err := b.Start(ctx, g, broker.StartOptions{NoEvents: as.leaf != "", End: func(reason string) {
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
	s.sessions[o.key] = as
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

// done records the session's end, once. A leaf's app session is the
// leaf's to record: it is told to end it.
func (as *session) done(ctx context.Context, reason string) {
	as.doneOnce.Do(func() {
		if as.leaf == "" {
			as.live.Done(ctx, reason, broker.Stats{})
			return
		}
		as.live.DoneSilently(reason)
		if err := as.s.cfg.Broker.EndAtLeaf(as.grant, reason); err != nil {
			as.s.log.Info("could not tell the leaf cluster the app session ended", "cluster", as.leaf, "app", as.label, "err", err)
		}
	})
}

// told reports whether a session stays in the map once ended, so that its
// next request is told why: an app certificate's, and a root's user's
// (this fleet is the leaf).
func told(key string) bool {
	return strings.HasPrefix(key, "cert:") || strings.HasPrefix(key, "remote:")
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
		if expired || (as.endedWhy() != "" && !told(k)) {
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
	for k, at := range s.refusedAt {
		if now.Sub(at) >= refusedFor {
			delete(s.refusedAt, k)
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
		if err := s.forget(context.Background(), as.key); err != nil {
			// It cannot be taken up: its fleet session has ended.
			s.log.Warn("an ended app session stays in the store until it expires", "err", err)
		}
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
	sk := hashKey(c.Value)
	s.mu.Lock()
	as = s.sessions[sk]
	s.mu.Unlock()
	if as == nil {
		as = s.takeUp(r, sk, label)
	}
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
	ref, _ := apps.ParseRef(label)
	as, err = s.start(r.Context(), opening{user: u, ref: ref, clientAddr: r.RemoteAddr, key: key, expires: id.Expires, action: r.Method + " " + r.URL.Path})
	if err != nil {
		return nil, "", err
	}
	return as, "", nil
}

// ServeHTTP serves a request on an app's host.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ref, ok := s.cfg.Addr.ParseRef(r.Host)
	if !ok {
		http.NotFound(w, r)
		return
	}
	label, _ := ref.Label()
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
	ref, _ := apps.ParseRef(label)
	o, _ := s.cfg.Addr.OriginOf(ref)
	return o
}
