package dashboard

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"remoteler.dev/edge/fleet/admin"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/pin"
)

// The admin pages: users, roles (YAML view and edit), join tokens. Every
// change is a POST with the session's CSRF token (checkPost), taken
// through fleet/admin, which checks, records and applies it.

// checkPost refuses a state-changing request that does not come from the
// viewer's own page.
func (s *Server) checkPost(w http.ResponseWriter, r *http.Request, v *viewer) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := s.cfg.Login.CheckPost(r, v.sess); err != nil {
		s.record(r, v, &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied,
			Message: "a form that did not come from the fleet's page (CSRF check)", Fields: map[string]string{"action": r.Method + " " + r.URL.Path}})
		s.message(w, r, v, http.StatusForbidden, "Refused", "This form did not come from this fleet's page, or it expired. Open the page again and retry.")
		return false
	}
	return true
}

func (v *viewer) actor(r *http.Request) admin.Actor {
	return admin.Actor{Name: v.user.Name, Addr: r.RemoteAddr}
}

// adminError answers a refused or failed admin action.
func (s *Server) adminError(w http.ResponseWriter, r *http.Request, v *viewer, what string, err error) {
	var ie *admin.InputError
	switch {
	case errors.As(err, &ie):
		s.message(w, r, v, http.StatusBadRequest, "Not done", what+": "+ie.Msg)
	case errors.Is(err, store.ErrNotFound):
		s.message(w, r, v, http.StatusNotFound, "Not done", what+": it does not exist (any more).")
	case errors.Is(err, store.ErrExists), errors.Is(err, store.ErrConflict):
		s.message(w, r, v, http.StatusConflict, "Not done", what+": "+err.Error())
	default:
		// Users.Add's refusals (a short password, a bad name) are plain
		// errors; say what they say.
		s.log.Warn("admin action failed", "action", what, "err", err)
		s.message(w, r, v, http.StatusBadRequest, "Not done", what+": "+err.Error())
	}
}

// usersView is the users page.
type usersView struct {
	Users []api.User
	Roles []string
	CSRF  string
	// Added is the user just added, and TOTPURL their authenticator's
	// enrolment URL (shown once).
	Added   string
	TOTPURL string
	Name    string // the form's, after a refusal
}

func (s *Server) usersPage(w http.ResponseWriter, r *http.Request, v *viewer) {
	if err := onlyKnown(r.URL.Query()); err != nil {
		s.badRequest(w, r, v, err)
		return
	}
	s.renderUsers(w, r, v, http.StatusOK, usersView{})
}

func (s *Server) renderUsers(w http.ResponseWriter, r *http.Request, v *viewer, status int, uv usersView) {
	list, err := s.cfg.Users.List(r.Context())
	if err != nil {
		s.fail(w, r, v, err)
		return
	}
	roles, err := s.cfg.Roles.List(r.Context())
	if err != nil {
		s.fail(w, r, v, err)
		return
	}
	for _, role := range roles {
		uv.Roles = append(uv.Roles, role.Metadata.Name)
	}
	slices.Sort(uv.Roles)
	uv.Users, uv.CSRF = list, v.sess.CSRF
	s.page(w, r, v, status, "Users", "users", "users", uv)
}

// addUser answers POST /web/admin/users: name, password, roles (a list),
// logins (comma-separated), totp (a checkbox).
func (s *Server) addUser(w http.ResponseWriter, r *http.Request, v *viewer) {
	if !s.checkPost(w, r, v) {
		return
	}
	f := r.PostForm
	req := api.AddUserRequest{Name: strings.TrimSpace(f.Get("name")), Password: f.Get("password"), Roles: f["roles"], TOTP: f.Get("totp") == "on"}
	for _, l := range strings.Split(f.Get("logins"), ",") {
		if l = strings.TrimSpace(l); l != "" {
			req.Logins = append(req.Logins, l)
		}
	}
	if len(req.Roles) > 64 || len(req.Logins) > 64 {
		s.badRequest(w, r, v, errors.New("too many roles or logins"))
		return
	}
	resp, err := s.cfg.Admin.AddUser(r.Context(), v.actor(r), req)
	if err != nil {
		s.adminError(w, r, v, "add user "+truncate(req.Name, 64), err)
		return
	}
	s.renderUsers(w, r, v, http.StatusCreated, usersView{Added: resp.User.Name, TOTPURL: resp.TOTPURL})
}

