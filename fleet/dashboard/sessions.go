package dashboard

import (
	"errors"
	"io"
	"net/http"

	"remoteler.dev/edge/fleet/recordings"
	"remoteler.dev/edge/proto/api"
)

// sessionsPage answers GET /web/sessions: the live sessions and the
// recordings the viewer may see (an admin's: everyone's).
func (s *Server) sessionsPage(w http.ResponseWriter, r *http.Request, v *viewer) {
	if err := onlyKnown(r.URL.Query()); err != nil {
		s.badRequest(w, r, v, err)
		return
	}
	s.page(w, r, v, http.StatusOK, "Sessions", "sessions", "sessions", s.sessionsFor(v, ""))
}

// recordingView is the player's page.
type recordingView struct {
	Recording recordingRow
	CastURL   string
}

// findRecording returns the recording named in the path if the viewer may
// see it (an admin: any; a user: their own); otherwise the answer is the
// same as for one that does not exist.
func (s *Server) findRecording(r *http.Request, v *viewer) (*api.Recording, error) {
	if s.cfg.Recordings == nil {
		return nil, recordings.ErrNotFound
	}
	rec, err := s.cfg.Recordings.Get(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	if !v.isAdmin() && rec.User != v.user.Name {
		return nil, recordings.ErrNotFound
	}
	return rec, nil
}

// recordingPage answers GET /web/recordings/{id}: the player.
func (s *Server) recordingPage(w http.ResponseWriter, r *http.Request, v *viewer) {
	if err := onlyKnown(r.URL.Query()); err != nil {
		s.badRequest(w, r, v, err)
		return
	}
	rec, err := s.findRecording(r, v)
	if errors.Is(err, recordings.ErrNotFound) {
		s.notFound(w, r, v, "recording "+truncate(r.PathValue("id"), 64))
		return
	}
	if err != nil {
		s.fail(w, r, v, err)
		return
	}
	row := recordingRow{Recording: *rec, URL: Prefix + "recordings/" + rec.ID}
	if name, ok := s.deviceByID(rec.Device); ok {
		row.DeviceName, row.DeviceURL = name, deviceURL(name)
	}
	s.page(w, r, v, http.StatusOK, "Recording", "sessions", "recording", recordingView{Recording: row, CastURL: row.URL + "/cast"})
}

// recordingCast answers GET /web/recordings/{id}/cast: the asciicast v2
// file, for the player.
func (s *Server) recordingCast(w http.ResponseWriter, r *http.Request, v *viewer) {
	rec, err := s.findRecording(r, v)
	if errors.Is(err, recordings.ErrNotFound) {
		http.Error(w, "no such recording that you can see", http.StatusNotFound)
		return
	}
	if err != nil {
		s.fail(w, r, v, err)
		return
	}
	rc, _, err := s.cfg.Recordings.Read(rec.ID)
	if err != nil {
		s.fail(w, r, v, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/x-asciicast")
	w.Header().Set("Content-Disposition", `attachment; filename="`+rec.ID+`.cast"`)
	io.Copy(w, rc)
}
