package dashboard

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"time"

	"remoteler.dev/edge/fleet/fleetview"
)

// devicesView is the devices page: the filter and what it selects.
type devicesView struct {
	Filter  deviceFilter
	PerPage []int
	Ready   bool
	Counts  []countLink
	Rows    []deviceRow
	Total   int
	// First and Last number the rows shown (from 1); Prev and Next are
	// the pages around, "" at the ends.
	First, Last int
	Prev, Next  string
	// LiveURL keeps the region live (server-sent events).
	LiveURL string
}

// countLink is one summary count: a filter.
type countLink struct {
	Label  string
	N      int
	Class  string
	URL    string
	Active bool
}

// deviceRow is one device in the table.
type deviceRow struct {
	fleetview.Device
	URL    string
	Labels []labelLink
	// Update is where the device's agent update stands (OTA); nil: none.
	Update *updateView
}

// labelLink is a label, linked to the devices that carry it.
type labelLink struct {
	Text, URL string
}

func labelLinks(labels map[string]string) []labelLink {
	var out []labelLink
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		kv := k + "=" + labels[k]
		out = append(out, labelLink{Text: kv, URL: Prefix + "?" + deviceFilter{Label: kv, Per: 100}.query(1)})
	}
	return out
}

// devicesFor runs f's query for v.
func (s *Server) devicesFor(v *viewer, f deviceFilter) devicesView {
	q := fleetview.Query{Text: f.Text, Labels: f.Labels, Status: f.Status, Visible: v.canSee, Offset: (f.Page - 1) * f.Per, Limit: f.Per}
	p := s.cfg.View.Query(q)
	out := devicesView{Filter: f, PerPage: perPage, Ready: s.cfg.View.Ready(), Total: p.Total}
	all := f
	all.Status = ""
	for _, c := range []struct {
		label string
		n     int
		st    fleetview.Status
		class string
	}{
		{"All", p.Counts.All, fleetview.StatusAny, ""},
		{"Online", p.Counts.Online, fleetview.StatusOnline, "online"},
		{"Offline", p.Counts.Offline, fleetview.StatusOffline, "offline"},
		{"Degraded link", p.Counts.Degraded, fleetview.StatusDegraded, "degraded"},
		{"Outdated agent", p.Counts.Outdated, fleetview.StatusOutdated, "outdated"},
	} {
		g := all
		g.Status = c.st
		out.Counts = append(out.Counts, countLink{Label: c.label, N: c.n, Class: c.class, URL: Prefix + "?" + g.query(1), Active: f.Status == c.st})
	}
	for _, d := range p.Devices {
		out.Rows = append(out.Rows, deviceRow{Device: d, URL: deviceURL(d.Name), Labels: labelLinks(d.Labels), Update: s.update(d.ID)})
	}
	if len(p.Devices) > 0 {
		out.First, out.Last = p.Offset+1, p.Offset+len(p.Devices)
	}
	if f.Page > 1 {
		out.Prev = Prefix + "?" + f.query(f.Page-1)
	}
	if out.Last < p.Total {
		out.Next = Prefix + "?" + f.query(f.Page+1)
	}
	return out
}

func deviceURL(name string) string { return Prefix + "devices/" + name }

// regionHash names a rendering of the live region, so that the live
// stream sends only what the page does not show yet.
func regionHash(html string) string {
	sum := sha256.Sum256([]byte(html))
	return hex.EncodeToString(sum[:8])
}

// devicesPage answers GET /web/ (and /web/devices): the page, or for
// htmx (the filter form) the live region with its new filter.
func (s *Server) devicesPage(w http.ResponseWriter, r *http.Request, v *viewer) {
	f, err := parseDeviceFilter(r.URL.Query())
	if err != nil {
		s.badRequest(w, r, v, err)
		return
	}
	dv := s.devicesFor(v, f)
	region, err := s.render("devices-region", dv)
	if err != nil {
		s.fail(w, r, v, err)
		return
	}
	q := f.query(f.Page)
	if q != "" {
		q += "&"
	}
	dv.LiveURL = Prefix + "live/devices?" + q + "h=" + regionHash(region)
	if isHTMX(r) && r.Header.Get("HX-Target") == "fleet" {
		s.partial(w, r, v, "devices-section", dv)
		return
	}
	s.page(w, r, v, http.StatusOK, "Devices", "devices", "devices", dv)
}

