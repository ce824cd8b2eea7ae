package appsrv

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/web/login"
	"remoteler.dev/edge/fleet/web/page"
)

// code is a one-time code that carries a browser from the fleet's host
// (launch) to an app's (exchange).
type code struct {
	user       string
	webSession string
	webExpires time.Time
	label      string
	path       string
	expires    time.Time
}

// codeLife is how long a code may wait to be exchanged.
const codeLife = time.Minute

// maxLaunches in launchWindow for one fleet session and app mean the
// browser does not keep the app's cookie: say so instead of looping.
const (
	maxLaunches  = 4
	launchWindow = 30 * time.Second
)

// localPath returns p when it is a path on the app's host, else "/".
func localPath(p string) string {
	if p == "" || p[0] != '/' || strings.HasPrefix(p, "//") || strings.ContainsAny(p, "\\\r\n\t\x00") || len(p) > 8192 {
		return "/"
	}
	if u, err := url.Parse(p); err != nil || u.Scheme != "" || u.Host != "" {
		return "/"
	}
	return p
}

// launch answers GET /web/apps/launch?app=LABEL&path=P on the fleet's
// host: through the login, the user's roles for the app, and back to the
// app's host with a one-time code.
func (s *Server) launch(w http.ResponseWriter, r *http.Request) {
	lg := s.cfg.Login
	ws, ok := lg.Session(r)
	if !ok {
		lg.RedirectToLogin(w, r, r.URL.RequestURI())
		return
	}
	label := r.URL.Query().Get("app")
	ref, ok := apps.ParseRef(label)
	if !ok {
		lg.Page(w, http.StatusNotFound, ws, login.Page{Title: "No such app", Message: "The address names no app of this fleet.", Link: PathApps, LinkText: "Your apps"})
		return
	}
	user, err := s.cfg.Users.Get(r.Context(), ws.User)
	if err != nil {
		lg.RedirectToLogin(w, r, r.URL.RequestURI())
		return
	}
	// The decision is made now, on the fleet's host, so that a refusal is
	// a page here and not a redirect back to the app. A leaf's app is the
	// leaf's to decide, at the app session's first request: here the leaf
	// must be one this fleet reaches.
	checker, err := s.cfg.Roles.NewCheckerFor(r.Context(), user.Roles, user.Traits)
	if err == nil {
		_, err = s.cfg.Broker.Authorize(r.Context(), ask(user, checker, ref, r.RemoteAddr, ws.Expires, "launch"))
	}
	if err != nil {
		s.refusalPage(w, ws, label, err)
		return
	}
	now := s.cfg.Now()
	key := ws.ID + " " + label
	s.mu.Lock()
	recent := s.launches[key][:0]
	for _, t := range s.launches[key] {
		if now.Sub(t) < launchWindow {
			recent = append(recent, t)
		}
	}
	s.launches[key] = append(recent, now)
	looping := len(recent) >= maxLaunches
	c := rand.Text()
	if !looping {
		s.sweepLocked()
		s.codes[c] = &code{user: user.Name, webSession: ws.ID, webExpires: ws.Expires, label: label,
			path: localPath(r.URL.Query().Get("path")), expires: now.Add(codeLife)}
	}
	s.mu.Unlock()
	origin, _ := s.cfg.Addr.OriginOf(ref)
	if looping {
		host := strings.TrimPrefix(origin, "https://")
		lg.Page(w, http.StatusConflict, ws, login.Page{Title: "Your browser did not keep the app's session",
			Message: fmt.Sprintf("You were sent to %s several times, and each time your browser came back without the session cookie it was given.", label),
			Details: []string{fmt.Sprintf("Allow cookies for %s (they stay on that host: no other site or app sees them), then open the app again.", host)},
			Link:    origin + "/", LinkText: "Open " + label})
		return
	}
	login.SecurityHeaders(w.Header())
	http.Redirect(w, r, origin+PathAuth+"?code="+url.QueryEscape(c), http.StatusSeeOther)
}

// refusalStatus is the HTTP status and page title of a refusal to open an
// app.
func refusalStatus(ref *broker.Refusal) (int, string) {
	switch ref.Status {
	case broker.StatusNotFound:
		return http.StatusNotFound, "No such app"
	case broker.StatusUnauthorized:
		return http.StatusUnauthorized, "You may not open this app"
	case broker.StatusOffline, broker.StatusNoAnswer, broker.StatusUnavailable:
		return http.StatusServiceUnavailable, "The app cannot be reached"
	}
	return http.StatusForbidden, "You may not open this app"
}

