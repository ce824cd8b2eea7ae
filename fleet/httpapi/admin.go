package httpapi

import (
	"net/http"
	"sort"

	"remoteler.dev/edge/proto/api"
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
	resp, err := s.actions().AddUser(r.Context(), c.actor(r), req)
	if err != nil {
		s.storeError(w, "add user", err)
		return
	}
	writeJSON(w, http.StatusCreated, resp)
}

func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request, c *caller) {
	if err := s.actions().DeleteUser(r.Context(), c.actor(r), r.PathValue("name")); err != nil {
		s.storeError(w, "remove user", err)
		return
	}
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
	if err := s.actions().PutRole(r.Context(), c.actor(r), role); err != nil {
		s.storeError(w, "put role", err)
		return
	}
	writeJSON(w, http.StatusOK, role)
}

func (s *Server) deleteRole(w http.ResponseWriter, r *http.Request, c *caller) {
	if err := s.actions().DeleteRole(r.Context(), c.actor(r), r.PathValue("name")); err != nil {
		s.storeError(w, "remove role", err)
		return
	}
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
	tok, err := s.actions().AddToken(r.Context(), c.actor(r), req)
	if err != nil {
		s.storeError(w, "add token", err)
		return
	}
	writeJSON(w, http.StatusCreated, tok)
}

func (s *Server) deleteToken(w http.ResponseWriter, r *http.Request, c *caller) {
	if err := s.actions().DeleteToken(r.Context(), c.actor(r), r.PathValue("id")); err != nil {
		s.storeError(w, "remove token", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// deleteDevice removes a device named in the path by its name or ID
// (fleet/admin).
func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request, c *caller) {
	if _, err := s.actions().DeleteDevice(r.Context(), c.actor(r), r.PathValue("name")); err != nil {
		s.storeError(w, "remove device", err)
		return
	}
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
