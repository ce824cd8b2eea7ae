package dashboard

import (
	"errors"
	"maps"
	"net/http"
	"slices"
	"time"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/proto/api"
)

// eventRow is one audit event in a table.
type eventRow struct {
	api.AuditEvent
	DeviceURL string
	// Fields lists the event's fields, KEY=VALUE, by key.
	Fields []string
	// ByDevice says a device asserted the event (not the fleet).
	ByDevice bool
}

func eventRows(recs []audit.Record, names map[string]string) []eventRow {
	out := make([]eventRow, 0, len(recs))
	for _, r := range recs {
		e := audit.Export(r, names)
		row := eventRow{AuditEvent: e, ByDevice: e.AssertedBy != api.SourceFleet}
		if e.DeviceName != "" {
			row.DeviceURL = deviceURL(e.DeviceName)
		}
		for _, k := range slices.Sorted(maps.Keys(e.Fields)) {
			row.Fields = append(row.Fields, k+"="+e.Fields[k])
		}
		out = append(out, row)
	}
	return out
}

// auditView is the audit page.
type auditView struct {
	Filter auditFilter
	Events []eventRow
	// Next pages on to older events; First goes back to the newest.
	Next, First string
	// Searched says a search ran (the page is not the bare form).
	Searched bool
	Error    string
}

// auditPageSize is how many events the audit page lists at once.
const auditPageSize = 50

// auditPage answers GET /web/audit (admins): the audit trail searched by
// user, device, type and time, newest first, a page at a time.
func (s *Server) auditPage(w http.ResponseWriter, r *http.Request, v *viewer) {
	if s.cfg.Audit == nil {
		s.message(w, r, v, http.StatusNotFound, "No audit log", "This fleet keeps no audit log.")
		return
	}
	f, err := parseAuditFilter(r.URL.Query())
	if err != nil {
		s.badRequest(w, r, v, err)
		return
	}
	av := auditView{Filter: f, Searched: len(r.URL.Query()) > 0}
	q := audit.Query{User: f.User, Type: f.Type, Since: f.Since, Until: f.Until, Limit: auditPageSize}
	names := s.cfg.View.Names()
	if f.Device != "" {
		q.Device = f.Device
		for id, name := range names {
			if name == f.Device {
				q.Device = id
			}
		}
	}
	p, err := s.cfg.Audit.SearchPage(r.Context(), q, true, f.Cursor)
	switch {
	case errors.Is(err, audit.ErrCursor):
		s.badRequest(w, r, v, errors.New("cursor: not one of this page's; start from the newest events"))
		return
	case err != nil:
		s.fail(w, r, v, err)
		return
	}
	av.Events = eventRows(p.Records, names)
	if p.Next != "" {
		av.Next = Prefix + "audit?" + f.query(p.Next)
	}
	if f.Cursor != "" {
		av.First = Prefix + "audit?" + f.query("")
	}
	s.page(w, r, v, http.StatusOK, "Audit", "audit", "audit", av)
}

// timeValue formats a time for a datetime-local input (UTC).
func timeValue(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04")
}