// refusalPage tells a user why they may not open an app.
func (s *Server) refusalPage(w http.ResponseWriter, ws *login.Session, label string, err error) {
	status, title := http.StatusForbidden, "You may not open this app"
	msg := err.Error()
	var ref *broker.Refusal
	if errors.As(err, &ref) {
		status, title = refusalStatus(ref)
	}
	s.cfg.Login.Page(w, status, ws, login.Page{Title: title, Message: msg,
		Details: []string{"App: " + label + ". Your roles decide which apps you may open (app_labels); ask a fleet admin if you need this one."},
		Link:    PathApps, LinkText: "Your apps"})
}

// exchange answers GET /_fleet/auth?code=C on an app's host: the code for
// an app session in a cookie on this host, and on to the page asked for.
func (s *Server) exchange(w http.ResponseWriter, r *http.Request, label string) {
	c := r.URL.Query().Get("code")
	s.mu.Lock()
	cd := s.codes[c]
	delete(s.codes, c)
	s.mu.Unlock()
	now := s.cfg.Now()
	if cd == nil || !now.Before(cd.expires) || cd.label != label {
		s.cfg.Login.Page(w, http.StatusBadRequest, nil, login.Page{Static: pathStatic, Title: "This sign-in link is spent",
			Message: "The link that brings you to the app works once, for a minute, for this app only.",
			Link:    "/", LinkText: "Open the app again"})
		return
	}
	user, err := s.cfg.Users.Get(r.Context(), cd.user)
	if err != nil {
		s.cfg.Login.Page(w, http.StatusUnauthorized, nil, login.Page{Static: pathStatic, Title: "Log in again",
			Message: fmt.Sprintf("The fleet user %q no longer exists.", cd.user)})
		return
	}
	expires := earliest(cd.webExpires, now.Add(s.cfg.SessionTTL))
	tok := rand.Text() + rand.Text()
	sk, csrf := hashKey(tok), rand.Text()
	// Kept before it starts, so that a replica that follows the store
	// never sees this session without its record.
	if err := s.keep(r.Context(), sk, appRecord{User: user.Name, App: label, WebSession: cd.webSession, Expires: expires, CSRF: csrf}); err != nil {
		s.log.Error("app session not opened", "user", user.Name, "app", label, "err", err)
		login.SecurityHeaders(w.Header())
		s.cfg.Login.Page(w, http.StatusServiceUnavailable, nil, login.Page{Static: pathStatic, Title: "Try again",
			Message: "The fleet could not keep your app session (see fleetd's log).", Link: "/", LinkText: "Open the app again"})
		return
	}
	ref, _ := apps.ParseRef(label)
	if _, err := s.start(r.Context(), opening{user: user, ref: ref, clientAddr: r.RemoteAddr, key: sk, webSession: cd.webSession,
		expires: expires, action: "open", csrf: csrf}); err != nil {
		if err := s.forget(context.WithoutCancel(r.Context()), sk); err != nil {
			// Harmless: its token was never sent, and it expires.
			s.log.Warn("an app session that did not start stays in the store until it expires", "err", err)
		}
		login.SecurityHeaders(w.Header())
		s.cfg.Login.Page(w, http.StatusForbidden, nil, login.Page{Static: pathStatic, Title: "You may not open this app", Message: err.Error()})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: AppCookie, Value: tok, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode, Expires: expires})
	login.SecurityHeaders(w.Header())
	http.Redirect(w, r, cd.path, http.StatusSeeOther)
}

