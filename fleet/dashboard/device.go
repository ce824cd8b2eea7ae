package dashboard

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/fleetview"
	"remoteler.dev/edge/fleet/linkhist"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// deviceView is a device's page.
type deviceView struct {
	Device   fleetview.Device
	Labels   []labelLink
	Services string
	// Logins are the viewer's logins on the device; CanConnect says a
	// terminal can be opened now.
	Logins     []string
	CanConnect bool
	TermURL    string
	Apps       []appLink
	// KubeLogin is the command that gives kubectl the device's cluster.
	KubeLogin string
	Charts    bool
	LinkURL   string
	Events    []eventRow
	// EventsURL searches all the device's events (admins).
	EventsURL string
	Sessions  sessionsView
	LiveURL   string
	// Update is where the device's agent update stands.
	Update *updateView
}

// appLink is one of the device's web apps.
type appLink struct {
	Name, URL string
	Labels    []string
}

// findDevice returns the device called name if the viewer may see it;
// otherwise the answer is the same as for a device that does not exist.
func (s *Server) findDevice(w http.ResponseWriter, r *http.Request, v *viewer) (fleetview.Device, bool) {
	name := r.PathValue("name")
	d, ok := s.cfg.View.Get(name)
	if !ok || !v.canSee(d.Labels) {
		if strings.HasPrefix(r.URL.Path, "/web/live/") || strings.HasSuffix(r.URL.Path, "/link") || strings.HasSuffix(r.URL.Path, "/ws") {
			http.Error(w, "no such device that you can see", http.StatusNotFound)
		} else {
			s.notFound(w, r, v, "device called "+truncate(name, 64))
		}
		return d, false
	}
	return d, true
}

func (s *Server) deviceFor(r *http.Request, v *viewer, d fleetview.Device) deviceView {
	dv := deviceView{Device: d, Labels: labelLinks(d.Labels), Services: strings.Join(d.Services, ", "),
		Charts: s.cfg.History != nil, LinkURL: deviceURL(d.Name) + "/link"}
	dv.Logins = v.checker.DeviceLogins(d.Labels)
	dv.CanConnect = d.Online && slices.Contains(d.Services, proto.ServiceSSH) && len(dv.Logins) > 0 && s.cfg.Terminal != nil
	dv.TermURL = deviceURL(d.Name) + "/terminal"
	for _, a := range d.Apps {
		if !v.checker.CanSeeApp(appLabels(a, d.Labels)) {
			continue
		}
		l := appLink{Name: a.Name}
		if s.cfg.AppURL != nil {
			l.URL, _ = s.cfg.AppURL(a.Name, d.Name)
		}
		for _, k := range slices.Sorted(maps.Keys(a.Labels)) {
			l.Labels = append(l.Labels, k+"="+a.Labels[k])
		}
		dv.Apps = append(dv.Apps, l)
	}
	if slices.Contains(d.Services, proto.ServiceKube) {
		if _, _, err := v.checker.CheckKube(d.Name, d.Labels, v.user.Name); err == nil {
			dv.KubeLogin = "tsh kube login " + d.Name
		}
	}
	dv.Events = s.deviceEvents(r, v, d)
	if v.isAdmin() && s.cfg.Audit != nil {
		dv.EventsURL = Prefix + "audit?" + auditFilter{Device: d.Name}.query("")
	}
	dv.Sessions = s.sessionsFor(v, d.ID)
	dv.Update = s.update(d.ID)
	dv.LiveURL = Prefix + "live/devices/" + d.Name
	return dv
}

// appLabels are what roles' app_labels match: the app's labels over its
// device's.
func appLabels(a proto.App, device map[string]string) map[string]string {
	out := maps.Clone(device)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, a.Labels)
	return out
}

// recentEvents is how many audit events a device's page shows.
const recentEvents = 20