// deleteUser answers POST /web/admin/users/{name}/delete.
func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request, v *viewer) {
	if !s.checkPost(w, r, v) {
		return
	}
	name := r.PathValue("name")
	if err := s.cfg.Admin.DeleteUser(r.Context(), v.actor(r), name); err != nil {
		s.adminError(w, r, v, "remove user "+truncate(name, 64), err)
		return
	}
	http.Redirect(w, r, Prefix+"admin/users", http.StatusSeeOther)
}

// rolesView is the roles page; roleView a role's.
type rolesView struct {
	Roles []roleRow
}

type roleRow struct {
	Name, Description string
	URL               string
}

type roleView struct {
	Name string // "" for a new role
	YAML string
	CSRF string
	// Error is why the last save was refused; Saved says it was saved.
	Error string
	Saved bool
}

func (s *Server) rolesPage(w http.ResponseWriter, r *http.Request, v *viewer) {
	if err := onlyKnown(r.URL.Query()); err != nil {
		s.badRequest(w, r, v, err)
		return
	}
	roles, err := s.cfg.Roles.List(r.Context())
	if err != nil {
		s.fail(w, r, v, err)
		return
	}
	var rv rolesView
	for _, role := range roles {
		rv.Roles = append(rv.Roles, roleRow{Name: role.Metadata.Name, Description: role.Metadata.Description, URL: Prefix + "admin/roles/" + role.Metadata.Name})
	}
	slices.SortFunc(rv.Roles, func(a, b roleRow) int { return strings.Compare(a.Name, b.Name) })
	s.page(w, r, v, http.StatusOK, "Roles", "roles", "roles", rv)
}

// newRole is the path name of a role not yet made.
const newRole = "_new"

// newRoleYAML starts a new role's document.
const newRoleYAML = `kind: role
version: v1
metadata:
  name: NAME
  description: what this role is for
spec:
  allow:
    logins: ["{{internal.logins}}"]
    device_labels: {site: ["*"]}
  deny: {}
  options:
    max_session_ttl: 8h
`

// rolePage answers GET /web/admin/roles/{name}: the role as YAML, in an
// editor (fleetctl create's format).
func (s *Server) rolePage(w http.ResponseWriter, r *http.Request, v *viewer) {
	if err := onlyKnown(r.URL.Query(), "saved"); err != nil {
		s.badRequest(w, r, v, err)
		return
	}
	name := r.PathValue("name")
	rv := roleView{CSRF: v.sess.CSRF, Saved: r.URL.Query().Get("saved") == "1"}
	if name == newRole {
		rv.YAML = newRoleYAML
		s.page(w, r, v, http.StatusOK, "New role", "roles", "role", rv)
		return
	}
	if rbac.CheckName(name) != nil {
		s.notFound(w, r, v, "role called "+truncate(name, 64))
		return
	}
	role, err := s.cfg.Roles.Get(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		s.notFound(w, r, v, "role called "+name)
		return
	}
	if err != nil {
		s.fail(w, r, v, err)
		return
	}
	doc, err := yaml.Marshal(role)
	if err != nil {
		s.fail(w, r, v, err)
		return
	}
	rv.Name, rv.YAML = name, string(doc)
	s.page(w, r, v, http.StatusOK, "Role "+name, "roles", "role", rv)
}

// maxForm bounds a form's body.
const maxForm = 256 << 10

// maxRoleYAML bounds a role document.
const maxRoleYAML = 64 << 10

// saveRole answers POST /web/admin/roles/{name} (or _new): the edited
// YAML, checked and stored; a refused document comes back with why.
func (s *Server) saveRole(w http.ResponseWriter, r *http.Request, v *viewer) {
	if !s.checkPost(w, r, v) {
		return
	}
	name := r.PathValue("name")
	doc := r.PostForm.Get("yaml")
	rv := roleView{CSRF: v.sess.CSRF, YAML: doc}
	edit := ""
	if name != newRole {
		edit, rv.Name = name, name
	}
	if len(doc) > maxRoleYAML {
		rv.Error = "the document is larger than 64 KiB"
		s.page(w, r, v, http.StatusBadRequest, "Role", "roles", "role", rv)
		return
	}
	role, err := s.cfg.Admin.PutRoleYAML(r.Context(), v.actor(r), edit, []byte(doc))
	if err != nil {
		var ie *admin.InputError
		if !errors.As(err, &ie) {
			s.fail(w, r, v, err)
			return
		}
		rv.Error = ie.Msg
		s.page(w, r, v, http.StatusBadRequest, "Role", "roles", "role", rv)
		return
	}
	http.Redirect(w, r, Prefix+"admin/roles/"+role.Metadata.Name+"?saved=1", http.StatusSeeOther)
}

