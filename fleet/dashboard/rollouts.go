package dashboard

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// updateView is where one device's agent update stands.
type updateView struct {
	api.DeviceUpdate
	// Percent is the download's progress, when known.
	Percent string
	Active  bool // under way (not idle, committed or failed)
}

// update is the device's update, if one is under way or ended lately.
func (s *Server) update(deviceID string) *updateView {
	if s.cfg.Rollouts == nil {
		return nil
	}
	u := s.cfg.Rollouts.DeviceUpdate(deviceID)
	if u == nil || u.Target == "" {
		return nil
	}
	v := &updateView{DeviceUpdate: *u}
	if u.Total > 0 {
		v.Percent = fmt.Sprintf("%.0f%%", 100*float64(u.Done)/float64(u.Total))
	}
	switch u.State {
	case proto.StateCommitted, proto.StateFailed, proto.StateRolledBack, proto.StateRefused, proto.StateIdle:
	default:
		v.Active = true
	}
	return v
}

// rolloutsView is the rollouts page.
type rolloutsView struct {
	Rollouts []rolloutRow
}

type rolloutRow struct {
	api.Rollout
	Selector string
	// StageText is "2 of 4 (10%)".
	StageText string
	Stages    []stageMark
}

type stageMark struct {
	Percent string
	State   string // done, current, next
}

func (s *Server) rolloutsFor(r *http.Request) rolloutsView {
	var out rolloutsView
	if s.cfg.Rollouts == nil {
		return out
	}
	for _, ro := range s.cfg.Rollouts.List(r.Context()) {
		row := rolloutRow{Rollout: ro}
		var sel []string
		for _, k := range slices.Sorted(maps.Keys(ro.Selector)) {
			sel = append(sel, k+"="+ro.Selector[k])
		}
		row.Selector = strings.Join(sel, ",")
		for i, p := range ro.Stages {
			m := stageMark{Percent: fmt.Sprintf("%g%%", p), State: "next"}
			switch {
			case i < ro.Stage:
				m.State = "done"
			case i == ro.Stage:
				m.State = "current"
			}
			row.Stages = append(row.Stages, m)
		}
		if ro.Stage < len(ro.Stages) {
			row.StageText = fmt.Sprintf("%d of %d (%g%%)", ro.Stage+1, len(ro.Stages), ro.Stages[ro.Stage])
		}
		out.Rollouts = append(out.Rollouts, row)
	}
	return out
}

// rolloutsPage answers GET /web/rollouts (admins): the agent update
// rollouts and their progress, kept fresh (htmx asks again every few
// seconds for the list alone).
func (s *Server) rolloutsPage(w http.ResponseWriter, r *http.Request, v *viewer) {
	if err := onlyKnown(r.URL.Query()); err != nil {
		s.badRequest(w, r, v, err)
		return
	}
	if s.cfg.Rollouts == nil {
		s.message(w, r, v, http.StatusNotFound, "No rollouts", "This fleet does not update its agents.")
		return
	}
	rv := s.rolloutsFor(r)
	if isHTMX(r) && r.Header.Get("HX-Target") == "rollouts" {
		s.partial(w, r, v, "rollouts-list", rv)
		return
	}
	s.page(w, r, v, http.StatusOK, "Rollouts", "rollouts", "rollouts", rv)
}
