package httpapi

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/proto/api"
)

// Several replicas: one audit trail.
//
// Each replica keeps its own audit log (fleet/audit's replicas.go says how
// a device's chain spans them). An admin's search or verification on any
// replica covers them all: the replica asks the others (Peers) and merges
// their answers with its own; a replica that does not answer is named in
// the answer (Missing), never silently left out.

// Peers asks the fleet's other replicas (fleetd's replicas); nil on one
// fleetd.
type Peers interface {
	// Self is this replica's ID.
	Self() string
	// Ask sends GET path?q to every other live replica and returns their
	// answers' bodies by replica ID, and why each that failed did.
	Ask(ctx context.Context, path string, q url.Values) (answers map[string][]byte, failed map[string]error)
	// AskOne sends GET path?q to replica id (which may be Self: the
	// caller then answers itself).
	AskOne(ctx context.Context, id, path string, q url.Values) ([]byte, error)
	// Open sends GET path?q to replica id and returns the answer's body as
	// it comes.
	Open(ctx context.Context, id, path string, q url.Values) (io.ReadCloser, error)
}

// Peer endpoints of the audit.
const (
	peerAuditSearch = "/peer/v1/audit/search"
	peerAuditVerify = "/peer/v1/audit/verify"
	peerAuditEvent  = "/peer/v1/audit/event"
	peerRecordings  = "/peer/v1/recordings"
)

// PeerRoutes adds the endpoints the other replicas call to mux.
func (s *Server) PeerRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+peerAuditSearch, s.peerSearch)
	mux.HandleFunc("GET "+peerAuditVerify, s.peerVerify)
	mux.HandleFunc("GET "+peerAuditEvent, s.peerEvent)
	mux.HandleFunc("GET "+peerRecordings, s.peerRecordings)
	mux.HandleFunc("GET "+peerRecordings+"/{id}", s.peerRecording)
}

// queryValues is q as the peers' search takes it.
func queryValues(q audit.Query) url.Values {
	v := url.Values{}
	set := func(k, val string) {
		if val != "" {
			v.Set(k, val)
		}
	}
	set("device", q.Device)
	set("user", q.User)
	set("session", q.Session)
	set("type", q.Type)
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.UTC().Format(time.RFC3339Nano))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	return v
}

func (s *Server) peerSearch(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	q := audit.Query{Device: v.Get("device"), User: v.Get("user"), Session: v.Get("session"), Type: v.Get("type")}
	q.Since, _ = time.Parse(time.RFC3339Nano, v.Get("since"))
	q.Until, _ = time.Parse(time.RFC3339Nano, v.Get("until"))
	q.Limit, _ = strconv.Atoi(v.Get("limit"))
	out, err := s.searchHere(r.Context(), q, s.deviceNames(r.Context()))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// searchReplicas merges the other replicas' answers to q into here's:
// oldest first, a device's event held by two replicas (sent again across
// a crash) once, at most q.Limit.
func (s *Server) searchReplicas(ctx context.Context, q audit.Query, here api.AuditSearch, names map[string]string) api.AuditSearch {
	answers, failed := s.Peers.Ask(ctx, peerAuditSearch, queryValues(q))
	out := here
	for id, b := range answers {
		var a api.AuditSearch
		if err := json.Unmarshal(b, &a); err != nil {
			failed[id] = fmt.Errorf("malformed answer: %w", err)
			continue
		}
		out.Events = append(out.Events, a.Events...)
		out.Truncated = out.Truncated || a.Truncated
	}
	for id, err := range failed {
		out.Missing = append(out.Missing, id+": "+err.Error())
	}
	slices.Sort(out.Missing)
	slices.SortStableFunc(out.Events, func(a, b api.AuditEvent) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		if c := strings.Compare(a.Source, b.Source); c != 0 {
			return c
		}
		if a.Seq != b.Seq {
			return compareUint(a.Seq, b.Seq)
		}
		return strings.Compare(a.Replica, b.Replica)
	})
	seen := map[string]bool{}
	kept := out.Events[:0]
	for _, e := range out.Events {
		key := e.Replica + "\x00" + e.Source
		if e.Source != api.SourceFleet {
			key = e.Source // a device's chain is one over the replicas
		}
		key += "\x00" + strconv.FormatUint(e.Seq, 10) + "\x00" + e.Hash
		if seen[key] {
			continue
		}
		seen[key] = true
		if e.DeviceName == "" {
			e.DeviceName = names[e.Device]
		}
		kept = append(kept, e)
	}
	out.Events = kept
	limit := q.Limit
	if limit <= 0 {
		limit = api.DefaultAuditLimit
	}
	if len(out.Events) > limit {
		out.Events, out.Truncated = out.Events[:limit], true
	}
	return out
}

