package httpapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/recordings"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/auditexport"
)

// auditRoutes registers the audit and recording endpoints.
func (s *Server) auditRoutes(mux *http.ServeMux) {
	mux.Handle("GET "+api.PathAudit, s.auditor(s.searchAudit, false))
	mux.Handle("GET "+api.PathAuditVerify, s.auditor(s.verifyAudit, false))
	mux.Handle("GET "+api.PathAuditExport, s.auditor(s.exportAudit, false))
	mux.Handle("GET "+api.PathRecordings, s.auditor(s.listRecordings, true))
	mux.Handle("GET "+api.PathRecordings+"/{id}", s.auditor(s.getRecording, true))
}

// record writes one of the fleet's own audit events. Callers that must not
// go ahead without the event (a login, a session) check the error; the
// others proceed, and the failure is logged.
func (s *Server) record(ctx context.Context, ev *proto.AuditEvent) error {
	if s.Events == nil {
		return nil
	}
	if ev.Outcome == "" {
		ev.Outcome = proto.OutcomeSuccess
	}
	if ev.Cluster == "" {
		ev.Cluster = s.Cluster
	}
	err := s.Events.Append(context.WithoutCancel(ctx), ev)
	if err != nil {
		s.log().Error("audit event not recorded", "type", ev.Type, "err", err)
	}
	return err
}

// errAuditDown answers a request that cannot go ahead unrecorded.
func errAuditDown(w http.ResponseWriter) {
	writeError(w, http.StatusServiceUnavailable, api.CodeInternal, "the fleet cannot write its audit log right now; try again later")
}

// deviceNames maps device IDs to names, for exports.
func (s *Server) deviceNames(ctx context.Context) map[string]string {
	out := map[string]string{}
	if all, err := s.Devices.List(ctx); err == nil {
		for _, d := range all {
			out[d.ID] = d.Name
		}
	}
	return out
}

func (s *Server) searchAudit(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.Events == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this fleet keeps no audit log")
		return
	}
	v := r.URL.Query()
	q := audit.Query{User: v.Get("user"), Session: v.Get("session"), Type: v.Get("type")}
	for _, t := range []struct {
		name string
		dst  *time.Time
	}{{"since", &q.Since}, {"until", &q.Until}} {
		if s := v.Get(t.name); s != "" {
			tm, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				writeError(w, http.StatusBadRequest, api.CodeBadRequest, t.name+" must be an RFC 3339 time, like 2026-11-21T08:00:00Z")
				return
			}
			*t.dst = tm
		}
	}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > api.MaxAuditLimit {
			writeError(w, http.StatusBadRequest, api.CodeBadRequest, "limit must be 1 to "+strconv.Itoa(api.MaxAuditLimit))
			return
		}
		q.Limit = n
	}
	names := s.deviceNames(r.Context())
	if d := v.Get("device"); d != "" {
		q.Device = d
		for id, name := range names {
			if name == d {
				q.Device = id
			}
		}
	}
	out, err := s.searchHere(r.Context(), q, names)
	if err != nil {
		s.storeError(w, "audit search", err)
		return
	}
	if s.Peers != nil {
		out = s.searchReplicas(r.Context(), q, out, names)
	}
	writeJSON(w, http.StatusOK, out)
}

// searchHere searches this replica's log.
func (s *Server) searchHere(ctx context.Context, q audit.Query, names map[string]string) (api.AuditSearch, error) {
	recs, more, err := s.Events.Search(ctx, q)
	if err != nil {
		return api.AuditSearch{}, err
	}
	out := api.AuditSearch{Events: make([]api.AuditEvent, 0, len(recs)), Truncated: more}
	for _, rec := range recs {
		e := audit.Export(rec, names)
		if s.Peers != nil {
			e.Replica = s.Peers.Self()
		}
		out.Events = append(out.Events, e)
	}
	return out, nil
}

func (s *Server) verifyAudit(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.Events == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this fleet keeps no audit log")
		return
	}
	v, err := s.Events.Verify(r.Context())
	if err != nil {
		s.storeError(w, "audit verify", err)
		return
	}
	names := s.deviceNames(r.Context())
	out := s.verifyHere(v, names)
	if s.Peers != nil {
		out = s.verifyReplicas(r.Context(), out, names)
	}
	writeJSON(w, http.StatusOK, out)
}

