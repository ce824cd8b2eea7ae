package httpapi

import (
	"errors"
	"net/http"
	"time"

	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// appRoutes mounts the web-app endpoints (see proto/api/apps.go): the list,
// app certificates for tsh proxy app, and rotation of the key app JWTs are
// signed with. Browsers reach apps at their own addresses (fleet/appsrv).
func (s *Server) appRoutes(mux *http.ServeMux) {
	mux.Handle("GET "+api.PathApps, s.authed(s.listApps))
	mux.Handle("POST "+api.PathAppsLogin, s.authed(s.appLogin))
	mux.Handle("POST "+api.PathAppsRotateKey, s.admin(s.rotateAppKey))
}

// listApps answers GET /v1/apps: the apps the user's roles allow; every
// app, with its URI, for admins.
func (s *Server) listApps(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.Apps == nil {
		writeJSON(w, http.StatusOK, []api.App{})
		return
	}
	list, err := s.Apps.List(r.Context(), c.checker, c.isAdmin())
	if err != nil {
		s.storeError(w, "list apps", err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

// appLogin answers POST /v1/apps/login: an app certificate, valid until
// the user's own certificate expires at the latest.
func (s *Server) appLogin(w http.ResponseWriter, r *http.Request, c *caller) {
	var req api.AppLoginRequest
	if !readJSON(w, r, &req) {
		return
	}
	if c.checker == nil {
		writeError(w, http.StatusForbidden, api.CodeForbidden, "only users can open apps: run tsh login")
		return
	}
	if s.Apps == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this fleet offers no web apps")
		return
	}
	list, err := s.Apps.List(r.Context(), c.checker, false)
	if err != nil {
		s.storeError(w, "list apps", err)
		return
	}
	a, err := apps.Find(list, req.App)
	if err != nil {
		s.broker().Deny(r.Context(), broker.Ask{Service: proto.ServiceApp, User: c.user, App: req.App, ClientAddr: r.RemoteAddr, Action: "apps login"},
			&broker.Refusal{Status: broker.StatusNotFound, Msg: err.Error(), Fields: map[string]string{"rule": "no such app"}})
		writeError(w, http.StatusNotFound, api.CodeNotFound, err.Error())
		return
	}
	if _, err := s.broker().Authorize(r.Context(), broker.Ask{Service: proto.ServiceApp, Kind: "app", User: c.user, Checker: c.checker,
		Device: a.Device, App: a.Name, ClientAddr: r.RemoteAddr, Expires: c.id.Expires, Action: "apps login"}); err != nil {
		var ref *broker.Refusal
		if errors.As(err, &ref) {
			status, code := refusalStatus(ref.Status)
			writeError(w, status, code, ref.Msg)
		}
		return
	}
	ttl := c.id.Expires.Sub(s.now())
	if req.TTL > 0 && req.TTL < ttl {
		ttl = req.TTL
	}
	der, err := s.CA.SignAppX509(req.CSR, c.user.Name, a.Label, ttl)
	if err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	expires := s.now().Add(ttl).UTC()
	if s.record(r.Context(), &proto.AuditEvent{Type: proto.EventCertIssued, User: c.user.Name, Addr: r.RemoteAddr,
		Fields: map[string]string{"kind": "app", "app": a.Label, "expires": expires.Format(time.RFC3339)}}) != nil {
		errAuditDown(w)
		return
	}
	host := ""
	if d := s.Apps.Addr.Domain; d != "" {
		host = a.Label + "." + d
	}
	writeJSON(w, http.StatusOK, api.AppLoginResponse{App: a, Cert: der, CACerts: derCerts(s.CA.CACerts()), Expires: expires, PublicHost: host})
}

// rotateAppKey answers POST /v1/apps/rotate-key (admin).
func (s *Server) rotateAppKey(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.AppKeys == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this fleet offers no web apps")
		return
	}
	id, err := s.AppKeys.Rotate(r.Context())
	if err != nil {
		s.storeError(w, "rotate the app key", err)
		return
	}
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventAppKeyRotate, User: c.name(), Addr: r.RemoteAddr, Fields: map[string]string{"key": id}})
	var out api.AppKeys
	for _, k := range s.AppKeys.JWKS().Keys {
		out.Keys = append(out.Keys, k.KeyID)
	}
	writeJSON(w, http.StatusOK, out)
}