func compareUint(a, b uint64) int {
	if a < b {
		return -1
	}
	return 1
}

func (s *Server) peerVerify(w http.ResponseWriter, r *http.Request) {
	v, err := s.Events.Verify(r.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, http.StatusOK, s.verifyHere(v, s.deviceNames(r.Context())))
}

// verifyReplicas adds the other replicas' verifications to here's, and
// checks that the stretches of each device's chain join: every hand-off
// names an event that its replica holds with the hash the hand-off
// continues from.
func (s *Server) verifyReplicas(ctx context.Context, here api.AuditVerify, names map[string]string) api.AuditVerify {
	answers, failed := s.Peers.Ask(ctx, peerAuditVerify, nil)
	out := here
	out.Replicas = []api.AuditCheckpoints{*here.Checkpoints}
	for id, b := range answers {
		var a api.AuditVerify
		if err := json.Unmarshal(b, &a); err != nil {
			failed[id] = fmt.Errorf("malformed answer: %w", err)
			continue
		}
		out.Sources = append(out.Sources, a.Sources...)
		if a.Checkpoints != nil {
			out.Replicas = append(out.Replicas, *a.Checkpoints)
		}
		out.OK = out.OK && a.OK
	}
	for id, err := range failed {
		out.Missing = append(out.Missing, id+": "+err.Error())
		out.OK = false
	}
	slices.Sort(out.Missing)
	slices.SortFunc(out.Replicas, func(a, b api.AuditCheckpoints) int { return strings.Compare(a.Replica, b.Replica) })
	for i := range out.Sources {
		c := &out.Sources[i]
		if c.DeviceName == "" {
			c.DeviceName = names[c.Source]
		}
		for _, h := range c.Handoffs {
			if p := s.checkHandoff(ctx, c.Source, h); p != "" {
				c.Problems = append(c.Problems, p)
				c.OK, out.OK = false, false
			}
		}
	}
	slices.SortStableFunc(out.Sources, func(a, b api.AuditChain) int {
		if c := strings.Compare(a.Source, b.Source); c != 0 {
			return c
		}
		return strings.Compare(a.Replica, b.Replica)
	})
	return out
}

// checkHandoff checks that replica h.Replica holds source's event h.Seq
// with hash h.Hash; it returns the problem, or "".
func (s *Server) checkHandoff(ctx context.Context, source string, h api.AuditHandoff) string {
	q := url.Values{"source": {source}, "seq": {strconv.FormatUint(h.Seq, 10)}}
	var got string
	if h.Replica == s.Peers.Self() {
		got = s.eventHash(source, h.Seq)
	} else {
		b, err := s.Peers.AskOne(ctx, h.Replica, peerAuditEvent, q)
		if err != nil {
			return fmt.Sprintf("the chain continues after event %d from replica %s, which could not be asked: %v", h.Seq, h.Replica, err)
		}
		got = strings.TrimSpace(string(b))
	}
	switch {
	case got == "":
		return fmt.Sprintf("the chain continues after event %d from replica %s, which does not hold that event", h.Seq, h.Replica)
	case got != h.Hash:
		return fmt.Sprintf("the chain continues after event %d from replica %s, whose event %d has another hash: the stretches do not join", h.Seq, h.Replica, h.Seq)
	}
	return ""
}

