package httpapi

import (
	"cmp"
	"net/http"
	"slices"
	"strconv"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// retentionRoutes registers GET and PUT /v1/retention.
func (s *Server) retentionRoutes(mux *http.ServeMux) {
	mux.Handle("GET "+api.PathRetention, s.admin(s.getRetention))
	mux.Handle("PUT "+api.PathRetention, s.admin(s.putRetention))
}

func (s *Server) getRetention(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.Retention == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this fleet keeps no storage policy")
		return
	}
	st, err := s.retentionStatus(r)
	if err != nil {
		s.storeError(w, "retention", err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) putRetention(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.Retention == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this fleet keeps no storage policy")
		return
	}
	var p api.Retention
	if !readJSON(w, r, &p) {
		return
	}
	if err := s.Retention.Set(r.Context(), p); err != nil {
		s.storeError(w, "set retention", err)
		return
	}
	s.audit().Info("storage policy set", "event", proto.EventRetentionSet, "by", c.name(), "policy", p)
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventRetentionSet, User: c.name(), Addr: r.RemoteAddr, Fields: map[string]string{
		"audit_max_age": p.AuditMaxAge.String(), "audit_max_bytes": strconv.FormatInt(p.AuditMaxBytes, 10),
		"audit_device_quota": strconv.FormatInt(p.AuditDeviceQuota, 10), "recordings_max_age": p.RecordingsMaxAge.String(),
		"recordings_max_bytes": strconv.FormatInt(p.RecordingsMaxBytes, 10), "recordings_device_quota": strconv.FormatInt(p.RecordingsDeviceQuota, 10),
		"min_free_bytes": strconv.FormatInt(p.MinFreeBytes, 10),
	}})
	st, err := s.retentionStatus(r)
	if err != nil {
		s.storeError(w, "retention", err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// retentionStatus is the policy in force and what the audit trail takes.
func (s *Server) retentionStatus(r *http.Request) (*api.RetentionStatus, error) {
	p, err := s.Retention.Get(r.Context())
	if err != nil {
		return nil, err
	}
	st := &api.RetentionStatus{Policy: p}
	devs := map[string]*api.DeviceStorage{}
	dev := func(id string) *api.DeviceStorage {
		if devs[id] == nil {
			devs[id] = &api.DeviceStorage{ID: id}
		}
		return devs[id]
	}
	if s.Events != nil {
		total, by, err := s.Events.Usage()
		if err != nil {
			return nil, err
		}
		st.AuditBytes = total
		for id, n := range by {
			if id != api.SourceFleet {
				dev(id).AuditBytes = n
			}
		}
	}
	if s.Recordings != nil {
		total, by := s.Recordings.Usage()
		st.RecordingsBytes = total
		for id, n := range by {
			dev(id).RecordingsBytes = n
		}
	}
	if s.Floor != nil {
		st.FreeBytes, st.TotalBytes, _ = s.Floor.Space()
		if err := s.Floor.Check(); err != nil {
			st.UploadsPaused = err.Error()
		}
	}
	names := s.deviceNames(r.Context())
	for id, d := range devs {
		if s.Events != nil {
			d.Paused = s.Events.Paused(id)
		}
		if s.Recordings != nil && d.Paused == "" {
			d.Paused = s.Recordings.Paused(id)
		}
		half := func(n, quota int64) bool { return quota > 0 && n > quota/2 }
		if d.Paused == "" && !half(d.AuditBytes, p.AuditDeviceQuota) && !half(d.RecordingsBytes, p.RecordingsDeviceQuota) {
			continue
		}
		d.Name = names[id]
		st.Devices = append(st.Devices, *d)
	}
	slices.SortFunc(st.Devices, func(a, b api.DeviceStorage) int {
		return cmp.Compare(b.AuditBytes+b.RecordingsBytes, a.AuditBytes+a.RecordingsBytes)
	})
	return st, nil
}
