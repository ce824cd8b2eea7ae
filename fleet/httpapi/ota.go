package httpapi

import (
	"errors"
	"fmt"
	"net/http"

	"remoteler.dev/edge/fleet/releases"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// otaRoutes serves the admin endpoints of releases, rollouts and pins
// (fleet/releases, fleet/rollouts). Without s.Releases and s.Rollouts
// there are none.
func (s *Server) otaRoutes(mux *http.ServeMux) {
	if s.Releases == nil || s.Rollouts == nil {
		return
	}
	mux.Handle("GET "+api.PathReleases, s.admin(s.listReleases))
	mux.Handle("POST "+api.PathReleases, s.admin(s.addRelease))
	mux.Handle("DELETE "+api.PathReleases+"/{version}", s.admin(s.deleteRelease))
	mux.Handle("PUT "+api.PathReleaseBlobs+"/{sum}", s.admin(s.putReleaseBlob))
	mux.Handle("GET "+api.PathRollouts, s.admin(s.listRollouts))
	mux.Handle("POST "+api.PathRollouts, s.admin(s.createRollout))
	mux.Handle("GET "+api.PathRollouts+"/{id}", s.admin(s.getRollout))
	mux.Handle("POST "+api.PathRollouts+"/{id}/{action}", s.admin(s.rolloutAction))
	mux.Handle("POST "+api.PathReleaseKeys, s.admin(s.rotateReleaseKey))
	mux.Handle("GET "+api.PathPins, s.admin(s.listPins))
	mux.Handle("PUT "+api.PathPins, s.admin(s.putPin))
	mux.Handle("DELETE "+api.PathPins+"/{name}", s.admin(s.deletePin))
}

func (s *Server) listReleases(w http.ResponseWriter, r *http.Request, c *caller) {
	list, err := s.Releases.List(r.Context())
	if err != nil {
		s.storeError(w, "list releases", err)
		return
	}
	out := make([]api.Release, 0, len(list))
	for _, rel := range list {
		out = append(out, s.Releases.Describe(r.Context(), rel))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) putReleaseBlob(w http.ResponseWriter, r *http.Request, c *caller) {
	// An artefact is megabytes: it may take longer than the body timeout
	// on a slow link, as long as it keeps arriving.
	liftBodyTotal(r)
	body := http.MaxBytesReader(w, r.Body, releases.MaxBlob)
	if err := s.Releases.PutBlob(r.Context(), r.PathValue("sum"), body); err != nil {
		if errors.Is(err, errBodyTimeout) {
			writeError(w, http.StatusRequestTimeout, api.CodeBadRequest, err.Error()+": send it again")
			return
		}
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			writeError(w, http.StatusRequestEntityTooLarge, api.CodeBadRequest, fmt.Sprintf("upload release artefact: larger than %d bytes", releases.MaxBlob))
			return
		}
		s.storeError(w, "upload release artefact", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) addRelease(w http.ResponseWriter, r *http.Request, c *caller) {
	var req api.AddReleaseRequest
	if !readJSON(w, r, &req) {
		return
	}
	rel, err := s.Releases.Add(r.Context(), req)
	if err != nil {
		s.storeError(w, "add release", err)
		return
	}
	s.audit().Info("release added", "event", proto.EventReleaseAdd, "by", c.name(), "version", rel.Version)
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventReleaseAdd, User: c.name(), Addr: r.RemoteAddr,
		Fields: map[string]string{"version": rel.Version, "key_id": rel.KeyID}})
	writeJSON(w, http.StatusCreated, rel.API())
}

func (s *Server) deleteRelease(w http.ResponseWriter, r *http.Request, c *caller) {
	v := r.PathValue("version")
	if err := s.Releases.Delete(r.Context(), v); err != nil {
		s.storeError(w, "remove release", err)
		return
	}
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventReleaseDelete, User: c.name(), Addr: r.RemoteAddr, Fields: map[string]string{"version": v}})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) rotateReleaseKey(w http.ResponseWriter, r *http.Request, c *caller) {
	var req api.KeyRotation
	if !readJSON(w, r, &req) {
		return
	}
	id, err := s.Releases.AddRotation(r.Context(), req.Key, []byte(req.Sig))
	if err != nil {
		s.storeError(w, "rotate release key", err)
		return
	}
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventUpdateKeyRotated, User: c.name(), Addr: r.RemoteAddr,
		Fields: map[string]string{"key_id": id}})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listRollouts(w http.ResponseWriter, r *http.Request, c *caller) {
	writeJSON(w, http.StatusOK, s.Rollouts.List(r.Context()))
}

func (s *Server) createRollout(w http.ResponseWriter, r *http.Request, c *caller) {
	var req api.CreateRolloutRequest
	if !readJSON(w, r, &req) {
		return
	}
	ro, err := s.Rollouts.Create(r.Context(), req, c.name())
	if err != nil {
		s.storeError(w, "create rollout", err)
		return
	}
	writeJSON(w, http.StatusCreated, ro)
}

func (s *Server) getRollout(w http.ResponseWriter, r *http.Request, c *caller) {
	ro, err := s.Rollouts.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.storeError(w, "rollout", err)
		return
	}
	writeJSON(w, http.StatusOK, ro)
}

func (s *Server) rolloutAction(w http.ResponseWriter, r *http.Request, c *caller) {
	action := r.PathValue("action")
	if action != "pause" && action != "resume" && action != "abort" {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "no rollout action "+action+": pause, resume or abort")
		return
	}
	ro, err := s.Rollouts.Action(r.Context(), r.PathValue("id"), action, c.name())
	if err != nil {
		s.storeError(w, action+" rollout", err)
		return
	}
	writeJSON(w, http.StatusOK, ro)
}

func (s *Server) listPins(w http.ResponseWriter, r *http.Request, c *caller) {
	writeJSON(w, http.StatusOK, s.Rollouts.Pins())
}

func (s *Server) putPin(w http.ResponseWriter, r *http.Request, c *caller) {
	var p api.Pin
	if !readJSON(w, r, &p) {
		return
	}
	if err := s.Rollouts.PutPin(r.Context(), p, c.name()); err != nil {
		s.storeError(w, "pin", err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Server) deletePin(w http.ResponseWriter, r *http.Request, c *caller) {
	if err := s.Rollouts.DeletePin(r.Context(), r.PathValue("name"), c.name()); err != nil {
		s.storeError(w, "remove pin", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
