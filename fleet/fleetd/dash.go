package fleetd

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/fleet/admin"
	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/dashboard"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/fleetview"
	"remoteler.dev/edge/fleet/linkhealth"
	"remoteler.dev/edge/fleet/linkhist"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/recordings"
	"remoteler.dev/edge/fleet/releases"
	"remoteler.dev/edge/fleet/rollouts"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/fleet/web/login"
	"remoteler.dev/edge/fleet/webterm"
)

// dash is what fleetd serves to browsers besides the login: the live
// picture of the fleet (also the metrics' source), the link history, the
// dashboard and its terminal.
type dash struct {
	view     *fleetview.View
	history  *linkhist.History
	server   *dashboard.Server
	releases *releases.Service
	// latest is the newest release's version ("" for none), read now and
	// then: a device older than it is outdated.
	latest atomic.Pointer[string]
}

// dashDeps are the fleet's parts the dashboard shows and acts through.
type dashDeps struct {
	reg     *devices.Registry
	tunnels *tunnelsrv.Server
	// elsewhere reports a device whose tunnel another replica holds
	// (fleetview.Config.Elsewhere); nil on one fleetd.
	elsewhere func(deviceID string) (time.Time, bool)
	links     *linkhealth.Sampler
	live      *sessions.Registry
	brk       *broker.Broker
	auth      *ca.Authority
	users     *users.Service
	roles     *rbac.Roles
	tokens    *tokens.Service
	events    *audit.Log
	recs      *recordings.Store
	recorder  *audit.Recorder
	admin     *admin.Admin
	login     dashboard.Login
	web       apps.Addr // where browsers reach the fleet
	listen    net.Addr
	releases  *releases.Service
	rollouts  *rollouts.Engine
}

func newDash(cfg Config, d dashDeps, log *slog.Logger, now func() time.Time) (*dash, error) {
	ds := &dash{releases: d.releases}
	view := fleetview.New(fleetview.Config{Registry: d.reg, Links: d.tunnels, Elsewhere: d.elsewhere, Loss: d.links.Loss, Sessions: d.live,
		Latest: func() string {
			if p := ds.latest.Load(); p != nil {
				return *p
			}
			return ""
		},
		Logger: log, Now: now})
	history, err := linkhist.Open(linkhist.Config{
		Path:       filepath.Join(cfg.DataDir, "linkhistory.db"),
		Source:     linkSource(view, d.tunnels, d.links),
		HourlyDays: cfg.LinkHistoryHourlyDays, DailyDays: cfg.LinkHistoryDays, Every: time.Duration(cfg.LinkHistoryEvery),
		Logger: log, Now: now,
	})
	if err != nil {
		return nil, err
	}
	term := webterm.New(webterm.Config{Broker: d.brk, CA: d.auth, CertTTL: time.Duration(cfg.UserCertTTL), Logger: log, Now: now})
	srv := dashboard.New(dashboard.Config{
		Login: d.login, Users: d.users, Roles: d.roles, View: view, History: history, Audit: d.events, Recorder: d.recorder,
		Recordings: d.recs, Sessions: d.live, Admin: d.admin, Tokens: d.tokens, Rollouts: d.rollouts,
		Terminal: func(w http.ResponseWriter, r *http.Request, req dashboard.TerminalRequest) {
			term.Serve(w, r, webterm.Request(req))
		},
		Fleet: cfg.Cluster, Version: Version, FleetAddr: fleetAddr(cfg, d.listen), Origin: d.web.FleetOrigin(),
		AppURL: d.web.Origin, Logger: log, Now: now,
	})
	ds.view, ds.history, ds.server = view, history, srv
	return ds, nil
}

// run runs the picture and the history, and reads the newest release now
// and then, until ctx ends.
func (d *dash) run(ctx context.Context, wg *sync.WaitGroup) {
	wg.Go(func() { d.view.Run(ctx) })
	wg.Go(func() { d.history.Run(ctx) })
	if d.releases == nil {
		return
	}
	wg.Go(func() {
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			if list, err := d.releases.List(ctx); err == nil {
				v := ""
				if len(list) > 0 {
					v = list[0].Version
				}
				d.latest.Store(&v)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

// register adds the dashboard's pages to mux (the login's mux, which
// serves the static files).
func (d *dash) register(mux *http.ServeMux) { d.server.Register(mux) }

// linkSource samples every device for the link history: its registry
// record (connections), its tunnel's counters and its loss outside
// blackouts.
func linkSource(view *fleetview.View, tunnels *tunnelsrv.Server, links *linkhealth.Sampler) func(func(linkhist.Sample)) {
	return func(fn func(linkhist.Sample)) {
		live := map[string]linkhist.Sample{}
		tunnels.EachLink(func(id string, since time.Time, st quic.ConnectionStats) {
			s := linkhist.Sample{DeviceID: id, Online: true, Since: since, RTT: st.SmoothedRTT, BytesUp: st.BytesSent, BytesDown: st.BytesReceived}
			if sent, lost, blackouts, ok := links.Counted(id); ok {
				s.Sent, s.Lost, s.Blackouts = sent, lost, blackouts
			}
			live[id] = s
		})
		for id, connects := range view.Connects() {
			s, ok := live[id]
			if !ok {
				s = linkhist.Sample{DeviceID: id}
			}
			s.Connects = connects
			fn(s)
		}
	}
}

// fleetAddr is the fleet's HOST:PORT as devices reach it, for the join
// command the dashboard shows: FleetAddr, else the first public address
// with the listen port, else the listen address as a local client dials
// it.
func fleetAddr(cfg Config, listen net.Addr) string {
	if cfg.FleetAddr != "" {
		return cfg.FleetAddr
	}
	port := ""
	if t, ok := listen.(*net.TCPAddr); ok {
		port = strconv.Itoa(t.Port)
	}
	if len(cfg.PublicAddrs) > 0 && port != "" {
		return net.JoinHostPort(cfg.PublicAddrs[0], port)
	}
	return clientAddr(listen.String())
}

// metricsToken reads the metrics' bearer token from its file, if one is
// named.
func metricsToken(cfg Config) (string, error) {
	if cfg.MetricsTokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(cfg.MetricsTokenFile)
	if err != nil {
		return "", fmt.Errorf("metrics token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", fmt.Errorf("metrics token in %s: want at least 16 characters", cfg.MetricsTokenFile)
	}
	return tok, nil
}

// webLogin is the fleet's browser login (fleet/web/login) as the
// dashboard sees it.
type webLogin struct{ s *login.Server }

func (l webLogin) Session(r *http.Request) (dashboard.Session, bool) {
	sess, ok := l.s.Session(r)
	if !ok {
		return dashboard.Session{}, false
	}
	return dashboard.Session{User: sess.User, ID: sess.ID, CSRF: sess.CSRF(), Expires: sess.Expires}, true
}

func (l webLogin) RedirectToLogin(w http.ResponseWriter, r *http.Request, next string) {
	l.s.RedirectToLogin(w, r, next)
}

// CheckPost checks r against the request's own session, which must be
// the one the dashboard was given.
func (l webLogin) CheckPost(r *http.Request, sess dashboard.Session) error {
	ls, ok := l.s.Session(r)
	if !ok || ls.ID != sess.ID {
		return login.ErrForbidden
	}
	return l.s.CheckPost(r, ls)
}