// verifyHere turns this replica's verification into the API's answer.
func (s *Server) verifyHere(v *audit.Verification, names map[string]string) api.AuditVerify {
	out := api.AuditVerify{OK: len(v.Checkpoints.Problems) == 0, Sources: v.Chains, Checked: s.now().UTC()}
	for i := range out.Sources {
		out.Sources[i].DeviceName = names[out.Sources[i].Source]
		out.OK = out.OK && out.Sources[i].OK
	}
	if out.Sources == nil {
		out.Sources = []api.AuditChain{}
	}
	cp := v.Checkpoints
	out.Checkpoints = &api.AuditCheckpoints{Count: cp.Count, Last: cp.Last, Problems: cp.Problems}
	if cp.Key != nil {
		out.Checkpoints.Key = auditexport.KeyString(cp.Key)
	}
	if s.Peers != nil {
		for i := range out.Sources {
			out.Sources[i].Replica = s.Peers.Self()
		}
		out.Checkpoints.Replica = s.Peers.Self()
	}
	return out
}

// exportAudit streams the audit log in the export format.
func (s *Server) exportAudit(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.Events == nil || s.Events.CheckpointKey() == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this fleet keeps no signed audit log")
		return
	}
	only := r.URL.Query().Get("checkpoints_only") == "true"
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventAuditExport, User: c.name(), Addr: r.RemoteAddr,
		Fields: map[string]string{"checkpoints_only": strconv.FormatBool(only)}})
	w.Header().Set("Content-Type", "application/x-ndjson")
	if err := s.Events.Export(r.Context(), w, s.Cluster, only); err != nil {
		// The status is sent: break the connection, so the client sees
		// an error (and a saved export has no end line).
		if r.Context().Err() == nil {
			s.log().Error("audit export cut short", "err", err)
		}
		panic(http.ErrAbortHandler)
	}
}

// mayView reports whether the caller may see a recording: admins see all,
// users their own sessions.
func (c *caller) mayView(rec *api.Recording) bool {
	return c.auditReader() || (c.checker != nil && rec.User == c.user.Name)
}

func (s *Server) listRecordings(w http.ResponseWriter, r *http.Request, c *caller) {
	list := []api.Recording{}
	if s.Recordings != nil {
		var err error
		if list, err = s.Recordings.List(c.mayView); err != nil {
			s.storeError(w, "list recordings", err)
			return
		}
	}
	if s.Peers != nil {
		list = s.recordingsOfReplicas(r.Context(), list, c.mayView)
	}
	names := s.deviceNames(r.Context())
	for i := range list {
		list[i].DeviceName = names[list[i].Device]
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) getRecording(w http.ResponseWriter, r *http.Request, c *caller) {
	id := r.PathValue("id")
	var rc io.ReadCloser
	var rec *api.Recording
	err := recordings.ErrNotFound
	if s.Recordings != nil {
		rc, rec, err = s.Recordings.Read(id)
	}
	if s.Peers != nil && (err == nil || errors.Is(err, recordings.ErrNotFound)) && (rec == nil || !rec.Complete) {
		// Another replica may hold it, or a more complete copy.
		if prc, prec, ok := s.recordingElsewhere(r.Context(), id, rec); ok {
			if rc != nil {
				rc.Close()
			}
			rc, rec, err = prc, prec, nil
		}
	}
	if err != nil || !c.mayView(rec) {
		if err != nil && !errors.Is(err, recordings.ErrNotFound) {
			s.storeError(w, "read recording", err)
			return
		}
		// The same answer for unknown and hidden recordings.
		writeError(w, http.StatusNotFound, api.CodeNotFound, "no recording "+id+" that you may see: see tsh recordings ls")
		if rc != nil {
			rc.Close()
		}
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/x-asciicast")
	w.Header().Set("X-Recording-Complete", strconv.FormatBool(rec.Complete))
	w.WriteHeader(http.StatusOK)
	io.Copy(w, rc)
}

// deviceAudit adds the device's audit status to an admin's device listing.
func (s *Server) deviceAudit(c *caller, d *api.Device) {
	if s.Events == nil || !c.isAdmin() {
		return
	}
	if st, ok := s.Events.DeviceStatus(d.ID); ok {
		d.Audit = st
	}
}
