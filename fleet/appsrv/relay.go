package appsrv

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/web/login"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Trusted clusters: a root fleet's users reach a leaf's apps at the
// root's address for them, https://APP---LEAF--DEVICE.DOMAIN (fleet/apps).
// The root logs the user in and keeps the browser's app session as for
// its own apps, but relays each request down the leaf's tunnel (streams of
// service "cluster" with target "app"), with Host naming the leaf's own
// label (APP--DEVICE) and api.HeaderAppSession naming the root's app
// session. The leaf serves them here (ServeRelayed): it keeps one app
// session of its own per root session and app, decided with its roles
// (the trust's role_map), recorded in its trail (session start and end,
// every request, refusals) and registered as live, so that its own access
// rules end it; the root ends it by its ID (proto.SessionEnd) when its own
// session ends. When the leaf ends it, its answers say so
// (api.HeaderAppEnded) and the root ends its session too.

// remoteKey is the key of a root's user's app session on this fleet.
func remoteKey(root, rootSession, user, label string) string {
	return "remote:" + root + " " + rootSession + " " + user + " " + label
}

// ServeRelayed serves a request a trusted root relayed to one of this
// fleet's apps (the leaf's side; Config.Remote identifies the user).
func (s *Server) ServeRelayed(w http.ResponseWriter, r *http.Request) {
	ref, ok := apps.ParseRef(strings.ToLower(r.Host))
	rid := r.Header.Get(api.HeaderAppSession)
	if !ok || ref.Cluster != "" || s.cfg.Remote == nil {
		plain(w, http.StatusNotFound, "this fleet has no app "+r.Host)
		return
	}
	if rid == "" || len(rid) > 64 || strings.ContainsAny(rid, " \t") {
		plain(w, http.StatusBadRequest, "a relayed app request names no app session")
		return
	}
	label, _ := ref.Label()
	rm, err := s.cfg.Remote(r)
	if err != nil {
		no := &broker.Refusal{Status: broker.StatusForbidden, Msg: err.Error(), Fields: map[string]string{"rule": "role_map"}}
		s.cfg.Broker.Deny(r.Context(), broker.Ask{Service: proto.ServiceApp, User: rm.User, Device: ref.Device, App: ref.App, Origin: rm.Root,
			ClientAddr: r.RemoteAddr, Action: r.Method + " " + r.URL.Path}, no)
		s.refuseRelayed(w, r, no)
		return
	}
	key := remoteKey(rm.Root, rid, rm.User.Name, label)
	s.mu.Lock()
	as := s.sessions[key]
	s.mu.Unlock()
	if as != nil {
		why := as.endedWhy()
		if why == "" && !s.cfg.Now().Before(as.expires) {
			why = "your app session expired"
		}
		if why != "" {
			w.Header().Set(api.HeaderAppEnded, why)
			plain(w, http.StatusUnauthorized, fmt.Sprintf("your access to %s ended: %s", label, why))
			return
		}
		s.serve(w, r, as)
		return
	}
	origin, err := publicOrigin(r.Header.Get("X-Forwarded-Host"))
	if err != nil {
		plain(w, http.StatusBadRequest, err.Error())
		return
	}
	expires := s.cfg.Now().Add(s.cfg.SessionTTL)
	if !rm.Expires.IsZero() {
		expires = earliest(rm.Expires, expires)
	}
	as, err = s.start(r.Context(), opening{user: rm.User, ref: ref, clientAddr: r.RemoteAddr, key: key, expires: expires,
		action: r.Method + " " + r.URL.Path, remote: &rm, via: rid, origin: origin})
	if err != nil {
		var ref *broker.Refusal
		if !errors.As(err, &ref) {
			ref = &broker.Refusal{Status: broker.StatusInternal, Msg: err.Error()}
		}
		s.refuseRelayed(w, r, ref)
		return
	}
	s.serve(w, r, as)
}

// publicOrigin is the origin of the app at the root, from the
// X-Forwarded-Host the root set.
func publicOrigin(host string) (string, error) {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	if h == "" || len(host) > 255 || strings.ContainsAny(host, "/?#@\\ \t\r\n,") {
		return "", fmt.Errorf("a relayed app request must name its public host (X-Forwarded-Host), not %q", host)
	}
	return "https://" + strings.ToLower(host), nil
}

// refuseRelayed tells a root's user (a browser: a page; else a line) why
// this fleet refused them an app.
func (s *Server) refuseRelayed(w http.ResponseWriter, r *http.Request, ref *broker.Refusal) {
	status, title := refusalStatus(ref)
	if !browser(r) {
		plain(w, status, ref.Msg)
		return
	}
	s.cfg.Login.Page(w, status, nil, login.Page{Static: pathStatic, Title: title, Message: ref.Msg,
		Details: []string{"The cluster that runs this app decides who may open it, with its own roles (app_labels) and its role_map for your cluster's roles; ask its admin if you need it."}})
}
