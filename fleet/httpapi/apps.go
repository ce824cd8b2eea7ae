package httpapi

import (
	"errors"
	"fmt"
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
//
// With ?cluster=LEAF, the apps of a leaf cluster that the leaf's roles
// allow, with their addresses here (leafApps).
func (s *Server) listApps(w http.ResponseWriter, r *http.Request, c *caller) {
	if leaf := r.URL.Query().Get(api.PathAppsCluster); leaf != "" {
		list, ok := s.leafApps(w, r, c, leaf)
		if ok {
			writeJSON(w, http.StatusOK, list)
		}
		return
	}
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
	if req.Cluster != "" {
		s.leafAppLogin(w, r, c, &req)
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
	s.signApp(w, r, c, &req, a)
}

// signApp answers an app login with a certificate for app a.
func (s *Server) signApp(w http.ResponseWriter, r *http.Request, c *caller, req *api.AppLoginRequest, a api.App) {
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
	f := map[string]string{"kind": "app", "app": a.Label, "expires": expires.Format(time.RFC3339)}
	if a.Cluster != "" {
		f["cluster"] = a.Cluster
	}
	if s.record(r.Context(), &proto.AuditEvent{Type: proto.EventCertIssued, User: c.user.Name, Addr: r.RemoteAddr, Fields: f}) != nil {
		errAuditDown(w)
		return
	}
	host := ""
	if d := s.Apps.Addr.Domain; d != "" {
		host = a.Label + "." + d
	}
	writeJSON(w, http.StatusOK, api.AppLoginResponse{App: a, Cert: der, CACerts: derCerts(s.CA.CACerts()), Expires: expires, PublicHost: host})
}

// leafApps lists the apps of the leaf cluster called leaf that its roles
// allow the caller (the leaf answers its own GET /v1/apps, as the caller),
// with their labels and addresses here: APP---LEAF--DEVICE. Refusals are
// answered.
func (s *Server) leafApps(w http.ResponseWriter, r *http.Request, c *caller, leaf string) ([]api.App, bool) {
	if c.checker == nil || c.remote != nil {
		writeError(w, http.StatusForbidden, api.CodeForbidden, "only this fleet's users reach a leaf cluster's apps: run tsh login")
		return nil, false
	}
	rel, conn, ok := s.openRelay(r.Context(), r, c, leaf, "GET apps", func(ref *broker.Refusal) {
		status, code := refusalStatus(ref.Status)
		writeError(w, status, code, ref.Msg)
	})
	if !ok {
		return nil, false
	}
	var list []api.App
	err := askLeaf(r.Context(), conn, leaf, api.PathApps, &list)
	conn.Close()
	rel.sess.DoneSilently("")
	if err != nil {
		writeLeafError(w, leaf, err)
		return nil, false
	}
	out := make([]api.App, 0, len(list))
	for _, a := range list {
		ref := apps.Ref{Cluster: leaf, App: a.Name, Device: a.Device}
		a.Cluster, a.URI, a.InsecureSkipVerify, a.PublicAddr = leaf, "", false, ""
		label, err := ref.Label()
		if err != nil {
			continue // no address here: nothing reaches it
		}
		a.Label = label
		if s.Apps.Addr.Domain != "" {
			a.PublicAddr, _ = s.Apps.Addr.OriginOf(ref)
		}
		out = append(out, a)
	}
	return out, true
}

// leafAppLogin answers an app login for a leaf cluster's app: the leaf
// must list it for the caller (its roles allow it); it decides again, and
// records, when the certificate's session starts.
func (s *Server) leafAppLogin(w http.ResponseWriter, r *http.Request, c *caller, req *api.AppLoginRequest) {
	list, ok := s.leafApps(w, r, c, req.Cluster)
	if !ok {
		return
	}
	a, err := apps.Find(list, req.App)
	if err != nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("the leaf cluster %q: %v", req.Cluster, err))
		return
	}
	s.signApp(w, r, c, req, a)
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