// deleteRole answers POST /web/admin/roles/{name}/delete.
func (s *Server) deleteRole(w http.ResponseWriter, r *http.Request, v *viewer) {
	if !s.checkPost(w, r, v) {
		return
	}
	name := r.PathValue("name")
	if err := s.cfg.Admin.DeleteRole(r.Context(), v.actor(r), name); err != nil {
		s.adminError(w, r, v, "remove role "+truncate(name, 64), err)
		return
	}
	http.Redirect(w, r, Prefix+"admin/roles", http.StatusSeeOther)
}

// tokensView is the join tokens page.
type tokensView struct {
	Tokens []api.Token
	CSRF   string
	// Made is the token just made: its join string and the command to run
	// on the device (shown once).
	Made    *api.Token
	Command string
	Now     time.Time
}

func (s *Server) tokensPage(w http.ResponseWriter, r *http.Request, v *viewer) {
	if err := onlyKnown(r.URL.Query()); err != nil {
		s.badRequest(w, r, v, err)
		return
	}
	s.renderTokens(w, r, v, http.StatusOK, tokensView{})
}

func (s *Server) renderTokens(w http.ResponseWriter, r *http.Request, v *viewer, status int, tv tokensView) {
	if s.cfg.Tokens == nil || s.cfg.Admin == nil {
		s.message(w, r, v, http.StatusNotFound, "No join tokens", "Join tokens are not managed here.")
		return
	}
	list, err := s.cfg.Tokens.List(r.Context())
	if err != nil {
		s.fail(w, r, v, err)
		return
	}
	tv.Tokens, tv.CSRF, tv.Now = list, v.sess.CSRF, s.cfg.Now()
	s.page(w, r, v, status, "Join tokens", "tokens", "tokens", tv)
}

// Token form bounds.
const (
	maxTokenTTL  = 30 * 24 * time.Hour
	maxTokenUses = 10000
)

// addToken answers POST /web/admin/tokens: ttl (a duration), uses, labels
// (KEY=VALUE, comma-separated).
func (s *Server) addToken(w http.ResponseWriter, r *http.Request, v *viewer) {
	if !s.checkPost(w, r, v) {
		return
	}
	f := r.PostForm
	var req api.AddTokenRequest
	if t := strings.TrimSpace(f.Get("ttl")); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d <= 0 || d > maxTokenTTL {
			s.badRequest(w, r, v, errors.New("ttl must be a duration such as 1h or 30m, at most 720h"))
			return
		}
		req.TTL = d
	}
	if u := strings.TrimSpace(f.Get("uses")); u != "" {
		n, err := strconv.Atoi(u)
		if err != nil || n < 1 || n > maxTokenUses {
			s.badRequest(w, r, v, errors.New("uses must be a number from 1 to 10000"))
			return
		}
		req.Uses = n
	}
	if l := strings.TrimSpace(f.Get("labels")); l != "" {
		_, labels, err := parseLabels(l)
		if err != nil {
			s.badRequest(w, r, v, err)
			return
		}
		for _, val := range labels {
			if val == "*" {
				s.badRequest(w, r, v, errors.New("labels: give each label a value, KEY=VALUE"))
				return
			}
		}
		req.Labels = labels
	}
	tok, err := s.cfg.Admin.AddToken(r.Context(), v.actor(r), req)
	if err != nil {
		s.adminError(w, r, v, "make a join token", err)
		return
	}
	s.renderTokens(w, r, v, http.StatusCreated, tokensView{Made: &tok, Command: pin.JoinCommand(s.cfg.FleetAddr, tok.JoinString)})
}

// deleteToken answers POST /web/admin/tokens/{id}/delete.
func (s *Server) deleteToken(w http.ResponseWriter, r *http.Request, v *viewer) {
	if !s.checkPost(w, r, v) {
		return
	}
	id := r.PathValue("id")
	if err := s.cfg.Admin.DeleteToken(r.Context(), v.actor(r), id); err != nil {
		s.adminError(w, r, v, "remove join token "+truncate(id, 64), err)
		return
	}
	http.Redirect(w, r, Prefix+"admin/tokens", http.StatusSeeOther)
}
