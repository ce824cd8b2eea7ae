package httpapi

import (
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/pin"
)

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request, c *caller) {
	list, err := s.Users.List(r.Context())
	if err != nil {
		s.storeError(w, "list users", err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) addUser(w http.ResponseWriter, r *http.Request, c *caller) {
	var req api.AddUserRequest
	if !readJSON(w, r, &req) {
		return
	}
	for _, role := range req.Roles {
		if _, err := s.Roles.Get(r.Context(), role); err != nil {
			writeError(w, http.StatusBadRequest, api.CodeBadRequest, "unknown role "+role+": see fleetctl roles ls")
			return
		}
	}
	resp, err := s.Users.Add(r.Context(), req)
	if err != nil {
		s.storeError(w, "add user", err)
		return
	}
	s.changed()
	s.audit().Info("user added", "event", "user.create", "by", c.name(), "user", req.Name, "roles", req.Roles, "logins", req.Logins)
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventUserCreate, User: c.name(), Addr: r.RemoteAddr,
		Fields: map[string]string{"target_user": req.Name, "roles": strings.Join(req.Roles, ","), "logins": strings.Join(req.Logins, ",")}})
	writeJSON(w, http.StatusCreated, resp)
}

func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request, c *caller) {
	name := r.PathValue("name")
	if err := s.Users.Delete(r.Context(), name); err != nil {
		s.storeError(w, "remove user", err)
		return
	}
	s.changed()
	s.audit().Info("user removed", "event", "user.delete", "by", c.name(), "user", name)
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventUserDelete, User: c.name(), Addr: r.RemoteAddr, Fields: map[string]string{"target_user": name}})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listRoles(w http.ResponseWriter, r *http.Request, c *caller) {
	list, err := s.Roles.List(r.Context())
	if err != nil {
		s.storeError(w, "list roles", err)
		return
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Metadata.Name < list[j].Metadata.Name })
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) putRole(w http.ResponseWriter, r *http.Request, c *caller) {
	var role api.Role
	if !readJSON(w, r, &role) {
		return
	}
	if err := rbac.Validate(role); err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	if err := s.Roles.Put(r.Context(), role); err != nil {
		s.storeError(w, "put role", err)
		return
	}
	s.changed()
	s.audit().Info("role written", "event", "role.put", "by", c.name(), "role", role.Metadata.Name)
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventRoleCreate, User: c.name(), Addr: r.RemoteAddr, Fields: map[string]string{"role": role.Metadata.Name}})
	writeJSON(w, http.StatusOK, role)
}

func (s *Server) deleteRole(w http.ResponseWriter, r *http.Request, c *caller) {
	name := r.PathValue("name")
	if err := s.Roles.Delete(r.Context(), name); err != nil {
		s.storeError(w, "remove role", err)
		return
	}
	s.changed()
	s.audit().Info("role removed", "event", "role.delete", "by", c.name(), "role", name)
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventRoleDelete, User: c.name(), Addr: r.RemoteAddr, Fields: map[string]string{"role": name}})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request, c *caller) {
	list, err := s.Tokens.List(r.Context())
	if err != nil {
		s.storeError(w, "list tokens", err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) addToken(w http.ResponseWriter, r *http.Request, c *caller) {
	var req api.AddTokenRequest
	if !readJSON(w, r, &req) {
		return
	}
	tok, err := s.Tokens.Add(r.Context(), req)
	if err != nil {
		s.storeError(w, "add token", err)
		return
	}
	tok.CAPin = s.CA.Pin()
	tok.JoinString = pin.JoinString(tok.Token, tok.CAPin)
	s.audit().Info("join token created", "event", "token.create", "by", c.name(), "token_id", tok.ID, "expires", tok.Expires, "uses", tok.UsesLeft, "labels", tok.Labels)
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventTokenCreate, User: c.name(), Addr: r.RemoteAddr,
		Fields: map[string]string{"token_id": tok.ID, "expires": tok.Expires.UTC().Format(time.RFC3339), "uses": strconv.Itoa(tok.UsesLeft)}})
	writeJSON(w, http.StatusCreated, tok)
}

func (s *Server) deleteToken(w http.ResponseWriter, r *http.Request, c *caller) {
	id := r.PathValue("id")
	if err := s.Tokens.Delete(r.Context(), id); err != nil {
		s.storeError(w, "remove token", err)
		return
	}
	s.audit().Info("join token removed", "event", "token.delete", "by", c.name(), "token_id", id)
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventTokenDelete, User: c.name(), Addr: r.RemoteAddr, Fields: map[string]string{"token_id": id}})
	w.WriteHeader(http.StatusNoContent)
}

// deleteDevice removes a device named in the path by its name, or by its
// ID (32 hex digits: no name has that shape). The removal goes by the ID
// found, never by a name, and the device's tunnel and held sessions end at
// once; its certificate no longer opens a tunnel (the tunnel server checks
// the registry on every connection).
func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request, c *caller) {
	name := r.PathValue("name")
	var dev devices.Device
	var err error
	if devices.IsID(name) {
		dev, err = s.Devices.Get(r.Context(), name)
	} else {
		dev, err = s.Devices.ByName(r.Context(), name)
	}
	if err != nil {
		s.storeError(w, "remove device", err)
		return
	}
	if _, err := s.Devices.Delete(r.Context(), dev.ID); err != nil {
		s.storeError(w, "remove device", err)
		return
	}
	s.Tunnels.Disconnect(dev.ID, "this device was removed from the fleet; join it again with a new token")
	s.audit().Info("device removed", "event", "device.delete", "by", c.name(), "device", dev.Name, "device_id", dev.ID)
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventDeviceDelete, User: c.name(), Addr: r.RemoteAddr, Device: dev.ID, Fields: map[string]string{"name": dev.Name}})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request, c *caller) {
	us, err := s.Users.List(r.Context())
	if err != nil {
		s.storeError(w, "status", err)
		return
	}
	ds, err := s.Devices.List(r.Context())
	if err != nil {
		s.storeError(w, "status", err)
		return
	}
	writeJSON(w, http.StatusOK, api.Status{
		Cluster: s.Cluster, Version: s.Version, CAPin: s.CA.Pin(), Listen: s.Listen, StartedAt: s.StartedAt,
		Users: len(us), Devices: len(ds), DevicesOnline: s.Tunnels.Count(),
	})
}
