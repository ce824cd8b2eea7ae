package httpapi

import (
	"net/http"
	"slices"
	"sort"
	"strings"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/kubesrv"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/kubewire"
)

// kubeRoutes mounts Kubernetes access (see proto/api/kube.go): GET /v1/kube
// lists the clusters the user may reach, and /v1/kube/NAME/... is NAME's
// Kubernetes API, forwarded by s.Kube after the checks here.
func (s *Server) kubeRoutes(mux *http.ServeMux) {
	mux.Handle("GET "+api.PathKube, s.authed(s.listKube))
	mux.HandleFunc(api.PathKube+"/", s.kubeProxy)
}

// listKube answers GET /v1/kube: the devices offering Kubernetes, and the
// fleet's own cluster, where the user's roles give Kubernetes users or
// groups.
func (s *Server) listKube(w http.ResponseWriter, r *http.Request, c *caller) {
	out := []api.KubeCluster{}
	if c.checker == nil || s.Kube == nil {
		writeJSON(w, http.StatusOK, out)
		return
	}
	if l := s.Kube.Local(); l != nil {
		if users, groups, err := c.checker.CheckKube(l.Name, l.Labels, c.user.Name); err == nil {
			out = append(out, api.KubeCluster{Name: l.Name, Labels: l.Labels, Online: true, Local: true, Users: users, Groups: groups})
		}
	}
	all, err := s.Devices.List(r.Context())
	if err != nil {
		s.storeError(w, "list devices", err)
		return
	}
	for _, d := range all {
		if !slices.Contains(d.Services, proto.ServiceKube) {
			continue
		}
		users, groups, err := c.checker.CheckKube(d.Name, d.Labels, c.user.Name)
		if err != nil {
			continue
		}
		out = append(out, api.KubeCluster{Name: d.Name, Labels: d.Labels, Online: s.Tunnels.Online(d.ID), Users: users, Groups: groups})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, out)
}

// kubeProxy serves /v1/kube/NAME/...: it authenticates the user's
// certificate, checks their roles for NAME's cluster and what the request
// may act as, and hands it to s.Kube. Its refusals are Kubernetes Status
// objects, which kubectl prints.
func (s *Server) kubeProxy(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.Path, api.PathKube+"/")
	name, _, _ := strings.Cut(rest, "/")
	// out is the request as the cluster sees it: its API path.
	out := r.Clone(r.Context())
	prefix := api.PathKube + "/" + name
	out.URL.Path = strings.TrimPrefix(r.URL.Path, prefix)
	out.URL.RawPath = ""
	if r.URL.RawPath != "" && strings.HasPrefix(r.URL.RawPath, prefix) {
		out.URL.RawPath = strings.TrimPrefix(r.URL.RawPath, prefix)
	}
	if out.URL.Path == "" {
		out.URL.Path = "/"
	}
	log := s.audit().With("device", name, "service", proto.ServiceKube, "method", r.Method, "path", out.URL.Path, "remote", r.RemoteAddr)
	if s.Kube == nil {
		kubewire.WriteStatus(w, out, http.StatusNotFound, "this fleet does not offer Kubernetes access")
		return
	}
	c, err := s.identify(r)
	if err != nil {
		log.Warn("request refused", "event", "auth.denied", "reason", err.Error())
		s.record(r.Context(), &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Addr: r.RemoteAddr, Message: err.Error(),
			Fields: map[string]string{"device_name": name, "service": proto.ServiceKube, "action": out.Method + " " + out.URL.Path, "rule": "certificate"}})
		kubewire.WriteStatus(w, out, http.StatusUnauthorized, err.Error())
		return
	}
	info := kubewire.ParseRequest(out.Method, out.URL)
	f := map[string]string{"verb": info.Verb, "resource": info.Resource, "namespace": info.Namespace, "name": info.Name}
	for k, v := range f {
		if v == "" {
			delete(f, k)
		}
	}
	ask := broker.Ask{Service: proto.ServiceKube, User: c.user, Checker: c.checker, Device: name, ClientAddr: r.RemoteAddr,
		Expires: c.id.Expires, Action: out.Method + " " + out.URL.Path, Fields: f}
	if c.checker == nil {
		ask.User.Name = c.name()
	}
	if c.remoteAdmin() {
		kubewire.WriteStatus(w, out, http.StatusForbidden, "a root cluster's admin identity reaches no Kubernetes cluster here")
		return
	}
	c.fill(&ask)
	b := s.broker()
	g, err := b.Authorize(r.Context(), ask)
	if err != nil {
		ref := err.(*broker.Refusal)
		code := http.StatusForbidden // a cluster that does not exist too, as kubectl expects
		if ref.Status == broker.StatusUnauthorized {
			code = http.StatusUnauthorized
		}
		kubewire.WriteStatus(w, out, code, ref.Msg)
		return
	}
	user, groups, err := kubesrv.Resolve(c.user.Name, g.KubeUsers, g.KubeGroups, r.Header)
	if err != nil {
		ref := &broker.Refusal{Status: broker.StatusForbidden, Msg: err.Error(), Fields: map[string]string{"rule": "impersonation"}}
		b.Deny(r.Context(), ask, ref)
		kubewire.WriteStatus(w, out, http.StatusForbidden, ref.Msg)
		return
	}
	g.Session.KubeUser, g.Session.KubeGroups = user, groups
	releaseBody(r) // an allowed request's body streams to the cluster at its pace
	s.Kube.Serve(w, out, g)
}