// eventHash returns the hex hash of source's event seq in this replica's
// log, or "".
func (s *Server) eventHash(source string, seq uint64) string {
	h, ok := s.Events.EventHash(source, seq)
	if !ok {
		return ""
	}
	return hex.EncodeToString(h)
}

func (s *Server) peerEvent(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	seq, err := strconv.ParseUint(q.Get("seq"), 10, 64)
	if err != nil {
		http.Error(w, "bad seq", http.StatusBadRequest)
		return
	}
	w.Write([]byte(s.eventHash(q.Get("source"), seq)))
}

// Recordings: each replica keeps those its devices uploaded to it. A
// device that moved in the middle of an upload sends the recording again
// from the start to its new replica (the upload resumes where the fleet's
// copy ends, and the new replica has none): listings show the most
// complete copy.

// better reports whether recording a should be shown rather than b, of
// the same ID: complete first, then the larger.
func better(a, b api.Recording) bool {
	if a.Complete != b.Complete {
		return a.Complete
	}
	return a.Size > b.Size
}

func (s *Server) peerRecordings(w http.ResponseWriter, r *http.Request) {
	list := []api.Recording{}
	if s.Recordings != nil {
		var err error
		if list, err = s.Recordings.List(func(*api.Recording) bool { return true }); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	writeJSON(w, http.StatusOK, list)
}

// peerRecording answers a recording's description (meta=1) or its bytes.
func (s *Server) peerRecording(w http.ResponseWriter, r *http.Request) {
	if s.Recordings == nil {
		http.Error(w, "no recordings", http.StatusNotFound)
		return
	}
	id := r.PathValue("id")
	if r.URL.Query().Get("meta") != "" {
		rec, err := s.Recordings.Get(id)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		writeJSON(w, http.StatusOK, rec)
		return
	}
	rc, _, err := s.Recordings.Read(id)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	defer rc.Close()
	io.Copy(w, rc)
}

// recordingsOfReplicas merges the other replicas' recordings into list.
func (s *Server) recordingsOfReplicas(ctx context.Context, list []api.Recording, keep func(*api.Recording) bool) []api.Recording {
	best := map[string]api.Recording{}
	for _, rec := range list {
		best[rec.ID] = rec
	}
	answers, failed := s.Peers.Ask(ctx, peerRecordings, nil)
	for id, err := range failed {
		s.log().Warn("a replica did not list its recordings", "replica", id, "err", err)
	}
	for _, b := range answers {
		var theirs []api.Recording
		if json.Unmarshal(b, &theirs) != nil {
			continue
		}
		for _, rec := range theirs {
			if old, ok := best[rec.ID]; (!ok || better(rec, old)) && keep(&rec) {
				best[rec.ID] = rec
			}
		}
	}
	out := make([]api.Recording, 0, len(best))
	for _, rec := range best {
		out = append(out, rec)
	}
	slices.SortFunc(out, func(a, b api.Recording) int { return a.Start.Compare(b.Start) })
	return out
}

// recordingElsewhere finds the best copy of recording id on the other
// replicas and opens it.
func (s *Server) recordingElsewhere(ctx context.Context, id string, here *api.Recording) (io.ReadCloser, *api.Recording, bool) {
	answers, _ := s.Peers.Ask(ctx, peerRecordings+"/"+url.PathEscape(id), url.Values{"meta": {"1"}})
	var from string
	var best *api.Recording
	if here != nil {
		best = here
	}
	for rid, b := range answers {
		var rec api.Recording
		if json.Unmarshal(b, &rec) != nil || rec.ID != id {
			continue
		}
		if best == nil || better(rec, *best) {
			best, from = &rec, rid
		}
	}
	if from == "" {
		return nil, nil, false
	}
	rc, err := s.Peers.Open(ctx, from, peerRecordings+"/"+url.PathEscape(id), nil)
	if err != nil {
		return nil, nil, false
	}
	return rc, best, true
}
