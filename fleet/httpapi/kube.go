package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"

	"remoteler.dev/edge/fleet/kubesrv"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
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
		kubesrv.WriteStatus(w, out, http.StatusNotFound, "this fleet does not offer Kubernetes access")
		return
	}
	c, err := s.identify(r)
	if err != nil {
		log.Warn("request refused", "event", "auth.denied", "reason", err.Error())
		s.record(r.Context(), &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Addr: r.RemoteAddr, Message: err.Error(),
			Fields: map[string]string{"device_name": name, "service": proto.ServiceKube, "action": out.Method + " " + out.URL.Path, "rule": "certificate"}})
		kubesrv.WriteStatus(w, out, http.StatusUnauthorized, err.Error())
		return
	}
	log = log.With("user", c.name())
	// deny refuses the request with a Status; fields say, for the audit,
	// which rule refused.
	deny := func(code int, msg string, fields map[string]string) {
		log.Warn("access denied", "event", "access.denied", "reason", msg, "rule", fields["rule"], "role", fields["role"])
		info := kubesrv.ParseRequest(out.Method, out.URL)
		f := map[string]string{"device_name": name, "service": proto.ServiceKube, "action": out.Method + " " + out.URL.Path,
			"verb": info.Verb, "resource": info.Resource, "namespace": info.Namespace, "name": info.Name}
		for k, v := range fields {
			f[k] = v
		}
		for k, v := range f {
			if v == "" {
				delete(f, k)
			}
		}
		s.record(r.Context(), &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, User: c.name(),
			Addr: r.RemoteAddr, Message: msg, Fields: f})
		kubesrv.WriteStatus(w, out, code, msg)
	}
	if c.checker == nil {
		deny(http.StatusForbidden, "only users can reach Kubernetes clusters: run tsh login", nil)
		return
	}
	notFound := fmt.Sprintf("no Kubernetes cluster %q that you can reach: see tsh kube ls", name)
	g := kubesrv.Grant{Cluster: name, ClientAddr: r.RemoteAddr, Expires: c.id.Expires}
	var labels map[string]string
	if l := s.Kube.Local(); l != nil && l.Name == name {
		labels = l.Labels
	} else {
		dev, err := s.Devices.ByName(r.Context(), name)
		if err != nil {
			deny(http.StatusForbidden, notFound, map[string]string{"rule": "no such device"})
			return
		}
		labels, g.DeviceID = dev.Labels, dev.ID
		if c.checker.CanSeeDevice(dev.Labels) && !slices.Contains(dev.Services, proto.ServiceKube) {
			deny(http.StatusForbidden, fmt.Sprintf("device %q does not offer Kubernetes (its agent found no kubeconfig)", name), map[string]string{"rule": "no kube service"})
			return
		}
	}
	users, groups, err := c.checker.CheckKube(name, labels, c.user.Name)
	if err != nil {
		var fields map[string]string
		var ad *rbac.AccessDenied
		if errors.As(err, &ad) {
			fields = ad.AuditFields()
		}
		msg := err.Error()
		if !c.checker.CanSeeDevice(labels) {
			msg = notFound // the same answer as for a cluster that does not exist
		}
		deny(http.StatusForbidden, msg, fields)
		return
	}
	user, groups, err := kubesrv.Resolve(c.user.Name, users, groups, r.Header)
	if err != nil {
		deny(http.StatusForbidden, err.Error(), map[string]string{"rule": "impersonation"})
		return
	}
	g.Identity = proto.Identity{
		User: c.user.Name, Roles: c.user.Roles, Cluster: s.Cluster, Expires: c.id.Expires.UnixMilli(),
		KubeUser: user, KubeGroups: groups, RecordInput: c.checker.RecordInput(),
	}
	releaseBody(r) // an allowed request's body streams to the cluster at its pace
	s.Kube.Serve(w, out, g)
}
