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
	"remoteler.dev/edge/fleet/web/static"
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
	reg      *devices.Registry
	tunnels  *tunnelsrv.Server
	links    *linkhealth.Sampler
	live     *sessions.Registry
	brk      *broker.Broker
	auth     *ca.Authority
	users    *users.Service
	roles    *rbac.Roles
	tokens   *tokens.Service
	events   *audit.Log
	recs     *recordings.Store
	recorder *audit.Recorder
	admin    *admin.Admin
	login    dashboard.Login
	listen   net.Addr
	releases *releases.Service
	rollouts *rollouts.Engine
}

func newDash(cfg Config, d dashDeps, log *slog.Logger, now func() time.Time) (*dash, error) {
	ds := &dash{releases: d.releases}
	view := fleetview.New(fleetview.Config{Registry: d.reg, Links: d.tunnels, Loss: d.links.Loss, Sessions: d.live,
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
	web := webAddr(cfg, d.listen)
	term := webterm.New(webterm.Config{Broker: d.brk, CA: d.auth, CertTTL: time.Duration(cfg.UserCertTTL), Logger: log, Now: now})
	srv := dashboard.New(dashboard.Config{
		Login: d.login, Users: d.users, Roles: d.roles, View: view, History: history, Audit: d.events, Recorder: d.recorder,
		Recordings: d.recs, Sessions: d.live, Admin: d.admin, Tokens: d.tokens, Rollouts: d.rollouts,
		Terminal: func(w http.ResponseWriter, r *http.Request, req dashboard.TerminalRequest) {
			term.Serve(w, r, webterm.Request(req))
		},
		Fleet: cfg.Cluster, Version: Version, FleetAddr: fleetAddr(cfg, d.listen), Origin: web.FleetOrigin(),
		AppURL: web.Origin, Logger: log, Now: now,
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

// register adds the dashboard and the static files to mux.
func (d *dash) register(mux *http.ServeMux) {
	d.server.Register(mux)
	mux.Handle("GET "+dashboard.StaticPrefix, static.Handler(dashboard.StaticPrefix))
}

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

// webAddr is where browsers reach the fleet: the apps domain (default the
// first DNS name among the public addresses, else "localhost") and the
// public port (default the one fleetd listens on).
func webAddr(cfg Config, listen net.Addr) apps.Addr {
	a := apps.Addr{Domain: strings.ToLower(cfg.AppsDomain), Port: cfg.PublicPort}
	if a.Domain == "" {
		a.Domain = "localhost"
		for _, h := range cfg.PublicAddrs {
			if net.ParseIP(h) == nil && h != "" {
				a.Domain = strings.ToLower(h)
				break
			}
		}
	}
	if a.Port == 0 {
		if t, ok := listen.(*net.TCPAddr); ok {
			a.Port = t.Port
		}
	}
	return a
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

// webRoute sends what web has a route for (the dashboard's pages and
// the static files) to it, and the rest to the API (which serves some
// browser pages too: single sign-on's device approval).
func webRoute(web *http.ServeMux, api http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := web.Handler(r); pattern != "" {
			web.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
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

// noLogin stands in for the browser login until fleetd has one: every
// page says so.
type noLogin struct{}

func (noLogin) Session(*http.Request) (dashboard.Session, bool) { return dashboard.Session{}, false }

func (noLogin) RedirectToLogin(w http.ResponseWriter, _ *http.Request, _ string) {
	http.Error(w, "the dashboard needs the fleet's browser login, which this fleetd does not have", http.StatusServiceUnavailable)
}

func (noLogin) CheckPost(*http.Request, dashboard.Session) error { return http.ErrNotSupported }