// deviceEvents are the device's latest audit events: all of them for an
// admin, the viewer's own for others.
func (s *Server) deviceEvents(r *http.Request, v *viewer, d fleetview.Device) []eventRow {
	if s.cfg.Audit == nil {
		return nil
	}
	q := audit.Query{Device: d.ID, Limit: recentEvents}
	if !v.isAdmin() {
		q.User = v.user.Name
	}
	p, err := s.cfg.Audit.SearchPage(r.Context(), q, true, "")
	if err != nil {
		s.log.Warn("device events", "device", d.Name, "err", err)
		return nil
	}
	return eventRows(p.Records, map[string]string{d.ID: d.Name})
}

// devicePage answers GET /web/devices/{name}.
func (s *Server) devicePage(w http.ResponseWriter, r *http.Request, v *viewer) {
	if err := onlyKnown(r.URL.Query()); err != nil {
		s.badRequest(w, r, v, err)
		return
	}
	d, ok := s.findDevice(w, r, v)
	if !ok {
		return
	}
	s.page(w, r, v, http.StatusOK, d.Name, "devices", "device", s.deviceFor(r, v, d))
}

// deviceLive answers GET /web/live/devices/{name}: server-sent events
// ("device") carrying the device's status, its Connect form (there while
// the device is online) and its sessions when they change, each part
// replacing its section of the page.
func (s *Server) deviceLive(w http.ResponseWriter, r *http.Request, v *viewer) {
	if _, ok := s.findDevice(w, r, v); !ok {
		return
	}
	name := r.PathValue("name")
	last := map[string]string{}
	s.stream(w, r, v, func(v *viewer) ([]sseEvent, error) {
		d, ok := s.cfg.View.Get(name)
		if !ok || !v.canSee(d.Labels) {
			return []sseEvent{{"device", `<section id="device-status" hx-swap-oob="innerHTML"><p class="notice">This device is gone, or your roles no longer let you see it.</p></section>`}}, nil
		}
		dv := s.deviceFor(r, v, d)
		// One event whose parts replace the sections that changed, by
		// their IDs (htmx's out-of-band swaps).
		var parts []string
		for _, part := range []string{"status", "connect", "sessions"} {
			html, err := s.render("device-"+part, dv)
			if err != nil {
				return nil, err
			}
			if last[part] != html {
				parts = append(parts, `<section id="device-`+part+`" hx-swap-oob="innerHTML">`+html+`</section>`)
			}
			last[part] = html
		}
		if len(parts) == 0 {
			return nil, nil
		}
		return []sseEvent{{"device", strings.Join(parts, "\n")}}, nil
	})
}

// linkSeries is a device's link history as uPlot draws it: one array per
// series, aligned on X (Unix seconds); null where nothing was sampled.
type linkSeries struct {
	Range      string     `json:"range"`
	X          []int64    `json:"x"`
	RTT        []*float64 `json:"rtt_ms"`
	Loss       []*float64 `json:"loss_percent"`
	Online     []*float64 `json:"online_percent"`
	Reconnects []*float64 `json:"reconnects"`
	Up         []*float64 `json:"bytes_up"`
	Down       []*float64 `json:"bytes_down"`
}

// Chart ranges.
const (
	hourlyRange = 7 * 24 * time.Hour
	dailyDays   = 90
)

