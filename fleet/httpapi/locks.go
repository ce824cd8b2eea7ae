package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"remoteler.dev/edge/fleet/locks"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// maxLockWait bounds how long GET /v1/locks?after=REV waits for a change.
const maxLockWait = 60 * time.Second

// lockRoutes registers the locks' endpoints (admin).
func (s *Server) lockRoutes(mux *http.ServeMux) {
	mux.Handle("GET "+api.PathLocks, s.admin(s.listLocks))
	mux.Handle("POST "+api.PathLocks, s.admin(s.addLock))
	mux.Handle("DELETE "+api.PathLocks+"/{id}", s.admin(s.deleteLock))
}

func (s *Server) noLocks(w http.ResponseWriter) bool {
	if s.LockStore == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this fleet keeps no locks")
		return true
	}
	return false
}

// listLocks answers GET /v1/locks: the locks in force. With after=REV it
// first waits (wait=DURATION, at most maxLockWait, default 30s) until this
// replica's view of the locks passes revision REV, so that a follower
// (a leaf fleet) hears of a new lock as soon as this replica does.
func (s *Server) listLocks(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.noLocks(w) {
		return
	}
	q := r.URL.Query()
	if a := q.Get("after"); a != "" && s.Locks != nil {
		after, err := strconv.ParseInt(a, 10, 64)
		if err != nil || after < 0 {
			writeError(w, http.StatusBadRequest, api.CodeBadRequest, "after must be a revision from an earlier answer")
			return
		}
		wait := 30 * time.Second
		if ws := q.Get("wait"); ws != "" {
			if wait, err = time.ParseDuration(ws); err != nil || wait < 0 {
				writeError(w, http.StatusBadRequest, api.CodeBadRequest, "wait must be a duration such as 30s")
				return
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), min(wait, maxLockWait))
		s.Locks.Wait(ctx, after)
		cancel()
		list, rev := s.Locks.List()
		writeJSON(w, http.StatusOK, api.LockList{List: api.NewList("locks", list, false), Revision: rev})
		return
	}
	list, rev, err := s.LockStore.List(r.Context())
	if err != nil {
		s.storeError(w, "list locks", err)
		return
	}
	writeJSON(w, http.StatusOK, api.LockList{List: api.NewList("locks", list, false), Revision: rev})
}

// addLock answers POST /v1/locks. The lock is recorded before it is
// answered; it takes effect on every replica as they see it in the store.
func (s *Server) addLock(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.noLocks(w) {
		return
	}
	var req api.LockRequest
	if !readJSON(w, r, &req) {
		return
	}
	l, err := s.LockStore.Create(r.Context(), req, c.name())
	if err != nil {
		s.storeError(w, "lock", err)
		return
	}
	f := lockFields(l)
	s.audit().Info("lock created", "event", proto.EventLockCreate, "by", c.name(), "lock", l.ID, "target", locks.Describe(l.Target))
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventLockCreate, User: c.name(), Addr: r.RemoteAddr, Message: l.Message, Fields: f})
	writeJSON(w, http.StatusOK, l)
}

// deleteLock answers DELETE /v1/locks/ID.
func (s *Server) deleteLock(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.noLocks(w) {
		return
	}
	l, err := s.LockStore.Remove(r.Context(), r.PathValue("id"))
	if err != nil {
		s.storeError(w, "remove lock", err)
		return
	}
	s.audit().Info("lock removed", "event", proto.EventLockDelete, "by", c.name(), "lock", l.ID, "target", locks.Describe(l.Target))
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventLockDelete, User: c.name(), Addr: r.RemoteAddr, Fields: lockFields(l)})
	w.WriteHeader(http.StatusNoContent)
}

// lockFields describe a lock in its audit events.
func lockFields(l api.Lock) map[string]string {
	f := map[string]string{"lock": l.ID, "lock_target": locks.Describe(l.Target)}
	if l.DeviceID != "" {
		f["device_id"] = l.DeviceID
	}
	if !l.Expires.IsZero() {
		f["expires"] = l.Expires.Format(time.RFC3339)
	}
	return f
}

// refuseLocked answers a request of a user a lock shuts out, and records
// the refusal naming the lock; it reports whether it did.
func (s *Server) refuseLocked(w http.ResponseWriter, r *http.Request, user string, roles []string, action string) bool {
	var l *locks.Locked
	if err := s.Locks.Check(locks.Subject{User: user, Roles: roles}); !errors.As(err, &l) {
		return false
	}
	f := l.AuditFields()
	f["action"] = action
	if id := resumedSession(r); id != "" {
		f["action"], f["resumed_session"] = "resume", id
	}
	s.audit().Warn("request refused", "event", "lock", "user", user, "lock", l.Lock.ID, "action", f["action"])
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, User: user, Addr: r.RemoteAddr,
		Message: l.Error(), Fields: f})
	writeError(w, http.StatusForbidden, api.CodeForbidden, l.Error())
	// A user-held session its client tried to resume ends on the device.
	s.endRefusedResume(r, connectAsk(r, user), l.Error())
	return true
}
