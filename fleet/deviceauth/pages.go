package deviceauth

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"remoteler.dev/edge/fleet/sso"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/web/page"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// approval is a verification page shown to a logged-in user: the token its
// form carries, and what it approves. It is kept under approvalPrefix +
// the SHA-256 of the approvalCookie's value, and used once.
type approval struct {
	User     string    `json:"user"`
	Method   string    `json:"method"`
	UserCode string    `json:"user_code"`
	CSRF     string    `json:"csrf"`
	Expires  time.Time `json:"expires"`
}

var verifyTmpl = template.Must(template.New("verify").Parse(`<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Approve a headless login · {{.Fleet}}</title></head>
<body>
<main>
<h1>Approve a headless login</h1>
<p>Someone ran <code>tsh login --headless</code> and was given a code. If it was you, enter that code and log in to the fleet to approve it.</p>
{{if .Error}}<p id="error">{{.Error}}</p>{{end}}
{{if .User}}<form method="get" action="{{.Path}}">
<label for="user_code">Code</label> <input id="user_code" name="user_code" value="{{.Code}}" autocomplete="off" autofocus required>
<button id="continue" type="submit">Continue as {{.User}}</button>
</form>
{{else}}<form method="post" action="{{.Path}}/login">
<input type="hidden" name="csrf" value="{{.CSRF}}">
<label for="user_code">Code</label> <input id="user_code" name="user_code" value="{{.Code}}" autocomplete="off" required>
{{range .Connectors}}<button type="submit" name="connector" value="{{.Name}}" id="sso-{{.Name}}">Log in with {{.Display}}</button>
{{end}}</form>
{{if .LoginURL}}<p><a id="login" href="{{.LoginURL}}">Log in to the fleet</a></p>{{end}}
{{if and (not .Connectors) (not .LoginURL)}}<p>This fleet has no way to log in from a browser yet: ask your fleet admin to add a single sign-on connector.</p>{{end}}
{{end}}</main>
</body>
</html>
`))

var confirmTmpl = template.Must(template.New("confirm").Parse(`<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Approve a headless login · {{.Fleet}}</title></head>
<body>
<main>
<h1>Approve this login?</h1>
<p>Only approve if <strong>you</strong> just ran <code>tsh login --headless</code> and your terminal shows this code:</p>
<p id="code" class="code">{{.Code}}</p>
<dl>
<dt>Certificates for</dt><dd id="user">{{.User}} (roles: {{.Roles}})</dd>
<dt>Asked by</dt><dd id="host">{{if .Host}}{{.Host}} at {{end}}{{.Addr}}, {{.Ago}} ago</dd>
<dt>Lifetime asked</dt><dd>{{.TTL}} (your roles may cap it)</dd>
</dl>
<form method="post" action="{{.Path}}/decide">
<input type="hidden" name="csrf" value="{{.CSRF}}">
<button id="approve" type="submit" name="decision" value="approve">Approve</button>
<button id="deny" type="submit" name="decision" value="deny">Deny</button>
</form>
</main>
</body>
</html>
`))

type verifyView struct {
	Fleet, Path, Code, Error, CSRF, User, LoginURL string
	Connectors                                     []api.SSOConnector
}

// verifyPage answers GET /web/device: the code form, or, for a browser
// whose user is logged in and a good code, the approval page at once.
func (s *Server) verifyPage(w http.ResponseWriter, r *http.Request) {
	code, valid := NormalizeUserCode(r.URL.Query().Get("user_code"))
	v := verifyView{Fleet: s.cfg.Cluster, Path: api.PathDeviceVerify, Code: code}
	if !valid {
		v.Code = strings.TrimSpace(r.URL.Query().Get("user_code"))
		if v.Code != "" {
			v.Error = "That is not a code tsh shows (8 letters, like BCDF-GHJK); check it and try again."
		}
	}
	if s.cfg.Browser != nil {
		if user, method, ok := s.cfg.Browser.User(r); ok {
			if valid {
				s.confirm(w, r, code, user, method)
				return
			}
			v.User = user
			s.render(w, http.StatusOK, verifyTmpl, v)
			return
		}
		v.LoginURL = s.cfg.Browser.LoginURL(api.PathDeviceVerify + "?user_code=" + url.QueryEscape(code))
	}
	s.codeForm(w, r, http.StatusOK, v)
}

// codeForm renders the code form with the connectors to log in with and a
// fresh CSRF cookie.
func (s *Server) codeForm(w http.ResponseWriter, r *http.Request, status int, v verifyView) {
	if s.cfg.SSO != nil {
		conns, err := s.cfg.SSO.Public(r.Context())
		if err != nil {
			s.log.Error("list connectors", "err", err)
		}
		v.Connectors = conns
	}
	v.CSRF = rand.Text()
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: v.CSRF, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: 3600})
	s.render(w, status, verifyTmpl, v)
}

