package httpapi

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"

	"remoteler.dev/edge/fleet/kubesrv"
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
		if users, groups := c.checker.KubeAccess(l.Labels); len(users)+len(groups) > 0 {
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
		users, groups := c.checker.KubeAccess(d.Labels)
		if len(users)+len(groups) == 0 {
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
		kubesrv.WriteStatus(w, out, http.StatusUnauthorized, err.Error())
		return
	}
	log = log.With("user", c.name())
	deny := func(code int, msg string) {
		log.Warn("access denied", "event", "access.denied", "reason", msg)
		kubesrv.WriteStatus(w, out, code, msg)
	}
	if c.checker == nil {
		deny(http.StatusForbidden, "only users can reach Kubernetes clusters: run tsh login")
		return
	}
	notFound := fmt.Sprintf("no Kubernetes cluster %q that you can reach: see tsh kube ls", name)
	g := kubesrv.Grant{Cluster: name, ClientAddr: r.RemoteAddr, Expires: c.id.Expires}
	var labels map[string]string
	if l := s.Kube.Local(); l != nil && l.Name == name {
		labels = l.Labels
	} else {
		dev, err := s.Devices.ByName(r.Context(), name)
		if err != nil || !c.checker.CanSeeDevice(dev.Labels) {
			deny(http.StatusForbidden, notFound)
			return
		}
		if !slices.Contains(dev.Services, proto.ServiceKube) {
			deny(http.StatusForbidden, fmt.Sprintf("device %q does not offer Kubernetes (its agent found no kubeconfig)", name))
			return
		}
		labels, g.DeviceID = dev.Labels, dev.ID
	}
	users, groups, err := c.checker.CheckKube(name, labels)
	if err != nil {
		deny(http.StatusForbidden, err.Error())
		return
	}
	user, groups, err := kubesrv.Resolve(c.user.Name, users, groups, r.Header)
	if err != nil {
		deny(http.StatusForbidden, err.Error())
		return
	}
	g.Identity = proto.Identity{
		User: c.user.Name, Roles: c.user.Roles, Cluster: s.Cluster, Expires: c.id.Expires.UnixMilli(),
		KubeUser: user, KubeGroups: groups,
	}
	releaseBody(r) // an allowed request's body streams to the cluster at its pace
	s.Kube.Serve(w, out, g)
}