// appLogout answers /_fleet/logout on an app's host: GET asks, POST (with
// the app session's CSRF token) ends the app session.
func (s *Server) appLogout(w http.ResponseWriter, r *http.Request, label string) {
	lg := s.cfg.Login
	as, ended, _ := s.lookup(r, label)
	if as == nil || ended != "" || told(as.key) {
		lg.Page(w, http.StatusOK, nil, login.Page{Static: pathStatic, Title: "Logged out", Message: "You have no session with " + label + ".",
			Link: s.cfg.Addr.FleetOrigin() + PathApps, LinkText: "Your apps"})
		return
	}
	if r.Method != http.MethodPost {
		lg.Page(w, http.StatusOK, nil, login.Page{Static: pathStatic, Title: "Log out of " + label,
			Message: "End your session with this app? Your fleet login stays.",
			Form:    &login.Form{Action: PathLogout, CSRF: as.csrf, Button: "Log out of the app"}})
		return
	}
	if err := checkAppPost(r, as); err != nil {
		lg.Page(w, http.StatusForbidden, nil, login.Page{Static: pathStatic, Title: "Not logged out", Message: err.Error()})
		return
	}
	// The record goes first: while it stands, another fleetd could take
	// the session up again.
	if err := s.forget(context.WithoutCancel(r.Context()), as.key); err != nil {
		s.log.Error("log out of an app", "user", as.user.Name, "app", label, "err", err)
		lg.Page(w, http.StatusServiceUnavailable, nil, login.Page{Static: pathStatic, Title: "Not logged out",
			Message: "The fleet could not end your app session (see fleetd's log); try again."})
		return
	}
	as.finish(r.Context(), "you logged out of the app")
	http.SetCookie(w, &http.Cookie{Name: AppCookie, Value: "", Path: "/", Secure: true, HttpOnly: true, MaxAge: -1})
	lg.Page(w, http.StatusOK, nil, login.Page{Static: pathStatic, Title: "Logged out", Message: "Your session with " + label + " ended.",
		Link: s.cfg.Addr.FleetOrigin() + PathApps, LinkText: "Your apps"})
}

// checkAppPost checks a POST to the fleet's paths on an app's host: from
// that host, with the app session's CSRF token.
func checkAppPost(r *http.Request, as *session) error {
	if !page.SameOrigin(r, as.origin) {
		return errors.New("the request did not come from this app's logout page")
	}
	r.Body = http.MaxBytesReader(nil, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil || r.PostForm.Get("csrf") != as.csrf {
		return errors.New("the logout form expired: open it again")
	}
	return nil
}

var appsTmpl = template.Must(template.New("apps").Parse(`<div class="card">
<h1>Your apps</h1>
{{if .}}<table id="apps">
<tr><th>App</th><th>Device</th><th>Labels</th><th>Address</th></tr>
{{range .}}<tr><td>{{.Name}}</td><td>{{.Device}} <span class="{{if .Online}}online{{else}}offline{{end}}">{{if .Online}}online{{else}}offline{{end}}</span></td>
<td>{{range $k, $v := .Labels}}<span class="label">{{$k}}={{$v}}</span>{{end}}</td>
<td>{{if .PublicAddr}}<a href="{{.PublicAddr}}/">{{.PublicAddr}}</a>{{else}}<span class="muted">none (the name is too long for one DNS label)</span>{{end}}</td></tr>
{{end}}</table>
{{else}}<p class="muted">No app that your roles allow (app_labels) is offered by a device.</p>{{end}}
</div>`))

// appsPage answers GET /web/apps: the apps the user may open.
func (s *Server) appsPage(w http.ResponseWriter, r *http.Request) {
	lg := s.cfg.Login
	ws, ok := lg.Session(r)
	if !ok {
		lg.RedirectToLogin(w, r, r.URL.RequestURI())
		return
	}
	user, err := s.cfg.Users.Get(r.Context(), ws.User)
	if err != nil {
		lg.RedirectToLogin(w, r, r.URL.RequestURI())
		return
	}
	checker, err := s.cfg.Roles.NewCheckerFor(r.Context(), user.Roles, user.Traits)
	if err != nil {
		lg.Page(w, http.StatusServiceUnavailable, ws, login.Page{Title: "Try again", Message: "The fleet cannot read your roles right now."})
		return
	}
	list, err := s.cfg.Catalog.List(r.Context(), checker, false)
	if err != nil {
		lg.Page(w, http.StatusServiceUnavailable, ws, login.Page{Title: "Try again", Message: "The fleet cannot list its devices right now."})
		return
	}
	var buf bytes.Buffer
	if err := appsTmpl.Execute(&buf, list); err != nil {
		s.log.Warn("render apps page", "err", err)
	}
	lg.Body(w, http.StatusOK, ws, "Apps", template.HTML(buf.String()))
}

// earliest returns the earlier of two times.
func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