func (s *Server) render(w http.ResponseWriter, status int, t *template.Template, data any) {
	var targets []string
	if s.cfg.SSO != nil {
		// The login form's POST is answered with a redirect to the
		// provider, which form-action must allow.
		targets = s.cfg.SSO.Origins(context.Background())
	}
	page.Render(w, status, t, data, s.log, targets...)
}

// message renders a message page that leads back to the code form.
func (s *Server) message(w http.ResponseWriter, status int, title, msg, code string) {
	link := api.PathDeviceVerify
	if code != "" {
		link += "?user_code=" + url.QueryEscape(code)
	}
	page.Message(w, status, page.Text{Title: title, Message: msg, Link: link, LinkText: "Start again"})
}

// ssoData is what a headless approval's single sign-on login carries.
type ssoData struct {
	UserCode string `json:"user_code"`
}

// startLogin answers the code form: it logs the browser in through the
// chosen connector, to come back to the approval of the code.
func (s *Server) startLogin(w http.ResponseWriter, r *http.Request) {
	if err := parseForm(w, r); err != nil || !page.SameOrigin(r, s.cfg.PublicURL) || !s.formCSRF(r) {
		s.message(w, http.StatusForbidden, "Start again", "The form expired or did not come from this fleet's page.", "")
		return
	}
	code, valid := NormalizeUserCode(r.PostForm.Get("user_code"))
	if !valid || s.cfg.SSO == nil {
		s.codeForm(w, r, http.StatusBadRequest, verifyView{Fleet: s.cfg.Cluster, Path: api.PathDeviceVerify, Code: r.PostForm.Get("user_code"),
			Error: "That is not a code tsh shows (8 letters, like BCDF-GHJK); check it and try again."})
		return
	}
	data, _ := json.Marshal(ssoData{UserCode: code})
	err := s.cfg.SSO.StartBrowser(w, r, sso.StartRequest{Connector: r.PostForm.Get("connector"), Kind: Kind, Data: data, ClientAddr: r.RemoteAddr})
	if err != nil {
		msg := "The fleet could not start the login: " + err.Error()
		if errors.Is(err, sso.ErrNotFound) {
			msg = "There is no such single sign-on connector; pick one of the buttons."
		}
		s.codeForm(w, r, http.StatusBadRequest, verifyView{Fleet: s.cfg.Cluster, Path: api.PathDeviceVerify, Code: code, Error: msg})
	}
}

// formCSRF checks the code form's CSRF token against its cookie.
func (s *Server) formCSRF(r *http.Request) bool {
	c, err := r.Cookie(csrfCookie)
	got := r.PostForm.Get("csrf")
	return err == nil && c.Value != "" && subtle.ConstantTimeCompare([]byte(c.Value), []byte(got)) == 1
}

// finishSSO ends the single sign-on login of an approval: on success, the
// approval page.
func (s *Server) finishSSO(w http.ResponseWriter, r *http.Request, res *sso.Result, err error) {
	var d ssoData
	json.Unmarshal(res.Data, &d)
	if err != nil {
		s.message(w, http.StatusForbidden, "Login refused", err.Error(), d.UserCode)
		return
	}
	s.confirm(w, r, d.UserCode, res.User, "sso:"+res.Connector)
}

// confirm renders the approval page of code for user, bound to this
// browser by a cookie.
func (s *Server) confirm(w http.ResponseWriter, r *http.Request, code, user, method string) {
	ctx := r.Context()
	_, g, _, err := s.grantByCode(ctx, code)
	now := s.cfg.Now()
	switch {
	case errors.Is(err, errNoGrant), err == nil && (g.State != statePending || !now.Before(g.Expires)):
		s.message(w, http.StatusNotFound, "Unknown code", "The code "+code+" is unknown, was already used or has expired: run tsh login --headless again and use the code it shows.", "")
		return
	case err != nil:
		s.log.Error("approval page", "err", err)
		s.message(w, http.StatusInternalServerError, "Try again", "The fleet could not read the login; try again.", code)
		return
	}
	u, err := s.cfg.Users.Get(ctx, user)
	if err != nil {
		s.message(w, http.StatusForbidden, "Not a fleet user", "You are not a user of this fleet (any more); ask your fleet admin.", code)
		return
	}
	if s.refused(w, r, u, code) {
		return
	}
	a := approval{User: user, Method: method, UserCode: code, CSRF: rand.Text(), Expires: now.Add(DefaultApprovalTTL).UTC()}
	b, _ := json.Marshal(a)
	id := rand.Text() + rand.Text()
	if err := s.cfg.Store.Create(ctx, approvalPrefix+hashHex(id), b); err != nil {
		s.log.Error("approval page", "err", err)
		s.message(w, http.StatusInternalServerError, "Try again", "The fleet could not store the approval; try again.", code)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: approvalCookie, Value: id, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode,
		MaxAge: int(DefaultApprovalTTL / time.Second)})
	ttl := "the fleet's default"
	if g.TTL > 0 {
		ttl = g.TTL.String()
	}
	roles := strings.Join(u.Roles, ", ")
	if roles == "" {
		roles = "none"
	}
	s.render(w, http.StatusOK, confirmTmpl, map[string]any{
		"Fleet": s.cfg.Cluster, "Path": api.PathDeviceVerify, "Code": code, "User": user, "Roles": roles,
		"Host": g.Host, "Addr": g.ClientAddr, "Ago": now.Sub(g.Created).Round(time.Second).String(), "TTL": ttl, "CSRF": a.CSRF,
	})
}