// Live updates.
const (
	// liveMinInterval spaces a stream's updates: a fleet that changes
	// all the time costs each dashboard one render a second at most.
	liveMinInterval = time.Second
	// liveKeepalive is how often an idle stream sends a comment, so that
	// proxies keep it open and a dead client is noticed.
	liveKeepalive = 20 * time.Second
	// liveRefresh is how often a stream renders again although the
	// picture did not move (updates' progress is not in it); nothing is
	// sent when nothing changed.
	liveRefresh = 5 * time.Second
)

// devicesLive answers GET /web/live/devices: server-sent events carrying
// the devices region (event "devices") whenever what the filter selects
// looks different, at most once a second.
func (s *Server) devicesLive(w http.ResponseWriter, r *http.Request, v *viewer) {
	q := r.URL.Query()
	f, err := parseDeviceFilter(q)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	last := q.Get("h")
	s.stream(w, r, v, func(v *viewer) ([]sseEvent, error) {
		html, err := s.render("devices-region", s.devicesFor(v, f))
		if err != nil {
			return nil, err
		}
		h := regionHash(html)
		if h == last {
			return nil, nil
		}
		last = h
		return []sseEvent{{"devices", html}}, nil
	})
}

// sseEvent is one server-sent event: its name and data (HTML).
type sseEvent struct {
	name, data string
}

// stream serves server-sent events: next is called when the fleet's
// picture changed, with the viewer as they are now (their roles read
// again), and returns the events to send. The stream ends when the client
// goes, or the session or user does.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, v *viewer, next func(v *viewer) ([]sseEvent, error)) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming is not supported here", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": live\n\n")
	fl.Flush()
	ctx := r.Context()
	keep := time.NewTicker(liveKeepalive)
	defer keep.Stop()
	// What the picture's version does not cover (agent updates' progress)
	// is looked at now and then.
	refresh := time.NewTicker(liveRefresh)
	defer refresh.Stop()
	var lastVersion uint64
	first := true
	for {
		changed, version := s.cfg.View.Changed()
		if first || version != lastVersion {
			first, lastVersion = false, version
			now, ok := s.again(r, v)
			if !ok {
				return
			}
			v = now
			events, err := next(v)
			if err != nil {
				s.log.Error("live update", "err", err)
				return
			}
			for _, e := range events {
				if err := writeEvent(w, e.name, e.data); err != nil {
					return
				}
			}
			if len(events) > 0 {
				fl.Flush()
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(liveMinInterval):
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-refresh.C:
			if s.cfg.Rollouts != nil {
				first = true
			}
		case <-keep.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
			if _, ok := s.again(r, v); !ok {
				return
			}
		}
	}
}

// again reads the viewer again: their session must still be live and
// their user still there; their roles are read afresh.
func (s *Server) again(r *http.Request, v *viewer) (*viewer, bool) {
	sess, ok := s.cfg.Login.Session(r)
	if !ok || sess.User != v.user.Name {
		return nil, false
	}
	u, err := s.cfg.Users.Get(r.Context(), sess.User)
	if err != nil {
		return nil, false
	}
	checker, err := s.cfg.Roles.NewCheckerFor(r.Context(), u.Roles, u.Traits)
	if err != nil {
		return nil, false
	}
	return &viewer{sess: sess, user: u, checker: checker, nonce: v.nonce}, true
}

// writeEvent writes one server-sent event; every line of data is a data
// line.
func writeEvent(w http.ResponseWriter, event, data string) error {
	var b []byte
	b = append(b, "event: "+event+"\n"...)
	start := 0
	for i := 0; i <= len(data); i++ {
		if i == len(data) || data[i] == '\n' {
			line := data[start:i]
			if len(line) > 0 && line[len(line)-1] == '\r' {
				line = line[:len(line)-1]
			}
			b = append(b, "data: "...)
			b = append(b, line...)
			b = append(b, '\n')
			start = i + 1
		}
	}
	b = append(b, '\n')
	_, err := w.Write(b)
	return err
}