// deviceLink answers GET /web/devices/{name}/link?range=hours|days: the
// device's link history, for its charts.
func (s *Server) deviceLink(w http.ResponseWriter, r *http.Request, v *viewer) {
	q := r.URL.Query()
	if err := onlyKnown(q, "range"); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rng := q.Get("range")
	if rng == "" {
		rng = "hours"
	}
	if rng != "hours" && rng != "days" {
		http.Error(w, "range must be hours or days", http.StatusBadRequest)
		return
	}
	d, ok := s.findDevice(w, r, v)
	if !ok {
		return
	}
	if s.cfg.History == nil {
		http.Error(w, "this fleet keeps no link history", http.StatusNotFound)
		return
	}
	now := s.cfg.Now().UTC()
	var points []linkhist.Point
	var err error
	var step time.Duration
	var from time.Time
	if rng == "hours" {
		step = time.Hour
		from = now.Truncate(time.Hour).Add(-hourlyRange + time.Hour)
		points, err = s.cfg.History.Hours(d.ID, from, now.Add(time.Hour))
	} else {
		step = 24 * time.Hour
		from = now.Truncate(24*time.Hour).AddDate(0, 0, -dailyDays+1)
		points, err = s.cfg.History.Days(d.ID, from, now.Add(24*time.Hour))
	}
	if err != nil {
		s.fail(w, r, v, err)
		return
	}
	byStart := map[int64]linkhist.Point{}
	for _, p := range points {
		byStart[p.Start.Unix()] = p
	}
	out := linkSeries{Range: rng}
	f := func(x float64) *float64 { return &x }
	for t := from; !t.After(now); t = t.Add(step) {
		out.X = append(out.X, t.Unix())
		p, ok := byStart[t.Unix()]
		if !ok {
			out.RTT, out.Loss, out.Online = append(out.RTT, nil), append(out.Loss, nil), append(out.Online, nil)
			out.Reconnects, out.Up, out.Down = append(out.Reconnects, nil), append(out.Up, nil), append(out.Down, nil)
			continue
		}
		var rtt, loss *float64
		if p.Online > 0 {
			rtt = f(float64(p.RTT.Microseconds()) / 1000)
			loss = f(p.LossPercent())
		}
		out.RTT, out.Loss, out.Online = append(out.RTT, rtt), append(out.Loss, loss), append(out.Online, f(p.OnlinePercent()))
		out.Reconnects = append(out.Reconnects, f(float64(p.Reconnects)))
		out.Up, out.Down = append(out.Up, f(float64(p.BytesUp))), append(out.Down, f(float64(p.BytesDown)))
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

// sessionsView lists sessions: live ones and recordings.
type sessionsView struct {
	Live       []sessionRow
	Recordings []recordingRow
	// More says the recordings were cut at the page's bound.
	More bool
}

type sessionRow struct {
	sessions.Session
	DeviceURL string
}

type recordingRow struct {
	api.Recording
	URL       string
	DeviceURL string
}

// maxRecordings bounds the recordings a page lists.
const maxRecordings = 100

// sessionsFor lists the sessions the viewer may see (an admin's are
// everyone's; a user's their own), of one device when deviceID is set.
func (s *Server) sessionsFor(v *viewer, deviceID string) sessionsView {
	var out sessionsView
	names := map[string]string{}
	if s.cfg.Sessions != nil {
		f := sessions.Filter{DeviceID: deviceID}
		if !v.isAdmin() {
			f.User = v.user.Name
		}
		for _, ss := range s.cfg.Sessions.List(f) {
			out.Live = append(out.Live, sessionRow{Session: ss, DeviceURL: deviceURL(ss.DeviceName)})
			names[ss.DeviceID] = ss.DeviceName
		}
	}
	if s.cfg.Recordings != nil {
		list, err := s.cfg.Recordings.List(func(rec *api.Recording) bool {
			return (deviceID == "" || rec.Device == deviceID) && (v.isAdmin() || rec.User == v.user.Name)
		})
		if err != nil {
			s.log.Warn("list recordings", "err", err)
		}
		if len(list) > maxRecordings {
			list, out.More = list[:maxRecordings], true
		}
		for _, rec := range list {
			name := names[rec.Device]
			if name == "" {
				if d, ok := s.deviceByID(rec.Device); ok {
					name = d
				}
			}
			rec.DeviceName = name
			row := recordingRow{Recording: rec, URL: Prefix + "recordings/" + rec.ID}
			if name != "" {
				row.DeviceURL = deviceURL(name)
			}
			out.Recordings = append(out.Recordings, row)
		}
	}
	return out
}

// deviceByID names a device by its ID.
func (s *Server) deviceByID(id string) (string, bool) { return s.cfg.View.NameOf(id) }