// decide answers the approval page's Approve or Deny.
func (s *Server) decide(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	forbidden := func() {
		s.message(w, http.StatusForbidden, "Start again", "This approval expired, was already used, or did not come from this fleet's page in this browser.", "")
	}
	c, cerr := r.Cookie(approvalCookie)
	if err := parseForm(w, r); err != nil || cerr != nil || !page.SameOrigin(r, s.cfg.PublicURL) {
		forbidden()
		return
	}
	http.SetCookie(w, &http.Cookie{Name: approvalCookie, Value: "", Path: "/", Secure: true, HttpOnly: true, MaxAge: -1})
	key := approvalPrefix + hashHex(c.Value)
	b, err := s.cfg.Store.Get(ctx, key)
	if err == nil {
		err = s.cfg.Store.Delete(ctx, key) // used once
	}
	var a approval
	if err != nil || json.Unmarshal(b, &a) != nil || !s.cfg.Now().Before(a.Expires) ||
		subtle.ConstantTimeCompare([]byte(a.CSRF), []byte(r.PostForm.Get("csrf"))) != 1 {
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Error("approval", "err", err)
		}
		forbidden()
		return
	}
	approve := r.PostForm.Get("decision") == "approve"
	_, g, _, err := s.grantByCode(ctx, a.UserCode)
	if err == nil && (g.State != statePending || !s.cfg.Now().Before(g.Expires)) {
		err = errNoGrant
	}
	if errors.Is(err, errNoGrant) {
		s.message(w, http.StatusNotFound, "Unknown code", "The code "+a.UserCode+" is unknown, was already used or has expired: run tsh login --headless again.", "")
		return
	}
	if err != nil {
		s.log.Error("approval", "err", err)
		s.message(w, http.StatusInternalServerError, "Try again", "The fleet could not read the login; try again.", a.UserCode)
		return
	}
	if approve {
		u, err := s.cfg.Users.Get(ctx, a.User)
		if err != nil {
			s.message(w, http.StatusForbidden, "Not a fleet user", "You are not a user of this fleet (any more); ask your fleet admin.", "")
			return
		}
		if s.refused(w, r, u, a.UserCode) {
			return
		}
	}
	// The decision is recorded before it takes effect: no approval
	// without its event.
	ev := &proto.AuditEvent{Type: proto.EventHeadlessDenied, Outcome: proto.OutcomeDenied, User: a.User, Addr: r.RemoteAddr,
		Fields: map[string]string{"user_code": a.UserCode, "method": a.Method, "client": g.ClientAddr, "host": g.Host}}
	if approve {
		ev.Type, ev.Outcome = proto.EventHeadlessApproved, proto.OutcomeSuccess
	}
	if err := s.record(ctx, ev); err != nil {
		s.log.Error("audit event not recorded", "type", ev.Type, "err", err)
		if approve {
			s.message(w, http.StatusServiceUnavailable, "Not approved", "The fleet cannot write its audit log right now, so it approved nothing; try again later.", a.UserCode)
			return
		}
	}
	if _, err := s.decideGrant(ctx, a.UserCode, a.User, a.Method, approve); err != nil {
		// Expired or taken between the read and the write, or the store
		// failed: say so in the trail too.
		s.log.Warn("headless login decision not applied", "user_code", a.UserCode, "err", err)
		undone := *ev
		undone.Outcome, undone.Message = proto.OutcomeFailure, "the decision was not applied: "+err.Error()
		s.record(ctx, &undone)
		if errors.Is(err, errNoGrant) {
			s.message(w, http.StatusNotFound, "Unknown code", "The code "+a.UserCode+" expired or was used meanwhile: run tsh login --headless again.", "")
		} else {
			s.message(w, http.StatusInternalServerError, "Try again", "The fleet could not record your decision; try again.", a.UserCode)
		}
		return
	}
	s.log.Info("headless login decided", "user", a.User, "user_code", a.UserCode, "approved", approve)
	if approve {
		page.Message(w, http.StatusOK, page.Text{Title: "Approved", Message: "Approved: go back to your terminal, where tsh now has your certificates."})
		return
	}
	page.Message(w, http.StatusOK, page.Text{Title: "Denied", Message: "Denied: the terminal that asked gets no certificates."})
}
